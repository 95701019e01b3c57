"""Brings the whole loop up on a Ray cluster, watches it, and tears it down: what `train_job.py` calls.

    queue, registry, learner control  (named actors, namespace "hsd")
    ledger  → queue                    (capture)
    teachers → queue                   (hindsight scoring)
    chat service (Ray Serve)           (unless replaying a --source file)
    learner (Ray Train TorchTrainer)   (runs in a thread of this driver; Ray Train's controller does the work)

The driver prints a one-line throughput summary every `job.log_every_s`, sweeps expired replies, and stops the learner
on max_steps / duration / Ctrl-C. The final funnel counts are written to `<output_dir>/summary.json`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from hsd_ray.config import Config
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, VersionRegistry
from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger
from hsd_ray.loop.learner import CONTROL_ACTOR_NAME, LearnerControl, make_trainer
from hsd_ray.loop.queue import QUEUE_ACTOR_NAME, TurnQueue
from hsd_ray.loop.teacher import TeacherWorker


@dataclass
class Loop:
    """Handles of a running loop (everything a test or the driver needs to observe or disturb it)."""

    cfg: Config
    queue: object
    registry: object
    control: object
    ledger: object
    teachers: list = field(default_factory=list)
    base_url: str | None = None

    def stats(self) -> dict:
        queue, ledger, progress, versions = ray.get(
            [
                self.queue.stats.remote(),
                self.ledger.stats.remote(),
                self.control.get_progress.remote(),
                self.registry.latest_version.remote("base"),
            ]
        )
        return {"queue": queue, "capture": ledger, "learner": progress, "published_version": versions}

    def forget_user(self, user_id: str) -> dict:
        """Remove every trace of a user's turns that the loop holds (ledger and queue)."""
        return {
            "capture": ray.get(self.ledger.forget_user.remote(user_id)),
            "queue": ray.get(self.queue.forget_user.remote(user_id)),
        }


def connect(cfg: Config) -> None:
    """Attach to the cluster this runs on (ray job submit sets RAY_ADDRESS), or start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus,
            object_store_memory=cfg.ray.object_store_bytes,
            namespace=NAMESPACE,
            include_dashboard=False,
        )


def disconnect() -> None:
    """Stop Serve (if this driver started it) and leave Ray; for the scripts and tests that own their Ray."""
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve never started, or its controller is already gone
        pass
    ray.shutdown()


def start_loop(cfg: Config, *, serve_chat: bool = True) -> Loop:
    """Create the named actors, teachers and (optionally) the chat service. The learner is started separately."""
    d = cfg.model_dump()
    opts = dict(namespace=NAMESPACE, num_cpus=0, get_if_exists=False)
    queue = ray.remote(TurnQueue).options(name=QUEUE_ACTOR_NAME, **opts).remote(
        cfg.queue.capacity, cfg.queue.scored_capacity, cfg.queue.lease_timeout_s
    )
    registry = ray.remote(VersionRegistry).options(name=REGISTRY_ACTOR_NAME, **opts).remote(cfg.broadcast.keep_versions)
    control = ray.remote(LearnerControl).options(name=CONTROL_ACTOR_NAME, **opts).remote()
    ledger = ray.remote(ReplyLedger).options(name=LEDGER_ACTOR_NAME, **opts).remote(
        queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages
    )
    teachers = [start_teacher(cfg, d, queue, registry, i) for i in range(cfg.teacher.num_workers)]
    loop = Loop(cfg, queue, registry, control, ledger, teachers)
    if serve_chat:
        from hsd_ray.loop.serve import run_service

        loop.base_url = run_service(cfg)
    return loop


def start_teacher(cfg: Config, cfg_dict: dict, queue, registry, index: int):
    return (
        ray.remote(TeacherWorker)
        .options(
            name=f"hsd-teacher-{index}",
            namespace=NAMESPACE,
            num_cpus=cfg.teacher.cpus_per_worker,
            num_gpus=cfg.teacher.gpus_per_worker,
            max_restarts=-1,  # Ray restarts a dead teacher; its loop starts in __init__
            max_concurrency=4,  # stats() answers while the scoring thread works
        )
        .remote(cfg_dict, queue, registry, f"teacher-{index}")
    )


def replay_source(loop: Loop, path: str) -> int:
    """Logged conversations → turns → the same queue live capture feeds (each turn put once, by reference)."""
    from hsd_ray.core.turns import turns_from_source

    n, chunk = 0, []
    for turn in turns_from_source(path, loop.cfg.hindsight.max_context_messages):
        chunk.append((turn.turn_id, turn.user_id, [ray.put(turn)]))
        if len(chunk) == 64:
            n += len(chunk)
            ray.get(loop.queue.put.remote(chunk))
            chunk = []
    if chunk:
        n += len(chunk)
        ray.get(loop.queue.put.remote(chunk))
    return n


class LearnerThread(threading.Thread):
    """Runs `TorchTrainer.fit()` (blocking) beside the driver's monitor loop."""

    def __init__(self, cfg: Config):
        super().__init__(name="learner-fit", daemon=True)
        self.cfg, self.result, self.error = cfg, None, None

    def run(self) -> None:
        try:
            self.result = make_trainer(self.cfg).fit()
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e


