"""One lifecycle for the loop: bring it up on a Ray cluster, watch it, tear it down. `train_job.py`, the benchmarks and
the tests all use `running_loop`:

    with running_loop(cfg) as loop:      # queue, registry, learner control, ledger, teachers, chat service, learner
        ...                              # loop.base_url, loop.stats(), loop.queue / loop.registry clients

Each part receives only its own config sections, resolved once here (`TeacherSettings`, `ServiceSettings`,
`LearnerSettings`). The learner (Ray Train's `TorchTrainer.fit()`) runs in a thread of this driver. `run_job` is the
whole job: it prints a one-line throughput summary every `job.log_every_s`, sweeps expired replies, stops on
max_steps / duration / Ctrl-C (a replay, `job.source`: also once every turn is trained) and writes the final funnel
counts to `<output_dir>/summary.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import ray

from hsd_ray.config import Config
from hsd_ray.core.adapter_bank import ADAPTERS_DIR
from hsd_ray.core.redact import redact_turn
from hsd_ray.core.version_gate import gate_cost
from hsd_ray.core.weights import BASE_ADAPTER
from hsd_ray.data.turnlog import TurnLog, is_turn_log
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, RegistryClient, VersionRegistry
from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger, forget_user
from hsd_ray.loop.gatekeeper import start_gatekeeper
from hsd_ray.loop.learner import CONTROL_ACTOR_NAME, LearnerControl, LearnerSettings, make_trainer
from hsd_ray.loop.queue import QUEUE_ACTOR_NAME, TurnQueue, TurnRef
from hsd_ray.loop.queue_client import QueueClient
from hsd_ray.loop.runtime import connect
from hsd_ray.loop.teacher import TeacherSettings, TeacherWorker
from hsd_ray.loop.users import DemoUsers

log = logging.getLogger("hsd_ray.job")
VERSIONS_FILE = "versions.json"  # the registry's version records (states, gate numbers), kept across restarts
SERVED_WEIGHTS_FILE = "served_weights.pt"  # the latest accepted weight set, for a restarted registry
CONTROL_FILE = "learner_control.json"  # the driver's stop / admin pause, for a restarted learner control
TURNLOG_DIR = "turnlog"  # the durable turn log's default place under job.output_dir


def turnlog_uri(cfg: Config) -> str | None:
    """Where the durable turn log lives (None: turnlog.enabled is false)."""
    if not cfg.turnlog.enabled:
        return None
    return cfg.turnlog.uri or str(Path(cfg.job.output_dir).resolve() / TURNLOG_DIR)


def control_actor_options(name: str) -> dict:
    """A control actor (queue, ledger, registry, learner control): restarted by Ray when it dies, and its calls
    retried on the new incarnation (each one is idempotent, or harmless when repeated; see each class). Each
    rebuilds its state in __init__: the queue from the turn log, the registry from versions.json and the served
    weights on disk, the learner control from its file."""
    return dict(name=name, namespace=NAMESPACE, num_cpus=0, get_if_exists=False, max_restarts=-1,
                max_task_retries=-1)


def learner_settings(cfg: Config) -> LearnerSettings:
    """The learner's sections; paths resolved here, in the driver (a Train worker runs in Ray's session folder)."""
    from hsd_ray.models import resolve_model

    out = Path(cfg.job.output_dir).resolve()
    snapshots = str(out / "rollback") if cfg.version_gate.snapshots == "disk" else None
    return LearnerSettings(str(resolve_model(cfg.model)), cfg.learner, cfg.loss, cfg.broadcast, str(out),
                           cfg.job.max_steps, cfg.job.duration_s, cfg.seed, cfg.version_gate.enabled,
                           cfg.version_gate.decision_timeout_s, snapshots,
                           cfg.personalization if cfg.personalization.per_user else None,
                           cfg.gates_user_adapters, cfg.version_gate.user_probes, cfg.influence,
                           traffic_probes=cfg.version_gate.traffic_probes)


def teacher_settings(cfg: Config) -> TeacherSettings:
    from hsd_ray.models import resolve_model

    return TeacherSettings(str(resolve_model(cfg.model)), cfg.engine, cfg.teacher, cfg.hindsight, cfg.loss,
                           cfg.feedback, enable_lora=cfg.learner.lora.enabled)


class LearnerThread(threading.Thread):
    """Runs `TorchTrainer.fit()` (blocking) beside the driver. The driver waits on `finished` (set when fit()
    returns or raises), not on `Thread.join`: in CPython 3.11 a Ctrl-C that interrupts `join()` releases the running
    thread's state lock, so `is_alive()` turns False while fit() still runs — the driver then tore the loop down
    under a learner that was about to write its final weights."""

    def __init__(self, cfg: Config):
        super().__init__(name="learner-fit", daemon=True)
        self.settings, self.learner_cfg = learner_settings(cfg), cfg.learner
        self.result, self.error = None, None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.result = make_trainer(self.settings, self.learner_cfg).fit()
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e
        finally:
            self.finished.set()

    @property
    def running(self) -> bool:
        return self.is_alive() and not self.finished.is_set()  # is_alive() alone: see the class docstring

    def wait(self, timeout: float | None = None) -> bool:
        """True once fit() has ended. Safe to interrupt (Ctrl-C) and to call again."""
        return self.finished.wait(timeout)


@dataclass
class Loop:
    """A running loop: typed clients of its actors, its teachers, the chat URL and the learner thread."""

    cfg: Config
    queue: QueueClient
    registry: RegistryClient
    control: object  # LearnerControl actor handle
    ledger: object  # ReplyLedger actor handle
    teachers: list = field(default_factory=list)
    base_url: str | None = None
    learner: LearnerThread | None = None
    gatekeeper: object = None  # Gatekeeper actor handle (None: version_gate.enabled=false)
    replayer: "ReplayThread | None" = None
    turnlog: TurnLog | None = None  # the durable turn log (a replay logs its turns into it too)

    def start_learner(self, cfg: Config | None = None) -> LearnerThread:
        """Start a learner (Ray Train) on `cfg` (default: the loop's). A learner on the same output_dir resumes."""
        self.learner = LearnerThread(cfg or self.cfg)
        self.learner.start()
        return self.learner

    def stop_learner(self, timeout: float = 600.0) -> None:
        """Ask the learner to stop (final checkpoint and version) and wait for it."""
        if self.learner is not None and self.learner.running:
            self.control.request_stop.remote()
            self.learner.wait(timeout)

    def stats(self, timeout_s: float = 30.0) -> dict:
        """The funnel counts of every actor. Never raises: a part whose actor is dead or does not answer within
        `timeout_s` keeps an empty value and is named, with its error, under "errors" (absent when all answered), so
        the driver's monitor and its final summary.json outlive any one actor."""
        calls = {
            "queue": (self.queue.handle.stats, (), {}),
            "capture": (self.ledger.stats, (), {}),
            "learner": (self.control.get_progress, (), {}),
            "published_version": (self.registry.handle.latest_version, (BASE_ADAPTER,), -1),
            "versions": (self.registry.handle.versions, (BASE_ADAPTER,), []),
            "user_adapters": (self.registry.handle.user_version_counts, (), {}),
        }
        refs, out, errors = {}, {}, {}
        for key, (method, args, empty) in calls.items():
            out[key] = empty
            try:
                refs[key] = method.remote(*args)
            except Exception as e:  # noqa: BLE001 - a handle that cannot even submit
                errors[key] = f"{type(e).__name__}: {e}"
        deadline = time.monotonic() + timeout_s
        for key, ref in refs.items():
            try:
                out[key] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - RayActorError, GetTimeoutError, ...: reported, never raised
                errors[key] = f"{type(e).__name__}: {e}"[:500]
        out["versions_rejected"] = sum(v["state"] == "rejected" for v in out["versions"])
        out["feedback_by_version"] = out["queue"].pop("feedback_by_version", {})
        lr = out["learner"]
        out["version_gate_cost"] = gate_cost(out["versions"], lr.get("train_s", 0.0), lr.get("train_steps", 0),
                                             self.cfg.broadcast.every_steps)
        if errors:
            out["errors"] = errors
        return out

    def forget_user(self, user_id: str) -> dict:
        """Delete a user's data (capture.forget_user), their per-user adapter included. The shared policy keeps what
        it learned from them."""
        return forget_user(self.ledger, self.queue.handle, user_id, self.registry.handle)

    def replay(self, path: str) -> "ReplayThread":
        """Start replaying logged conversations into the queue (a thread beside the learner; see ReplayThread)."""
        self.replayer = ReplayThread(self, path)
        self.replayer.start()
        return self.replayer

    def shutdown(self) -> None:
        """Stop the learner if it still runs, then remove the chat service, teachers and named actors."""
        if self.replayer is not None:
            self.replayer.stop()
        self.stop_learner()
        for t in [*self.teachers, *([self.gatekeeper] if self.gatekeeper is not None else [])]:
            ray.kill(t)
        if self.base_url:
            from ray import serve

            from hsd_ray.loop.admin import ADMIN_APP_NAME
            from hsd_ray.loop.serve import APP_NAME

            serve.delete(APP_NAME)
            serve.delete(ADMIN_APP_NAME)
        for actor in (self.ledger, self.control, self.registry.handle, self.queue.handle):
            ray.kill(actor, no_restart=True)


class ReplayThread(threading.Thread):
    """Logged conversations (or a turn log: `--source <output_dir>/turnlog` replays its turns, exact token ids
    included) → turns → the same queue live capture feeds, each turn `ray.put` once, with
    back-pressure: turns are offered in chunks (`QueueClient.offer`), and what does not fit is offered again after a
    short wait, so a replay never drops a turn to overflow (live traffic's `put` drops the oldest instead). When the
    source is read the queue is closed, so the learner trains the final partial batch and then stops."""

    CHUNK = 64  # turns put into the object store at a time (at most this many wait in the driver)

    def __init__(self, loop: Loop, path: str, wait_s: float = 0.05):
        super().__init__(name="replay", daemon=True)
        self.loop, self.path, self.wait_s = loop, path, wait_s
        self.offered, self.error = 0, None
        self._halt = threading.Event()

    def run(self) -> None:
        from hsd_ray.core.turns import ReadReport, turns_from_source

        report, job = ReadReport(), self.loop.cfg.job
        try:
            chunk = []
            turns = (TurnLog(self.path).turns() if is_turn_log(self.path) else
                     turns_from_source(self.path, self.loop.cfg.hindsight.max_context_messages,
                                       language=job.source_language, drop_toxic=job.source_drop_toxic, report=report))
            for turn in turns:
                chunk.append(turn)
                if len(chunk) == self.CHUNK:
                    self._offer_all(chunk)
                    chunk = []
            self._offer_all(chunk)
            if not self._halt.is_set():
                self.loop.queue.close()
                log.info("[job] replayed %d turns from %s: %s", self.offered, self.path, report.summary())
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e
            log.error("[job] replay of %s failed after %d turns: %s", self.path, self.offered, e)

    def _offer_all(self, turns: list) -> None:
        if self.loop.cfg.capture.redact_pii:  # logged data holds what users typed: the same rule as live capture
            turns = [redact_turn(t)[0] for t in turns]
        if self.loop.turnlog is not None and turns:  # durable before the queue sees them (a queue restart rebuilds)
            self.loop.turnlog.append_turns(turns)
        refs = [TurnRef.put(t) for t in turns]
        while refs and not self._halt.is_set():
            taken = self.loop.queue.offer(refs)
            self.offered += taken
            refs = refs[taken:]
            if refs:
                self._halt.wait(self.wait_s)  # the queue is full: wait for teachers to lease

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout)


