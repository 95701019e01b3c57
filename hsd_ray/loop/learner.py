"""The learner: a Ray Train `TorchTrainer` whose workers stream scored turns and apply the distillation loss.

There is no dataset and no epoch: rank 0 takes exactly `batch_turns` scored turns from the queue (waiting while it is
empty), shares them with the other ranks over the process group (gloo on CPU, NCCL on GPU), each rank steps on its
slice under DDP, and rank 0 acknowledges the turns as trained. On a cadence rank 0 publishes a new weight version
(broadcast.py) and every rank reports a Ray Train checkpoint. A restarted learner (worker failure, or the job run
again with the same output_dir) resumes from the latest checkpoint; versions stay monotonic because the next version
is always above both the checkpoint's and the registry's.

Stopping: `LearnerControl.request_stop()`, `job.max_steps` or `job.duration_s` → a final checkpoint, a final version,
and the weights saved in HF format (or peft adapter format when training LoRA) under `<output_dir>/final`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import ray
import torch

from hsd_ray import metrics
from hsd_ray.config import Config
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.queue import resolve

CONTROL_ACTOR_NAME = "hsd-learner-control"


class LearnerControl:
    """Plain class; the named actor through which the driver stops the learner and reads its progress."""

    def __init__(self):
        self._stop = False
        self.progress: dict = {"step": 0, "version": 0}

    def request_stop(self) -> None:
        self._stop = True

    def should_stop(self) -> bool:
        return self._stop

    def report(self, progress: dict) -> None:
        self.progress = progress

    def get_progress(self) -> dict:
        return self.progress


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import torch.distributed as dist
    from ray import train

    from hsd_ray.core.batch import HindsightBatch
    from hsd_ray.core.policy import ReferencePolicy, apply_lora, export_weights, make_optimizer, unwrap
    from hsd_ray.core.train_step import learner_step
    from hsd_ray.models import load_model_and_tokenizer
    from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, BackgroundPublisher
    from hsd_ray.loop.queue import QUEUE_ACTOR_NAME
    from hsd_ray.models import resolve_model

    cfg = Config.model_validate(loop_config["cfg"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    queue = ray.get_actor(QUEUE_ACTOR_NAME, namespace=NAMESPACE)
    registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
    control = ray.get_actor(CONTROL_ACTOR_NAME, namespace=NAMESPACE)

    device = train.torch.get_device()
    model, tokenizer = load_model_and_tokenizer(resolve_model(cfg.model), "float32", str(device))
    if cfg.learner.lora.enabled:
        model = apply_lora(model, cfg.learner.lora)
    step, version = 0, 0
    optimizer, scheduler = make_optimizer(model, cfg.learner)
    checkpoint = train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "learner.pt", map_location=device, weights_only=False)
        unwrap(model).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, version = state["step"], state["version"]
    model = train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    reference = ReferencePolicy(model, cfg.loss.reference, cfg.loss.ema_rate) if cfg.loss.kl_coef > 0 else None

    def on_published(v, seconds: float) -> None:
        metrics.set_gauge("hsd_policy_version", v.version, adapter=v.adapter_id)
        print(f"[learner] published v{v.version} (step {v.step}) in {seconds:.3f}s", flush=True)

    publisher = BackgroundPublisher(registry, on_published) if rank == 0 else None
    published_step = -1

    def publish_version(final: bool = False) -> None:
        """Snapshot the weights now (synchronous copy), publish them in the background. The final version is made
        durable (the registry keeps its own copy) because this process exits right after."""
        nonlocal version, published_step
        if step == published_step:  # these exact weights are already out
            if final:
                publisher.flush()
                try:
                    ray.get(registry.persist_latest.remote("base"))
                except Exception as e:  # noqa: BLE001 - the run's weights are still saved to output_dir/final
                    print(f"[learner] could not make v{version} durable: {e}", flush=True)
            return
        version = max(version, ray.get(registry.latest_version.remote("base"))) + 1
        publisher.submit(export_weights(model, version, step), durable=final)
        published_step = step

    def save_checkpoint(final: bool = False) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                trainable = unwrap(model).state_dict()
                if cfg.learner.lora.enabled:
                    names = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
                    trainable = {k: v for k, v in trainable.items() if k in names}
                torch.save(
                    {
                        "model": trainable,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "version": version,
                    },
                    Path(d) / "learner.pt",
                )
                ckpt = train.Checkpoint.from_directory(d)
            train.report({"step": step, "version": version, "final": final}, checkpoint=ckpt)

    if rank == 0:
        requeued = ray.get(queue.requeue_training.remote())
        if checkpoint is not None:
            print(f"[learner] resumed at step {step}, version {version}; {requeued} in-flight turns requeued")
            publish_version()  # replicas that restarted on the base weights catch up at once

    started = time.time()
    last_publish = time.time()
    while True:
        # ---- rank 0 decides: a batch, or stop ---------------------------------------------------------------
        message = None
        if rank == 0:
            message = _next_batch(cfg, queue, control, step, started)
        if world > 1:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is None:
            break
        turns = message
        mine = turns[rank::world]
        batch = HindsightBatch.collate(mine, tokenizer.pad_token_id)
        step_metrics = learner_step(
            model,
            optimizer,
            batch,
            cfg.loss,
            grad_clip=cfg.learner.grad_clip,
            scheduler=scheduler,
            reference=reference,
            autocast_bf16=cfg.learner.autocast_bf16,
        )
        step += 1
        if rank == 0:
            queue.ack_trained.remote([t.turn_id for t in turns])
            _record_metrics(step_metrics, turns, version)
            control.report.remote({"step": step, "version": version, **step_metrics})
            due = step % cfg.broadcast.every_steps == 0 and time.time() - last_publish >= cfg.broadcast.every_seconds
            if due:
                publish_version()
                last_publish = time.time()
        if world > 1:  # every rank must agree on the version before a checkpoint records it
            box = [version]
            dist.broadcast_object_list(box, src=0)
            version = box[0]
        if step % cfg.learner.checkpoint_every_steps == 0:
            save_checkpoint()

    # ---- clean stop: final version, checkpoint and exported weights --------------------------------------------
    if rank == 0:
        publish_version(final=True)
        publisher.flush()
        _save_final(model, tokenizer, Path(cfg.job.output_dir) / "final", step, version)
    if world > 1:
        box = [version]
        dist.broadcast_object_list(box, src=0)
        version = box[0]
    save_checkpoint(final=True)


def _next_batch(cfg: Config, queue, control, step: int, started: float) -> list | None:
    """Block until `batch_turns` scored turns are available (returns them) or it is time to stop (returns None)."""
    while True:
        if ray.get(control.should_stop.remote()):
            return None
        if cfg.job.max_steps is not None and step >= cfg.job.max_steps:
            return None
        if cfg.job.duration_s is not None and time.time() - started >= cfg.job.duration_s:
            return None
        items = ray.get(queue.take_scored.remote(cfg.learner.batch_turns))
        if items:
            turns, lost = resolve([box[0] for _, box in items])
            if not lost:
                return turns
            # payloads gone with a teacher that died after scoring them: drop those, give the rest back, retry
            ray.get(queue.drop_lost.remote([items[i][0] for i in lost]))
            ray.get(queue.requeue_training.remote())
            print(f"[learner] {len(lost)} scored turns were lost with their owner; dropped (counted as lost)")
            continue
        time.sleep(0.1)


def _record_metrics(step_metrics: dict, turns: list, version: int) -> None:
    now = time.time()
    metrics.inc("hsd_learner_steps_total")
    metrics.inc("hsd_learner_tokens_total", step_metrics.get("tokens", 0.0))
    metrics.inc("hsd_learner_turns_total", len(turns))
    metrics.set_gauge("hsd_learner_loss", step_metrics.get("loss", 0.0))
    for t in turns:
        if t.policy_version is not None:
            metrics.observe("hsd_staleness_versions", max(0, version - t.policy_version))
        metrics.observe("hsd_staleness_s", max(0.0, now - t.replied_at))


def _save_final(model, tokenizer, out: Path, step: int, version: int) -> None:
    from hsd_ray.core.policy import unwrap

    out.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(out)  # full model, or the peft adapter (adapter_config.json + safetensors)
    tokenizer.save_pretrained(out)
    (out / "hsd_version.json").write_text(json.dumps({"step": step, "version": version}))
    print(f"[learner] final weights (step {step}, v{version}) saved to {out}", flush=True)


def make_trainer(cfg: Config):
    """The TorchTrainer for `cfg` (the caller runs `.fit()`). Same output_dir → resumes from its latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = Path(cfg.job.output_dir).resolve() / "ray_train"
    storage.mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump()},
        scaling_config=ScalingConfig(
            num_workers=cfg.learner.num_workers,
            use_gpu=cfg.learner.use_gpu,
            resources_per_worker={"CPU": cfg.learner.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.learner.use_gpu else "gloo"),
        run_config=RunConfig(
            name="learner",
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.learner.max_failures),
        ),
    )
