"""Two Ray nodes on one machine: the teacher and the Ray Train learner run on a worker node (placed there by custom
resources, `teacher.resources` / `learner.resources`), the chat replicas and control actors on the head. The worker
node is then killed while users chat: the chat keeps answering, and once a replacement node with the same resources
joins, the teacher restarts on it, Ray Train restores the learner from its checkpoint, turns are trained again and the
accounting is exact (captured = trained + dropped by reason + in flight).

The cluster (`ray.cluster_utils.Cluster`, real raylets) runs in a driver subprocess: one process cannot hold the
suite's own Ray (`ray_session`) and a second cluster at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _nodes_of(class_name: str) -> set[str]:
    """Node ids of the ALIVE actors of this class, from the GCS actor table (no dashboard needed)."""
    from ray._private.state import actors

    return {a["Address"]["NodeID"] for a in actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"] == class_name}


def drive(model_dir: str, out_dir: str) -> None:
    """The test body, in its own process: a head + worker cluster, the loop on it, the worker node killed, replaced."""
    from openai import OpenAI

    from hsd_ray.loop.job import running_loop
    from hsd_ray.loop.runtime import HEAD_RESOURCE, WORKER_RESOURCE, local_two_nodes
    from tests.integration.test_actor_restarts import _turns_flow
    from tests.integration.test_loop import _accounting_holds, _cfg, _probe, _wait

    out = Path(out_dir)
    report: dict = {}
    placement = {"job.max_steps": 1000, "learner.max_failures": 5, "teacher.resources": f"{{{WORKER_RESOURCE}: 1}}",
                 "learner.resources": f"{{{WORKER_RESOURCE}: 1}}", "serve.resources": f"{{{HEAD_RESOURCE}: 1}}"}
    try:
        with local_two_nodes() as (cluster, worker, worker_args), \
                running_loop(_cfg(out, model_dir, **placement)) as loop:
            client = OpenAI(base_url=loop.base_url, api_key="test", max_retries=0, timeout=60)
            report["before"] = _turns_flow(loop, client, "before")
            placed = {"teacher": _nodes_of("TeacherWorker"), "learner": _nodes_of("RayTrainWorker"),
                      "replica": _nodes_of("ServeReplica:hsd-chat:ChatService")}
            report["placed"] = {k: sorted(v) for k, v in placed.items()}
            report["worker_node"], report["head_node"] = worker.node_id, cluster.head_node.node_id
            published = loop.registry.latest_version()

            cluster.remove_node(worker)  # every process of the node: raylet, teacher, Train worker
            killed_at = time.time()
            answered = [_probe(client)[0] for _ in range(5)]  # the chat (on the head) answers at once
            report["answered_while_down"] = answered
            time.sleep(5)
            cluster.add_node(**worker_args)  # the node "returns": a fresh raylet offering the same resources
            report["after"] = _turns_flow(loop, client, "after")
            report["recovered_s"] = time.time() - killed_at
            report["teacher_after"] = sorted(_nodes_of("TeacherWorker"))
            report["published_before"], report["published_after"] = published, loop.registry.latest_version()
            _wait(lambda: loop.queue.stats()["training"] == 0, 60, "the learner's step to finish")
            loop.stop_learner()
            report["final"] = loop.stats()
            report["accounting_holds"] = _accounting_holds(report["final"]["queue"])
    finally:
        (out / "report.json").write_text(json.dumps(report, default=str))


def test_loop_survives_the_death_of_the_worker_node_holding_teacher_and_learner(tiny_model_dir):
    out = Path(tempfile.mkdtemp(prefix="hsd2n-", dir="/tmp"))  # short: Ray's unix socket paths have a length limit
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    env.pop("RAY_ADDRESS", None)
    code = f"from tests.integration.test_two_nodes import drive; drive({str(tiny_model_dir)!r}, {str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=840)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, log
    r = json.loads((out / "report.json").read_text())
    worker, head = r["worker_node"], r["head_node"]
    assert r["placed"]["teacher"] == [worker] and r["placed"]["learner"] == [worker], r["placed"]
    assert r["placed"]["replica"] == [head], r["placed"]
    assert all(fp.startswith("hsd-base-v") for fp in r["answered_while_down"]), r["answered_while_down"]
    assert r["teacher_after"] and r["teacher_after"] != [worker], r  # restarted on the replacement node
    before, after, final = r["before"], r["after"], r["final"]
    assert after["trained"] >= before["trained"] + 2, (before, after)
    assert r["published_after"] >= r["published_before"], r
    assert "errors" not in final, final
    assert r["accounting_holds"], final["queue"]
    # Ray Train restored the learner from its last checkpoint (or from the start, with none yet), so its step count may
    # go back; what it trains after the node returned is published as a new version, never a reused number.
    assert final["learner"]["step"] >= 1 and final["learner"]["version"] > r["published_before"], final["learner"]
