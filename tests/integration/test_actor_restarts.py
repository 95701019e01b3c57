"""Every control actor survives its own death, in a running loop (tiny random model, real Serve, Ray Train): the queue,
the ledger, the version registry, the learner control and a chat replica are killed one after another while users
chat. After each kill the chat endpoint answers (official `openai` client), turns keep being captured and trained,
the accounting stays exact (captured = trained + dropped by reason + in flight), and the served version is the latest
published one (a restarted registry and a replaced replica do not fall back to v0)."""

from __future__ import annotations

import time

import pytest
import ray

from tests.integration.test_loop import _accounting_holds, _cfg, _conversation, _probe, _wait

pytestmark = pytest.mark.integration


def _serve_replicas() -> list:
    return [ray.get_actor(a["name"], namespace=a["namespace"])
            for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]
            and "ChatService" in a["name"]]


def _turns_flow(loop, client, tag: str) -> dict:
    """Chat until two more turns are trained (a conversation whose reply was recorded in a dying ledger is counted
    as unmatched, so keep talking); returns the queue stats, checked to add up."""
    start = loop.queue.stats()["trained"]
    deadline, i = time.time() + 240, 0
    while time.time() < deadline:
        _conversation(client, f"user-{tag}-{i % 2}", f"{tag} question {i}?", "No, that is wrong. Be brief.")
        i += 1
        try:
            _wait(lambda: loop.queue.stats()["trained"] >= start + 2, 20, f"turns trained after {tag}")
            break
        except AssertionError:
            continue
    q = loop.queue.stats()
    assert q["trained"] >= start + 2, (tag, q)
    assert _accounting_holds(q), (tag, q)
    return q


def test_every_control_actor_and_a_replica_survive_their_death(ray_session, tiny_model_dir, tmp_path):
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop

    cfg = _cfg(tmp_path, tiny_model_dir, **{"serve.replicas": 2, "job.max_steps": 1000})
    with running_loop(cfg) as loop:
        client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
        _turns_flow(loop, client, "warmup")
        victims = {"queue": loop.queue.handle, "ledger": loop.ledger, "registry": loop.registry.handle,
                   "control": loop.control}
        for name, handle in victims.items():
            ray.kill(handle, no_restart=False)  # Ray restarts it; it rebuilds its state
            assert _probe(client)[0].startswith("hsd-base-v")  # the chat answers at once
            _turns_flow(loop, client, name)
            if name == "registry":  # restored from served_weights.pt: the latest version, not v0
                assert loop.registry.latest_version() >= 1
        published = _wait(lambda: loop.registry.latest_version(), 30, "a published version")
        doomed = _serve_replicas()
        assert len(doomed) == 2
        ray.kill(doomed[0], no_restart=True)  # Serve replaces the replica; the other keeps answering meanwhile
        answered = sum(_probe(client)[0].startswith("hsd-base-v") for _ in range(5))
        assert answered == 5
        _wait(lambda: len(_serve_replicas()) == 2 and doomed[0]._actor_id not in
              {r._actor_id for r in _serve_replicas()}, 120, "a replacement replica")
        latest = max(published, loop.registry.latest_version())
        fingerprints = {_probe(client)[0] for _ in range(8)}  # both replicas, the new one included
        assert all(int(fp.rsplit("v", 1)[1]) >= published for fp in fingerprints), (fingerprints, latest)
        q = _turns_flow(loop, client, "replica")
        loop.stop_learner()
        final = loop.stats()
        assert "errors" not in final, final
        assert _accounting_holds(final["queue"]) and final["queue"]["trained"] >= q["trained"]
        assert final["learner"]["step"] >= 1  # the control actor holds the learner's progress again
