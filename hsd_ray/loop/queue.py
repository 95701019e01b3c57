"""The turn queue: captured turns wait here for a teacher, scored turns wait here for the learner.

A turn travels between actors as a `TurnRef`: its id, its user and the ObjectRef of its payload (the `Turn`), which is
`ray.put` once by whoever produced it (capture, a replay, or a teacher after scoring). Only TurnRefs pass through
this actor; Ray never resolves a reference nested in a record, so payloads never move through the queue.

Stages and hand-offs (every turn is in exactly one place, so the counts add up exactly):

    put ─▶ pending ─lease─▶ leased ─complete─▶ scored ─take─▶ training ─ack─▶ trained
               ▲               │ (lease expired: teacher died)      ▲           │ (learner restarted)
               └──redelivered──┘                                    └─requeue───┘

- Live traffic (`put`): overflow never blocks the caller: beyond `capacity` the *oldest* pending turn is dropped
  (newest turns are the most on-policy), beyond `scored_capacity` the oldest scored turn; both are counted by reason.
- A replay (`offer`, and a queue made with `lossless=True`) loses nothing to back-pressure: `offer` takes only the
  turns that fit under `capacity` (the replay waits and offers the rest again), teachers are leased only as many
  turns as there is room for in scored, and scored is never trimmed. `close()` says the source is exhausted: from
  then on, once nothing is pending or leased, `take_scored` hands out the final partial batch and then None
  (drained), so the learner trains the last turns and stops.
- At-least-once to teachers: a lease not completed within `lease_timeout_s` goes back to the front of pending. A late
  `complete` for an expired lease is refused, so a turn is never trained twice.
- Poison turns cannot stall anything: the queue counts each turn's deliveries (leases). A turn a teacher could not
  score (`complete(..., errors={turn_id: error})`; the teacher bisects a failing batch so only the bad turn is
  named) goes back to the end of pending, and a lease that expires is redelivered, only while the turn has had
  fewer than `max_attempts` deliveries; after that it goes to the dead-letter store (dropped as "dead_letter", kept
  with its error text for `dead_letters()`, at most `dead_letter_capacity` of them), never retried without end.
- User data can be found and removed: `forget_user` drops every turn of a user in every stage.
- A payload dies with the process that `ray.put` it (Ray ownership): a teacher restarted after scoring takes its
  scored turns with it, a restarted ledger its captured ones. Consumers fetch with `fetch_turns`, which separates lost
  payloads; those turns are dropped as "lost" (counted), never retried forever and never crash the consumer.

`TurnQueue` is the actor's class (started by loop/job.py); `QueueClient` is how every other part calls it.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import ray

from hsd_ray import metrics
from hsd_ray.core.turns import Turn
from hsd_ray.core.version_gate import VersionFeedback
from hsd_ray.loop import NAMESPACE

QUEUE_ACTOR_NAME = "hsd-turn-queue"
DROP_REASONS = ("overflow", "scored_overflow", "unscorable", "not_feedback", "forgotten", "lost", "dead_letter",
                "rejected")


@dataclass(frozen=True)
class TurnRef:
    """A turn in the object store as it travels between actors. `ref` is the ObjectRef of its `Turn` payload."""

    turn_id: str
    user_id: str
    ref: Any  # ray.ObjectRef[Turn]

    @classmethod
    def put(cls, turn: Turn) -> "TurnRef":
        """Put `turn` into the object store once (this process owns it) and return its reference record."""
        return cls(turn.turn_id, turn.user_id, ray.put(turn))


@dataclass(frozen=True)
class Lease:
    """Turns handed to one teacher; `complete` with the same `lease_id`, before the lease times out."""

    lease_id: int
    turns: list[TurnRef]


class TurnQueue:
    """The queue actor's class (`ray.remote(TurnQueue)`, named QUEUE_ACTOR_NAME)."""

    def __init__(self, capacity: int = 1024, scored_capacity: int = 256, lease_timeout_s: float = 60.0,
                 max_attempts: int = 3, dead_letter_capacity: int = 256, lossless: bool = False):
        self.capacity, self.scored_capacity, self.lease_timeout_s = capacity, scored_capacity, lease_timeout_s
        self.max_attempts = max_attempts
        self.lossless = lossless  # a replay: teachers wait for room in scored, which is never trimmed
        self.closed = False  # the source is exhausted (set by `close`; a replay's end)
        self._attempts: dict[str, int] = {}  # deliveries so far of each pending or leased turn
        self._dead: deque[dict] = deque(maxlen=dead_letter_capacity)
        self._pending: deque[TurnRef] = deque()
        self._leases: dict[int, tuple[float, list[TurnRef]]] = {}
        self._scored: deque[TurnRef] = deque()
        self._training: OrderedDict[str, TurnRef] = OrderedDict()
        self._lease_ids = itertools.count(1)
        self.tally = metrics.Tally(
            {"captured": None, "trained": None, "redelivered": "hsd_turns_redelivered_total",
             "retried": None, "late_completions": None, "dropped": "hsd_turns_dropped_total", "gate": "hsd_gate_decisions_total"},
            labels={"dropped": DROP_REASONS, "gate": ()},
        )
        self.feedback = VersionFeedback()  # per served version: complaint / positive / none (version gate issue)

    # ---- capture side -----------------------------------------------------------------------------------------
    def put(self, turns: list[TurnRef]) -> int:
        """Append captured turns. Returns how many older turns were dropped to make room."""
        self._expire_leases()
        self._pending.extend(turns)
        self.tally.add("captured", len(turns))
        dropped = 0
        while len(self._pending) > self.capacity:
            self._attempts.pop(self._pending.popleft().turn_id, None)
            dropped += 1
        self.tally.add("dropped", dropped, "overflow")
        self._gauges()
        return dropped

    def offer(self, turns: list[TurnRef]) -> int:
        """Append as many of `turns` (from the front) as fit under `capacity`, dropping nothing. Returns how many were
        taken; the caller waits and offers the rest again (a replay's back-pressure)."""
        self._expire_leases()
        taken = turns[: max(0, self.capacity - len(self._pending))]
        self._pending.extend(taken)
        self.tally.add("captured", len(taken))
        self._gauges()
        return len(taken)

    def close(self) -> None:
        """No more turns will come (a replay read its whole source): the final partial batch may go to the learner."""
        self.closed = True

    # ---- teacher side -----------------------------------------------------------------------------------------
    def lease(self, max_turns: int) -> Lease | None:
        """Up to `max_turns` pending turns, oldest first; None when nothing is pending."""
        self._expire_leases()
        if self.lossless:  # never lease more than scored can take: a scored turn is never trimmed away
            room = self.scored_capacity - len(self._scored) - sum(len(ts) for _, ts in self._leases.values())
            max_turns = min(max_turns, room)
        if not self._pending or max_turns < 1:
            return None
        turns = [self._pending.popleft() for _ in range(min(max_turns, len(self._pending)))]
        for t in turns:
            self._attempts[t.turn_id] = self._attempts.get(t.turn_id, 0) + 1
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = (time.monotonic() + self.lease_timeout_s, turns)
        self._gauges()
        return Lease(lease_id, turns)

    def complete(self, lease_id: int, scored: list[TurnRef], failed: list[str] = (), lost: list[str] = (),
                 not_feedback: list[str] = (), decisions: list[str] = (), errors: dict[str, str] | None = None,
                 receptions: list[tuple[int | None, str]] = ()) -> bool:
        """Scored TurnRefs replace the leased ones; `failed` turn ids are dropped as unscorable, `lost` ones (payload
        gone with its owner) as lost, `not_feedback` ones (the feedback gate said the follow-up is not about the
        reply) as not_feedback; `errors` maps the turns the teacher failed on to the error text: retried, or
        dead-lettered after `max_attempts` deliveries. `decisions` are the gate's labels ("feedback:complaint",
        "not_feedback:new_topic"), counted here so that a re-delivered lease is never counted twice; so are
        `receptions`, (policy version, "complaint" | "positive" | "none") per finished turn (`hsd_feedback_total`).
        False if the lease had already expired (its turns were re-delivered, so this result must be discarded)."""
        self._expire_leases()
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            self.tally.add("late_completions")
            return False
        still_leased = {t.turn_id: t for t in lease[1]}  # a turn forgotten while it was being scored is not kept
        errors = errors or {}
        for tid, t in still_leased.items():
            if tid in errors:
                self._retry_or_dead_letter(t, errors[tid])
            else:
                self._attempts.pop(tid, None)  # it leaves the teacher stage
        self._scored.extend(t for t in scored if t.turn_id in still_leased)
        self.tally.add("dropped", len(failed), "unscorable")
        self.tally.add("dropped", len(lost), "lost")
        self.tally.add("dropped", len(not_feedback), "not_feedback")
        for decision in decisions:
            self.tally.add("gate", 1, decision)
        for version, kind in receptions:
            self.feedback.add(version, kind)
            metrics.inc("hsd_feedback_total", version=str(version), kind=kind)
        overflow = 0
        while len(self._scored) > self.scored_capacity and not self.lossless:
            self._scored.popleft()
            overflow += 1
        self.tally.add("dropped", overflow, "scored_overflow")
        self._gauges()
        return True

    # ---- learner side -----------------------------------------------------------------------------------------
    def take_scored(self, n: int, at_least: int = 1) -> list[TurnRef] | None:
        """Exactly n scored turns (or none: a step's batch is all-or-nothing), except at the end of a closed source:
        once nothing is pending or leased, the last fewer than n scored turns, then None (drained, nothing will come).
        A final batch needs `at_least` turns (one per learner worker); fewer stay in scored, visible in the counts,
        and None is returned."""
        self._expire_leases()
        upstream_done = self.closed and not self._pending and not self._leases
        if upstream_done and len(self._scored) < max(1, at_least):
            return None
        if len(self._scored) < n and not upstream_done:
            return []
        batch = [self._scored.popleft() for _ in range(min(n, len(self._scored)))]
        for t in batch:
            self._training[t.turn_id] = t
        self._gauges()
        return batch

    def ack_trained(self, turn_ids: list[str]) -> None:
        self.tally.add("trained", sum(self._training.pop(tid, None) is not None for tid in turn_ids))
        self._gauges()

    def reject_trained(self, n: int) -> int:
        """The version gate rejected the version these `n` trained turns went into, and the learner rolled back: they
        move from `trained` to dropped `rejected` (the sum stays exact)."""
        n = max(0, min(n, self.tally["trained"]))
        self.tally.discount("trained", n)
        self.tally.add("dropped", n, "rejected")
        return n

    def drop_lost(self, turn_ids: list[str]) -> int:
        """The learner could not fetch these turns (their payload's owner died): drop them, counted as lost."""
        n = sum(self._training.pop(tid, None) is not None for tid in turn_ids)
        self.tally.add("dropped", n, "lost")
        self._gauges()
        return n

    def requeue_training(self) -> int:
        """A restarted learner lost its in-flight batch: give those turns back to the front of `scored`."""
        batch = list(self._training.values())
        self._training.clear()
        self._scored.extendleft(reversed(batch))
        return len(batch)

    # ---- privacy / introspection ------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        n = 0
        for t in self._pending:
            if t.user_id == user_id:
                self._attempts.pop(t.turn_id, None)
        for stage in (self._pending, self._scored):
            keep = [t for t in stage if t.user_id != user_id]
            n += len(stage) - len(keep)
            stage.clear()
            stage.extend(keep)
        for tid in [tid for tid, t in self._training.items() if t.user_id == user_id]:
            del self._training[tid]
            n += 1
        for lease_id, (deadline, turns) in list(self._leases.items()):
            keep = [t for t in turns if t.user_id != user_id]
            n += len(turns) - len(keep)
            self._leases[lease_id] = (deadline, keep)
        self.tally.add("dropped", n, "forgotten")
        kept = [d for d in self._dead if d["user_id"] != user_id]  # already counted as dead_letter: removed, not recounted
        self._dead.clear()
        self._dead.extend(kept)
        return n

    def dead_letters(self) -> list[dict]:
        """The dead-lettered turns kept (oldest first): turn_id, user_id, attempts, error, at (unix time), ref."""
        return [dict(d) for d in self._dead]

    def stats(self) -> dict:
        self._expire_leases()
        counts = self.tally.snapshot()
        return {
            **counts,
            "dead_letters": len(self._dead),
            "dropped_total": self.tally.total("dropped"),
            "pending": len(self._pending),
            "leased": sum(len(turns) for _, turns in self._leases.values()),
            "scored": len(self._scored),
            "training": len(self._training),
            "closed": self.closed,
            "feedback_by_version": self.feedback.rates(),
        }

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for lease_id, (deadline, turns) in list(self._leases.items()):
            if deadline < now:
                del self._leases[lease_id]
                again = [t for t in turns if self._attempts.get(t.turn_id, 0) < self.max_attempts]
                for t in turns:
                    if self._attempts.get(t.turn_id, 0) >= self.max_attempts:
                        self._dead_letter(t, f"lease expired on each of {self._attempts[t.turn_id]} deliveries "
                                             f"(lease_timeout_s={self.lease_timeout_s})")
                self._pending.extendleft(reversed(again))
                self.tally.add("redelivered", len(again))

    def _retry_or_dead_letter(self, t: TurnRef, error: str) -> None:
        """A turn a teacher failed on: to the end of pending while it has deliveries left, else dead-lettered."""
        if self._attempts.get(t.turn_id, 0) < self.max_attempts:
            self._pending.append(t)
            self.tally.add("retried")
        else:
            self._dead_letter(t, error)

    def _dead_letter(self, t: TurnRef, error: str) -> None:
        attempts = self._attempts.pop(t.turn_id, 0)
        self._dead.append({"turn_id": t.turn_id, "user_id": t.user_id, "attempts": attempts, "error": error,
                           "at": time.time(), "ref": t.ref})
        self.tally.add("dropped", 1, "dead_letter")

    def _gauges(self) -> None:
        metrics.set_gauge("hsd_queue_depth", len(self._pending), stage="pending")
        metrics.set_gauge("hsd_queue_depth", len(self._scored), stage="scored")


