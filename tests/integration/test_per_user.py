"""personalization.mode=per_user end to end on a real local Ray: two users' follow-ups train two adapters; each user
is then answered by their own adapter (system_fingerprint names it), a third user by the shared policy, which never
changes; deleting a user's data removes their adapter from disk, the registry and the replicas. With the version gate
on user adapters, a destructive adapter is never served and the learner rolls it back; a sound one is served once
accepted."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from hsd_ray.core.version_gate import CAPABILITY_CHECKS
from hsd_ray.core.weights import user_adapter_id
from tests.integration.test_loop import _accounting_holds, _cfg, _chat, _conversation, _wait

pytestmark = pytest.mark.integration
ADMIN_KEY = "per-user-admin-key"


def _probe(client, user):
    r = _chat(client, [{"role": "user", "content": "Name a colour."}], user, temperature=0, logprobs=True)
    return r.system_fingerprint, [t.logprob for t in r.choices[0].logprobs.content]


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_each_user_is_answered_by_their_own_adapter(ray_session, tiny_model_dir, tmp_path, engine):
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "personalization.mode": "per_user", "personalization.lr": 5e-2, "personalization.max_resident": 1,
        "learner.batch_turns": 2, "job.max_steps": 5, "version_gate.enabled": "true", "serve.replicas": 1,
        "engine.kind": engine, "engine.max_lora_rank": 8, "admin.key": ADMIN_KEY,
        "version_gate.user_adapters": "none",  # every step a served version (the gate on adapters: tests below)
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
        _roll_bob_back(loop, client, bob, adapters)
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
        assert _probe(client, "bob")[0] == f"hsd-{bob}-v3"
        learner.wait(120)
        assert learner.error is None, learner.error


def _roll_bob_back(loop, client, bob, adapters) -> None:
    """An admin rolls bob back to v1 (admin API): the replica answers him with v1 again, the learner restarts his
    adapter from v1's weights, and his next version — a new number, v3 — is trained from there."""
    import httpx

    from hsd_ray.core.adapter_bank import read_adapter

    admin, auth = loop.base_url.removesuffix("/v1") + "/admin", {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{admin}/users/bob/rollback", json={"version": 1}, timeout=30).status_code == 401
    r = httpx.post(f"{admin}/users/bob/rollback", json={"version": 1}, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["adapter"] == bob, r.text
    versions = httpx.get(f"{admin}/users/bob/versions", headers=auth, timeout=30).json()["data"]
    assert [v["version"] for v in versions if v["current"]] == [1], versions
    _wait(lambda: _probe(client, "bob")[0] == f"hsd-{bob}-v1", 30, "bob answered by v1 again")
    v1 = ray.get(loop.registry.latest(bob).ref)
    _wait(lambda: (w := read_adapter(adapters / bob, bob)) is not None and w.version.version == 1, 60,
          "the learner restarting bob's adapter from v1")
    saved = read_adapter(adapters / bob, bob)
    assert all(torch.equal(saved.tensors[k], v1.tensors[k]) for k in v1.tensors)
    for i in range(2):  # one batch of 2: one more step of bob's adapter
        _conversation(client, "bob", f"Question {i + 2}?", "Use more words please.")
    _wait(lambda: loop.registry.latest_version(bob) == 3, 240, "bob's next version")
    _wait(lambda: _probe(client, "bob")[0] == f"hsd-{bob}-v3", 30, "bob answered by v3")
    assert [v["version"] for v in loop.registry.versions(bob)] == [1, 2, 3]  # no number reused


def _gated_cfg(tmp_path, tiny_model_dir, lr):
    # The tiny random model's next-token distributions are nearly flat whatever its hidden states, so no adapter moves
    # its perplexity much: one Adam step at lr 5 raised it by 4.7% (514.5 -> 538.8), at lr 0.5 by 2.4%, at lr 1e-4 by
    # well under 0.1%. The perplexity bound is tightened to 1% so that the first is past it and the last is not.
    return _cfg(tmp_path, tiny_model_dir, **{
        "personalization.mode": "per_user", "personalization.lr": lr, "learner.batch_turns": 2, "job.max_steps": 2,
        "version_gate.enabled": "true", "version_gate.probe_max_tokens": 8, "version_gate.check_max_tokens": 4,
        "version_gate.decision_timeout_s": 300, "version_gate.max_ppl_ratio": 1.01, "serve.replicas": 1,
    })


def _seeded(client, user):
    r = _chat(client, [{"role": "user", "content": "Tell me a story."}], user, temperature=0.9, seed=11,
              max_tokens=12, logprobs=True)
    return r.system_fingerprint, [t.token for t in r.choices[0].logprobs.content]


def _candidates(registry, seen: dict, stop) -> None:
    """Every user-adapter candidate's tensors while it waits for the gate (a rejected one is released after)."""
    while not stop.is_set():
        try:
            published = ray.get(registry.next_candidate.remote())
        except ray.exceptions.RayActorError:
            return
        if published is not None and published.version.version not in seen:
            seen[published.version.version] = ray.get(published.ref).tensors
        time.sleep(0.05)


def test_a_destructive_user_adapter_is_never_served_and_rolls_back(ray_session, tiny_model_dir, tmp_path):
    import threading

    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    lr = 5.0  # one Adam step moves every LoRA weight by ~lr: as far as an adapter can push the tiny model
    alice = user_adapter_id("alice")
    with running_loop(_gated_cfg(tmp_path, tiny_model_dir, lr), learner=False) as loop:
        ray.get(loop.gatekeeper.stats.remote())  # the gatekeeper has measured the base
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        before = _seeded(client, "alice")
        assert before[0] == "hsd-base-v0"
        seen, stop = {}, threading.Event()
        threading.Thread(target=_candidates, args=(loop.registry.handle, seen, stop), daemon=True).start()
        learner = loop.start_learner()
        for i in range(2):  # one step of alice's adapter -> candidate v1
            _conversation(client, "alice", f"Question {i}?", "No, that is wrong. Be brief.")
        _wait(lambda: loop.registry.decision(1, alice) == "rejected", 240, "alice v1 rejected")
        _wait(lambda: loop.queue.stats()["dropped"]["rejected"] == 2, 60, "the learner's rollback of v1")
        for i in range(2, 4):  # the next step starts from zero again -> candidate v2
            _conversation(client, "alice", f"Question {i}?", "No, that is wrong. Be brief.")
        learner.wait(400)
        stop.set()
        assert learner.error is None, learner.error
        stats = loop.stats()

        assert _seeded(client, "alice") == before  # nothing rejected was served: base, token for token
        assert loop.registry.latest(alice) is None
        records = {r["version"]: r for r in loop.registry.versions(alice)}
        assert [records[v]["state"] for v in (1, 2)] == ["rejected", "rejected"], records
        assert "perplexity" in records[1]["reason"] and records[1]["numbers"]["ppl"] > 1.01 * records[1]["numbers"][
            "ppl_base"]
        assert set(records[1]["reason"].split(",")) <= set(CAPABILITY_CHECKS)  # what a user adapter is held to
        decisions = ray.get(loop.gatekeeper.stats.remote())["decisions"]
        assert [(d["adapter"], d["accepted"]) for d in decisions] == [(alice, False), (alice, False)]
        # v2 was one Adam step from a zero adapter (lora_B starts at 0): had the learner kept v1's weights, some
        # lora_B weight would be ~2·lr away from zero
        assert set(seen) == {1, 2}
        b2 = [t for k, t in seen[2].items() if "lora_B" in k]
        assert b2 and max(float(t.abs().max()) for t in b2) <= lr * 1.001
        adapters = tmp_path / "run" / "adapters"
        assert not (adapters / alice).exists() and not (adapters / ".accepted" / alice).exists()
        assert stats["user_adapters"] == {"adapters": 1, "accepted": 0, "rejected": 2, "candidate": 0, "superseded": 0}
        assert stats["versions_rejected"] == 0
        q = stats["queue"]
        assert q["trained"] == 0 and q["dropped"]["rejected"] == 4 and _accounting_holds(q), q


def test_a_sound_user_adapter_is_served_once_accepted(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.core.adapter_bank import read_adapter
    from hsd_ray.loop.job import running_loop

    alice = user_adapter_id("alice")
    with running_loop(_gated_cfg(tmp_path, tiny_model_dir, 1e-4), learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        learner = loop.start_learner()
        for i in range(2):
            _conversation(client, "alice", f"Question {i}?", "No, that is wrong. Be brief.")
        _wait(lambda: loop.registry.decision(1, alice) == "accepted", 240, "alice v1 accepted")
        _wait(lambda: _seeded(client, "alice")[0] == f"hsd-{alice}-v1", 30, "alice answered by her adapter v1")
        assert _seeded(client, "bob")[0] == "hsd-base-v0"
        for i in range(2, 4):
            _conversation(client, "alice", f"Question {i}?", "No, that is wrong. Be brief.")
        learner.wait(400)
        assert learner.error is None, learner.error
        assert loop.registry.decision(2, alice) == "accepted"
        # each candidate was also tried on alice's own prompts: the ones trained into it so far (distinct, latest 8)
        records = {r["version"]: r for r in loop.registry.versions(alice)}
        assert [records[v]["numbers"]["user_prompts"] for v in (1, 2)] == [2, 4], records
        served = ray.get(loop.registry.latest(alice).ref)
        saved = read_adapter(tmp_path / "run" / "adapters" / ".accepted" / alice, alice)
        assert saved.version.version == served.version.version == 2
        assert all(torch.equal(saved.tensors[k], served.tensors[k]) for k in served.tensors)
        q = loop.stats()["queue"]
        assert q["trained"] == 4 and q["dropped"]["rejected"] == 0 and _accounting_holds(q), q


def test_users_are_split_across_two_learner_workers(ray_session, tiny_model_dir, tmp_path):
    """learner.num_workers=2 in per_user mode: each worker owns the users whose adapter hashes to it, takes only
    their turns, and steps only their adapters; every turn is trained once, and job.max_steps counts both workers'
    adapter steps."""
    import json

    from openai import OpenAI

    from hsd_ray.core.weights import in_shard
    from hsd_ray.loop.job import running_loop

    names = [f"user{i}" for i in range(40)]
    by_rank = {r: [u for u in names if in_shard(user_adapter_id(u), (r, 2))][:2] for r in (0, 1)}
    users = by_rank[0] + by_rank[1]
    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "personalization.mode": "per_user", "personalization.lr": 1e-3, "learner.num_workers": 2,
        "learner.batch_turns": 2, "job.max_steps": 8, "serve.replicas": 1, "version_gate.enabled": "true",
        "version_gate.user_adapters": "none",  # every step a served version
    })
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        learner = loop.start_learner()
        for i in range(2):  # 8 turns: per worker 2 users x 2 turns = 2 round-robin batches = 4 adapter steps
            for user in users:
                _conversation(client, user, f"Question {i}?", "No, that is wrong. Be brief.")
        learner.wait(400)
        assert learner.error is None, learner.error
        stats = loop.stats()
        assert {u: loop.registry.latest_version(user_adapter_id(u)) for u in users} == {u: 2 for u in users}
        assert stats["queue"]["trained"] == 8 and _accounting_holds(stats["queue"]), stats["queue"]
        assert stats["learner"]["step"] == 8, stats["learner"]  # summed over the two workers
        adapters = tmp_path / "run" / "adapters"
        assert [json.loads((adapters / f".learner-{r}-of-2.json").read_text())["step"] for r in (0, 1)] == [4, 4]
