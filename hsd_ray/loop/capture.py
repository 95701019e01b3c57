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

Nothing about a user is kept here that `forget_user` cannot find and delete. `forget_user` also deletes the user's
logged turns (with a tombstone) and opts the user out: an opted-out user's replies are not recorded and their
follow-ups not captured (`opted_out`) until `set_opt_out(user, False)`. Opt-outs are kept in the turn log, so a
restarted ledger still honours them (without a log they live as long as the ledger).

With a durable turn log (`log_uri`, data/turnlog.py) a captured turn is appended to it *before* it goes to the queue:
that is the moment a turn is acknowledged, and from then on a queue or ledger crash cannot lose it. A restarted
ledger (Ray restarts the actor) asks the queue to `resync` with the log, in case it died between logging a turn and
handing it over. The replies still waiting for a follow-up are not logged: they die with the ledger, and their
follow-ups are counted as `unmatched`.

`ReplyLedger` is the ledger actor's class (started by loop/job.py). `CaptureClient` is what a chat replica holds: it
finds the ledger lazily (the service also runs standalone), shows it follow-ups without waiting, records replies with
a bounded wait, and counts every failure — capture can never fail a chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import ray

from hsd_ray import metrics
from hsd_ray.core.redact import redact_turn
from hsd_ray.core.turns import Message, Turn, reply_key, trim_context
from hsd_ray.core.weights import user_adapter_id
from hsd_ray.data.turnlog import TurnLog, user_hash
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.queue import QUEUE_ACTOR_NAME, TurnRef
from hsd_ray.loop.queue_client import QueueClient

LEDGER_ACTOR_NAME = "hsd-reply-ledger"
LOOKUP_RETRY_S = 2.0  # how often a replica looks again for a missing ledger actor

# What `ReplyLedger.observe` says happened to a request.
NO_FOLLOWUP = "no_followup"  # the request does not end in [assistant, user]
UNMATCHED = "unmatched"  # the assistant message is not a reply this service recorded (edited, foreign, expired)
CAPTURED = "captured"  # a turn was emitted to the queue
OPTED_OUT = "opted_out"  # the user opted out of capture (or deleted their data): nothing recorded or captured

log = logging.getLogger(__name__)


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
    store: bool = True  # false (the request said store=false): never recorded, so its follow-up is never a turn


