"""The online loop end to end on a real local Ray: Serve over HTTP (openai client) → capture → queue → teacher
actors → Ray Train learner → broadcast back to the replicas. Tiny random model for speed."""

from __future__ import annotations

import time

import pytest
import ray

from hsd_ray.config import Config
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _cfg(tmp_path, model_dir, **extra) -> Config:
    overrides = {
        "model": str(model_dir),
        "engine.kind": "hf",
        "serve.port": free_port(),
        "serve.max_tokens": 12,
        "learner.batch_turns": 2,
        "learner.lr": 1e-3,
        "learner.warmup_steps": 0,
        "learner.checkpoint_every_steps": 2,
        "learner.cpus_per_worker": 1,
        "broadcast.every_steps": 1,
        "broadcast.poll_seconds": 0.2,
        "job.output_dir": str(tmp_path / "run"),
        "job.max_steps": 3,
        "teacher.idle_sleep_s": 0.05,
        "version_gate.enabled": "false",  # these tests count versions; the gate: tests/integration/test_version_gate.py
    }
    overrides.update(extra)
    return Config.load(overrides=[f"{k}={v}" for k, v in overrides.items()])


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _chat(client, messages, user, **kw):
    return client.chat.completions.create(model="hsd-policy", messages=messages, user=user, **kw)


def _conversation(client, user: str, question: str, followup: str):
    """Ask, then reply to the answer: the follow-up request is what capture turns into a training example."""
    first = _chat(client, [{"role": "user", "content": question}], user, temperature=0.8)
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": followup},
    ]
    return first, _chat(client, messages, user, temperature=0.8)


def _probe(client):
    """Greedy reply with log-probs on a fixed prompt: what the served policy outputs."""
    r = _chat(client, [{"role": "user", "content": "Name a colour."}], "probe", temperature=0, logprobs=True)
    return r.system_fingerprint, [t.logprob for t in r.choices[0].logprobs.content]


def _learn_from_four_complaints(loop, client) -> dict:
    """Start the learner, send four users' complaints, wait for it to end (job.max_steps): all 4 turns trained, the
    accounting exact. Returns the loop's stats."""
    learner = loop.start_learner()
    for i in range(4):
        _conversation(client, f"user-{i}", f"Question {i}?", "Wrong, be brief.")
    learner.join(timeout=300)
    assert learner.error is None, learner.error
    stats = loop.stats()
    assert stats["queue"]["trained"] == 4 and _accounting_holds(stats["queue"]), stats
    return stats


def _accounting_holds(q: dict) -> bool:
    in_flight = q["pending"] + q["leased"] + q["scored"] + q["training"]
    return q["captured"] == q["trained"] + q["dropped_total"] + in_flight