def start_loop(cfg: Config, *, serve_chat: bool = True, demo_keys: tuple = ()) -> Loop:
    """Create the named actors, teachers and (optionally) the chat service. The learner is started separately.
    `demo_keys`: the demo users' key records, accepted by the chat service beside the key file (loop/users.py)."""
    if cfg.teacher.engine == "serving" and not serve_chat:
        raise ValueError("teacher.engine=serving scores on the chat replicas' engine: start the chat service too")
    out, log_uri, retention = Path(cfg.job.output_dir).resolve(), turnlog_uri(cfg), cfg.turnlog.retention_s
    queue = ray.remote(TurnQueue).options(**control_actor_options(QUEUE_ACTOR_NAME)).remote(
        cfg.queue.capacity, cfg.queue.scored_capacity, cfg.queue.lease_timeout_s, cfg.queue.max_attempts,
        cfg.queue.dead_letter_capacity, lossless=cfg.job.source is not None,  # a replay loses nothing to overflow
        log_uri=log_uri, log_retention_s=retention, round_robin_users=cfg.personalization.per_user,
        # mode both: every turn trains its user's adapter; the limits bound the shared steps (both_learner.py)
        **({} if cfg.personalization.mode == "both" else dict(
            max_turns_per_user=cfg.influence.max_turns_per_user, quota_window_s=cfg.influence.window_s,
            min_users_per_step=cfg.influence.min_users_per_step)),
    )
    registry = ray.remote(VersionRegistry).options(**control_actor_options(REGISTRY_ACTOR_NAME)).remote(
        cfg.broadcast.keep_versions, cfg.version_gate.enabled, str(out / VERSIONS_FILE),
        str(out / SERVED_WEIGHTS_FILE) if cfg.broadcast.persist_weights else None, str(out / ADAPTERS_DIR),
        cfg.gates_user_adapters,
    )
    (out / CONTROL_FILE).unlink(missing_ok=True)  # a new job is neither stopped nor paused; a restarted actor reads it
    control = ray.remote(LearnerControl).options(**control_actor_options(CONTROL_ACTOR_NAME)).remote(
        str(out / CONTROL_FILE))
    ledger = ray.remote(ReplyLedger).options(**control_actor_options(LEDGER_ACTOR_NAME)).remote(
        queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages, log_uri=log_uri, log_retention_s=retention,
        redact_pii=cfg.capture.redact_pii,
    )
    settings = teacher_settings(cfg)
    teachers = [start_teacher(cfg, settings, queue, registry, i) for i in range(cfg.teacher.num_workers)]
    loop = Loop(cfg, QueueClient(queue), RegistryClient(registry), control, ledger, teachers,
                gatekeeper=start_gatekeeper(cfg, registry),
                turnlog=TurnLog(log_uri, retention) if log_uri else None)
    if serve_chat:
        from hsd_ray.loop.admin import run_admin
        from hsd_ray.loop.serve import run_service

        loop.base_url = run_service(cfg, demo_keys=demo_keys)
        run_admin(cfg.admin.key)
    return loop


