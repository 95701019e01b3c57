"""The learner in personalization.mode=per_user: every user's turns train that user's own LoRA adapter. (Mode both
runs it beside the shared policy's learner, both_learner.py; there the shared policy under the adapters moves:
`follow_shared`.)

Each Ray Train worker holds the frozen shared policy and an `AdapterBank` (core/adapter_bank.py) of the users it owns
(`learner.num_workers` > 1: users are split by the hash of their adapter id, core/weights.in_shard; the queue hands a
worker only its users' turns, so no two workers ever step one adapter and no gradient is exchanged; job.max_steps
counts the adapter steps of all workers):

    loop { next_batch → for each user in it: one step of their adapter → publish its new version → save it }

The queue hands out batches round-robin over users (core/influence.round_robin), so a busy user's backlog cannot
starve the others; the batch is then grouped by adapter and each group is one optimizer step of that adapter alone,
with that adapter's own AdamW state. The hindsight teacher is the shared policy shown the follow-up (the teachers
follow the shared policy, which does not change in this mode); the KL anchor is the shared policy too (the adapter
switched off), and so is the retain anchor's reference (`loss.retain_coef`, core/retain.py: the shared policy's
greedy replies to the retain prompts, generated once when the learner starts, replayed beside every adapter step).

Every step publishes the adapter's next version to the registry and saves it — peft format plus optimizer state —
under `<output_dir>/adapters/<adapter_id>/`. That folder is the checkpoint: a restarted learner (worker failure, or
the job run again on the same output_dir) takes up each adapter from it when its user's next turns arrive; the step
count survives in `.learner.json`.

With the version gate on (`version_gate.user_adapters`, on by default) a published version is a candidate, served
only once the gatekeeper accepts it — per adapter, the same rules as the shared policy's learner (rollback.py):
- a candidate goes to the gate with its user's latest prompts (`version_gate.user_probes` distinct ones, in memory
  only): the gate also tries it on them, where what the user taught shows;
- an adapter with a candidate pending publishes nothing new; its steps go on, and what they trained is the next
  candidate as soon as the pending one is accepted;
- accepted: the candidate's state (snapshotted when it was published) is written as the adapter's accepted state
  (`adapters/.accepted/<adapter_id>/`, what a restarted registry serves);
- rejected (or past `decision_timeout_s` at the end of the run): the adapter goes back to its accepted state —
  weights and optimizer state, or zero if none was accepted — and the turns it trained since count as dropped
  `rejected` in the queue. Version numbers keep rising.

A user whose data is deleted (capture.forget_user → registry.forget_adapter) loses the adapter: the registry deletes
the folder and its versions; this learner polls for such deletions before each batch and drops its in-memory copy,
so a later turn of that user starts a new adapter from zero.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import ray

from hsd_ray.core.adapter_bank import ADAPTERS_DIR, AdapterBank, AdapterState
from hsd_ray.core.turns import Turn
from hsd_ray.core.weights import user_adapter_id
from hsd_ray.data.files import replace_atomically
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.broadcast import RegistryClient, publish
from hsd_ray.loop.learner import (
    CONTROL_ACTOR_NAME,
    LearnerSettings,
    _log_to_stdout,
    _record_metrics,
    retain_set,
    stop_due,
    take_batch,
)
from hsd_ray.loop.queue_client import QueueClient
from hsd_ray.loop.rollback import RecentPrompts

log = logging.getLogger("hsd_ray.loop.learner")  # the same "[learner]" lines as the global learner
STATE_FILE = ".learner.json"
ROLLBACK_CHECK_S = 1.0  # how often the learner asks the registry for admin rollbacks of user adapters


@dataclass
class _Candidate:
    """A published adapter version the gatekeeper has not decided yet, and what rides on it."""

    version: int
    state: AdapterState  # the adapter when it was published: its accepted state if the gate accepts it
    turns: int  # turns trained into it since the adapter's accepted state


class PersonalLearner:
    """The per_user learner's model (an AdapterBank over the frozen shared policy) and its place in the stream."""

    def __init__(self, settings: LearnerSettings):
        import torch
        from ray import train

        from hsd_ray.core.policy import ReferencePolicy
        from hsd_ray.models import load_model_and_tokenizer

        self.s, p = settings, settings.personal
        torch.manual_seed(settings.seed)
        self.queue = QueueClient.lookup()
        self.registry = RegistryClient.lookup()
        self.control = ray.get_actor(CONTROL_ACTOR_NAME, namespace=NAMESPACE)
        ctx = train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.shard = (self.rank, self.world) if self.world > 1 else None  # the users whose adapters this worker owns
        device = train.torch.get_device()
        model, self.tokenizer = load_model_and_tokenizer(settings.model_dir, "float32", str(device))
        self.root = Path(settings.output_dir) / ADAPTERS_DIR
        self.bank = AdapterBank(model, p.lora, lr=p.lr, weight_decay=settings.learner.weight_decay, root=self.root,
                                max_resident=p.learner_resident)
        loss = settings.loss  # the reference (each adapter off) anchors both the KL and the retain anchor
        self.reference = ReferencePolicy(self.bank.model, "initial") if loss.kl_coef or loss.retain_coef else None
        self.retain = retain_set(self.reference, self.tokenizer, loss) if loss.retain_coef > 0 else None
        self.step_count, self.turns_trained, self.train_s = self._load_state(), 0, 0.0
        self.started = time.time()
        self._deletions_seen = 0.0  # registry deletion times up to here have been acted on
        self.pending: dict[str, _Candidate] = {}  # adapter -> its undecided candidate (version gate on)
        self.unvetted: Counter[str] = Counter()  # adapter -> turns trained since its accepted state
        self._rollbacks_checked = 0.0  # time.monotonic() of the last look for admin rollbacks
        self.recent_prompts: dict[str, RecentPrompts] = defaultdict(lambda: RecentPrompts(settings.user_probes))
        self.shared_version = 0  # the shared policy's version under the adapters (moves only in mode both)
        self.shared_trains = p.mode == "both"  # then the shared learner reports "step" and "version", not this one

    def restore(self) -> None:
        """Take back the turns a dead predecessor was training on; adapters come back from disk when needed."""
        requeued = self.queue.requeue_training(self.shard)
        if self.shard is not None:  # job.max_steps counts every worker's steps, those of an earlier run too
            self.control.report_worker.remote(self.rank, {"step": self.step_count})
        log.info("per-user adapters under %s (%d saved); resumed at step %d; %d in-flight turns requeued",
                 self.root, len(self.bank.on_disk()), self.step_count, requeued)

    def next_batch(self) -> list[Turn] | None:
        """The next round-robin batch of scored turns; None when it is time to stop."""
        while True:
            self._drop_deleted()
            self._follow_registry()
            if not ray.get(self.control.paused.remote()):
                # the gate's decisions are acted on while waiting for turns too ([] = some were: take again)
                batch = take_batch(self.queue, self.s.learner.batch_turns, self._should_stop, self._follow_registry,
                                   shard=self.shard)
                if batch != []:
                    return batch
                continue
            if self._should_stop():
                return None
            time.sleep(0.2)

    def step(self, turns: list[Turn]) -> dict[str, dict]:
        """One step per user in `turns` on that user's adapter; each adapter's new version published and saved."""
        from hsd_ray.core.batch import HindsightBatch

        by_adapter: dict[str, list[Turn]] = defaultdict(list)
        for t in turns:
            by_adapter[user_adapter_id(t.user_id)].append(t)
        out = {}
        for adapter, group in by_adapter.items():
            t0 = time.perf_counter()
            tok = self.tokenizer
            batch = HindsightBatch.collate(group, tok.pad_token_id, (tok.eos_token_id,))
            retain = self.retain and self.retain.draw(self.step_count, self.s.loss.retain_per_step, self.s.seed)
            metrics = self.bank.step(adapter, batch, self.s.loss, grad_clip=self.s.learner.grad_clip,
                                     reference=self.reference, retain=retain)
            self.step_count += 1
            self.train_s += time.perf_counter() - t0
            self.unvetted[adapter] += len(group)
            self.recent_prompts[adapter].add(group)
            if adapter in self.pending:  # one candidate at a time: the adapter trains on, unpublished
                version = self.bank.version(adapter)
                self.bank.save(adapter)
            else:
                version = self._publish(adapter)
            out[adapter] = {**metrics, "version": version}
            _record_metrics(metrics, group, version)
        self.turns_trained += len(turns)
        self.queue.ack_trained_nowait([t.turn_id for t in turns])
        self._save_state()
        last = next(reversed(out.values()))
        if self.shared_trains:
            self.control.report.remote({"adapter_steps": self.step_count, "adapter_train_s": self.train_s})
            return out
        step_metrics = {k: v for k, v in last.items() if k != "version"}
        progress = {"step": self.step_count, "version": last["version"], "train_s": self.train_s,
                    "train_steps": self.step_count, **step_metrics}
        if self.shard is None:
            self.control.report.remote(progress)
        else:  # summed over the workers by the control actor
            self.control.report_worker.remote(self.rank, progress)
        return out

    def follow_shared(self) -> None:
        """Mode both: the shared policy under the adapters becomes the one served (its latest accepted version, or
        one an admin rolled back to), so each adapter trains on what its user is served with."""
        served = self.registry.latest_version()
        if served < 0 or served == self.shared_version:
            return
        published = self.registry.latest()
        self.bank.load_shared(ray.get(published.ref).tensors)
        self.shared_version = published.version.version
        log.info("per-user adapters now sit on the shared policy v%d", self.shared_version)

    def finish(self) -> None:
        """Wait (up to decision_timeout_s) for the gate's last decisions; every adapter is on disk already (saved
        after each step); report where they are."""
        deadline = time.time() + self.s.decision_timeout_s
        if self.pending:  # on a busy CPU the gatekeeper takes minutes per adapter: say why the stop waits
            log.info("waiting up to %.0f s (version_gate.decision_timeout_s) for the version gate's decisions on %d "
                     "adapter versions", self.s.decision_timeout_s, len(self.pending))
        while self.pending and time.time() < deadline:
            self._follow_gate()
            time.sleep(0.2)
        for adapter in list(self.pending):  # never left unvetted: undecided counts as rejected
            self._apply_decision(adapter, "timeout")
        log.info("per-user adapters (%d) saved under %s at step %d", len(self.bank.on_disk()), self.root,
                 self.step_count)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _publish(self, adapter: str) -> int:
        """The adapter's next version to the registry (numbers never reused), then saved with it to disk."""
        version = max(self.bank.version(adapter), self.registry.highest_version(adapter)) + 1
        self.bank.set_version(adapter, version)
        probes = self.recent_prompts[adapter].latest() if self.s.gated_users else None
        publish(self.registry.handle, self.bank.export(adapter, version, self.bank.steps(adapter)), durable=True,
                probes=probes)
        state = self.bank.snapshot(adapter)  # one copy: written to disk, and kept while the gate decides
        self.bank.save(adapter, state)
        if self.s.gated_users:
            self.pending[adapter] = _Candidate(version, state, self.unvetted[adapter])
        log.info("published %s v%d (its step %d)", adapter, version, self.bank.steps(adapter))
        return version

    def _follow_registry(self) -> bool:
        """Admin rollbacks first, then the gate's decisions; True when the gate decided some candidates."""
        self._follow_rollbacks()
        return self._follow_gate()

    def _follow_rollbacks(self) -> None:
        """An admin rolled users back to earlier versions of their adapters (admin API): each adapter restarts from
        that version's weights with a fresh AdamW state (its optimizer state was not kept); its undecided candidate
        was superseded; with the gate on, the turns trained since its last accepted state count as rejected, as
        after a rejection."""
        if time.monotonic() - self._rollbacks_checked < ROLLBACK_CHECK_S:
            return
        self._rollbacks_checked = time.monotonic()
        for adapter, version in ray.get(self.registry.handle.take_user_rollbacks.remote(self.shard)).items():
            published = ray.get(self.registry.handle.latest.remote(adapter))
            if published is None or published.version.version != version:
                log.warning("rollback of %s to v%d: the registry now serves another version; ignored", adapter, version)
                continue
            self.pending.pop(adapter, None)
            self.bank.restart_from(ray.get(published.ref), published.version.step, accepted=self.s.gated_users)
            rejected = self.queue.reject_trained(self.unvetted.pop(adapter, 0)) if self.s.gated_users else 0
            log.warning("%s rolled back by the admin API to v%d: its adapter restarts from that version's weights; "
                        "%d turns trained since count as rejected", adapter, version, rejected)

    def _follow_gate(self) -> bool:
        """Act on the gatekeeper's decisions about the pending candidates (one registry round trip for all of them).
        True when some were decided."""
        if not self.pending:
            return False
        asked = list(self.pending.items())
        decisions = ray.get([self.registry.handle.decision.remote(c.version, a) for a, c in asked])
        decided = [(adapter, d) for (adapter, _), d in zip(asked, decisions) if d != "candidate"]
        for adapter, decision in decided:
            self._apply_decision(adapter, decision)
        return bool(decided)

    def _apply_decision(self, adapter: str, decision: str | None) -> None:
        candidate = self.pending.pop(adapter)
        if decision == "accepted":
            self.bank.save_accepted(adapter, candidate.state)
            self.unvetted[adapter] -= candidate.turns
            if self.unvetted[adapter] > 0:  # trained on while it waited: that state is the next candidate, now
                self._publish(adapter)
            return
        if decision is None:  # the registry no longer knows it: the user's data was deleted (_drop_deleted)
            return
        back_to = self.bank.roll_back(adapter)  # rejected, superseded by an admin rollback, or undecided at the end
        rejected = self.queue.reject_trained(self.unvetted.pop(adapter, 0))
        log.warning("%s v%d %s by the version gate: back to %s (weights and optimizer state); %d turns trained since "
                    "count as rejected", adapter, candidate.version, decision,
                    f"v{back_to}" if back_to else "zero (nothing accepted yet)", rejected)

    def _drop_deleted(self) -> None:
        deleted = ray.get(self.registry.handle.forgotten_since.remote(self._deletions_seen))
        for adapter, when in deleted.items():
            self.pending.pop(adapter, None)
            self.unvetted.pop(adapter, None)
            self.recent_prompts.pop(adapter, None)
            if self.bank.delete(adapter):
                log.info("%s: its user's data was deleted; adapter dropped", adapter)
            self._deletions_seen = max(self._deletions_seen, when)

    def _should_stop(self) -> bool:
        steps = self.step_count if self.shard is None else ray.get(self.control.steps.remote())  # every worker's
        return stop_due(self.control, self.s, steps, self.started)

    @property
    def _state_file(self) -> Path:
        return self.root / (STATE_FILE if self.shard is None else f".learner-{self.rank}-of-{self.world}.json")

    def _load_state(self) -> int:
        try:
            return int(json.loads(self._state_file.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = json.dumps({"step": self.step_count})
        replace_atomically(self._state_file, lambda tmp: tmp.write_text(state))


def train_loop_per_user(config: dict) -> None:
    """Runs on every Ray Train worker in per_user mode; `config["settings"]` is the LearnerSettings."""
    _log_to_stdout()
    learner = PersonalLearner(config["settings"])
    learner.restore()
    while (turns := learner.next_batch()) is not None:
        learner.step(turns)
    learner.finish()
