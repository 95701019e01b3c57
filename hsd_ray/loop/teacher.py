"""Teacher workers: Ray actors that lease captured turns, score them in hindsight, and hand them to the learner.

Each teacher holds one engine (vLLM prompt-logprob mode, or transformers) that follows the broadcast weights, so the
teacher is the *current* policy (as in the paper) up to the broadcast cadence; or, with `teacher.engine: serving`, it
scores on the chat replicas' async vLLM engine (loop/replica_scorer.py: one model copy less, a faster loop, slower
first tokens for chats), which serves the same accepted version. Its loop:

    QueueClient.lease → fetch_turns (one ray.get) → Turn.is_scorable → the feedback gate (core.feedback: is the
    follow-up about the reply?) → core.scoring.score_turns on the feedback turns (engine batches by token budget)
    → TurnRef.put each scored turn → QueueClient.complete(lease), with the not-feedback turns and every decision

The gate runs here, inside the teacher's batch (no extra round trip), before any engine work: a follow-up that is
not feedback costs no scoring pass and never trains anything (dropped as `not_feedback`), nor does feedback of a
kind weighted 0 (dropped as `zero_weight`); the kind's loss weight travels on the Turn (`Turn.feedback`) to the
learner.

A batch that fails to score is split in halves until the turns that fail alone are found (`_score_bisect`): the good
ones go on, the bad ones are handed back with their error text (`complete(errors=...)`), and the queue retries or
dead-letters them by their delivery count. A turn the feedback gate fails on is handled the same way.

A teacher that dies mid-batch never completes its lease; the queue re-delivers those turns after the lease timeout.
The loop starts in the constructor, so an actor restarted by Ray (max_restarts) resumes work by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from hsd_ray import metrics
from hsd_ray.config import EngineConfig, FeedbackConfig, HindsightConfig, LossConfig, TeacherConfig
from hsd_ray.core.engine_api import EngineUnavailable
from hsd_ray.core.scoring import score_turns
from hsd_ray.core.version_gate import rate_kind
from hsd_ray.data import build_gate
from hsd_ray.loop.broadcast import WeightFollower
from hsd_ray.loop.queue import Lease, TurnRef
from hsd_ray.loop.queue_client import QueueClient, fetch_turns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSettings:
    """The config sections a teacher reads, resolved once by the job (config at the edges)."""

    model_dir: str
    engine: EngineConfig
    teacher: TeacherConfig
    hindsight: HindsightConfig
    loss: LossConfig
    feedback: FeedbackConfig
    enable_lora: bool  # the engine must accept LoRA adapters (the learner trains LoRA)


class TeacherWorker:
    """The teacher actor's class (`ray.remote(TeacherWorker)`, started by loop/job.py)."""

    def __init__(self, settings: TeacherSettings, queue, registry, name: str = "teacher"):
        from hsd_ray.engines.factory import make_engine

        self.settings, self.name = settings, name
        self.queue = QueueClient(queue)
        if settings.teacher.engine == "serving":  # the chat replicas' engine: they follow the weights
            from hsd_ray.loop.replica_scorer import ReplicaScorer
            from hsd_ray.loop.serve import APP_NAME

            self.engine, self.follower = ReplicaScorer(settings.model_dir, APP_NAME), None
        else:
            self.engine = make_engine(settings.model_dir, settings.engine, enable_lora=settings.enable_lora,
                                      score_token_budget=settings.teacher.token_budget)
            self.follower = WeightFollower(self.engine, registry, role="teacher") if registry is not None else None
        self.gate = build_gate(settings.feedback)
        self.tally = metrics.Tally({
            "batches": None, "turns": "hsd_teacher_turns_scored_total", "tokens": "hsd_teacher_tokens_scored_total",
            "failed": None, "late": None, "errors": None, "unavailable": None,
        })
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._thread.start()

    # ---- actor methods ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {**self.tally.snapshot(), "version": self.engine.version.version, "alive": self._thread.is_alive(),
                "engine": type(self.engine).__name__}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    # ---- loop -------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    self._stop.wait(self.settings.teacher.idle_sleep_s)
            except Exception:  # noqa: BLE001 - keep the worker alive; the lease will be re-delivered
                log.exception("%s: batch failed", self.name)
                self._stop.wait(1.0)

    def step(self) -> bool:
        """Score one leased batch. Returns False when there was nothing to do."""
        if self.follower is not None:
            self.follower.poll()  # switch weights between batches, never during one
        lease = self.queue.lease(self.settings.teacher.max_batch_turns)
        if lease is None:
            return False
        t0 = time.perf_counter()
        try:
            accepted, scored = self._score_lease(lease)
        except EngineUnavailable as e:  # no fault of the turns: the lease goes back whole, no delivery counted
            log.warning("%s: %s; %d turns handed back", self.name, e, self.queue.release(lease))
            self.tally.add("unavailable")
            self._stop.wait(1.0)
            return True
        self.tally.add("batches")
        if accepted:
            tokens = sum(t.scores.teacher_prompt_tokens + t.scores.baseline_prompt_tokens
                         + 2 * len(t.scores.target_ids_T) for t in scored)
            self.tally.add("turns", len(scored))
            self.tally.add("tokens", tokens)
            metrics.observe("hsd_teacher_batch_s", time.perf_counter() - t0)
        else:
            self.tally.add("late")
        return True

    def _score_lease(self, lease: Lease) -> tuple[bool, list]:
        """Fetch, score and hand back one lease; returns (the queue accepted it, the scored turns)."""
        turns, lost = fetch_turns(lease.turns)
        if lost:
            log.warning("%s: %d captured turns were lost with their owner (dropped)", self.name, len(lost))
        scorable, unscorable = [], []
        for t in turns:  # ask each turn once
            (scorable if t.is_scorable() else unscorable).append(t)
        failed = [t.turn_id for t in unscorable]
        self.tally.add("failed", len(failed))
        errors: dict[str, str] = {}
        for t in scorable:
            try:
                t.feedback = self.gate.decide(t.last_user_message(), t.reply, t.followup)
            except Exception as e:  # noqa: BLE001 - a poison turn: handed back with its error, never the batch
                errors[t.turn_id] = f"feedback gate: {type(e).__name__}: {e}"
        decided = [t for t in scorable if t.turn_id not in errors]
        self._score_bisect([t for t in decided if t.feedback.trains], errors)
        done = [t for t in decided if t.turn_id not in errors]  # a retried turn's decision is counted once, later
        scored = [t for t in done if t.feedback.trains]
        not_feedback = [t.turn_id for t in done if not t.feedback.is_feedback]
        zero_weight = [t.turn_id for t in done if t.feedback.is_feedback and not t.feedback.trains]
        decisions = [f"{'feedback' if t.feedback.is_feedback else 'not_feedback'}:{t.feedback.kind}" for t in done]
        receptions = [(t.policy_version, rate_kind(t.feedback.is_feedback, t.feedback.kind) if t.feedback else "none")
                      for t in turns if t.turn_id not in errors]  # per served version; a retried turn counts later
        self.tally.add("errors", len(errors))
        accepted = self.queue.complete(lease, [TurnRef.put(t) for t in scored], failed, [t.turn_id for t in lost],
                                       not_feedback, decisions, errors, receptions, zero_weight)
        return accepted, scored

    def _score_bisect(self, turns: list, errors: dict[str, str]) -> None:
        """Score `turns`; when the batch fails, score each half again, down to the single turns that fail alone,
        whose error text goes into `errors` (so one poison turn costs about 2·log2(batch) extra engine calls)."""
        if not turns:
            return
        try:
            score_turns(self.engine, turns, self.settings.hindsight, self.settings.loss)
        except EngineUnavailable:
            raise  # the engine, not these turns: the whole lease goes back (step)
        except Exception as e:  # noqa: BLE001 - any scoring failure is some turn's (or the engine's) problem
            if len(turns) == 1:
                errors[turns[0].turn_id] = f"{type(e).__name__}: {e}"[:2000]
                log.warning("%s: turn %s failed to score: %s", self.name, turns[0].turn_id, errors[turns[0].turn_id])
                return
            mid = len(turns) // 2
            self._score_bisect(turns[:mid], errors)
            self._score_bisect(turns[mid:], errors)
