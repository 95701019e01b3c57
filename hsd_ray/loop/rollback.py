"""Learner rollback under the version gate: what the learner keeps so that a rejected version is never descended from.

Every rank keeps snapshots (trainable weights, optimizer and scheduler state, and how many turns it
had trained) at two points: the last *accepted* version and the one *pending* candidate. The learner publishes no
new candidate while one is pending (its cadence slips, it keeps training). When the gatekeeper decides:
- accepted: the pending snapshot becomes the accepted one;
- rejected: every rank loads the accepted snapshot — weights *and* optimizer state — and the turns trained since it
  are counted in the queue as dropped `rejected` (moved out of `trained`, so captured = trained + dropped + in
  flight still holds exactly). The step counter keeps counting steps taken; version numbers keep rising (the
  rejected number is never reused).

Why not the registry: it holds weights only, and re-deriving optimizer state is impossible. Two copies of weights +
Adam state are 2 × 3 × the trainable bytes (LoRA: the adapter only): 3.2 GB for a full SmolLM2-135M, which pushed a
24 GB CPU machine running the loop, the gatekeeper and an evaluator into Ray's OOM killer. So `SnapshotStore` keeps
them on disk by default (`version_gate.snapshots: disk`, one file per snapshot under
<output_dir>/rollback/rank<r>/, deleted when no longer needed); `memory` keeps CPU copies instead. Not rolled back:
an EMA reference policy (loss.reference=ema) keeps what it absorbed. A Ray Train checkpoint is still written from
the current weights, so a learner restarted between a candidate and its rejection resumes past the accepted point.

Also what a candidate goes to the gate with besides its weights: `RecentPrompts`, the latest distinct requests it
trained on (version_gate.traffic_probes, user_probes), so that the gate can try it on what its users ask.

Driven by loop/learner.py (`Learner.publish_if_due`, `Learner.finish`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from hsd_ray.data.files import replace_atomically

log = logging.getLogger("hsd_ray.loop.learner")  # the learner's lines, "[learner] ..."


@dataclass
class Snapshot:
    version: int  # 0 = the weights the learner started from
    state: dict | str  # Learner._state() (model (trainable), optimizer, scheduler, step, version), or its file
    turns_trained: int
    step: int = 0  # the learner step these weights were trained to (a rollback target keeps it: the counter does not)


class SnapshotStore:
    """Where one rank keeps its snapshots' states: CPU copies (`folder` None) or one torch file each in `folder`."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob("*.pt"):  # a restarted learner starts from its checkpoint, not these
                old.unlink()

    def save(self, state: dict, name: str) -> dict | str:
        if self.folder is None:
            return cpu_state(state)
        path = self.folder / f"{name}.pt"
        replace_atomically(path, lambda tmp: torch.save(state, tmp))
        return str(path)

    def load(self, stored: dict | str) -> dict:
        """A fresh copy (the optimizer must never update a snapshot in place)."""
        if isinstance(stored, dict):
            return cpu_state(stored)
        return torch.load(stored, map_location="cpu", weights_only=False)

    def keep_only(self, *snapshots: Snapshot | None) -> None:
        """Delete every snapshot file but those of `snapshots` (the accepted and the pending one)."""
        if self.folder is None:
            return
        keep = {s.state for s in snapshots if s is not None}
        for f in self.folder.glob("*.pt"):
            if str(f) not in keep:
                f.unlink(missing_ok=True)


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
    `guard`, `snapshots` (a SnapshotStore), `registry`, `queue`, `owns_turns`, `version`, `step_count`,
    `published_step`, `weights_version`, `weights_step`, `turns_trained`, `_state()`, `_load_state(state)`,
    `_broadcast(value)` and `s.decision_timeout_s`. Every rank calls these together."""

    def _snapshot(self) -> Snapshot:
        stored = self.snapshots.save(self._state(), f"v{self.version}-step{self.step_count}")
        return Snapshot(self.version, stored, self.turns_trained, self.weights_step)

    def _sync_published(self, before: int) -> None:
        """Every rank learns the version rank 0 may just have published, and snapshots the candidate's state."""
        self.version = self._broadcast(self.version)
        if self.guard is not None and self.version != before:
            self.guard.on_publish(self._snapshot())
            self.snapshots.keep_only(self.guard.accepted, self.guard.pending)

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
        if wait and self.rank == 0 and self.guard is not None and self.guard.pending is not None:
            log.info("waiting up to %.0f s (version_gate.decision_timeout_s) for the version gate's decision on v%d",
                     self.s.decision_timeout_s, self.guard.pending.version)
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
        self.weights_step = published.version.step
        if self.guard is not None:
            rejected, self.turns_trained = self.turns_trained - self.guard.accepted.turns_trained, \
                self.guard.accepted.turns_trained
            if self.rank == 0:
                self._count_rejected(rejected)
            self.guard.pending = None
            self.guard.accepted = Snapshot(version, self.snapshots.save(self._state(), f"v{version}-rollback"),
                                           self.turns_trained, self.weights_step)
            self.snapshots.keep_only(self.guard.accepted)
        self.published_step, self.weights_version = self.step_count, version
        if self.rank == 0:
            log.warning("rolled back by the admin API to v%d: the learner restarts from its weights", version)

    def _apply_decision(self, decision: str) -> None:
        pending = self.guard.pending
        target = self.guard.on_decision(decision)
        self.snapshots.keep_only(self.guard.accepted, self.guard.pending)
        if target is None:
            return
        self._load_state(self.snapshots.load(target.state))
        rejected, self.turns_trained = self.turns_trained - target.turns_trained, target.turns_trained
        self.weights_version, self.weights_step = target.version, target.step
        self.published_step = self.step_count  # the accepted weights are out already
        if self.rank == 0:
            self._count_rejected(rejected)
            log.warning("v%d %s by the version gate: back to v%d (weights and optimizer state); %d turns trained "
                        "since count as rejected%s", pending.version, decision, target.version, rejected,
                        "" if self.owns_turns else " (by the shared policy; their users' adapters keep them)")

    def _count_rejected(self, n: int) -> None:
        """The queue counts the turns as rejected, when this learner owns their accounting (personalization.mode=both:
        the adapter steps do; a shared rejection does not undo what the adapters learned)."""
        if self.owns_turns:
            self.queue.reject_trained(n)


class RecentPrompts:
    """The latest `size` distinct prompts trained on (each turn's context: what its reply answered; with `openings`,
    the conversation's opening request: its messages up to the first user message), oldest first.
    A candidate goes to the gatekeeper with them, so it is also tried on what its users ask, not only on the shipped
    probes. In memory only: never written, put in the object store with the candidate and let go once decided."""

    def __init__(self, size: int, openings: bool = False):
        self.size, self.openings = size, openings
        self._by_key: OrderedDict[str, list] = OrderedDict()

    def add(self, turns) -> None:
        if self.size <= 0:
            return
        for t in turns:
            prompt = _opening(t.context) if self.openings else t.context
            key = json.dumps(prompt, sort_keys=True)
            self._by_key.pop(key, None)
            self._by_key[key] = prompt
        while len(self._by_key) > self.size:
            self._by_key.popitem(last=False)

    def latest(self) -> list[list] | None:
        """The prompts (message lists), oldest first; None when there are none (the probe set alone)."""
        return list(self._by_key.values()) or None


def _opening(context: list) -> list:
    """The messages up to and including the first user message: what the user first asked, without the replies and
    follow-ups after it (a complaint is not a request that a reply could be relevant to)."""
    first = next((i for i, m in enumerate(context) if m["role"] == "user"), len(context) - 1)
    return context[: first + 1]
