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
- Influence limits (core/influence.py): a user's turns beyond `max_turns_per_user` per `quota_window_s` are dropped
  as "user_quota" when they arrive; a learner batch holds turns of at least `min_users_per_step` distinct users, and
  while fewer wait no batch is handed out (counted once per wait as `steps_held_for_users`). What can never make
  such a batch is dropped as "too_few_users": the rest of a closed source, or (a replay, where scored is never
  trimmed) the oldest scored turn when scored is full of too few users.
- A payload dies with the process that `ray.put` it (Ray ownership): a teacher restarted after scoring takes its
  scored turns with it, a restarted ledger its captured ones. Consumers fetch with `fetch_turns`, which separates lost
  payloads. With a durable turn log (data/turnlog.py) such a turn is read back from the log and goes to pending again
  (counted as `recovered`); without one, or if the log lacks it, it is dropped as "lost" (counted), never retried
  forever and never crashing the consumer.
- Durable (with `log_uri`): the producer (ledger, replay) logs each turn before the queue sees it, and the queue logs
  every outcome (trained, dropped by reason). A restarted queue (Ray restarts the actor) rebuilds from the log: every
  logged turn without an outcome goes back to pending (this actor puts the payload again) and the counts are read
  back, so the accounting stays exact. Turn ids are idempotent: a turn this queue already has or has finished is not
  taken again (`put`, `offer`, `resync`), and an `ack_trained` from a batch leased by an earlier incarnation removes
  the turn wherever it now waits, so it is trained once.

`TurnQueue` is the actor's class (started by loop/job.py); `QueueClient` (loop/queue_client.py) is how every other
part calls it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import ray

from hsd_ray import metrics
from hsd_ray.core.influence import UserWindow, pick_batch, round_robin
from hsd_ray.core.turns import Turn
from hsd_ray.core.version_gate import VersionFeedback
from hsd_ray.core.weights import in_shard, user_adapter_id
from hsd_ray.data.turnlog import TRAINED, TurnLog

