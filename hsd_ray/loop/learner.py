"""The learner: a Ray Train `TorchTrainer` whose workers stream scored turns and apply the distillation loss.

There is no dataset and no epoch. Each worker runs one `Learner`:

    restore (checkpoint) → loop { next_batch → step → publish (on the cadence) → checkpoint (on the cadence) } → finish

Rank 0 takes exactly `batch_turns` scored turns from the queue (`QueueClient.take_scored`, waiting while it is
empty), shares them with the other ranks over the process group (`rank0_broadcast`: gloo on CPU, NCCL on GPU); each
rank steps on its slice under DDP (core.train_step.learner_step) and rank 0 acknowledges the turns as trained. On a
cadence rank 0 publishes a new weight version (broadcast.py) and every rank reports a Ray Train checkpoint. A
restarted learner (worker failure, or the job run again with the same output_dir) resumes from the latest
checkpoint; versions stay monotonic because the next version is always above both the checkpoint's and the
registry's.

Stopping: `LearnerControl.request_stop()`, `job.max_steps` or `job.duration_s` → a final checkpoint, a final version,
and the weights saved in HF format (or peft adapter format when training LoRA) under `<output_dir>/final`.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from hsd_ray import metrics
from hsd_ray.config import BroadcastConfig, InfluenceConfig, LearnerConfig, LossConfig, PersonalizationConfig
from hsd_ray.core.turns import Turn
from hsd_ray.core.weights import BASE_ADAPTER
from hsd_ray.data.files import replace_atomically
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.broadcast import BackgroundPublisher, RegistryClient
from hsd_ray.loop.queue_client import QueueClient, fetch_turns
from hsd_ray.loop.rollback import GateFollowing, RecentPrompts, Snapshot, SnapshotStore, VersionGuard

CONTROL_ACTOR_NAME = "hsd-learner-control"
log = logging.getLogger(__name__)


class LearnerControl:
    """The named actor through which the driver stops the learner and reads its progress. With `state_path` the
    driver's requests (stop, admin pause) are kept in that file, so a restarted control actor still holds them;
    progress comes back with the learner's next report."""

    def __init__(self, state_path: str | None = None):
        self.state_path = Path(state_path) if state_path else None
        self._stop = False
        self._paused = False  # admin API: no optimizer step while paused (turns wait in the queue)
        self.progress: dict = {"step": 0, "version": 0}
        self._workers: dict[int, dict] = {}  # per-user learner workers' latest reports (report_worker)
        if self.state_path is not None and self.state_path.exists():
            try:
                saved = json.loads(self.state_path.read_text())
                self._stop, self._paused = bool(saved["stop"]), bool(saved["paused"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("learner control state %s unreadable (%s): not stopped, not paused", self.state_path, e)

    def set_paused(self, paused: bool) -> bool:
        self._paused = paused
        self._save()
        return paused

    def paused(self) -> bool:
        return self._paused

    def request_stop(self) -> None:
        self._stop = True
        self._save()

    def _save(self) -> None:
        if self.state_path is None:
            return
        try:
            state = json.dumps({"stop": self._stop, "paused": self._paused})
            replace_atomically(self.state_path, lambda tmp: tmp.write_text(state))
        except OSError as e:
            log.warning("could not save learner control state to %s: %s", self.state_path, e)

    def should_stop(self) -> bool:
        return self._stop

    def report(self, progress: dict) -> None:
        self.progress = {**self.progress, **progress}  # a step's metrics, or only where the learner's weights are

    def report_worker(self, rank: int, progress: dict) -> None:
        """One of several per-user learner workers: its "step" (adapter steps), "train_s" and "train_steps" are
        summed over the workers; the rest is the latest report's."""
        self._workers[rank] = progress
        summed = {k: sum(w.get(k, 0) for w in self._workers.values()) for k in ("step", "train_s", "train_steps")}
        self.progress = {**self.progress, **progress, **summed}

    def steps(self) -> int:
        return int(self.progress.get("step", 0))

    def get_progress(self) -> dict:
        return self.progress


@dataclass(frozen=True)
class LearnerSettings:
    """The config sections the learner reads, resolved once by the driver (config at the edges)."""

    model_dir: str
    learner: LearnerConfig
    loss: LossConfig
    broadcast: BroadcastConfig
    output_dir: str  # absolute: a Train worker's working directory is inside Ray's session folder
    max_steps: int | None = None
    duration_s: float | None = None
    seed: int = 0
    gated: bool = False  # version_gate.enabled: publish candidates, roll back on rejection (rollback.py)
    decision_timeout_s: float = 600.0
    snapshots_dir: str | None = None  # rollback snapshots on disk here (None: in memory)
    personal: PersonalizationConfig | None = None  # per_user mode: train users' adapters (personal_learner.py)
    gated_users: bool = False  # per_user mode: adapters' versions are candidates too (version_gate.user_adapters)
    user_probes: int = 0  # gated_users: a candidate goes to the gate with its user's latest N prompts
    influence: InfluenceConfig | None = None  # mode both: the limits of the shared policy's steps (both_learner.py)
    traffic_probes: int = 0  # gated: a shared candidate goes to the gate with the latest N prompts it trained on


def rank0_broadcast(value, world: int):
    """Rank 0's `value` on every rank (a no-op on one worker)."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop_due(control, settings: LearnerSettings, step_count: int, started: float) -> bool:
    """The driver asked the learner to stop, or job.max_steps / job.duration_s is reached."""
    if ray.get(control.should_stop.remote()):
        return True
    if settings.max_steps is not None and step_count >= settings.max_steps:
        return True
    return settings.duration_s is not None and time.time() - started >= settings.duration_s


def take_batch(queue: QueueClient, n: int, should_stop, interrupt=None, world: int = 1,
               shard: tuple[int, int] | None = None) -> list[Turn] | None:
    """Block until `n` scored turns can be fetched (returns them, in queue order) or `should_stop()` (returns None)
    or `interrupt()` (returns []: the version gate decided while the learner waited). At the end of a closed source
    (a replay) the final batch may hold fewer than `n` turns (but at least `world`, one per worker: a remainder
    below that is left in the queue, counted as scored), and once the queue is drained this returns None.

    Turns whose payload died with its owner (a teacher that restarted after scoring them) go back to pending from
    the turn log (dropped as lost only when the log does not hold them); the rest are given back and a full batch is
    taken again. `shard`: the turns of the users whose adapters this per-user learner worker owns.
    """
    while not should_stop():
        if interrupt is not None and interrupt():
            return []
        batch = queue.take_scored(n, at_least=world, shard=shard)
        if batch is None:  # a replay's source is exhausted and every turn was handed out: time to stop
            log.info("the source is exhausted and every turn was trained: stopping")
            return None
        if not batch:
            time.sleep(0.1)
            continue
        turns, lost = fetch_turns(batch)
        if not lost:
            return turns
        dropped = queue.drop_lost([t.turn_id for t in lost])
        queue.requeue_training(shard)
        log.warning("%d scored turns were lost with their owner: %d back to pending from the turn log (scored "
                    "again), %d dropped as lost", len(lost), len(lost) - dropped, dropped)
    return None


class Learner(GateFollowing):
    """One Ray Train worker's model, optimizer and position in the stream of versions."""

    def __init__(self, settings: LearnerSettings):
        from ray import train

        from hsd_ray.core.policy import apply_lora, make_optimizer
        from hsd_ray.models import load_model_and_tokenizer

        self.s = settings
        ctx = train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.manual_seed(settings.seed)
        self.queue = QueueClient.lookup()
        self.registry = RegistryClient.lookup()
        self.control = ray.get_actor(CONTROL_ACTOR_NAME, namespace=NAMESPACE)
        self.device = train.torch.get_device()
        self.model, self.tokenizer = load_model_and_tokenizer(settings.model_dir, "float32", str(self.device))
        if settings.learner.lora.enabled:
            self.model = apply_lora(self.model, settings.learner.lora)
        self.optimizer, self.scheduler = make_optimizer(self.model, settings.learner)
        self.step_count, self.version, self.published_step = 0, 0, -1
        # the version whose weights the learner holds (the final label): the last it published, or the one an admin
        # rolled back to, which is lower than `version` (the highest number used, never reused), and the step the
        # weights held were trained to (a rollback goes back to an earlier one; the step counter keeps counting)
        self.weights_version = self.weights_step = 0
        self.started = self.last_publish = time.time()
        self.publisher = BackgroundPublisher(self.registry.handle, self._on_published) if self.rank == 0 else None
        self.reference, self.retain = None, None  # retain: a core.retain.RetainSet when loss.retain_coef > 0 (restore)
        self.guard: VersionGuard | None = None
        self.turns_trained, self.train_s, self.train_steps = 0, 0.0, 0
        self._reported_position: tuple[int, int] | None = None  # (version, published_step) last told to control
        self.owns_turns = True  # acknowledges its turns and counts rejected ones (mode both: the adapter steps do)
        self.recent_prompts = RecentPrompts(settings.traffic_probes if settings.gated and self.rank == 0 else 0,
                                            openings=True)  # rank 0 publishes: only it keeps them

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Resume from the latest Ray Train checkpoint (if any), wrap for DDP, and take back in-flight turns."""
        from ray import train

        from hsd_ray.core.policy import resume_policy

        checkpoint, state = train.get_checkpoint(), None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = torch.load(Path(d) / "learner.pt", map_location=self.device, weights_only=False)
        # the KL reference is taken before the checkpoint is loaded: the anchor stays the base weights; strict load
        loss = self.s.loss
        self.reference = resume_policy(self.model, state, kl_on=loss.kl_coef > 0 or loss.retain_coef > 0,
                                       kind=loss.reference, ema_rate=loss.ema_rate)
        if loss.retain_coef > 0:  # generated once, on rank 0: every rank replays the same replies
            self.retain = rank0_broadcast(retain_set(self.reference, self.tokenizer, loss) if self.rank == 0 else None,
                                          self.world)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step_count, self.version = state["step"], state["version"]
            self.weights_version = state.get("weights_version", self.version)
            self.weights_step = state.get("weights_step", self.step_count)
        parallel = "ddp" if self.world > 1 else None
        self.model = train.torch.prepare_model(self.model, parallel_strategy=parallel)
        if self.s.gated:  # the starting point counts as accepted (the base, or the checkpoint)
            folder = f"{self.s.snapshots_dir}/rank{self.rank}" if self.s.snapshots_dir else None
            self.snapshots = SnapshotStore(folder)
            self.guard = VersionGuard(Snapshot(self.version, self.snapshots.save(self._state(), "start"), 0,
                                               self.weights_step))
        before = self.version
        if self.rank == 0:
            requeued = self.queue.requeue_training()
            if checkpoint is not None:
                log.info("resumed at step %d, version %d; %d in-flight turns requeued",
                         self.step_count, self.version, requeued)
                if self.s.max_steps is not None and self.step_count >= self.s.max_steps:
                    # job.max_steps counts from the first step of this output_dir, so a second `make run` on the
                    # same folder would otherwise end silently without training
                    log.warning("job.max_steps is %d and this output_dir's checkpoint is already at step %d: nothing "
                                "to train. Raise --max-steps, or start fresh with another job.output_dir.",
                                self.s.max_steps, self.step_count)
                self.publish()  # replicas that restarted on the base weights catch up at once
        self._sync_published(before)

    def next_batch(self) -> list[Turn] | None:
        """The next batch of scored turns, the same on every rank; None when it is time to stop. A version gate
        decision that arrives while waiting is acted on at once (a rejection rolls back before the next step)."""
        while True:
            self.publish_if_due()  # also what came due while a candidate was pending, once it is decided
            batch = None
            if self.rank == 0 and ray.get(self.control.paused.remote()):
                batch = None if self._should_stop() else []
                time.sleep(0.2)
            elif self.rank == 0:
                batch = take_batch(self.queue, self.s.learner.batch_turns, self._should_stop, self._gate_decided,
                                   world=self.world)
            batch = rank0_broadcast(batch, self.world)
            if batch != []:
                return batch

    def step(self, turns: list[Turn]) -> dict:
        """One optimizer step on this rank's slice of `turns`; rank 0 acknowledges them and reports progress."""
        from hsd_ray.core.batch import HindsightBatch
        from hsd_ray.core.train_step import learner_step

        t0 = time.perf_counter()
        tok = self.tokenizer
        batch = HindsightBatch.collate(turns[self.rank :: self.world], tok.pad_token_id, (tok.eos_token_id,))
        retain = self.retain.draw(self.step_count, self.s.loss.retain_per_step, self.s.seed) if self.retain else None
        step_metrics = learner_step(self.model, self.optimizer, batch, self.s.loss,
                                    grad_clip=self.s.learner.grad_clip, scheduler=self.scheduler,
                                    reference=self.reference, autocast_bf16=self.s.learner.autocast_bf16,
                                    retain=retain)
        self.step_count = self.weights_step = self.step_count + 1
        self.turns_trained += len(turns)
        self.recent_prompts.add(turns)
        # optimizer seconds and steps of this learner process (a resumed one starts at 0): the version gate's cost
        # is measured against them
        self.train_s, self.train_steps = self.train_s + time.perf_counter() - t0, self.train_steps + 1
        if self.rank == 0:
            if self.owns_turns:
                self.queue.ack_trained_nowait([t.turn_id for t in turns])
            _record_metrics(step_metrics, turns, self.version)
            self.control.report.remote({"step": self.step_count, "version": self.version, "train_s": self.train_s,
                                        "train_steps": self.train_steps, **step_metrics})
        return step_metrics

    def publish_if_due(self) -> None:
        """Publish on the cadence; under the version gate, first act on the pending candidate's decision, and
        publish no new candidate while one is pending."""
        self._follow_gate()
        b, before = self.s.broadcast, self.version
        waiting = self.guard is not None and self.guard.pending is not None
        # due `every_steps` steps after the last published weights, not at multiples of it: steps taken while a
        # candidate was pending are published as soon as it is decided, even if no step follows
        if (self.rank == 0 and not waiting and self.step_count >= max(self.published_step, 0) + b.every_steps
                and time.time() - self.last_publish >= b.every_seconds):
            self.publish()
            self.last_publish = time.time()
        self._sync_published(before)  # every rank records the same version
        position = (self.version, self.published_step)
        if self.rank == 0 and position != self._reported_position:  # after a publish, an accept or a rollback
            self.control.report.remote({"version": self.version, "published_step": self.published_step})
            self._reported_position = position

    def publish(self, final: bool = False) -> None:
        """Rank 0: snapshot the weights now (synchronous copy) and publish them in the background. The final version
        is made durable (the registry keeps its own copy) because this process exits right after."""
        from hsd_ray.core.policy import export_weights

        if self.step_count == self.published_step:  # these exact weights are already out
            if final:
                self._persist_latest()
            return
        self.version = max(self.version, self.registry.highest_version(BASE_ADAPTER)) + 1
        self.publisher.submit(export_weights(self.model, self.version, self.weights_step), durable=final,
                              probes=self.recent_prompts.latest())
        self.published_step, self.weights_version = self.step_count, self.version

    def checkpoint_if_due(self) -> None:
        if self.step_count % self.s.learner.checkpoint_every_steps == 0:
            self.checkpoint()

    def checkpoint(self, final: bool = False) -> None:
        """Every rank reports; rank 0 writes the trainable weights, optimizer and scheduler state."""
        from ray import train

        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if self.rank == 0:
                torch.save(self._state(), Path(d) / "learner.pt")
                ckpt = train.Checkpoint.from_directory(d)
            train.report({"step": self.step_count, "version": self.version, "final": final}, checkpoint=ckpt)

    def finish(self) -> None:
        """Clean stop: a final version, the weights in HF / peft format under output_dir/final, a final checkpoint.
        Under the version gate the final version is a candidate too: what is saved is the last accepted weights."""
        self._follow_gate(wait=True)
        before = self.version
        if self.rank == 0:
            self.publish(final=True)
            self.publisher.flush()
        self._sync_published(before)
        if self.guard is not None:
            self._follow_gate(wait=True)
            if self.rank == 0:
                self._persist_latest()
        if self.rank == 0:
            self._save_final(Path(self.s.output_dir) / "final")
        self.checkpoint(final=True)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return stop_due(self.control, self.s, self.step_count, self.started)

    def _state(self) -> dict:
        from hsd_ray.core.policy import trainable_state

        reference = self.reference.state_dict() if self.reference is not None else None
        return {"model": trainable_state(self.model), "reference": reference, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step_count, "version": self.version,
                "weights_version": self.weights_version, "weights_step": self.weights_step}

    def _broadcast(self, value):
        return rank0_broadcast(value, self.world)

    def _load_weights(self, weights) -> None:
        """A published WeightSet into the model (an admin rollback); the optimizer starts afresh from it."""
        from hsd_ray.core.policy import is_peft, unwrap

        model = unwrap(self.model)
        if is_peft(model):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, {k: v.to(self.device) for k, v in weights.tensors.items()})
        else:
            model.load_state_dict({k: v.to(self.device) for k, v in weights.tensors.items()}, strict=False)
        self.optimizer.state.clear()

    def _load_state(self, state: dict) -> None:
        """Back to a snapshot's trainable weights, optimizer and scheduler state (the step counter keeps counting)."""
        from hsd_ray.core.policy import unwrap

        unwrap(self.model).load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _persist_latest(self) -> None:
        self.publisher.flush()
        try:
            self.registry.persist_latest(BASE_ADAPTER)
        except Exception as e:  # noqa: BLE001 - the run's weights are still saved to output_dir/final
            log.warning("could not make v%d durable: %s", self.version, e)

    def _on_published(self, version, seconds: float) -> None:
        log.info("published v%d (step %d) in %.3fs", version.version, version.step, seconds)

    def _save_final(self, out: Path) -> None:
        from hsd_ray.core.policy import unwrap

        out.mkdir(parents=True, exist_ok=True)
        unwrap(self.model).save_pretrained(out)  # full model, or the peft adapter (adapter_config + safetensors)
        self.tokenizer.save_pretrained(out)
        # Label what is saved by the version of its weights: under the gate a rejected final candidate leaves the
        # learner on the last accepted ones (make run once wrote "v6" over v5's weights after rejecting v6), and an
        # admin rollback leaves it on an earlier version until it publishes again. `step` is the step those weights
        # were trained to; the steps the learner took and the highest number it used are kept beside them.
        accepted = self.guard.accepted if self.guard is not None else None
        version, step = (accepted.version, accepted.step) if accepted else (self.weights_version, self.weights_step)
        (out / "hsd_version.json").write_text(json.dumps({"version": version, "step": step,
                                                          "learner_step": self.step_count,
                                                          "highest_version": self.version}))
        log.info("final weights (v%d, step %d%s) saved to %s", version, step,
                 f"; the learner took {self.step_count} steps and used up to v{self.version}"
                 if (version, step) != (self.version, self.step_count) else "", out)


def retain_set(reference, tokenizer, loss: LossConfig):
    """The retain anchor's replies (core/retain.py): the reference's greedy answers to the retain prompts."""
    from hsd_ray.core.retain import build_retain_set
    from hsd_ray.data import load_retain_prompts

    t0 = time.perf_counter()
    retain = build_retain_set(reference, tokenizer, load_retain_prompts(loss.retain_path))
    log.info("retain anchor: %d reference replies (%.1f s), %d replayed per step, weight %g", len(retain.prompts),
             time.perf_counter() - t0, loss.retain_per_step, loss.retain_coef)
    return retain


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker; `config["settings"]` is the LearnerSettings."""
    _log_to_stdout()
    learner = Learner(config["settings"])
    learner.restore()
    while (turns := learner.next_batch()) is not None:
        learner.step(turns)
        learner.publish_if_due()
        learner.checkpoint_if_due()
    learner.finish()


def _log_to_stdout() -> None:
    """The learner's lines on the worker's stdout as "[learner] ..." (Ray forwards them to the driver). Ray Train
    configures the worker's root logger before this runs, so this logger gets its own handler instead."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[learner] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _record_metrics(step_metrics: dict, turns: list[Turn], version: int) -> None:
    now = time.time()
    metrics.inc("hsd_learner_steps_total")
    metrics.inc("hsd_learner_tokens_total", step_metrics.get("tokens", 0.0))
    metrics.inc("hsd_learner_turns_total", len(turns))
    metrics.set_gauge("hsd_learner_loss", step_metrics.get("loss", 0.0))
    for t in turns:
        if t.policy_version is not None:
            metrics.observe("hsd_staleness_versions", max(0, version - t.policy_version))
        metrics.observe("hsd_staleness_s", max(0.0, now - t.replied_at))


def make_trainer(settings: LearnerSettings, learner_cfg: LearnerConfig):
    """The TorchTrainer (the caller runs `.fit()`). Same output_dir → resumes from its latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = Path(settings.output_dir) / "ray_train"
    storage.mkdir(parents=True, exist_ok=True)
    from hsd_ray.loop.both_learner import train_loop_both
    from hsd_ray.loop.personal_learner import train_loop_per_user

    personal = settings.personal.mode if settings.personal is not None else None
    per_worker = {"CPU": learner_cfg.cpus_per_worker, **learner_cfg.resources}
    return TorchTrainer(
        {"per_user": train_loop_per_user, "both": train_loop_both}.get(personal, train_loop_per_worker),
        train_loop_config={"settings": settings},
        scaling_config=ScalingConfig(num_workers=learner_cfg.num_workers, use_gpu=learner_cfg.use_gpu,
                                     resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if learner_cfg.use_gpu else "gloo"),
        run_config=RunConfig(name="learner", storage_path=str(storage), failure_config=FailureConfig(
            max_failures=learner_cfg.max_failures), checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