def start_teacher(cfg: Config, settings: TeacherSettings, queue, registry, index: int):
    return (
        ray.remote(TeacherWorker)
        .options(
            name=f"hsd-teacher-{index}",
            namespace=NAMESPACE,
            num_cpus=cfg.teacher.cpus_per_worker,
            num_gpus=cfg.teacher.gpus_per_worker,
            resources=cfg.teacher.resources,
            max_restarts=-1,  # Ray restarts a dead teacher; its loop starts in __init__
            max_concurrency=4,  # stats() answers while the scoring thread works
        )
        .remote(settings, queue, registry, f"teacher-{index}")
    )


@contextlib.contextmanager
def running_loop(cfg: Config, *, serve_chat: bool = True, learner: bool = True,
                 demo_keys: tuple = ()) -> Iterator[Loop]:
    """The loop, up for the body of the `with` (Ray must be connected); torn down afterwards, whatever happens."""
    loop = start_loop(cfg, serve_chat=serve_chat, demo_keys=demo_keys)
    try:
        if learner:
            loop.start_learner()
        yield loop
    finally:
        loop.shutdown()


def run_job(cfg: Config, *, on_ready=None) -> dict:
    """The whole job: returns (and writes) the final funnel summary. `on_ready(loop)` runs once the loop is up."""
    dashboard = connect(cfg.ray)
    _stop_on_sigterm()
    out = Path(cfg.job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    summary: dict = {}
    serve_chat = cfg.job.source is None
    users = (DemoUsers(cfg.job.simulate_users, seed=cfg.seed, with_keys=cfg.auth.mode == "api_keys")
             if cfg.job.simulate_users and serve_chat else None)
    with running_loop(cfg, serve_chat=serve_chat, learner=False,
                      demo_keys=users.key_records if users else ()) as loop:
        try:
            if cfg.job.source is not None:
                log.info("[job] replaying %s (the job ends once every turn is trained)", cfg.job.source)
                loop.replay(cfg.job.source)
            if loop.base_url:
                log.info("[job] chat endpoint: %s  (try: python -m hsd_ray.chat --url %s)", loop.base_url,
                         loop.base_url)
            log.info("[job] Ray dashboard: %s", f"{dashboard}  (jobs, actors, metrics; ray job submit --address "
                     f"{dashboard})" if dashboard else "not running (install ray[default], or ray.dashboard=false)")
            if users is not None:
                users.start(loop.base_url)
            learner = loop.start_learner()
            if on_ready is not None:
                on_ready(loop)
            _monitor(loop, learner)
            if learner.error is not None:
                raise RuntimeError(f"learner failed: {learner.error}") from learner.error
            if loop.replayer is not None and loop.replayer.error is not None:
                raise RuntimeError(f"replay failed: {loop.replayer.error}") from loop.replayer.error
        finally:
            if users is not None:
                users.stop()
            summary = loop.stats()
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _monitor(loop: Loop, learner: LearnerThread) -> None:
    cfg = loop.cfg
    started = last_log = last_sweep = time.time()
    last_trained = 0
    try:
        while not learner.wait(timeout=1.0):
            if time.time() - last_sweep >= cfg.capture.sweep_every_s:
                loop.ledger.sweep.remote()
                last_sweep = time.time()
            if cfg.job.duration_s is not None and time.time() - started > cfg.job.duration_s + 5:
                loop.control.request_stop.remote()  # learner checks its own clock; this covers a learner stuck waiting
            if time.time() - last_log >= cfg.job.log_every_s:
                s = loop.stats()
                dt, last_log = time.time() - last_log, time.time()
                if "errors" in s:  # an actor is dead or slow: say so and go on watching the learner
                    log.warning("[job %6.0fs] stats unavailable: %s", time.time() - started, s["errors"])
                    continue
                trained = s["queue"]["trained"]
                log.info(_summary_line(s, (trained - last_trained) / dt, time.time() - started))
                last_trained = trained
    except KeyboardInterrupt:
        log.info("[job] stopping: final checkpoint and weights … (Ctrl-C again: stop without them)")
        try:
            loop.stop_learner()
        except KeyboardInterrupt:
            log.warning("[job] stopping without the final checkpoint and weights")
            loop.learner = None  # the teardown does not wait for it again


def _stop_on_sigterm() -> None:
    """SIGTERM (`ray job stop`, `kill`, a Kubernetes pod's shutdown) stops the job as Ctrl-C does: final checkpoint,
    weights, summary.json, actors torn down. Set after `ray.init`, whose driver handler for SIGTERM prints a stack
    and aborts the process (exit -6, no summary). Only the main thread may set a handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def _summary_line(s: dict, turns_per_s: float, elapsed: float) -> str:
    q, c, lr = s["queue"], s["capture"], s["learner"]
    return (
        f"[job {elapsed:6.0f}s] replies {c['recorded']} | captured {c['captured']} unmatched {c['unmatched']} "
        f"expired {c['expired']} | queue pending {q['pending']} scored {q['scored']} dropped {q['dropped_total']} | "
        f"trained {q['trained']} ({turns_per_s:.2f} turns/s) | step {lr.get('step', 0)} "
        f"v{max(0, s['published_version'])} rejected {s.get('versions_rejected', 0)}{_adapters_text(s)} "
        f"loss {lr.get('loss', float('nan')):.4f}{_rates_text(s.get('feedback_by_version', {}))}"
    )


def _adapters_text(s: dict) -> str:
    """Per-user adapters (per_user mode), when any has versions: " | user adapters 2: versions 5 accepted 1 rejected
    1 pending" (the shared policy's "v0" alone would say nothing was learned)."""
    a = s.get("user_adapters") or {}
    if not a.get("adapters"):
        return ""
    return (f" | user adapters {a['adapters']}: versions {a['accepted']} accepted {a['rejected']} rejected "
            f"{a['candidate']} pending |")


def _rates_text(rates: dict, last: int = 3) -> str:
    """The newest versions' reception rates: " | feedback v3 n12 complaint 0.25 thanks 0.08 none 0.67; ..."."""
    if not rates:
        return ""
    parts = [f"v{v} n{r['turns']} complaint {r['complaint']:.2f} thanks {r['positive']:.2f} none {r['none']:.2f}"
             for v, r in sorted(rates.items(), key=lambda kv: int(kv[0]))[-last:]]
    return " | feedback " + "; ".join(parts)
