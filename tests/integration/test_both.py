"""personalization.mode=both end to end on a real local Ray (tiny random model, version gate on): every turn trains
its user's adapter, the turns within the influence limits also train the shared policy; users without an adapter are
answered by the new shared version, a user with one by their adapter on it, token for token what a fresh engine
with those two weight sets answers; what the influence limits leave out of the shared steps is counted."""

from __future__ import annotations

import pytest
import ray

from hsd_ray.core.weights import user_adapter_id
from tests.integration.test_loop import _accounting_holds, _cfg, _chat, _conversation, _wait

pytestmark = pytest.mark.integration


def _greedy(client, user):
    r = _chat(client, [{"role": "user", "content": "Name a colour."}], user, temperature=0)
    return r.system_fingerprint, r.choices[0].message.content


def test_both_trains_the_shared_policy_and_each_users_adapter_on_it(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "personalization.mode": "both", "personalization.lr": 5e-2, "learner.batch_turns": 2, "job.max_steps": 4,
        "influence.max_turns_per_user": 1, "serve.replicas": 1, "version_gate.enabled": "true",
        "version_gate.probe_max_tokens": 8, "version_gate.check_max_tokens": 4, "version_gate.decision_timeout_s": 300,
        # the tiny random model's 8-token replies loop or not by chance: this test is about routing, not the bounds
        "version_gate.max_loop_increase": 1.0, "version_gate.max_user_loop_increase": 1.0,
    })
    alice, bob = user_adapter_id("alice"), user_adapter_id("bob")
    with running_loop(cfg, learner=False) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        assert _greedy(client, "carol")[0] == "hsd-base-v0"
        learner = loop.start_learner()
        # round 1: one turn each -> a shared step on both (each user's first in the quota window), v1 of each adapter
        _conversation(client, "alice", "Question 0?", "No, that is wrong. Be brief.")
        _conversation(client, "bob", "Question 0?", "Use more words please.")
        _wait(lambda: loop.registry.decision(1) == "accepted", 240, "shared v1 accepted")
        _wait(lambda: loop.registry.latest_version(alice) == 1, 240, "alice's v1 accepted")
        # round 2: both users are past their quota of 1: their adapters train, the shared policy does not
        _conversation(client, "alice", "Question 1?", "No, that is wrong. Be brief.")
        _conversation(client, "bob", "Question 1?", "Use more words please.")
        learner.wait(400)
        assert learner.error is None, learner.error
        stats = loop.stats()

        assert loop.registry.latest_version() == 1 and loop.registry.highest_version() == 1  # one shared step
        assert {a: loop.registry.latest_version(a) for a in (alice, bob)} == {alice: 2, bob: 2}, ray.get(
            loop.gatekeeper.stats.remote())["decisions"]
        assert stats["learner"]["shared_skipped"] == {"user_quota": 2, "too_few_users": 0}, stats["learner"]
        assert stats["queue"]["trained"] == 4 and _accounting_holds(stats["queue"]), stats["queue"]
        decisions = ray.get(loop.gatekeeper.stats.remote())["decisions"]
        assert all(d["accepted"] for d in decisions), decisions
        assert {(d["adapter"], d["version"]) for d in decisions} == {
            ("base", 1), (alice, 1), (bob, 1), (alice, 2), (bob, 2)}, decisions

        # served: carol by shared v1, alice by her v2 on shared v1 — exactly what a fresh engine with both answers
        _wait(lambda: _greedy(client, "carol")[0] == "hsd-base-v1", 30, "carol answered by shared v1")
        _wait(lambda: _greedy(client, "alice")[0] == f"hsd-{alice}-v2", 30, "alice answered by her v2")
        fresh = HFEngine(tiny_model_dir)
        fresh.load_weights(ray.get(loop.registry.latest().ref))
        fresh.load_weights(ray.get(loop.registry.latest(alice).ref))
        prompt = render_prompt(fresh.tokenizer, [{"role": "user", "content": "Name a colour."}])
        for user, adapter in (("carol", "base"), ("alice", alice)):
            params = SamplingParams(max_tokens=cfg.serve.max_tokens, temperature=0.0, adapter_id=adapter)
            assert _greedy(client, user)[1] == fresh.generate([prompt], params)[0].text, user