class QueueClient:
    """Typed calls on the queue actor. Blocking calls return values; `*_nowait` calls are fired and not awaited."""

    def __init__(self, handle):
        self.handle = handle

    @classmethod
    def lookup(cls) -> "QueueClient":
        return cls(ray.get_actor(QUEUE_ACTOR_NAME, namespace=NAMESPACE))

    def put(self, turns: list[TurnRef]) -> int:
        return ray.get(self.handle.put.remote(turns))

    def put_nowait(self, turns: list[TurnRef]) -> None:
        self.handle.put.remote(turns)

    def offer(self, turns: list[TurnRef]) -> int:
        return ray.get(self.handle.offer.remote(turns))

    def close(self) -> None:
        ray.get(self.handle.close.remote())

    def lease(self, max_turns: int) -> Lease | None:
        return ray.get(self.handle.lease.remote(max_turns))

    def complete(self, lease: Lease, scored: list[TurnRef], failed: list[str], lost: list[str],
                 not_feedback: list[str] = (), decisions: list[str] = (), errors: dict[str, str] | None = None,
                 receptions: list[tuple[int | None, str]] = ()) -> bool:
        return ray.get(self.handle.complete.remote(lease.lease_id, scored, failed, lost, list(not_feedback),
                                                   list(decisions), dict(errors or {}), list(receptions)))

    def take_scored(self, n: int, at_least: int = 1) -> list[TurnRef] | None:
        return ray.get(self.handle.take_scored.remote(n, at_least))

    def ack_trained_nowait(self, turn_ids: list[str]) -> None:
        self.handle.ack_trained.remote(turn_ids)

    def reject_trained(self, n: int) -> int:
        return ray.get(self.handle.reject_trained.remote(n))

    def drop_lost(self, turn_ids: list[str]) -> int:
        return ray.get(self.handle.drop_lost.remote(turn_ids))

    def requeue_training(self) -> int:
        return ray.get(self.handle.requeue_training.remote())

    def forget_user(self, user_id: str) -> int:
        return ray.get(self.handle.forget_user.remote(user_id))

    def dead_letters(self) -> list[dict]:
        return ray.get(self.handle.dead_letters.remote())

    def stats(self) -> dict:
        return ray.get(self.handle.stats.remote())


def fetch_turns(turns: list[TurnRef]) -> tuple[list[Turn], list[TurnRef]]:
    """The payloads of `turns`: (the live ones, in order; the TurnRefs whose payload is lost because the process that
    put it has died). One round trip when nothing is lost."""
    try:
        return ray.get([t.ref for t in turns]), []
    except ray.exceptions.ObjectLostError:  # OwnerDiedError included: find out which ones
        pass
    values, lost = [], []
    for t in turns:
        try:
            values.append(ray.get(t.ref))
        except ray.exceptions.ObjectLostError:
            lost.append(t)
    return values, lost