QUEUE_ACTOR_NAME = "hsd-turn-queue"
PRUNE_EVERY_S = 600.0  # how often the queue deletes turn-log segments past their retention
log = logging.getLogger(__name__)
DROP_REASONS = ("overflow", "scored_overflow", "unscorable", "not_feedback", "zero_weight", "forgotten", "lost",
                "dead_letter", "rejected", "user_quota", "too_few_users")


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
                 max_attempts: int = 3, dead_letter_capacity: int = 256, lossless: bool = False,
                 log_uri: str | None = None, log_retention_s: float = 7 * 86400.0, max_turns_per_user: int = 0,
                 quota_window_s: float = 3600.0, min_users_per_step: int = 1, round_robin_users: bool = False):
        self.capacity, self.scored_capacity, self.lease_timeout_s = capacity, scored_capacity, lease_timeout_s
        self.max_attempts = max_attempts
        self.lossless = lossless  # a replay: teachers wait for room in scored, which is never trimmed
        self.closed = False  # the source is exhausted (set by `close`; a replay's end)
        self.quota, self.min_users = UserWindow(max_turns_per_user, quota_window_s), min_users_per_step
        self._holding = False  # a batch is being held for more distinct users (counted once per wait)
        self.round_robin_users = round_robin_users  # per-user adapters: batches taken round_robin (no floor)
        self._attempts: dict[str, int] = {}  # deliveries so far of each pending or leased turn
        self._dead: deque[dict] = deque(maxlen=dead_letter_capacity)
        self._pending: deque[TurnRef] = deque()
        self._leases: dict[int, tuple[float, list[TurnRef]]] = {}
        self._scored: deque[TurnRef] = deque()
        self._training: OrderedDict[str, TurnRef] = OrderedDict()
        self._lease_ids = itertools.count(time.time_ns() // 1000)  # never reused by a restarted queue
        self.tally = metrics.Tally(
            {"captured": None, "trained": None, "redelivered": "hsd_turns_redelivered_total",
             "retried": None, "released": None, "late_completions": None, "recovered": None, "log_errors": None,
             "steps_held_for_users": None,
             "dropped": "hsd_turns_dropped_total", "gate": "hsd_gate_decisions_total"},
            labels={"dropped": DROP_REASONS, "gate": ()},
        )
        self.feedback = VersionFeedback()  # per served version: complaint / positive / none (version gate issue)
        self.log = TurnLog(log_uri, log_retention_s) if log_uri else None
        self._known: set[str] = set()  # ids of every turn taken (with a log): a turn id is never taken twice
        self._next_prune = 0.0
        if self.log is not None:
            self._rebuild()

    # ---- capture side -----------------------------------------------------------------------------------------
    def put(self, turns: list[TurnRef]) -> int:
        """Append captured turns. Returns how many older turns were dropped to make room."""
        self._expire_leases()
        turns = self._fresh(turns)
        self.tally.add("captured", len(turns))
        self._pending.extend(self._within_quota(turns))
        dropped = []
        while len(self._pending) > self.capacity:
            dropped.append(self._pending.popleft().turn_id)
            self._attempts.pop(dropped[-1], None)
        self._drop(dropped, "overflow")
        self._gauges()
        return len(dropped)

    def offer(self, turns: list[TurnRef]) -> int:
        """Append as many of `turns` (from the front) as fit under `capacity`, dropping nothing. Returns how many were
        taken; the caller waits and offers the rest again (a replay's back-pressure)."""
        self._expire_leases()
        taken = turns[: max(0, self.capacity - len(self._pending))]
        fresh = self._fresh(taken)  # a turn offered again after a restart is taken (counted) once
        self.tally.add("captured", len(fresh))
        self._pending.extend(self._within_quota(fresh))
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
                 receptions: list[tuple[int | None, str]] = (), zero_weight: list[str] = ()) -> bool:
        """Scored TurnRefs replace the leased ones; `failed` turn ids are dropped as unscorable, `lost` ones (payload
        gone with its owner) as lost, `not_feedback` ones (the feedback gate said the follow-up is not about the
        reply) as not_feedback, `zero_weight` ones (feedback of a kind weighted 0) as zero_weight; `errors` maps the
        turns the teacher failed on to the error text: retried, or dead-lettered after `max_attempts` deliveries.
        `decisions` are the gate's labels ("feedback:complaint", "not_feedback:new_topic"), counted here so that a
        re-delivered lease is never counted twice; so are
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
        self._drop(failed, "unscorable")
        self._drop(self._recover([tid for tid in lost if tid in still_leased]), "lost")  # forgotten: not revived
        self._drop(not_feedback, "not_feedback")
        self._drop(zero_weight, "zero_weight")
        for decision in decisions:
            self.tally.add("gate", 1, decision)
        for version, kind in receptions:
            self.feedback.add(version, kind)
            metrics.inc("hsd_feedback_total", version=str(version), kind=kind)
        overflow = []
        while len(self._scored) > self.scored_capacity and not self.lossless:
            overflow.append(self._scored.popleft().turn_id)
        self._drop(overflow, "scored_overflow")
        self._gauges()
        return True

    def release(self, lease_id: int) -> int:
        """Give a lease back unscored: the teacher's engine was unreachable (EngineUnavailable), no fault of the
        turns, so they go back to the front of pending and this delivery is not counted. Returns how many."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return 0
        for t in lease[1]:
            self._attempts[t.turn_id] = max(0, self._attempts.get(t.turn_id, 1) - 1)
        self._pending.extendleft(reversed(lease[1]))
        self.tally.add("released", len(lease[1]))
        self._gauges()
        return len(lease[1])

    # ---- learner side -----------------------------------------------------------------------------------------
    def take_scored(self, n: int, at_least: int = 1, shard: tuple[int, int] | None = None) -> list[TurnRef] | None:
        """Exactly n scored turns (or none: a step's batch is all-or-nothing), except at the end of a closed source:
        once nothing is pending or leased, the last fewer than n scored turns, then None (drained, nothing will come).
        A final batch needs `at_least` turns (one per learner worker); fewer stay in scored, visible in the counts,
        and None is returned. `shard` (per-user adapters on several learner workers): only the turns of the users
        whose adapters that worker owns (core/weights.in_shard)."""
        self._expire_leases()
        upstream_done = self.closed and not self._pending and not self._leases
        waiting = [t for t in self._scored if shard is None or in_shard(user_adapter_id(t.user_id), shard)]
        if upstream_done and len(waiting) < max(1, at_least):
            return None
        if len(waiting) < n and not upstream_done:
            return []
        users = [t.user_id for t in waiting]
        picked = (round_robin(users, n) if self.round_robin_users
                  else pick_batch(users, min(n, len(waiting)), self.min_users))
        if picked is None:
            return self._too_few_users(upstream_done)
        self._holding = False
        batch = [waiting[i] for i in picked]
        chosen = {t.turn_id for t in batch}
        self._scored = deque(t for t in self._scored if t.turn_id not in chosen)
        for t in batch:
            self._training[t.turn_id] = t
        self._gauges()
        return batch

    def _too_few_users(self, upstream_done: bool) -> list | None:
        """No batch of enough distinct users can be taken now: wait for more users ([]); drop what never can."""
        if upstream_done:  # nothing more will come: the rest can never make a batch
            self._drop([t.turn_id for t in self._scored], "too_few_users")
            self._scored.clear()
            self._gauges()
            return None
        if not self._holding:
            self._holding = True
            self.tally.add("steps_held_for_users")
        if self.lossless and len(self._scored) >= self.scored_capacity:  # teachers wait for room: make some
            self._drop([self._scored.popleft().turn_id], "too_few_users")
        return []

    def ack_trained(self, turn_ids: list[str]) -> None:
        """The learner stepped on these turns. An id this queue did not hand out (the batch came from an earlier
        incarnation, rebuilt from the log since) is taken out of whatever stage it waits in: trained once."""
        done = [tid for tid in turn_ids if self._training.pop(tid, None) is not None or self._remove_waiting(tid)]
        self.tally.add("trained", len(done))
        self._log_outcome(done, TRAINED)
        self._gauges()

    def reject_trained(self, n: int) -> int:
        """The version gate rejected the version these `n` trained turns went into, and the learner rolled back: they
        move from `trained` to dropped `rejected` (the sum stays exact)."""
        n = max(0, min(n, self.tally["trained"]))
        self.tally.discount("trained", n)
        self.tally.add("dropped", n, "rejected")
        if self.log is not None and n:
            self._logged(self.log.append_rejected, n)
        return n

    def drop_lost(self, turn_ids: list[str]) -> int:
        """The learner could not fetch these turns (their payload's owner died): back to pending from the turn log
        (to be scored again), or dropped as lost. Returns how many were dropped."""
        gone = [tid for tid in turn_ids if self._training.pop(tid, None) is not None]
        lost = self._recover(gone)
        self._drop(lost, "lost")
        self._gauges()
        return len(lost)

    def requeue_training(self, shard: tuple[int, int] | None = None) -> int:
        """A restarted learner (worker: `shard`) lost its in-flight batch: give those turns back to the front of
        `scored`."""
        batch = [t for t in self._training.values() if shard is None or in_shard(user_adapter_id(t.user_id), shard)]
        for t in batch:
            del self._training[t.turn_id]
        self._scored.extendleft(reversed(batch))
        return len(batch)

    # ---- privacy / introspection ------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        gone: list[str] = []
        for t in self._pending:
            if t.user_id == user_id:
                self._attempts.pop(t.turn_id, None)
        for stage in (self._pending, self._scored):
            gone += [t.turn_id for t in stage if t.user_id == user_id]
            keep = [t for t in stage if t.user_id != user_id]
            stage.clear()
            stage.extend(keep)
        for tid in [tid for tid, t in self._training.items() if t.user_id == user_id]:
            del self._training[tid]
            gone.append(tid)
        for lease_id, (deadline, turns) in list(self._leases.items()):
            gone += [t.turn_id for t in turns if t.user_id == user_id]
            self._leases[lease_id] = (deadline, [t for t in turns if t.user_id != user_id])
        self._drop(gone, "forgotten")
        self.quota.forget(user_id)
        n = len(gone)
        kept = [d for d in self._dead if d["user_id"] != user_id]  # already counted as dead_letter: removed, not recounted
        self._dead.clear()
        self._dead.extend(kept)
        return n

    def dead_letters(self) -> list[dict]:
        """The dead-lettered turns kept (oldest first): turn_id, user_id, attempts, error, at (unix time), ref."""
        return [dict(d) for d in self._dead]

    def resync(self) -> int:
        """Take the logged turns this queue has never seen (a restarted ledger calls this: it may have logged a turn
        and died before handing it over). Returns how many were added to pending."""
        if self.log is None:
            return 0
        try:
            new = self._fresh(self.log.state().open_turns)
        except Exception as e:  # noqa: BLE001 - an unreadable log must not take the queue down
            self._log_failed("resync", e)
            return 0
        self._pending.extend(TurnRef.put(t) for t in new)
        self.tally.add("captured", len(new))
        self._gauges()
        return len(new)

    def stats(self) -> dict:
        self._expire_leases()
        self._maybe_prune()
        self.quota.prune(time.monotonic())
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
        self._drop([t.turn_id], "dead_letter")

    # ---- the durable log ----------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """A (re)started queue: every logged turn without an outcome to pending, and the counts read back."""
        st = self.log.state()
        self._known = st.known
        self._pending.extend(TurnRef.put(t) for t in st.open_turns)
        self.tally.add("captured", st.captured)
        self.tally.add("trained", st.trained)
        for reason, n in st.dropped.items():
            self.tally.add("dropped", n, reason)
        if st.captured:
            log.info("turn queue rebuilt from %s: %d open turns, %d trained, %d dropped", self.log.uri,
                     len(st.open_turns), st.trained, sum(st.dropped.values()))

    def _fresh(self, turns: list) -> list:
        """The turns (TurnRefs or Turns) whose id this queue has not taken before (always all, without a log)."""
        if self.log is None:
            return list(turns)
        out = [t for t in turns if t.turn_id not in self._known]
        self._known.update(t.turn_id for t in out)
        return out

    def _within_quota(self, turns: list[TurnRef]) -> list[TurnRef]:
        """The turns whose user is within the per-user quota; the others are dropped as user_quota."""
        now, keep, over = time.monotonic(), [], []
        for t in turns:
            (keep if self.quota.admit(t.user_id, now) else over).append(t)
        self._drop([t.turn_id for t in over], "user_quota")
        return keep

    def _drop(self, turn_ids: list[str], reason: str) -> None:
        self.tally.add("dropped", len(turn_ids), reason)
        self._log_outcome(turn_ids, f"dropped:{reason}")

    def _log_outcome(self, turn_ids: list[str], outcome: str) -> None:
        if self.log is not None and turn_ids:
            self._logged(self.log.append_outcomes, turn_ids, outcome)

    def _logged(self, write, *args) -> None:
        try:
            write(*args)
        except Exception as e:  # noqa: BLE001 - a storage hiccup is counted; the queue goes on
            self._log_failed(write.__name__, e)

    def _log_failed(self, what: str, e: BaseException) -> None:
        self.tally.add("log_errors")
        log.warning("turn log %s failed: %s: %s", what, type(e).__name__, e)

    def _recover(self, turn_ids: list[str]) -> list[str]:
        """Turns whose payload died with its owner: read back from the log and put at the front of pending (this
        actor owns the new payload). Returns the ids that could not be recovered (no log, or not in it)."""
        if self.log is None or not turn_ids:
            return list(turn_ids)
        try:
            found = self.log.turns(set(turn_ids))
        except Exception as e:  # noqa: BLE001
            self._log_failed("recover", e)
            return list(turn_ids)
        self._pending.extendleft(reversed([TurnRef.put(t) for t in found]))
        self.tally.add("recovered", len(found))
        ids = {t.turn_id for t in found}
        return [tid for tid in turn_ids if tid not in ids]

    def _remove_waiting(self, turn_id: str) -> bool:
        """Take a turn out of pending, a lease or scored (it was trained by an earlier incarnation's batch)."""
        for stage in (self._pending, self._scored):
            for t in stage:
                if t.turn_id == turn_id:
                    stage.remove(t)
                    self._attempts.pop(turn_id, None)
                    return True
        for lease_id, (deadline, turns) in self._leases.items():
            if any(t.turn_id == turn_id for t in turns):
                self._leases[lease_id] = (deadline, [t for t in turns if t.turn_id != turn_id])
                return True
        return False

    def _maybe_prune(self) -> None:
        if self.log is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            self._logged(self.log.prune)

    def _gauges(self) -> None:
        metrics.set_gauge("hsd_queue_depth", len(self._pending), stage="pending")
        metrics.set_gauge("hsd_queue_depth", len(self._scored), stage="scored")
