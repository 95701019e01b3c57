"""The version gate on a real local Ray (tiny random model): a learner with a destructive learning rate publishes
candidates, the gatekeeper rejects them, replicas keep serving the accepted version token for token, and the learner
rolls back to the accepted weights and optimizer state before its next version."""

from __future__ import annotations

import json

import threading
import time

import pytest
import ray

from tests.integration.test_loop import _accounting_holds, _cfg, _chat, _conversation, _wait

pytestmark = pytest.mark.integration

LR = 0.5  # one Adam step moves every weight by ~LR: far past any threshold on a model whose weights are ~0.02


def _seeded(client):
    r = _chat(client, [{"role": "user", "content": "Tell me a story."}], "probe", temperature=0.9, seed=11,
              logprobs=True, max_tokens=12)
    return r.system_fingerprint, r.choices[0].message.content, [t.token for t in r.choices[0].logprobs.content]


class _CandidateTap(threading.Thread):
    """Fetches every candidate's weights while it waits for the gate (the registry releases rejected ones)."""

    def __init__(self, registry):
        super().__init__(daemon=True)
        self.registry, self.seen, self.stop = registry, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                published = ray.get(self.registry.candidate.remote())
            except ray.exceptions.RayActorError:  # the loop was torn down (a failed test)
                return
            if published is not None and published.version.version not in self.seen:
                self.seen[published.version.version] = ray.get(published.ref).tensors
            time.sleep(0.05)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)


def test_broken_candidates_are_rejected_and_the_learner_rolls_back(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop
    from hsd_ray.models import load_model_and_tokenizer

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "version_gate.enabled": "true", "learner.lr": LR, "job.max_steps": 2, "learner.checkpoint_every_steps": 10,
        "version_gate.probe_max_tokens": 8, "version_gate.check_max_tokens": 4, "version_gate.decision_timeout_s": 300,
        "version_gate.traffic_probes": 3,
    })
    base = {k: v.clone() for k, v in load_model_and_tokenizer(tiny_model_dir)[0].state_dict().items()}
    with running_loop(cfg, learner=False) as loop:
        ray.get(loop.gatekeeper.stats.remote())  # the gatekeeper has measured the base
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        before = _seeded(client)
        assert before[0] == "hsd-base-v0"
        tap = _CandidateTap(loop.registry.handle)
        tap.start()
        learner = loop.start_learner()
        for i in range(2):  # step 1 → candidate v1
            _conversation(client, f"user-{i}", f"Question number {i}?", "No, that is wrong. Be brief.")
        _wait(lambda: loop.registry.decision(1) == "rejected", 240, "v1 rejected")
        _wait(lambda: loop.queue.stats()["dropped"]["rejected"] == 2, 60, "the learner's rollback after v1")
        for i in range(2, 4):  # step 2 (from the accepted weights) → candidate v2
            _conversation(client, f"user-{i}", f"Question number {i}?", "No, that is wrong. Be brief.")
        learner.join(timeout=400)
        tap.stop.set()
        assert not learner.is_alive() and learner.error is None, learner.error
        stats = loop.stats()

        # Nothing rejected was served: same fingerprint, token-identical seeded reply.
        assert _seeded(client) == before
        assert stats["published_version"] == -1 and stats["versions_rejected"] == 2
        states = {v["version"]: v for v in stats["versions"]}
        assert [states[v]["state"] for v in (1, 2)] == ["rejected", "rejected"], stats["versions"]
        assert "kl_accepted" in states[1]["reason"] and states[1]["numbers"]["kl_accepted"] > 0.25
        # each candidate was also tried on the latest distinct prompts it trained on (traffic_probes 3), against the
        # base model's replies to them: v1 on users 0-1's questions, v2 on the latest three of users 0-3's
        assert [states[v]["numbers"]["user_prompts"] for v in (1, 2)] == [2, 3]
        assert all(states[v]["numbers"]["user_relevance"] is not None for v in (1, 2))
        decisions = ray.get(loop.gatekeeper.stats.remote())["decisions"]
        assert [d["accepted"] for d in decisions] == [False, False]

        # The learner went back to the accepted (base) weights before v2: one Adam step from the base moves a
        # weight by at most LR; had it continued from v1, v2 would be up to 2·LR away.
        assert set(tap.seen) == {1, 2}
        assert LR * 0.9 < _max_diff(tap.seen[1], base) <= LR * 1.001
        assert _max_diff(tap.seen[2], base) <= LR * 1.001
        final, _ = load_model_and_tokenizer(tmp_path / "run" / "final")
        assert _max_diff(final.state_dict(), base) == 0.0  # what the run saved is the accepted weights
        # ... and it is labelled as what it is, the base (v0, step 0), not the rejected v2 (make run labelled it so)
        assert json.loads((tmp_path / "run" / "final" / "hsd_version.json").read_text()) == {
            "version": 0, "step": 0, "learner_step": 2, "highest_version": 2}

        # Accounting: the turns trained into rejected versions are dropped as `rejected`; the sum is exact.
        q = stats["queue"]
        assert q["trained"] == 0 and q["dropped"]["rejected"] == 4 and _accounting_holds(q), q
        # Per-version feedback: every captured turn of v0 is counted once.
        rates = stats["feedback_by_version"]
        assert rates[0]["turns"] == stats["capture"]["captured"] == 4 and rates[0]["complaint"] > 0, rates
        assert sum(r["turns"] for r in rates.values()) == stats["capture"]["captured"]


def test_gate_off_serves_every_version(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{"version_gate.enabled": "false", "job.max_steps": 1})
    with running_loop(cfg, learner=False) as loop:
        assert loop.gatekeeper is None
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        learner = loop.start_learner()
        for i in range(2):
            _conversation(client, f"user-{i}", f"Question number {i}?", "No, that is wrong. Be brief.")
        learner.join(timeout=300)
        assert learner.error is None
        stats = loop.stats()
        assert stats["published_version"] >= 1 and stats["versions_rejected"] == 0
        assert stats["queue"]["trained"] == 2
