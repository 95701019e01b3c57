"""Implicit capture: recognise that a chat request continues a reply this service produced, and emit the turn.

The ledger of served replies lives in one Ray actor (not in a replica), so a follow-up is matched whichever replica
served the reply and after any replica restarts. A served reply is keyed by a content hash of (user, the messages
before it, its text) — `hsd_ray.core.turns.reply_key`:

- the next request of the same user whose messages end with [..., that exact reply, user message] captures the turn
  (x = the last N messages before the reply, y = the exact token ids we sampled, o = the new user message);
- a client that *edits* the assistant message (or sends a transcript from elsewhere) does not match: it is counted as
  `unmatched` and skipped — we only train on replies whose tokens and policy version we know;
- a reply that gets no follow-up within `reply_ttl_s` expires and is counted, never trained on;
- a matched reply is removed from the ledger, so re-sending the same transcript does not train twice.

Nothing about a user is kept here that `forget_user` cannot find and delete.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import ray

from hsd_ray import metrics
from hsd_ray.core.turns import Message, Turn, reply_key, trim_context

LEDGER_ACTOR_NAME = "hsd-reply-ledger"


@dataclass
class ServedReply:
    """What a replica records about a reply it produced."""

    user_id: str
    adapter_id: str
    context: list[Message]  # all messages the reply answered (untrimmed: the key covers them exactly)
    reply: str
    token_ids: list[int]
    logprobs: list[float]
    finished: bool
    policy_version: int
    replied_at: float


class ReplyLedger:
    """Plain class; `ray.remote(ReplyLedger)` makes the ledger actor. Every method is O(1) amortised and never
    blocks on anything, so the chat path's calls return in milliseconds."""

    def __init__(self, queue, reply_ttl_s: float = 1800.0, max_context_messages: int = 5, max_entries: int = 100_000):
        self.queue = queue  # TurnQueue actor handle (None: capture records but emits nowhere, for tests)
        self.reply_ttl_s, self.max_context_messages, self.max_entries = reply_ttl_s, max_context_messages, max_entries
        self._replies: OrderedDict[str, ServedReply] = OrderedDict()  # insertion order == age order
        self.counts = {"recorded": 0, "captured": 0, "unmatched": 0, "expired": 0, "evicted": 0, "forgotten": 0}

    def record(self, reply: ServedReply) -> str:
        self.sweep()
        key = reply_key(reply.user_id, reply.context, reply.reply)
        self._replies.pop(key, None)
        self._replies[key] = reply
        self.counts["recorded"] += 1
        metrics.inc("hsd_replies_recorded_total")
        while len(self._replies) > self.max_entries:  # bounded memory: the oldest unanswered reply goes first
            self._replies.popitem(last=False)
            self.counts["evicted"] += 1
        return key

    def observe(self, user_id: str, messages: list[Message], received_at: float | None = None) -> str:
        """Look at a new request; if it follows one of our replies, emit the turn. Returns what happened."""
        self.sweep()
        if len(messages) < 2 or messages[-1]["role"] != "user" or messages[-2]["role"] != "assistant":
            return "no_followup"
        before, reply, followup = messages[:-2], messages[-2]["content"], messages[-1]["content"]
        served = self._replies.pop(reply_key(user_id, before, reply), None)
        if served is None:
            self.counts["unmatched"] += 1
            metrics.inc("hsd_turns_unmatched_total")
            return "unmatched"
        turn = Turn(
            context=trim_context(before, self.max_context_messages),
            reply=served.reply,
            followup=followup,
            user_id=user_id,
            adapter_id=served.adapter_id,
            reply_token_ids=list(served.token_ids),
            reply_logprobs=list(served.logprobs),
            reply_finished=served.finished,
            policy_version=served.policy_version,
            replied_at=served.replied_at,
            followup_at=received_at or time.time(),
            source="live",
        )
        self.counts["captured"] += 1
        metrics.inc("hsd_turns_captured_total")
        if self.queue is not None:
            # Put once here; only the reference travels on. Not awaited: the queue never blocks capture.
            self.queue.put.remote([(turn.turn_id, turn.user_id, [ray.put(turn)])])
        return "captured"

    def sweep(self) -> int:
        """Expire replies older than the TTL (oldest first; stops at the first young one)."""
        now, n = time.time(), 0
        while self._replies:
            key, oldest = next(iter(self._replies.items()))
            if now - oldest.replied_at < self.reply_ttl_s:
                break
            del self._replies[key]
            n += 1
        self.counts["expired"] += n
        metrics.inc("hsd_replies_expired_total", n)
        return n

    def forget_user(self, user_id: str) -> int:
        keys = [k for k, r in self._replies.items() if r.user_id == user_id]
        for k in keys:
            del self._replies[k]
        self.counts["forgotten"] += len(keys)
        return len(keys)

    def stats(self) -> dict:
        self.sweep()
        return {**self.counts, "outstanding": len(self._replies)}
