"""The turn queue: captured turns wait here for a teacher, scored turns wait here for the learner.

Payloads are `ray.put` once by whoever produced them (capture, or a teacher after scoring) and only ObjectRefs pass
through this actor, wrapped in lists so Ray never resolves them here.

Stages and hand-offs (every turn is in exactly one place, so the counts add up exactly):

    put ─▶ pending ─lease─▶ leased ─complete─▶ scored ─take─▶ training ─ack─▶ trained
               ▲               │ (lease expired: teacher died)      ▲           │ (learner restarted)
               └──redelivered──┘                                    └─requeue───┘

- Overflow never blocks the caller: beyond `capacity` the *oldest* pending turn is dropped (newest turns are the most
  on-policy), beyond `scored_capacity` the oldest scored turn; both are counted by reason.
- At-least-once to teachers: a lease not completed within `lease_timeout_s` goes back to the front of pending. A late
  `complete` for an expired lease is refused, so a turn is never trained twice.
- User data can be found and removed: `forget_user` drops every turn of a user in every stage.
- A payload dies with the process that `ray.put` it (Ray ownership): a teacher restarted after scoring takes its
  scored turns with it, a restarted ledger its captured ones. Consumers fetch with `resolve`, which separates lost
  payloads; those turns are dropped as "lost" (counted), never retried forever and never crash the consumer.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import ray

from hsd_ray import metrics

QUEUE_ACTOR_NAME = "hsd-turn-queue"


@dataclass
class _Item:
    turn_id: str
    user_id: str
    ref_box: list  # [ObjectRef[Turn]]


class TurnQueue:
    """Plain class; `ray.remote(TurnQueue)` makes it the queue actor (see `start_queue`)."""

    def __init__(self, capacity: int = 1024, scored_capacity: int = 256, lease_timeout_s: float = 60.0):
        self.capacity, self.scored_capacity, self.lease_timeout_s = capacity, scored_capacity, lease_timeout_s
        self._pending: deque[_Item] = deque()
        self._leases: dict[int, tuple[float, list[_Item]]] = {}
        self._scored: deque[_Item] = deque()
        self._training: dict[str, _Item] = OrderedDict()
        self._lease_ids = itertools.count(1)
        self.counts = {"captured": 0, "trained": 0, "redelivered": 0, "late_completions": 0}
        self.dropped: dict[str, int] = {"overflow": 0, "scored_overflow": 0, "unscorable": 0, "forgotten": 0,
                                        "lost": 0}

    # ---- capture side -----------------------------------------------------------------------------------------
    def put(self, items: list[tuple[str, str, list]]) -> int:
        """items: (turn_id, user_id, [ref]). Returns how many older turns were dropped to make room."""
        self._expire_leases()
        before = self.dropped["overflow"]
        for turn_id, user_id, box in items:
            self._pending.append(_Item(turn_id, user_id, box))
            self.counts["captured"] += 1
        while len(self._pending) > self.capacity:
            self._pending.popleft()
            self.dropped["overflow"] += 1
        n = self.dropped["overflow"] - before
        metrics.inc("hsd_turns_dropped_total", n, reason="overflow")
        self._gauges()
        return n

    # ---- teacher side -----------------------------------------------------------------------------------------
    def lease(self, max_turns: int) -> tuple[int | None, list[tuple[str, list]]]:
        """Up to `max_turns` pending turns as (turn_id, [ref]); (None, []) when empty."""
        self._expire_leases()
        if not self._pending:
            return None, []
        items = [self._pending.popleft() for _ in range(min(max_turns, len(self._pending)))]
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = (time.monotonic() + self.lease_timeout_s, items)
        self._gauges()
        return lease_id, [(it.turn_id, it.ref_box) for it in items]

    def complete(self, lease_id: int, scored: list[tuple[str, list]], failed: list[str] = (),
                 lost: list[str] = ()) -> bool:
        """Scored refs replace the leased ones; `failed` turn ids are dropped as unscorable, `lost` ones (payload
        gone with its owner) as lost. False if the lease had already expired (its turns were re-delivered, so this
        result must be discarded)."""
        self._expire_leases()
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            self.counts["late_completions"] += 1
            return False
        users = {it.turn_id: it.user_id for it in lease[1]}
        for turn_id, box in scored:
            if turn_id in users:  # not forgotten while it was being scored
                self._scored.append(_Item(turn_id, users[turn_id], box))
        self.dropped["unscorable"] += len(failed)
        metrics.inc("hsd_turns_dropped_total", len(failed), reason="unscorable")
        self.dropped["lost"] += len(lost)
        metrics.inc("hsd_turns_dropped_total", len(lost), reason="lost")
        n = 0
        while len(self._scored) > self.scored_capacity:
            self._scored.popleft()
            n += 1
        self.dropped["scored_overflow"] += n
        metrics.inc("hsd_turns_dropped_total", n, reason="scored_overflow")
        self._gauges()
        return True

    def release(self, lease_id: int) -> None:
        """A teacher gives a lease back unscored (e.g. it is shutting down): re-deliver at once."""
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._pending.extendleft(reversed(lease[1]))

    # ---- learner side -----------------------------------------------------------------------------------------
    def take_scored(self, n: int) -> list[tuple[str, list]]:
        """Exactly n scored turns (or none): a step's batch is all-or-nothing."""
        if len(self._scored) < n:
            return []
        items = [self._scored.popleft() for _ in range(n)]
        for it in items:
            self._training[it.turn_id] = it
        self._gauges()
        return [(it.turn_id, it.ref_box) for it in items]

    def ack_trained(self, turn_ids: list[str]) -> None:
        for tid in turn_ids:
            if self._training.pop(tid, None) is not None:
                self.counts["trained"] += 1
        self._gauges()

    def drop_lost(self, turn_ids: list[str]) -> int:
        """The learner could not fetch these turns (their payload's owner died): drop them, counted as lost."""
        n = sum(self._training.pop(tid, None) is not None for tid in turn_ids)
        self.dropped["lost"] += n
        metrics.inc("hsd_turns_dropped_total", n, reason="lost")
        self._gauges()
        return n

    def requeue_training(self) -> int:
        """A restarted learner lost its in-flight batch: give those turns back to the front of `scored`."""
        items = list(self._training.values())
        self._training.clear()
        self._scored.extendleft(reversed(items))
        return len(items)

    # ---- privacy / introspection ------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        n = 0
        for dq in (self._pending, self._scored):
            keep = [it for it in dq if it.user_id != user_id]
            n += len(dq) - len(keep)
            dq.clear()
            dq.extend(keep)
        for tid in [t for t, it in self._training.items() if it.user_id == user_id]:
            del self._training[tid]
            n += 1
        for lease_id, (deadline, items) in list(self._leases.items()):
            keep = [it for it in items if it.user_id != user_id]
            n += len(items) - len(keep)
            self._leases[lease_id] = (deadline, keep)
        self.dropped["forgotten"] += n
        return n

    def stats(self) -> dict:
        self._expire_leases()
        return {
            **self.counts,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "pending": len(self._pending),
            "leased": sum(len(items) for _, items in self._leases.values()),
            "scored": len(self._scored),
            "training": len(self._training),
        }

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for lease_id, (deadline, items) in list(self._leases.items()):
            if deadline < now:
                del self._leases[lease_id]
                self._pending.extendleft(reversed(items))
                self.counts["redelivered"] += len(items)
                metrics.inc("hsd_turns_redelivered_total", len(items))

    def _gauges(self) -> None:
        metrics.set_gauge("hsd_queue_depth", len(self._pending), stage="pending")
        metrics.set_gauge("hsd_queue_depth", len(self._scored), stage="scored")


def resolve(refs: list) -> tuple[list, list[int]]:
    """`ray.get` the payloads; returns (values of the live ones, indexes of the lost ones) — a payload is lost when
    the process that put it has died. One round trip when nothing is lost."""
    try:
        return ray.get(refs), []
    except ray.exceptions.ObjectLostError:  # OwnerDiedError included: find out which ones
        pass
    values, lost = [], []
    for i, ref in enumerate(refs):
        try:
            values.append(ray.get(ref))
        except ray.exceptions.ObjectLostError:
            lost.append(i)
    return values, lost