class ReplyLedger:
    """Plain class; `ray.remote(ReplyLedger)` makes the ledger actor. Every method is O(1) amortised and never
    blocks on anything, so the chat path's calls return in milliseconds."""

    def __init__(self, queue, reply_ttl_s: float = 1800.0, max_context_messages: int = 5, max_entries: int = 100_000,
                 log_uri: str | None = None, log_retention_s: float = 7 * 86400.0, redact_pii: bool = True):
        self.queue = QueueClient(queue) if queue is not None else None  # None: records, emits nowhere (tests)
        self.log = TurnLog(log_uri, log_retention_s) if log_uri else None
        self.redact_pii = redact_pii
        self._opted_out: set[str] = self.log.opted_out() if self.log is not None else set()  # user_hash values
        self.reply_ttl_s, self.max_context_messages, self.max_entries = reply_ttl_s, max_context_messages, max_entries
        self._replies: OrderedDict[str, ServedReply] = OrderedDict()  # insertion order == age order
        self.tally = metrics.Tally({
            "recorded": "hsd_replies_recorded_total", CAPTURED: "hsd_turns_captured_total",
            UNMATCHED: "hsd_turns_unmatched_total", "expired": "hsd_replies_expired_total",
            "evicted": None, "forgotten": None, "log_errors": None, "redacted": "hsd_turns_redacted_total",
            OPTED_OUT: None,
        })
        if self.log is not None and self.queue is not None:
            self.queue.resync_nowait()  # a restart: hand over what an earlier incarnation logged but never handed

    def record(self, reply: ServedReply) -> str:
        self.sweep()
        if user_hash(reply.user_id) in self._opted_out:
            self.tally.add(OPTED_OUT)
            return OPTED_OUT
        key = reply_key(reply.user_id, reply.context, reply.reply)
        self._replies.pop(key, None)
        self._replies[key] = reply
        self.tally.add("recorded")
        while len(self._replies) > self.max_entries:  # bounded memory: the oldest unanswered reply goes first
            self._replies.popitem(last=False)
            self.tally.add("evicted")
        return key

    def observe(self, user_id: str, messages: list[Message], received_at: float | None = None) -> str:
        """Look at a new request; if it follows one of our replies, emit the turn. Returns what happened."""
        self.sweep()
        if len(messages) < 2 or messages[-1]["role"] != "user" or messages[-2]["role"] != "assistant":
            return NO_FOLLOWUP
        if user_hash(user_id) in self._opted_out:
            self.tally.add(OPTED_OUT)
            return OPTED_OUT
        before, reply, followup = messages[:-2], messages[-2]["content"], messages[-1]["content"]
        served = self._replies.pop(reply_key(user_id, before, reply), None)
        if served is None:
            self.tally.add(UNMATCHED)
            return UNMATCHED
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
        self.tally.add(CAPTURED)
        if self.redact_pii:  # before anything leaves this actor: queue, object store, log
            turn, found = redact_turn(turn)
            self.tally.add("redacted", int(bool(found)))
        if self.log is not None:
            try:
                self.log.append_turns([turn])  # acknowledged from here on (durable)
            except Exception as e:  # noqa: BLE001 - storage trouble costs durability, never the turn or the chat
                self.tally.add("log_errors")
                log.warning("turn log append failed (turn goes on, not durable): %s: %s", type(e).__name__, e)
        if self.queue is not None:
            # Put once here; only the reference travels on. Not awaited: the queue never blocks capture.
            self.queue.put_nowait([TurnRef.put(turn)])
        return CAPTURED

    def sweep(self) -> int:
        """Expire replies older than the TTL (oldest first; stops at the first young one)."""
        now, n = time.time(), 0
        while self._replies:
            key, oldest = next(iter(self._replies.items()))
            if now - oldest.replied_at < self.reply_ttl_s:
                break
            del self._replies[key]
            n += 1
        self.tally.add("expired", n)
        return n

    def forget_user(self, user_id: str) -> dict:
        """Drop the user's waiting replies, delete their logged turns (tombstone) and opt them out of capture."""
        self.set_opt_out(user_id, True)  # first: nothing of theirs is recorded from here on
        keys = [k for k, r in self._replies.items() if r.user_id == user_id]
        for k in keys:
            del self._replies[k]
        self.tally.add("forgotten", len(keys))
        logged = self.log.forget_user(user_id) if self.log is not None else 0
        return {"replies": len(keys), "logged_turns": logged}

    def set_opt_out(self, user_id: str, opted_out: bool) -> bool:
        """Opt a user out of capture (or back in); kept in the turn log when there is one. Returns the new state."""
        (self._opted_out.add if opted_out else self._opted_out.discard)(user_hash(user_id))
        if self.log is not None:
            self.log.set_opt_out(user_id, opted_out)
        return opted_out

    def stats(self) -> dict:
        self.sweep()
        return {**self.tally.snapshot(), "outstanding": len(self._replies)}


def forget_user(ledger, queue, user_id: str, registry=None) -> dict:
    """Delete a user's data, in this order: the ledger (actor handle) opts them out — nothing new is captured —, drops
    their waiting replies and deletes their logged turns; then the queue (actor handle) drops their turns in every
    stage, so none is trained afterwards (one already inside a running optimizer step is past recall); then the
    registry deletes their per-user adapter (versions and folder; replicas unload it, the learner drops its copy)."""
    capture = ray.get(ledger.forget_user.remote(user_id))
    out = {"capture": capture, "queue": ray.get(queue.forget_user.remote(user_id))}
    if registry is not None:
        out["adapter"] = ray.get(registry.forget_adapter.remote(user_adapter_id(user_id)))
    return out


async def forget_user_on_loop(user_id: str) -> dict:
    """`forget_user` on the running loop's named ledger and queue (ValueError when no loop runs). For the async
    routes that act on a user's data: the admin API and a user's own `/v1/users/me`."""
    from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME

    ledger = ray.get_actor(LEDGER_ACTOR_NAME, namespace=NAMESPACE)
    queue = ray.get_actor(QUEUE_ACTOR_NAME, namespace=NAMESPACE)
    registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
    return await asyncio.to_thread(forget_user, ledger, queue, user_id, registry)


