"""teacher.engine=serving: teachers score on the chat replicas' async vLLM engine instead of one of their own
(loop/replica_scorer.py). Real local Ray, Serve, Train worker and vLLM engine; tiny random model."""

from __future__ import annotations

import pytest
import ray

from hsd_ray.config import Config
from tests.integration.test_loop import _accounting_holds, _cfg, _learn_from_four_complaints, _probe, _wait

pytestmark = pytest.mark.integration


def test_teachers_score_on_the_chat_replicas_engine(ray_session, tiny_model_dir, tmp_path):
    """The loop learns with no teacher engine: turns are scored on the replica, by the version it serves; a turn the
    replica's engine refuses is still a poison turn (dead-lettered), not an unreachable engine."""
    pytest.importorskip("vllm")
    from openai import OpenAI

    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.queue import TurnRef

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "engine.kind": "vllm", "engine.max_model_len": 512, "job.max_steps": 2, "teacher.engine": "serving",
        "serve.replicas": 1, "feedback.gate": "none",
    })
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=120)
        assert ray.get(loop.teachers[0].stats.remote())["engine"] == "ReplicaScorer"  # no model copy of its own
        fp0, lp0 = _probe(client)
        stats = _learn_from_four_complaints(loop, client)
        final = stats["published_version"]
        fp1, lp1 = _wait(lambda: (p := _probe(client))[0] == f"hsd-base-v{final}" and p, 60, "the replica's swap")
        assert max(abs(a - b) for a, b in zip(lp0, lp1)) > 1e-4  # the learner's steps are served

        good = Turn(context=[{"role": "user", "content": "question g"}], reply="an answer", followup="no, shorter")
        poison = Turn(context=[{"role": "user", "content": "question p"}], reply="x", followup="no",
                      reply_token_ids=[10**7], reply_logprobs=[-1.0])  # an id far beyond the vocabulary
        loop.queue.put([TurnRef.put(good), TurnRef.put(poison)])
        q = _wait(lambda: (s := loop.queue.stats())["dead_letters"] == 1 and s["scored"] == 1 and s, 120,
                  "the good turn scored, the poison one dead-lettered")
        teacher = ray.get(loop.teachers[0].stats.remote())
    assert q["released"] == 0 and q["retried"] == cfg.queue.max_attempts - 1 and _accounting_holds(q), q
    assert teacher["version"] == final and teacher["unavailable"] == 0, teacher  # scored by the served version


def test_without_a_chat_replica_the_teacher_hands_its_lease_back(ray_session, tiny_model_dir):
    """No replica to score on is no fault of the turns: the teacher gives each lease back whole, and however often
    that happens (max_attempts=1 here) no turn is retried as poison or dead-lettered."""
    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import teacher_settings
    from hsd_ray.loop.queue import TurnQueue, TurnRef
    from hsd_ray.loop.teacher import TeacherWorker

    cfg = Config.load(overrides=[f"model={tiny_model_dir}", "engine.kind=vllm", "teacher.engine=serving",
                                 "feedback.gate=none", "teacher.idle_sleep_s=0.05"])
    queue = ray.remote(TurnQueue).remote(max_attempts=1)
    teacher = ray.remote(TeacherWorker).options(num_cpus=0).remote(teacher_settings(cfg), queue, None, "t")
    try:
        turns = [Turn(context=[{"role": "user", "content": f"q {j}"}], reply="a", followup="no") for j in range(2)]
        ray.get(queue.put.remote([TurnRef.put(t) for t in turns]))
        _wait(lambda: ray.get(teacher.stats.remote())["unavailable"] >= 2, 120, "two leases handed back")
        q = ray.get(queue.stats.remote())
        assert q["released"] >= 4 and q["dead_letters"] == 0 and q["retried"] == 0, q
        assert q["pending"] + q["leased"] == 2 and q["dropped_total"] == 0, q
    finally:
        ray.get(teacher.stop.remote())
        ray.kill(teacher)
        ray.kill(queue)
