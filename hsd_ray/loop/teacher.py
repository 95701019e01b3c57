"""Teacher workers: Ray actors that lease captured turns, score them in hindsight, and hand them to the learner.

Each teacher holds one engine (vLLM prompt-logprob mode, or transformers) that follows the broadcast weights, so the
teacher is the *current* policy (as in the paper) up to the broadcast cadence. Its loop:

    lease ≤ max_batch_turns turns → fetch them (one ray.get) → core.scoring.score_turns (engine batches by token budget)
    → ray.put each scored turn → queue.complete(lease)

A teacher that dies mid-batch never completes its lease; the queue re-delivers those turns after the lease timeout.
The loop starts in the constructor, so an actor restarted by Ray (max_restarts) resumes work by itself.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from hsd_ray import metrics
from hsd_ray.config import Config
from hsd_ray.core.scoring import score_turns
from hsd_ray.loop.broadcast import WeightFollower
from hsd_ray.loop.queue import resolve

log = logging.getLogger(__name__)


class TeacherWorker:
    """Plain class; wrapped with ray.remote by `start_teachers` (in hsd_ray.loop.job)."""

    def __init__(self, cfg_dict: dict, queue, registry, name: str = "teacher"):
        from hsd_ray.engines.factory import make_engine
        from hsd_ray.models import resolve_model

        self.cfg = Config.model_validate(cfg_dict)
        self.queue, self.name = queue, name
        self.engine = make_engine(
            resolve_model(self.cfg.model),
            self.cfg.engine,
            enable_lora=self.cfg.learner.lora.enabled,
            score_token_budget=self.cfg.teacher.token_budget,
        )
        self.follower = WeightFollower(self.engine, registry, role="teacher") if registry is not None else None
        self.counts = {"batches": 0, "turns": 0, "tokens": 0, "failed": 0, "late": 0}
        self._stop = threading.Event()
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._thread.start()

    # ---- actor methods ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {**self.counts, "version": self.engine.version.version, "alive": self._thread.is_alive()}

    def busy_since(self) -> float | None:
        """When the current batch started (None when idle) — lets tests kill a teacher mid-batch."""
        return self._busy_since

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # ---- loop -------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    self._stop.wait(self.cfg.teacher.idle_sleep_s)
            except Exception:  # noqa: BLE001 - keep the worker alive; the lease will be re-delivered
                log.exception("%s: batch failed", self.name)
                self._stop.wait(1.0)

    def step(self) -> bool:
        """Score one leased batch. Returns False when there was nothing to do."""
        if self.follower is not None:
            self.follower.poll()  # switch weights between batches, never during one
        lease_id, items = ray.get(self.queue.lease.remote(self.cfg.teacher.max_batch_turns))
        if lease_id is None:
            return False
        self._busy_since = time.time()
        t0 = time.perf_counter()
        turns, lost = resolve([box[0] for _, box in items])
        lost_ids = [items[i][0] for i in lost]
        if lost_ids:
            log.warning("%s: %d captured turns were lost with their owner (dropped)", self.name, len(lost_ids))
        scorable, failed = [], []
        for t in turns:
            (scorable if _scorable(t) else failed).append(t)
        score_turns(self.engine, scorable, self.cfg.hindsight, self.cfg.loss)
        scored = [(t.turn_id, [ray.put(t)]) for t in scorable]
        accepted = ray.get(self.queue.complete.remote(lease_id, scored, [t.turn_id for t in failed], lost_ids))
        dt = time.perf_counter() - t0
        tokens = sum(
            t.scores.teacher_prompt_tokens + t.scores.baseline_prompt_tokens + 2 * len(t.scores.target_ids_T)
            for t in scorable
        )
        self.counts["batches"] += 1
        self.counts["failed"] += len(failed)
        if accepted:
            self.counts["turns"] += len(scorable)
            self.counts["tokens"] += tokens
            metrics.inc("hsd_teacher_turns_scored_total", len(scorable))
            metrics.inc("hsd_teacher_tokens_scored_total", tokens)
            metrics.observe("hsd_teacher_batch_s", dt)
        else:
            self.counts["late"] += 1
        self._busy_since = None
        return True


def _scorable(turn) -> bool:
    """A turn needs a user message to attach the hindsight to, and a non-empty reply."""
    return any(m["role"] == "user" for m in turn.context) and bool(turn.reply_token_ids or turn.reply)