def run_job(cfg: Config, *, on_ready=None) -> dict:
    """The whole job: returns (and writes) the final funnel summary. `on_ready(loop)` runs once the loop is up."""
    connect(cfg)
    out = Path(cfg.job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    loop = start_loop(cfg, serve_chat=cfg.job.source is None)
    users = None
    try:
        if cfg.job.source is not None:
            n = replay_source(loop, cfg.job.source)
            print(f"[job] replaying {n} logged turns from {cfg.job.source}", flush=True)
        if loop.base_url:
            print(f"[job] chat endpoint: {loop.base_url}  (try: python -m hsd_ray.chat --url {loop.base_url})")
        if cfg.job.simulate_users and loop.base_url:
            from hsd_ray.loop.users import DemoUsers

            users = DemoUsers(loop.base_url, cfg.job.simulate_users, seed=cfg.seed).start()
        learner = LearnerThread(cfg)
        learner.start()
        if on_ready is not None:
            on_ready(loop)
        _monitor(loop, learner)
        if learner.error is not None:
            raise RuntimeError(f"learner failed: {learner.error}") from learner.error
    finally:
        if users is not None:
            users.stop()
        summary = loop.stats()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _teardown(loop)
    return summary


def _monitor(loop: Loop, learner: LearnerThread) -> None:
    cfg = loop.cfg
    started = last_log = time.time()
    last_trained = 0
    try:
        while learner.is_alive():
            learner.join(timeout=1.0)
            loop.ledger.sweep.remote()
            if cfg.job.duration_s is not None and time.time() - started > cfg.job.duration_s + 5:
                loop.control.request_stop.remote()  # learner checks its own clock; this covers a learner stuck waiting
            if time.time() - last_log >= cfg.job.log_every_s:
                s = loop.stats()
                dt, last_log = time.time() - last_log, time.time()
                trained = s["queue"]["trained"]
                print(_summary_line(s, (trained - last_trained) / dt, time.time() - started), flush=True)
                last_trained = trained
    except KeyboardInterrupt:
        print("[job] stopping: final checkpoint and weights …", flush=True)
        loop.control.request_stop.remote()
        learner.join()


def _summary_line(s: dict, turns_per_s: float, elapsed: float) -> str:
    q, c, lr = s["queue"], s["capture"], s["learner"]
    return (
        f"[job {elapsed:6.0f}s] replies {c['recorded']} | captured {c['captured']} unmatched {c['unmatched']} "
        f"expired {c['expired']} | queue pending {q['pending']} scored {q['scored']} dropped {q['dropped_total']} | "
        f"trained {q['trained']} ({turns_per_s:.2f} turns/s) | step {lr.get('step', 0)} "
        f"v{max(0, s['published_version'])} "
        f"loss {lr.get('loss', float('nan')):.4f}"
    )


def _teardown(loop: Loop) -> None:
    for t in loop.teachers:
        ray.kill(t)
    if loop.base_url:
        from ray import serve

        serve.delete("hsd-chat")
    for actor in (loop.ledger, loop.control, loop.registry, loop.queue):
        ray.kill(actor)
