"""The admin API on a real local Ray (tiny random model, version gate on): 401 without the key, pause/resume of the
learner, and a rollback of serving that restores the earlier version's seeded replies token for token, after which
the learner's next version starts from the rolled-back weights."""

from __future__ import annotations

import json
import time

import pytest
import ray

from tests.integration.test_loop import _cfg, _chat, _conversation, _wait
from tests.integration.test_version_gate import _CandidateTap, _max_diff

pytestmark = pytest.mark.integration

KEY = "admin-test-key"
LR = 1e-3


def _seeded(client):
    r = _chat(client, [{"role": "user", "content": "Tell me a story."}], "probe", temperature=0.9, seed=11,
              logprobs=True, max_tokens=12)
    lp = r.choices[0].logprobs.content
    return r.system_fingerprint, r.choices[0].message.content, [t.token for t in lp], [t.logprob for t in lp]


def test_admin_rollback_pause_and_auth(ray_session, tiny_model_dir, tmp_path):
    import httpx
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{
        "version_gate.enabled": "true", "admin.key": KEY, "learner.lr": LR, "job.max_steps": 3,
        "learner.checkpoint_every_steps": 10, "broadcast.keep_versions": 3,
        "version_gate.probe_max_tokens": 8, "version_gate.check_max_tokens": 4,
    })
    with running_loop(cfg, learner=False) as loop:
        admin = loop.base_url.removesuffix("/v1") + "/admin"
        auth = {"Authorization": f"Bearer {KEY}"}
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = httpx.get(f"{admin}/versions", headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
        ray.get(loop.gatekeeper.stats.remote())
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        tap = _CandidateTap(loop.registry.handle)
        tap.start()
        learner = loop.start_learner()
        seeded = {}
        for v in (1, 2):  # each step's candidate is accepted and served
            for i in range(2):
                _conversation(client, f"user-{v}-{i}", f"Question {v}.{i}?", "No, that is wrong. Be brief.")
            _wait(lambda: loop.registry.decision(v) == "accepted", 240, f"v{v} accepted")
            seeded[v] = _wait(lambda: (s := _seeded(client))[0] == f"hsd-base-v{v}" and s, 60, f"replica on v{v}")
        assert seeded[1][3] != seeded[2][3]  # the two versions answer differently

        # Pause: turns queue up, no step is taken; resume: the step happens.
        assert httpx.post(f"{admin}/pause", headers=auth, timeout=30).json() == {"paused": True}
        trained = loop.queue.stats()["trained"]
        # Rollback to v1: replicas switch back, token-identical seeded reply (log-probs included).
        r = httpx.post(f"{admin}/rollback", json={"version": 1}, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["ok"], r.text
        again = _wait(lambda: (s := _seeded(client))[0] == "hsd-base-v1" and s, 60, "replica back on v1")
        assert again == seeded[1]
        for i in range(2):
            _conversation(client, f"user-3-{i}", f"Question 3.{i}?", "No, that is wrong. Be brief.")
        time.sleep(3)
        assert loop.queue.stats()["trained"] == trained and ray.get(loop.control.paused.remote())
        assert httpx.post(f"{admin}/resume", headers=auth, timeout=30).json() == {"paused": False}
        learner.join(timeout=400)
        tap.stop.set()
        assert not learner.is_alive() and learner.error is None, learner.error

        # The learner restarted from v1 (fresh Adam: one step moves each weight by at most LR).
        last = max(tap.seen)
        assert last >= 3 and _max_diff(tap.seen[last], tap.seen[1]) <= LR * 1.001, sorted(tap.seen)
        versions = httpx.get(f"{admin}/versions", headers=auth, timeout=30).json()["data"]
        by_version = {v["version"]: v for v in versions}
        assert by_version[1]["state"] == by_version[2]["state"] == "accepted"
        assert by_version[1]["numbers"]["kl_accepted"] >= 0 and sum(v["current"] for v in versions) == 1


def test_a_rollback_without_the_gate_labels_the_final_weights_by_their_version(ray_session, tiny_model_dir, tmp_path):
    """Version gate off: after an admin rollback from v2 to v1 and a stop with nothing trained since, the final
    weights are v1's and are labelled v1 (they were labelled with the highest number used, 2)."""
    import httpx
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop
    from hsd_ray.models import load_model_and_tokenizer

    cfg = _cfg(tmp_path, tiny_model_dir, **{"admin.key": KEY, "learner.lr": LR, "job.max_steps": 10,
                                            "learner.checkpoint_every_steps": 10, "broadcast.keep_versions": 3})
    with running_loop(cfg, learner=False) as loop:
        admin = loop.base_url.removesuffix("/v1") + "/admin"
        auth = {"Authorization": f"Bearer {KEY}"}
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        loop.start_learner()
        published = {}
        for v in (1, 2):
            for i in range(2):
                _conversation(client, f"user-{v}-{i}", f"Question {v}.{i}?", "No, that is wrong. Be brief.")
            latest = _wait(lambda: (p := loop.registry.latest()) is not None and p.version.version == v and p, 240,
                           f"v{v} published")
            published[v] = ray.get(latest.ref).tensors
        assert httpx.post(f"{admin}/pause", headers=auth, timeout=30).json() == {"paused": True}
        r = httpx.post(f"{admin}/rollback", json={"version": 1}, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["ok"], r.text
        _wait(lambda: _seeded(client)[0] == "hsd-base-v1", 60, "replica back on v1")
        loop.stop_learner()
        assert loop.learner.error is None, loop.learner.error
    final = tmp_path / "run" / "final"
    assert json.loads((final / "hsd_version.json").read_text()) == {"version": 1, "step": 1, "learner_step": 2,
                                                                "highest_version": 2}
    model, _ = load_model_and_tokenizer(final)
    assert _max_diff(model.state_dict(), published[1]) == 0.0  # and they are v1's weights


def test_api_keys_isolation_and_a_user_deleting_their_own_data(ray_session, tiny_model_dir, tmp_path):
    """auth.mode=api_keys: a missing key gets 401 and a forged `user` 400. DELETE /v1/users/me with the user's own
    key: their queued turn is never trained, their logged turns are gone (a tombstone stays), their next
    conversation is not captured until they opt back in (admin API); other users are untouched."""
    import httpx
    import openai
    from openai import OpenAI

    from hsd_ray.core.api_keys import append_record, new_key
    from hsd_ray.data.turnlog import TurnLog
    from hsd_ray.loop.job import running_loop, turnlog_uri

    keys_file, keys = tmp_path / "keys.jsonl", {}
    for user in ("carol", "dave", "erin"):
        keys[user], record = new_key(user)
        append_record(keys_file, record)
    cfg = _cfg(tmp_path, tiny_model_dir, **{"admin.key": KEY, "job.max_steps": 1, "auth.mode": "api_keys",
                                            "auth.keys_file": str(keys_file)})
    with running_loop(cfg, learner=False) as loop:
        base, admin = loop.base_url.removesuffix("/v1"), loop.base_url.removesuffix("/v1") + "/admin"
        clients = {u: OpenAI(base_url=loop.base_url, api_key=k, max_retries=0, timeout=60) for u, k in keys.items()}
        hello = [{"role": "user", "content": "Hello?"}]
        with pytest.raises(openai.AuthenticationError):
            _chat(OpenAI(base_url=loop.base_url, api_key="nope", max_retries=0, timeout=60), hello, "carol")
        with pytest.raises(openai.BadRequestError, match="user"):
            _chat(clients["dave"], hello, "carol")  # dave cannot speak (and train) as carol
        for user in ("carol", "dave"):
            _conversation(clients[user], user, f"Hello from {user}?", "No, shorter.")
        _wait(lambda: loop.queue.stats()["captured"] == 2, 30, "both turns captured")
        assert httpx.delete(f"{base}/v1/users/me", timeout=30).status_code == 401
        r = httpx.delete(f"{base}/v1/users/me", headers={"Authorization": f"Bearer {keys['carol']}"}, timeout=60)
        assert r.status_code == 200 and r.json()["capture"]["logged_turns"] == 1 and r.json()["queue"] == 1, r.text
        log = TurnLog(turnlog_uri(cfg))
        assert [t.user_id for t in log.turns()] == ["dave"] and len(log.tombstones()) == 1
        _conversation(clients["carol"], "carol", "Still there?", "No, shorter.")  # opted out: not captured
        _conversation(clients["erin"], None, "Hi?", "No, shorter.")  # no user field: the key's user
        _wait(lambda: loop.queue.stats()["captured"] == 3, 30, "erin's turn captured")
        assert ray.get(loop.ledger.stats.remote())["opted_out"] == 3  # her two replies and her follow-up
        learner = loop.start_learner()  # one step of two turns: dave's and erin's, never carol's
        learner.join(timeout=300)
        assert not learner.is_alive() and learner.error is None, learner.error
        q = loop.queue.stats()
        assert q["trained"] == 2 and q["dropped"]["forgotten"] == 1, q
        assert {t.user_id for t in TurnLog(turnlog_uri(cfg)).turns()} == {"dave", "erin"}
        assert httpx.post(f"{admin}/users/carol/opt-in", timeout=30).status_code == 401
        opt_in = httpx.post(f"{admin}/users/carol/opt-in", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert opt_in.json() == {"user": "carol", "opted_out": False}
        _conversation(clients["carol"], "carol", "Back again?", "No, shorter.")
        _wait(lambda: loop.queue.stats()["captured"] == 4, 30, "carol captured again after opting in")
