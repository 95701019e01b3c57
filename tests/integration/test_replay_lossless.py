"""`--source` replay loses nothing (issue 12, item 7): with a queue far smaller than the file (2 pending, 3 scored)
and a turn count that is not a multiple of the batch, every well-formed turn is trained exactly once, nothing is
dropped to overflow, the final partial batch is trained, and the job ends by itself once the source is drained."""

from __future__ import annotations

import json

import pytest

from hsd_ray.config import Config

pytestmark = pytest.mark.integration


def test_replay_with_a_tiny_queue_trains_every_turn(ray_session, tiny_model_dir, tmp_path):
    from hsd_ray.loop.job import run_job

    source = tmp_path / "chats.jsonl"
    with source.open("w") as f:
        for i in range(5):  # 5 conversations x 2 (reply, follow-up) pairs = 10 turns
            msgs = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "A long answer."},
                    {"role": "user", "content": "Too long, shorter please."},
                    {"role": "assistant", "content": "Short."}, {"role": "user", "content": "Thanks, better."}]
            f.write(json.dumps({"user": f"u{i}", "messages": msgs}) + "\n")
        f.write(json.dumps({"user": "bad", "messages": []}) + "\n")  # malformed: skipped and reported, not a turn
    overrides = {
        "model": str(tiny_model_dir), "engine.kind": "hf", "job.source": str(source),
        "job.output_dir": str(tmp_path / "run"), "job.log_every_s": 2,
        "queue.capacity": 2, "queue.scored_capacity": 3, "learner.batch_turns": 3,  # 10 = 3 + 3 + 3 + 1
        "learner.cpus_per_worker": 1, "learner.checkpoint_every_steps": 100, "teacher.idle_sleep_s": 0.05,
        "feedback.gate": "none",  # no stated filter: every well-formed turn must train
        "version_gate.enabled": "false",
    }
    summary = run_job(Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()]))  # no max_steps: ends drained
    q = summary["queue"]
    assert q["captured"] == 10 and q["trained"] == 10, q
    assert q["dropped_total"] == 0 and q["pending"] == q["leased"] == q["scored"] == 0, q
    assert summary["learner"]["step"] == 4  # three full batches and the final partial one
    assert (tmp_path / "run" / "final" / "config.json").exists()

    # The durable turn log holds every replayed turn with its outcome, and is itself a `--source`.
    from hsd_ray.data.turnlog import TurnLog

    log = TurnLog(str(tmp_path / "run" / "turnlog"))
    st = log.state()
    assert st.captured == 10 and st.trained == 10 and st.open_turns == [], st
    overrides.update({"job.source": str(tmp_path / "run" / "turnlog"), "job.output_dir": str(tmp_path / "run2")})
    again = run_job(Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()]))
    assert again["queue"]["captured"] == 10 and again["queue"]["trained"] == 10, again["queue"]
    replayed = TurnLog(str(tmp_path / "run2" / "turnlog"))
    assert [t.turn_id for t in replayed.turns()] == [t.turn_id for t in log.turns()]  # the same turns, same ids
    assert [t.reply for t in replayed.turns()] == [t.reply for t in log.turns()]


def test_driver_outlives_a_failed_stats_call(ray_session, tiny_model_dir, tmp_path):
    """The ledger actor is killed as the job starts: every stats() call the driver makes fails for it, yet the job
    runs to its end and writes summary.json, naming the part it could not read (issue 12, item 4)."""
    import ray

    from hsd_ray.loop.job import run_job

    source = tmp_path / "chats.jsonl"
    msgs = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": "A long answer."},
            {"role": "user", "content": "Too long."}]
    source.write_text("".join(json.dumps({"user": f"u{i}", "messages": msgs}) + "\n" for i in range(3)))
    overrides = {
        "model": str(tiny_model_dir), "engine.kind": "hf", "job.source": str(source),
        "job.output_dir": str(tmp_path / "run"), "job.log_every_s": 1, "learner.batch_turns": 2,
        "learner.cpus_per_worker": 1, "teacher.idle_sleep_s": 0.05, "feedback.gate": "none",
        "version_gate.enabled": "false",
    }
    summary = run_job(Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()]),
                      on_ready=lambda loop: ray.kill(loop.ledger, no_restart=True))
    assert "capture" in summary["errors"] and "ActorDied" in summary["errors"]["capture"], summary.get("errors")
    assert summary["queue"]["trained"] == 3 and summary["learner"]["step"] == 2  # the rest of the funnel was read
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["queue"]["trained"] == 3 and "capture" in written["errors"]