def test_end_to_end_learning_and_broadcast(ray_session, tiny_model_dir, tmp_path):
    import httpx
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{"serve.replicas": 2})
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        fp0, lp0 = _probe(client)
        assert fp0 == "hsd-base-v0"
        learner = loop.start_learner()
        for i in range(6):  # 6 turns = 3 steps of 2; follow-ups land on either replica
            _conversation(client, f"user-{i % 3}", f"Question number {i}?", "No, that is wrong. Be brief.")
        stream = client.chat.completions.create(  # a streamed reply is captured like any other
            model="hsd-policy", messages=[{"role": "user", "content": "Stream me."}], user="streamer", stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        _chat(client, [{"role": "user", "content": "Stream me."}, {"role": "assistant", "content": text},
                       {"role": "user", "content": "Thanks."}], "streamer")
        learner.join(timeout=300)
        assert not learner.is_alive() and learner.error is None, learner.error
        stats = loop.stats()
        assert stats["capture"]["captured"] == 7, stats
        assert stats["queue"]["trained"] == 6 and _accounting_holds(stats["queue"]), stats
        assert stats["published_version"] >= 3
        health_url = loop.base_url.removesuffix("/v1") + "/health"
        _wait(lambda: sum((httpx.get(health_url, timeout=30).json()["feedback_gate"] or {"decisions": {}})
                          ["decisions"].values()) == 7, 60, "every captured turn's gate decision in /health")
        final_fp = f"hsd-base-v{stats['published_version']}"
        fp1, lp1 = _wait(lambda: (p := _probe(client))[0] == final_fp and p, 30, "replicas to switch version")
        _wait(lambda: all(_probe(client)[0] == final_fp for _ in range(4)), 30, "every replica on the final version")
        n = min(len(lp0), len(lp1))
        assert n > 0 and max(abs(a - b) for a, b in zip(lp0[:n], lp1[:n])) > 1e-4  # the served model changed
        final = tmp_path / "run" / "final"
        assert (final / "config.json").exists() and (final / "hsd_version.json").exists()
        # The terminal client keeps the conversation and shows the version of each reply.
        import subprocess
        import sys

        chat = subprocess.run([sys.executable, "-m", "hsd_ray.chat", "--url", loop.base_url, "--max-tokens", "8"],
                              input="Hello\nShorter please\n/quit\n", capture_output=True, text=True, timeout=120)
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.count(f"bot [{fp1}]") == 2, chat.stdout
        _wait(lambda: ray.get(loop.ledger.stats.remote())["captured"] == 8, 10, "the terminal follow-up captured")


def test_expiry_edits_store_false_redaction_and_accounting(ray_session, tiny_model_dir, tmp_path):
    import httpx
    import pyarrow.parquet as pq
    from openai import OpenAI

    from hsd_ray.data.turnlog import TurnLog
    from hsd_ray.loop.job import running_loop, turnlog_uri

    cfg = _cfg(tmp_path, tiny_model_dir, **{"capture.reply_ttl_s": 2})
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        _chat(client, [{"role": "user", "content": "Nobody answers this."}], "u1")  # will expire
        first = _chat(client, [{"role": "user", "content": "Hi"}], "u2")
        edited = [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": first.choices[0].message.content + " (edited)"},
                  {"role": "user", "content": "ok"}]
        _chat(client, edited, "u2")  # the client edited our reply: not ours, not trained on
        other = [{"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "ok"}]
        _chat(client, other, "someone-else")  # another user's identity never matches u2's reply
        # store=false on the reply: never recorded, so its follow-up matches nothing
        private = _chat(client, [{"role": "user", "content": "Secret plan?"}], "u3", store=False)
        _chat(client, [{"role": "user", "content": "Secret plan?"},
                       {"role": "assistant", "content": private.choices[0].message.content},
                       {"role": "user", "content": "No, shorter."}], "u3")
        # store=false on the follow-up: not observed (the stored reply it answers just expires)
        public = _chat(client, [{"role": "user", "content": "Weather?"}], "u4")
        _chat(client, [{"role": "user", "content": "Weather?"},
                       {"role": "assistant", "content": public.choices[0].message.content},
                       {"role": "user", "content": "No, shorter."}], "u4", store=False)
        # PII in a captured turn never reaches the queue's object or the turn log
        _conversation(client, "u5", "I am ann@example.org, card 4111 1111 1111 1111. Hi?", "Call 415-555-2671.")
        time.sleep(2.5)
        c = ray.get(loop.ledger.stats.remote())
        assert c["captured"] == 1 and c["redacted"] == 1 and c["unmatched"] == 3 and c["expired"] >= 3, c
        assert c["recorded"] == c["captured"] + c["expired"] + c["outstanding"] + c["evicted"] + c["forgotten"]
        health = httpx.get(loop.base_url.removesuffix("/v1") + "/health", timeout=30).json()
        assert health["capture"]["not_stored"] == 2, health  # the private reply, and the reply to the private one
        [turn] = TurnLog(turnlog_uri(cfg)).turns()
        assert turn.context[0]["content"] == "I am [EMAIL], card [CARD]. Hi?" and turn.followup == "Call [PHONE]."
        logged = " ".join(str(pq.read_table(f).to_pylist()) for f in (tmp_path / "run").rglob("*.parquet"))
        # the numbers as written (bare digits such as "4111" also occur inside logged floats: 0.0036745071411)
        assert "ann@" not in logged and "4111 1111" not in logged and "555-2671" not in logged


def test_teacher_killed_mid_batch_turns_redelivered(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.queue import TurnRef

    cfg = _cfg(tmp_path, tiny_model_dir, **{"queue.lease_timeout_s": 3, "teacher.max_batch_turns": 64})
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        long_ctx = " ".join(f"word{i}" for i in range(300))
        redelivered = 0
        for attempt in range(6):
            turns = [Turn(context=[{"role": "user", "content": f"{long_ctx} {attempt} {j}"}], reply="a b c " * 40,
                          followup="no") for j in range(64)]
            loop.queue.put([TurnRef.put(t) for t in turns])
            _wait(lambda: loop.queue.stats()["leased"] > 0 or None, 30, "a teacher lease")
            ray.kill(loop.teachers[0], no_restart=False)  # Ray restarts it; its loop starts again by itself
            assert _chat(client, [{"role": "user", "content": "still there?"}], "u").choices[0].message.content is not None
            q = _wait(lambda: (s := loop.queue.stats())["pending"] + s["leased"] == 0 and s, 120,
                      "turns to be scored again")
            redelivered = q["redelivered"]
            if redelivered:
                break
        assert redelivered > 0, "never caught the teacher mid-batch"
        assert q["scored"] + q["dropped_total"] == q["captured"]  # every turn scored exactly once (or counted)
        assert ray.get(loop.teachers[0].stats.remote())["alive"]


def test_learner_restart_resumes_from_checkpoint(ray_session, tiny_model_dir, tmp_path):
    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.queue import TurnRef

    def feed(loop, n):
        turns = [Turn(context=[{"role": "user", "content": f"q{j}"}], reply="an answer", followup="no") for j in range(n)]
        loop.queue.put([TurnRef.put(t) for t in turns])

    # with the retain anchor on: both learners build it from the base (the reference), not from the checkpoint
    cfg = _cfg(tmp_path, tiny_model_dir, **{"job.max_steps": 2, "loss.retain_coef": 1.0})
    with running_loop(cfg, serve_chat=False, learner=False) as loop:
        feed(loop, 4)
        first = loop.start_learner()
        first.join(timeout=300)
        assert first.error is None, first.error
        v1 = loop.registry.latest_version()
        progress = ray.get(loop.control.get_progress.remote())
        assert progress["step"] == 2 and progress["kl_retain"] > 0, progress
        # A new learner on the same output_dir resumes at step 2 and continues to 4; versions keep increasing.
        feed(loop, 4)
        second = loop.start_learner(cfg.model_copy(update={"job": cfg.job.model_copy(update={"max_steps": 4})}))
        second.join(timeout=300)
        assert second.error is None, second.error
        progress = ray.get(loop.control.get_progress.remote())
        assert progress["step"] == 4 and progress["kl_retain"] > 0, progress
        v2 = loop.registry.latest_version()
        assert v2 > v1
        q = loop.queue.stats()
        assert q["trained"] == 8 and _accounting_holds(q)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_loop_with_vllm_engines(ray_session, tiny_model_dir, tmp_path, lora):
    """Serving replica and teacher on vLLM (prompt-logprob scoring); broadcast reloads full weights in place or
    switches LoRA adapters, and the served outputs change."""
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "engine.kind": "vllm", "engine.max_model_len": 512, "job.max_steps": 2, "learner.lora.enabled": lora,
        "learner.lora.r": 4, "engine.max_lora_rank": 8, "learner.lr": 5e-3 if lora else 1e-3,
    })
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=120)
        fp0, lp0 = _probe(client)
        stats = _learn_from_four_complaints(loop, client)
        teacher = ray.get(loop.teachers[0].stats.remote())
        assert teacher["turns"] >= 4
        final_fp = f"hsd-base-v{stats['published_version']}"
        fp1, lp1 = _wait(lambda: (p := _probe(client))[0] == final_fp and p, 60, "the replica to load the new weights")
        n = min(len(lp0), len(lp1))
        assert n > 0 and max(abs(a - b) for a, b in zip(lp0[:n], lp1[:n])) > 1e-4


def test_feedback_gate_in_the_teacher_batch(ray_session, tiny_model_dir, tmp_path):
    """The default gate runs in the teacher: follow-ups that are not about the reply are dropped as not_feedback
    before any scoring, every decision is counted once, and scored turns carry their decision and weight."""
    from hsd_ray.core.turns import Turn
    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.queue import TurnRef
    from hsd_ray.loop.queue_client import fetch_turns

    followups = ["No, that's wrong: the capital is Canberra.", "Too long, please keep it to one sentence.",
                 "Thanks, that's exactly what I needed!", "By the way, what's a good name for a goldfish?",
                 "Different topic: how do I boil an egg?", "ok"]
    turns = [Turn(context=[{"role": "user", "content": "What is the capital of Australia?"}],
                  reply="The capital of Australia is Sydney, its largest city.", followup=f) for f in followups]
    cfg = _cfg(tmp_path, tiny_model_dir)
    assert cfg.feedback.gate == "ensemble"
    with running_loop(cfg, serve_chat=False, learner=False) as loop:
        loop.queue.put([TurnRef.put(t) for t in turns])
        q = _wait(lambda: (s := loop.queue.stats())["pending"] + s["leased"] == 0 and s, 120, "the teacher's batch")
        assert q["dropped"]["not_feedback"] == 3 and q["scored"] == 3, q
        assert sum(q["gate"].values()) == len(followups) and _accounting_holds(q), q
        assert q["gate"]["feedback:positive"] == 1 and q["gate"].get("not_feedback:small_talk", 0) == 1, q
        scored, lost = fetch_turns(loop.queue.take_scored(3))
        assert not lost and sorted(t.followup for t in scored) == sorted(followups[:3])
        weights = {t.followup: t.feedback.weight for t in scored}
        assert weights[followups[0]] == 1.0 and weights[followups[2]] == 0.5  # positive feedback weighs half
