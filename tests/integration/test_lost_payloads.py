"""Payloads that die with their owner: a teacher restarted after scoring takes its `ray.put` turns with it. The
learner must drop those turns (counted as lost), train on the rest, and never crash; the accounting stays exact."""

from __future__ import annotations

import time

import pytest
import ray

from hsd_ray.config import Config
from hsd_ray.loop.learner import LearnerControl, _next_batch
from hsd_ray.loop.queue import TurnQueue, resolve

pytestmark = pytest.mark.integration


@ray.remote(num_cpus=0)
class Producer:
    """Stands in for a teacher: owns the payloads it puts."""

    def put(self, values: list) -> list:
        return [[ray.put(v)] for v in values]


def test_learner_drops_turns_whose_owner_died(ray_session):
    queue = ray.remote(TurnQueue).options(num_cpus=0).remote(64, 64, 60.0)
    control = ray.remote(LearnerControl).options(num_cpus=0).remote()
    producer = Producer.remote()
    try:
        doomed = ray.get(producer.put.remote(["lost-0", "lost-1"]))
        alive = [[ray.put(f"turn-{i}")] for i in range(5)]
        items = [(f"d{i}", "user-a", box) for i, box in enumerate(doomed)]
        items += [(f"a{i}", "user-b", box) for i, box in enumerate(alive)]
        ray.get(queue.put.remote(items))
        lease_id, leased = ray.get(queue.lease.remote(len(items)))
        assert ray.get(queue.complete.remote(lease_id, [(tid, box) for tid, box in leased]))  # all "scored"

        values, lost = resolve([box[0] for _, _, box in items])
        assert lost == [] and values[0] == "lost-0"
        ray.kill(producer)
        deadline = time.time() + 30
        while not resolve([doomed[0][0]])[1] and time.time() < deadline:  # Ray notices the owner's death
            time.sleep(0.2)
        values, lost = resolve([box[0] for _, _, box in items])
        assert lost == [0, 1] and values == [f"turn-{i}" for i in range(5)]

        cfg = Config.load(overrides=["learner.batch_turns=4"])
        turns = _next_batch(cfg, queue, control, step=0, started=time.time())
        assert turns == [f"turn-{i}" for i in range(4)]  # a full batch of live turns, in order
        ray.get(queue.ack_trained.remote([f"a{i}" for i in range(4)]))
        s = ray.get(queue.stats.remote())
        assert s["dropped"]["lost"] == 2 and s["trained"] == 4 and s["scored"] == 1 and s["training"] == 0
        assert s["captured"] == s["trained"] + s["dropped_total"] + s["scored"]  # nothing unaccounted
    finally:
        for actor in (queue, control, producer):
            ray.kill(actor)
