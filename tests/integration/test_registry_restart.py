"""The version registry and the learner control rebuild their state when Ray restarts them (killed with
`ray.kill(no_restart=False)`): the registry serves the latest accepted weights again (from served_weights.pt, not
v0) and numbers the next version above it; the learner control still holds a stop request."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet
from hsd_ray.loop.broadcast import VersionRegistry, publish
from hsd_ray.loop.job import control_actor_options
from hsd_ray.loop.learner import LearnerControl

pytestmark = pytest.mark.integration


def _weights(v: int) -> WeightSet:
    return WeightSet(PolicyVersion(BASE_ADAPTER, v, 10 * v), "full", {"w": torch.full((4, 4), float(v))})


def test_registry_and_control_come_back_with_their_state(ray_session, tmp_path):
    registry = ray.remote(VersionRegistry).options(**control_actor_options("test-restart-registry")).remote(
        2, False, str(tmp_path / "versions.json"), str(tmp_path / "served_weights.pt"))
    control = ray.remote(LearnerControl).options(**control_actor_options("test-restart-control")).remote(
        str(tmp_path / "learner_control.json"))
    try:
        for v in (1, 2):
            publish(registry, _weights(v))
        deadline = time.time() + 60
        while not (tmp_path / "served_weights.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the saver writes v2 after v1 (newest wins): let it finish
        assert torch.load(tmp_path / "served_weights.pt", weights_only=False)[BASE_ADAPTER].version.version == 2
        ray.get(control.request_stop.remote())
        ray.get(control.report.remote({"step": 5, "version": 2}))
        first = ray.get(registry.latest.remote()).ref

        ray.kill(registry, no_restart=False)
        ray.kill(control, no_restart=False)
        deadline = time.time() + 60  # ray.kill is asynchronous: wait for the new incarnation (a new object ref)
        while (latest := ray.get(registry.latest.remote())) is not None and latest.ref == first:
            assert time.time() < deadline
            time.sleep(0.2)
        assert ray.get(registry.latest_version.remote()) == 2  # served again at once, not v0 / nothing
        restored = ray.get(ray.get(registry.latest.remote()).ref)
        assert torch.equal(restored.tensors["w"], torch.full((4, 4), 2.0))
        assert ray.get(registry.highest_version.remote()) == 2
        publish(registry, _weights(3))  # the next version goes on above it
        assert ray.get(registry.latest_version.remote()) == 3
        while ray.get(control.get_progress.remote())["step"] != 0:  # progress lives in memory: a new incarnation
            assert time.time() < deadline
            time.sleep(0.2)
        assert ray.get(control.should_stop.remote()) is True  # the stop request came back from its file
    finally:
        for actor in (registry, control):
            ray.kill(actor, no_restart=True)
