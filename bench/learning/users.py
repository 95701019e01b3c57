"""Simulated users of the learning benchmark: HTTP clients of the running chat service (the `openai` client, exactly
as a real client) with a hidden preference. Driven by `bench.learning.run` between evaluations.

One interaction = a user asks a training question and reads the reply. Then:
- the reply violates the hidden preference → the user's next message, in the same conversation, is a complaint in a
  randomly chosen phrasing (the service captures this follow-up as implicit feedback);
- the reply is fine → the user moves on: an acknowledgement ("Thanks!", also captured, as in real traffic) with
  probability `p_ack`, otherwise a new question (in the same conversation while it has turns left, which makes the
  question an unrelated follow-up of the reply; else in a new conversation, and the reply is never followed up);
- control users have no preference: after every reply they send an unrelated follow-up ("What is 27*4?").
A conversation holds at most `turns_per_conversation` read replies; the reply to its last follow-up is not read,
so it is requested with `followup_max_tokens` (1 by default) to save CPU; the service captures the follow-up the
same way.
Requests carry a seed derived from the run seed and the interaction index, so a run is repeatable given the weights.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from bench.learning.preferences import Preference
from bench.learning.prompts import PromptSets

MODEL_NAME = "hsd-policy"


@dataclass
class UserStats:
    interactions: int = 0  # replies read and judged
    violations: int = 0
    complaints: int = 0
    acknowledgements: int = 0
    new_questions: int = 0  # new question as a follow-up in the same conversation
    unrelated: int = 0  # control users' unrelated follow-ups
    abandoned: int = 0  # satisfied, moved on to a new conversation (reply never followed up)
    followups: int = 0  # follow-up messages sent (each should be captured as a turn)
    chat_s: float = 0.0
    log: list = field(default_factory=list)  # one record per interaction

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Conversation:
    messages: list = field(default_factory=list)
    question: str = ""  # what the next reply is judged against
    replies_read: int = 0


class SimulatedUsers:
    """`n_users` users taking turns (one request at a time). `preference=None` makes control users."""

    def __init__(self, client, preference: Preference | None, prompts: PromptSets, *, seed: int = 0,
                 n_users: int = 4, max_tokens: int = 48, temperature: float = 0.7, top_p: float = 0.9,
                 followup_max_tokens: int = 1, turns_per_conversation: int = 1, p_ack: float = 0.5):
        self.client, self.preference, self.prompts, self.seed = client, preference, prompts, seed
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.followup_max_tokens, self.turns, self.p_ack = followup_max_tokens, turns_per_conversation, p_ack
        self.pool = prompts.train(preference.prompt_kind if preference else "open")
        self.rngs = [random.Random(f"user-{seed}-{i}") for i in range(n_users)]
        self.conversations = [_Conversation() for _ in range(n_users)]
        self.stats = UserStats()
        self._requests = 0

    def run(self, n: int) -> UserStats:
        """Run `n` more interactions (users take turns); returns the cumulative stats."""
        for _ in range(n):
            i = self.stats.interactions % len(self.rngs)
            self._interact(i, self.rngs[i], self.conversations[i])
        return self.stats

    # ---- one interaction ------------------------------------------------------------------------------------------
    def _interact(self, i: int, rng: random.Random, conv: _Conversation) -> None:
        if not conv.messages:
            conv.question = rng.choice(self.pool)
            conv.messages = [{"role": "user", "content": conv.question}]
        reply, fingerprint = self._chat(conv.messages, f"sim-{self.seed}-{i}", self.max_tokens)
        conv.replies_read += 1
        self.stats.interactions += 1
        ok = self.preference.verify(reply) if self.preference else None
        kind, followup = self._choose_followup(rng, ok, conv)
        self.stats.log.append({"user": i, "question": conv.question, "context_messages": len(conv.messages),
                               "reply": reply, "ok": ok, "followup_kind": kind, "followup": followup,
                               "fingerprint": fingerprint})
        conv.messages = conv.messages + [{"role": "assistant", "content": reply}]
        if followup is None:
            conv.messages, conv.replies_read = [], 0
            return
        conv.messages.append({"role": "user", "content": followup})
        self.stats.followups += 1
        keeps_going = kind in ("complaint", "new_question", "unrelated") and conv.replies_read < self.turns
        if kind in ("new_question", "unrelated"):
            conv.question = followup
        if not keeps_going:  # the user leaves: the follow-up is sent, its reply not read
            self._chat(conv.messages, f"sim-{self.seed}-{i}", self.followup_max_tokens)
            conv.messages, conv.replies_read = [], 0

    def _choose_followup(self, rng: random.Random, ok: bool | None, conv: _Conversation) -> tuple[str, str | None]:
        if self.preference is None:
            self.stats.unrelated += 1
            return "unrelated", rng.choice(self.prompts.unrelated_followups)
        if not ok:
            self.stats.violations += 1
            self.stats.complaints += 1
            return "complaint", rng.choice(self.preference.complaints)
        if rng.random() < self.p_ack:
            self.stats.acknowledgements += 1
            return "ack", rng.choice(self.prompts.acknowledgements)
        if conv.replies_read < self.turns:
            self.stats.new_questions += 1
            return "new_question", rng.choice(self.pool)
        self.stats.abandoned += 1
        return "none", None

    def _chat(self, messages: list[dict], user: str, max_tokens: int) -> tuple[str, str]:
        self._requests += 1
        t0 = time.perf_counter()
        r = self.client.chat.completions.create(
            model=MODEL_NAME, messages=messages, user=user, max_tokens=max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed * 1_000_003 + self._requests,
        )
        self.stats.chat_s += time.perf_counter() - t0
        return r.choices[0].message.content or "", r.system_fingerprint or ""
