"""The chat replica's admission gate and per-user token buckets (hsd_ray/loop/admission.py), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from hsd_ray.loop.admission import AdmissionGate, Overloaded, RateLimited, UserRateLimit


def test_gate_runs_max_ongoing_queues_max_queued_refuses_the_rest_first_come_first_served():
    async def main():
        gate, order, release = AdmissionGate(max_ongoing=2, max_queued=2), [], asyncio.Event()

        async def request(name):
            async with gate.slot():
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(request(f"r{i}")) for i in range(4)]
        await asyncio.sleep(0.01)
        assert gate.stats()["ongoing"] == 2 and gate.stats()["queued"] == 2 and order == ["r0", "r1"]
        with pytest.raises(Overloaded):
            async with gate.slot():
                pass
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["r0", "r1", "r2", "r3"]  # waiters got their slots in arrival order
        assert gate.stats() == {"ongoing": 0, "queued": 0, "refused": 1, "max_ongoing": 2, "max_queued": 2}

    asyncio.run(main())


def test_a_waiter_that_times_out_leaves_the_queue_and_never_takes_a_slot():
    async def main():
        gate, release = AdmissionGate(max_ongoing=1, max_queued=1), asyncio.Event()

        async def holder():
            async with gate.slot():
                await release.wait()

        task = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05), gate.slot():
                pass
        assert gate.stats()["queued"] == 0  # its place is free again: the next request may wait
        release.set()
        await task
        async with gate.slot():
            assert gate.ongoing == 1
        assert gate.ongoing == 0

    asyncio.run(main())


def test_token_bucket_per_user():
    now = [0.0]
    limit = UserRateLimit(rate_per_s=0.5, burst=2, clock=lambda: now[0])
    limit.take("alice")
    limit.take("alice")
    with pytest.raises(RateLimited) as info:
        limit.take("alice")
    assert info.value.retry_after_s == pytest.approx(2.0)  # one token comes back after 1 / 0.5 s
    limit.take("bob")  # another user has a bucket of their own
    now[0] = 2.0
    limit.take("alice")
    with pytest.raises(RateLimited):
        limit.take("alice")
    assert limit.refused == 2


def test_rate_limit_off_by_default_and_users_bounded():
    off = UserRateLimit(rate_per_s=0.0, burst=1)
    for _ in range(100):
        off.take("alice")
    bounded = UserRateLimit(rate_per_s=1.0, burst=1, max_users=3)
    for i in range(10):
        bounded.take(f"u{i}")
    assert bounded.users == 3
