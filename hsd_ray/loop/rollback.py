"""Learner rollback under the version gate: what the learner keeps so that a rejected version is never descended from.

Every rank keeps in-memory CPU snapshots (trainable weights, optimizer and scheduler state, and how many turns it
had trained) at two points: the last *accepted* version and the one *pending* candidate. The learner publishes no
new candidate while one is pending (its cadence slips, it keeps training). When the gatekeeper decides:
- accepted: the pending snapshot becomes the accepted one;
- rejected: every rank loads the accepted snapshot — weights *and* optimizer state — and the turns trained since it
  are counted in the queue as dropped `rejected` (moved out of `trained`, so captured = trained + dropped + in
  flight still holds exactly). The step counter keeps counting steps taken; version numbers keep rising (the
  rejected number is never reused).

Why memory and not the registry: the registry holds weights only, and re-deriving optimizer state is impossible;
two CPU copies of weights + Adam state are 2 × 3 × the trainable bytes (LoRA: the adapter only). Not rolled back:
an EMA reference policy (loss.reference=ema) keeps what it absorbed. A Ray Train checkpoint is still written from
the current weights, so a learner restarted between a candidate and its rejection resumes past the accepted point.

Driven by loop/learner.py (`Learner.publish_if_due`, `Learner.finish`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("hsd_ray.loop.learner")  # the learner's lines, "[learner] ..."


@dataclass
class Snapshot:
    version: int  # 0 = the weights the learner started from
    state: dict  # Learner._state(): model (trainable), optimizer, scheduler, step, version
    turns_trained: int


def cpu_state(state: dict) -> dict:
    """A deep CPU copy of a learner state dict (tensors detached and copied, everything else deep-copied)."""
    def copy_value(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to("cpu", copy=True)
        if isinstance(v, dict):
            return {k: copy_value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(copy_value(x) for x in v)
        return copy.deepcopy(v)

    return copy_value(state)


class VersionGuard:
    """The accepted and pending snapshots of one rank, and the decision logic (no Ray: the learner asks the
    registry and passes the decision in)."""

    def __init__(self, initial: Snapshot):
        self.accepted = initial
        self.pending: Snapshot | None = None
        self.rejected_versions: list[int] = []

    def on_publish(self, snapshot: Snapshot) -> None:
        self.pending = snapshot

    def on_decision(self, decision: str | None) -> Snapshot | None:
        """Apply the registry's decision on the pending candidate. Returns the snapshot to restore (rejected), else
        None. "candidate" (undecided) changes nothing."""
        if self.pending is None or decision in (None, "candidate"):
            return None
        if decision == "accepted":
            self.accepted, self.pending = self.pending, None
            return None
        self.rejected_versions.append(self.pending.version)  # rejected (or superseded: never served either)
        self.pending = None
        return self.accepted


class GateFollowing:
    """The learner's side of the version gate, mixed into `Learner` (loop/learner.py), which provides `rank`,
    `guard`, `registry`, `queue`, `version`, `step_count`, `published_step`, `turns_trained`, `_state()`,
    `_load_state(state)`, `_broadcast(value)` and `s.decision_timeout_s`. Every rank calls these together."""

    def _snapshot(self) -> Snapshot:
        return Snapshot(self.version, cpu_state(self._state()), self.turns_trained)

    def _sync_published(self, before: int) -> None:
        """Every rank learns the version rank 0 may just have published, and snapshots the candidate's state."""
        self.version = self._broadcast(self.version)
        if self.guard is not None and self.version != before:
            self.guard.on_publish(self._snapshot())

    def _news(self) -> dict:
        """Rank 0: the decision on the pending candidate and an admin rollback, if any (kept until acted on)."""
        pending = self.guard.pending if self.guard is not None else None
        news = self.registry.learner_news(pending.version if pending is not None else None)
        if news["rollback"] is not None:
            self._rollback_news = news["rollback"]
        news["rollback"] = getattr(self, "_rollback_news", None)
        return news

    def _gate_decided(self) -> bool:
        """Rank 0, while waiting for turns: has the pending candidate been decided, or an admin rolled back?"""
        news = self._news()
        return news["rollback"] is not None or news["decision"] not in (None, "candidate")

    def _follow_gate(self, wait: bool = False) -> None:
        """Ask the registry about the pending candidate (rank 0) and act on the answer (every rank). `wait`: until
        decided; past `decision_timeout_s` an undecided candidate is treated as rejected (never kept unvetted)."""
        deadline = time.time() + self.s.decision_timeout_s
        while True:
            decision = rollback = None
            if self.rank == 0:
                news = self._news()
                decision, rollback = news["decision"], news["rollback"]
                self._rollback_news = None
                if wait and self.guard is not None and self.guard.pending is not None \
                        and decision in (None, "candidate") and time.time() > deadline:
                    decision = "timeout"
            decision, rollback = self._broadcast((decision, rollback))
            if rollback is not None:
                self._take_rollback(rollback)
                return
            if self.guard is None or self.guard.pending is None:
                return
            if decision not in (None, "candidate"):
                self._apply_decision(decision)
                return
            if not wait:
                return
            time.sleep(0.2)

    def _take_rollback(self, version: int) -> None:
        """An admin rolled serving back to `version`: restart from its weights (every rank fetches them from the
        registry) with a fresh optimizer state; what was trained since the last accepted snapshot is `rejected`."""
        import ray

        published = self.registry.latest()
        if published is None or published.version.version != version:
            log.warning("rollback to v%d: the registry now serves another version; ignored", version)
            return
        self._load_weights(ray.get(published.ref))
        if self.guard is not None:
            rejected, self.turns_trained = self.turns_trained - self.guard.accepted.turns_trained, \
                self.guard.accepted.turns_trained
            if self.rank == 0:
                self.queue.reject_trained(rejected)
            self.guard.pending = None
            self.guard.accepted = Snapshot(version, cpu_state(self._state()), self.turns_trained)
        self.published_step = self.step_count
        if self.rank == 0:
            log.warning("rolled back by the admin API to v%d: the learner restarts from its weights", version)

    def _apply_decision(self, decision: str) -> None:
        pending = self.guard.pending
        target = self.guard.on_decision(decision)
        if target is None:
            return
        self._load_state(cpu_state(target.state))  # a copy: the optimizer must not update the snapshot in place
        rejected, self.turns_trained = self.turns_trained - target.turns_trained, target.turns_trained
        self.published_step = self.step_count  # the accepted weights are out already
        if self.rank == 0:
            self.queue.reject_trained(rejected)
            log.warning("v%d %s by the version gate: back to v%d (weights and optimizer state); %d turns trained "
                        "since count as rejected", pending.version, decision, target.version, rejected)
