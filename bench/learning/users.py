"""Simulated users of the learning benchmark: HTTP clients of the running chat service (the `openai` client, exactly
as a real client) with a hidden preference. Driven by `bench.learning.run` between evaluations.

One interaction = a user asks a training question (of the preference's prompt kind) and reads the reply. What the
user sends next depends on the POPULATION:
- `feedback`: a violated preference → a complaint in a randomly chosen phrasing (captured as implicit feedback); a
  satisfying reply → an acknowledgement ("Thanks!", also captured) with probability `p_ack`, otherwise the user moves
  on: a new question in the same conversation while it has turns left, else a new conversation (no follow-up).
- `control` (matched to a feedback run of the same seed): the same users, questions and number of interactions, and a
  follow-up exactly when a feedback user would send one — but never about the reply: a new question, thanks-and-
  move-on ("Thanks! Next question: ...") or chit-chat, with equal chances.
- `mixed` (traffic a feedback gate must sort out): a violated preference → a complaint, thanks, or a new topic with
  equal chances; a satisfying reply → thanks (`p_ack`) or a new topic. A new topic is always sent as a follow-up.
New questions and topics come from `PromptSets.new_topics` (training prompts and the training split's checkable
questions, never evaluated).

Repeatability and matching: each user has three random streams. The QUESTION stream (`question-<seed>-<user>`) draws
only the question of each new conversation; the DECIDE stream only whether a satisfied user acknowledges (so a
control follows up exactly where its feedback run would, given the same replies); the FOLLOW-UP stream all else.
With one read reply per conversation (the default `turns_per_conversation=1`) a feedback, control and mixed run of
the same seed therefore ask exactly the same questions in the same order. The read reply of interaction k is
requested with seed `seed * 1_000_003 + 2k`, an unread one with `+ 2k + 1`, whatever the population.
A conversation holds at most `turns_per_conversation` read replies; the reply to its last follow-up is not read, so it
is requested with `followup_max_tokens` (1 by default) to save CPU; the service captures the follow-up the same way.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from bench.learning.preferences import Preference
from bench.learning.prompts import PromptSets

MODEL_NAME = "hsd-policy"
POPULATIONS = ("feedback", "control", "mixed")
FOLLOWUP_KINDS = ("complaint", "ack", "new_question", "thanks_next", "chitchat")


@dataclass
class UserStats:
    interactions: int = 0  # replies read and judged
    violations: int = 0
    complaints: int = 0
    acknowledgements: int = 0
    new_questions: int = 0  # a new question as the follow-up (same conversation)
    thanks_next: int = 0  # "Thanks! Next question: ..." (control, mixed)
    chitchat: int = 0  # small talk (control)
    abandoned: int = 0  # moved on to a new conversation (reply never followed up)
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
    """`n_users` users taking turns (one request at a time), all with `preference`, behaving as `population`."""

    def __init__(self, client, preference: Preference, prompts: PromptSets, *, seed: int = 0, n_users: int = 4,
                 population: str = "feedback", max_tokens: int = 48, temperature: float = 0.7, top_p: float = 0.9,
                 followup_max_tokens: int = 1, turns_per_conversation: int = 1, p_ack: float = 0.5,
                 user_prefix: str = "sim"):
        if population not in POPULATIONS:
            raise ValueError(f"population must be one of {POPULATIONS}, not {population!r}")
        if preference is None:
            raise ValueError("a user needs a preference (a control run is population='control')")
        self.client, self.preference, self.prompts, self.seed = client, preference, prompts, seed
        self.population = population
        self.user_prefix = user_prefix  # user ids are <prefix>-<seed>-<i> (distinct prefixes: distinct users)
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.followup_max_tokens, self.turns, self.p_ack = followup_max_tokens, turns_per_conversation, p_ack
        self.pool = prompts.train(preference.prompt_kind)
        self.topics = prompts.new_topics(preference.prompt_kind)
        self.question_rngs = [random.Random(f"question-{seed}-{i}") for i in range(n_users)]
        self.rngs = [random.Random(f"user-{seed}-{i}") for i in range(n_users)]
        self.decide_rngs = [random.Random(f"decide-{seed}-{i}") for i in range(n_users)]
        self.conversations = [_Conversation() for _ in range(n_users)]
        self.stats = UserStats()

    def run(self, n: int) -> UserStats:
        """Run `n` more interactions (users take turns); returns the cumulative stats."""
        for _ in range(n):
            i = self.stats.interactions % len(self.rngs)
            self._interact(i, self.rngs[i], self.conversations[i])
        return self.stats

    # ---- one interaction ------------------------------------------------------------------------------------------
    def _interact(self, i: int, rng: random.Random, conv: _Conversation) -> None:
        k = self.stats.interactions
        if not conv.messages:
            conv.question = self.question_rngs[i].choice(self.pool)
            conv.messages = [{"role": "user", "content": conv.question}]
        reply, fingerprint = self._chat(conv.messages, self.user_id(i), self.max_tokens, 2 * k)
        conv.replies_read += 1
        self.stats.interactions += 1
        ok = self.preference.verify(reply)
        self.stats.violations += not ok
        kind, followup = self.choose_followup(rng, ok, conv.replies_read < self.turns, self.decide_rngs[i])
        self.stats.log.append({"user": i, "question": conv.question, "context_messages": len(conv.messages),
                               "reply": reply, "ok": ok, "followup_kind": kind, "followup": followup,
                               "fingerprint": fingerprint})
        conv.messages = conv.messages + [{"role": "assistant", "content": reply}]
        if followup is None:
            conv.messages, conv.replies_read = [], 0
            return
        conv.messages.append({"role": "user", "content": followup})
        self.stats.followups += 1
        keeps_going = kind in ("complaint", "new_question") and conv.replies_read < self.turns
        if kind == "new_question":
            conv.question = followup
        if not keeps_going:  # the user leaves: the follow-up is sent, its reply not read
            self._chat(conv.messages, self.user_id(i), self.followup_max_tokens, 2 * k + 1)
            conv.messages, conv.replies_read = [], 0

    def choose_followup(self, rng: random.Random, ok: bool, turns_left: bool,
                        decide: random.Random | None = None) -> tuple[str, str | None]:
        """(kind, message) of the follow-up to a reply that satisfied the preference (`ok`) or not; kind "none"
        with message None when the user leaves without a follow-up. Updates the counters. `decide` draws whether a
        satisfied user acknowledges (the same draws in a feedback run and its matched control); `rng` all else."""
        kind = self._followup_kind(rng, decide or rng, ok, turns_left)
        if kind == "none":
            self.stats.abandoned += 1
            return "none", None
        counter = {"complaint": "complaints", "ack": "acknowledgements", "new_question": "new_questions",
                   "thanks_next": "thanks_next", "chitchat": "chitchat"}[kind]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if kind == "complaint":
            return kind, rng.choice(self.preference.complaints)
        if kind == "ack":
            return kind, rng.choice(self.prompts.acknowledgements)
        if kind == "new_question":
            return kind, rng.choice(self.topics)
        if kind == "thanks_next":
            return kind, rng.choice(self.prompts.thanks_next).format(q=rng.choice(self.topics))
        return kind, rng.choice(self.prompts.chitchat)

    def _followup_kind(self, rng: random.Random, decide: random.Random, ok: bool, turns_left: bool) -> str:
        if self.population == "mixed":
            if not ok:
                return rng.choice(("complaint", "ack", "new_question"))
            return "ack" if decide.random() < self.p_ack else "new_question"
        # feedback, and control: the control follows up exactly when a feedback user would (same draws)
        if not ok:
            would = "complaint"
        elif decide.random() < self.p_ack:
            would = "ack"
        else:
            would = "new_question" if turns_left else "none"
        if self.population == "feedback" or would == "none":
            return would
        return rng.choice(("new_question", "thanks_next", "chitchat"))

    def user_id(self, i: int) -> str:
        return f"{self.user_prefix}-{self.seed}-{i}"

    def _chat(self, messages: list[dict], user: str, max_tokens: int, request: int) -> tuple[str, str]:
        t0 = time.perf_counter()
        r = self.client.chat.completions.create(
            model=MODEL_NAME, messages=messages, user=user, max_tokens=max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed * 1_000_003 + request,
        )
        self.stats.chat_s += time.perf_counter() - t0
        return r.choices[0].message.content or "", r.system_fingerprint or ""