async def set_opt_out_on_loop(user_id: str, opted_out: bool) -> bool:
    """The running loop's ledger opts the user out of capture or back in (ValueError when no loop runs)."""
    return await ray.get_actor(LEDGER_ACTOR_NAME, namespace=NAMESPACE).set_opt_out.remote(user_id, opted_out)


class CaptureClient:
    """A chat replica's side of capture (async; runs on the replica's event loop). Never raises into the chat path."""

    def __init__(self, enabled: bool, call_timeout_s: float, where: str = "replica"):
        self.enabled, self.call_timeout_s, self.where = enabled, call_timeout_s, where
        self.tally = metrics.Tally({"observed": None, "recorded": None, "errors": "hsd_capture_errors_total",
                                    "not_stored": "hsd_replies_not_stored_total"})
        self._ledger = None
        self._queue = None  # the queue actor, for /health's gate counts
        self._ledger_seen = False  # once found, a missing ledger means lost capture (counted as errors)
        self._next_lookup = 0.0
        self._background: set[asyncio.Task] = set()

    def stats(self) -> dict:
        return {**self.tally.snapshot(), "enabled": self.enabled, "ledger": self._ledger is not None}

    async def observe(self, user_id: str, messages: list[Message], received_at: float) -> None:
        """Show a possible follow-up to the ledger without waiting for it (errors are counted in the background)."""
        ledger = await self._get_ledger()
        if ledger is None:
            return
        try:
            ref = ledger.observe.remote(user_id, messages, received_at)
        except Exception as e:  # noqa: BLE001
            self._failed("observe", e)
            return
        self.tally.add("observed")
        task = asyncio.get_running_loop().create_task(self._settle(ref, "observe"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def record(self, reply: ServedReply) -> None:
        """Record a served reply in the ledger, waiting at most call_timeout_s."""
        if not self.enabled:
            return
        if not reply.store:
            self.tally.add("not_stored")
            return
        ledger = await self._get_ledger()
        if ledger is None:
            if self._ledger_seen:
                self._failed("record", RuntimeError("ledger actor unavailable"))
            return
        try:
            await asyncio.wait_for(ledger.record.remote(reply), self.call_timeout_s)
            self.tally.add("recorded")
        except Exception as e:  # noqa: BLE001 - a timeout or a dead ledger must not fail the chat
            self._failed("record", e)

    async def gate_stats(self) -> dict | None:
        """The loop's feedback-gate decisions so far (from the queue actor), for /health; None without a loop."""
        try:
            if self._queue is None:  # looked up once, and again only after a failure (the queue may be replaced)
                self._queue = await asyncio.to_thread(ray.get_actor, QUEUE_ACTOR_NAME, namespace=NAMESPACE)
            stats = await asyncio.wait_for(self._queue.stats.remote(), self.call_timeout_s)
        except Exception:  # noqa: BLE001 - standalone service, or the queue is busy/restarting: health still answers
            self._queue = None
            return None
        return {"decisions": stats["gate"], "dropped_not_feedback": stats["dropped"]["not_feedback"]}

    async def _settle(self, ref, what: str) -> None:
        try:
            await asyncio.wait_for(ref, max(self.call_timeout_s, 30.0))
        except Exception as e:  # noqa: BLE001
            self._failed(what, e)

    async def _get_ledger(self):
        """The ledger actor handle, looked up lazily (at most every LOOKUP_RETRY_S while missing)."""
        if not self.enabled or self._ledger is not None:
            return self._ledger
        now = time.monotonic()
        if now < self._next_lookup:
            return None
        self._next_lookup = now + LOOKUP_RETRY_S
        try:
            self._ledger = await asyncio.to_thread(ray.get_actor, LEDGER_ACTOR_NAME, namespace=NAMESPACE)
            self._ledger_seen = True
        except ValueError:  # not running: standalone service, or the ledger died
            pass
        return self._ledger

    def _failed(self, what: str, error: BaseException) -> None:
        self.tally.add("errors")
        detail = "timed out" if isinstance(error, asyncio.TimeoutError) else f"{type(error).__name__}: {error}"
        log.warning("capture %s failed on %s (chat answered anyway): %s", what, self.where, detail)
        if not isinstance(error, asyncio.TimeoutError):
            self._ledger, self._next_lookup = None, 0.0  # look it up again (it may have been restarted)
