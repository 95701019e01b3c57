"""Payloads that die with their owner: a teacher restarted after scoring takes its `ray.put` turns with it. The
learner must drop those turns (counted as lost), train on the rest, and never crash; the accounting stays exact."""

from __future__ import annotations

import time

import pytest
import ray

from hsd_ray.loop.learner import take_batch
from hsd_ray.loop.queue import TurnQueue, TurnRef
from hsd_ray.loop.queue_client import QueueClient, fetch_turns

pytestmark = pytest.mark.integration


@ray.remote(num_cpus=0)
class Producer:
    """Stands in for a teacher: owns the payloads it puts."""

    def put(self, values: list) -> list:
        return [TurnRef(f"d{i}", "user-a", ray.put(v)) for i, v in enumerate(values)]


def test_learner_drops_turns_whose_owner_died(ray_session):
    handle = ray.remote(TurnQueue).options(num_cpus=0).remote(64, 64, 60.0)
    queue = QueueClient(handle)
    producer = Producer.remote()
    try:
        doomed = ray.get(producer.put.remote(["lost-0", "lost-1"]))
        items = doomed + [TurnRef(f"a{i}", "user-b", ray.put(f"turn-{i}")) for i in range(5)]
        queue.put(items)
        lease = queue.lease(len(items))
        assert queue.complete(lease, lease.turns, [], [])  # all "scored"

        values, lost = fetch_turns(items)
        assert lost == [] and values[0] == "lost-0"
        ray.kill(producer)
        deadline = time.time() + 30
        while not fetch_turns(doomed[:1])[1] and time.time() < deadline:  # Ray notices the owner's death
            time.sleep(0.2)
        values, lost = fetch_turns(items)
        assert lost == doomed and values == [f"turn-{i}" for i in range(5)]

        turns = take_batch(queue, 4, should_stop=lambda: False)
        assert turns == [f"turn-{i}" for i in range(4)]  # a full batch of live turns, in order
        queue.ack_trained_nowait([f"a{i}" for i in range(4)])
        s = queue.stats()
        assert s["dropped"]["lost"] == 2 and s["trained"] == 4 and s["scored"] == 1 and s["training"] == 0
        assert s["captured"] == s["trained"] + s["dropped_total"] + s["scored"]  # nothing unaccounted
    finally:
        for actor in (handle, producer):
            ray.kill(actor)
