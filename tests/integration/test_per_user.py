"""personalization.mode=per_user end to end on a real local Ray: two users' follow-ups train two adapters; each user
is then answered by their own adapter (system_fingerprint names it), a third user by the shared policy, which never
changes; deleting a user's data removes their adapter from disk, the registry and the replicas."""

from __future__ import annotations

import time

import pytest

from hsd_ray.core.weights import user_adapter_id
from tests.integration.test_loop import _accounting_holds, _cfg, _chat, _conversation, _wait

pytestmark = pytest.mark.integration


def _probe(client, user):
    r = _chat(client, [{"role": "user", "content": "Name a colour."}], user, temperature=0, logprobs=True)
    return r.system_fingerprint, [t.logprob for t in r.choices[0].logprobs.content]


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_each_user_is_answered_by_their_own_adapter(ray_session, tiny_model_dir, tmp_path, engine):
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "personalization.mode": "per_user", "personalization.lr": 5e-2, "personalization.max_resident": 1,
        "learner.batch_turns": 2, "job.max_steps": 4, "version_gate.enabled": "true", "serve.replicas": 1,
        "engine.kind": engine, "engine.max_lora_rank": 8,
    })
    if engine == "vllm":
        pytest.importorskip("vllm")
    alice, bob = user_adapter_id("alice"), user_adapter_id("bob")
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        base_fp, base_lp = _probe(client, "carol")
        assert base_fp == "hsd-base-v0"
        learner = loop.start_learner()
        for i in range(2):  # 4 turns, 2 per user: each round-robin batch of 2 is one step of each adapter
            _conversation(client, "alice", f"Question {i}?", "No, that is wrong. Be brief.")
            _conversation(client, "bob", f"Question {i}?", "Use more words please.")
        _wait(lambda: loop.stats()["queue"]["trained"] == 4, 240, "the 4 turns trained")
        versions = {a: loop.registry.latest_version(a) for a in (alice, bob)}
        assert versions == {alice: 2, bob: 2}, versions  # two steps each, each step a version
        adapters = tmp_path / "run" / "adapters"
        assert (adapters / alice / "adapter_model.safetensors").exists() and (adapters / bob / "optimizer.pt").exists()
        # each user answered by their adapter; max_resident=1: the replica swaps them in and out as they alternate
        for _ in range(2):
            for user, adapter in (("alice", alice), ("bob", bob)):
                fp = _wait(lambda u=user, a=adapter: (p := _probe(client, u))[0] == f"hsd-{a}-v2" and p, 30,
                           f"{user}'s adapter")[0]
                assert fp == f"hsd-{adapter}-v2"
        alice_lp, carol = _probe(client, "alice")[1], _probe(client, "carol")
        assert carol == (base_fp, base_lp)  # the shared policy did not move, and carol is never given an adapter
        n = min(len(alice_lp), len(base_lp))
        assert max(abs(a - b) for a, b in zip(alice_lp[:n], base_lp[:n])) > 1e-4  # alice's adapter answers her
        stats = loop.stats()
        assert stats["published_version"] == -1 and _accounting_holds(stats["queue"]), stats  # no shared version
        # deletion: alice's adapter is gone from disk, the registry and the replica; bob's stays
        deleted = loop.forget_user("alice")
        assert deleted["adapter"] is True and not (adapters / alice).exists() and (adapters / bob).exists()
        assert loop.registry.latest(alice) is None and loop.registry.highest_version(alice) == 2  # no number reused
        time.sleep(cfg.broadcast.poll_seconds)
        assert _probe(client, "alice")[0] == "hsd-base-v0"
        assert _probe(client, "bob")[0] == f"hsd-{bob}-v2"
        learner.wait(120)
        assert learner.error is None, learner.error
