"""A poison turn (scoring it raises) goes to the queue's dead letters while the turns around it are trained, with
the accounting exact: captured = trained + dropped (by reason) + in flight. Real local Ray, tiny model."""

from __future__ import annotations

import time

import pytest

from hsd_ray.config import Config

pytestmark = pytest.mark.integration


def test_poison_turn_is_dead_lettered_and_the_rest_trained(ray_session, tiny_model_dir, tmp_path):
    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.queue import TurnRef

    overrides = {
        "model": str(tiny_model_dir), "engine.kind": "hf", "feedback.gate": "none", "learner.batch_turns": 2,
        "learner.warmup_steps": 0, "learner.cpus_per_worker": 1, "learner.checkpoint_every_steps": 10,
        "job.output_dir": str(tmp_path / "run"), "job.max_steps": 2, "teacher.idle_sleep_s": 0.05,
        "queue.max_attempts": 2,
    }
    cfg = Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()])
    good = [Turn(context=[{"role": "user", "content": f"question {j}"}], reply="an answer", followup="no, shorter")
            for j in range(4)]
    poison = Turn(context=[{"role": "user", "content": "question p"}], reply="x", followup="no",
                  reply_token_ids=[10**7], reply_logprobs=[-1.0])  # an id far beyond the vocabulary
    with running_loop(cfg, serve_chat=False, learner=False) as loop:
        loop.queue.put([TurnRef.put(t) for t in good[:2] + [poison] + good[2:]])
        learner = loop.start_learner()
        learner.join(timeout=300)
        assert learner.error is None, learner.error
        deadline = time.time() + 60
        while time.time() < deadline and not loop.queue.stats()["dead_letters"]:
            time.sleep(0.2)
        q = loop.queue.stats()
        [dead] = loop.queue.dead_letters()
    assert dead["turn_id"] == poison.turn_id and dead["attempts"] == 2 and "Error" in dead["error"], dead
    assert q["trained"] == 4 and q["dropped"]["dead_letter"] == 1 and q["retried"] == 1, q
    in_flight = q["pending"] + q["leased"] + q["scored"] + q["training"]
    assert q["captured"] == 5 == q["trained"] + q["dropped_total"] + in_flight, q
