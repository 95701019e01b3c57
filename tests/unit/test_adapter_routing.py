"""AdapterRouter (loop/adapter_routing.py) against a fake engine and registry: routing, LRU, deletion, and that its
per-user bookkeeping stays bounded however many users it has seen."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, user_adapter_id
from hsd_ray.loop.adapter_routing import AdapterRouter

pytestmark = pytest.mark.unit


class FakeEngine:
    def __init__(self):
        self.user_adapters: dict[str, PolicyVersion] = {}
        self.loaded: list[tuple[str, int]] = []

    def load_weights(self, weights) -> None:
        self.user_adapters[weights.version.adapter_id] = weights.version
        self.loaded.append((weights.version.adapter_id, weights.version.version))

    def evict_adapter(self, adapter: str) -> None:
        del self.user_adapters[adapter]


@dataclass
class FakeWeights:
    version: PolicyVersion


@dataclass
class Published:
    version: PolicyVersion
    ref: object


class FakeRegistry:
    """`latest.remote(adapter)` as the registry actor answers it: the newest published version, or None."""

    def __init__(self):
        self.versions: dict[str, int] = {}
        self.asked = 0
        registry = self

        class _Latest:
            @staticmethod
            async def remote(adapter):
                registry.asked += 1
                v = registry.versions.get(adapter)
                if v is None:
                    return None
                version = PolicyVersion(adapter_id=adapter, version=v)
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(FakeWeights(version))
                return Published(version, fut)

        self.latest = _Latest()


def make_router(max_resident=2, check_s=0.0):
    engine, registry = FakeEngine(), FakeRegistry()
    router = AdapterRouter(engine, per_user=True, max_resident=max_resident, check_s=check_s)
    router._find_registry = lambda: registry  # never a real Ray lookup here
    return router, engine, registry


def test_routes_to_own_latest_adapter_or_base_and_evicts_least_recent():
    router, engine, registry = make_router(max_resident=2)
    registry.versions = {user_adapter_id("a"): 1, user_adapter_id("b"): 3, user_adapter_id("c"): 2}

    async def run():
        out = [await router.route(u) for u in ("a", "b", "nobody", "a", "c")]
        registry.versions[user_adapter_id("a")] = 2
        out.append(await router.route("a"))
        del registry.versions[user_adapter_id("c")]  # deleted user: unloaded on their next request
        out.append(await router.route("c"))
        return out

    out = asyncio.run(run())
    assert out == [user_adapter_id("a"), user_adapter_id("b"), BASE_ADAPTER, user_adapter_id("a"),
                   user_adapter_id("c"), user_adapter_id("a"), BASE_ADAPTER]
    # b was the least recently used when c arrived; a moved to v2; c unloaded after deletion
    assert engine.loaded == [(user_adapter_id("a"), 1), (user_adapter_id("b"), 3), (user_adapter_id("c"), 2),
                             (user_adapter_id("a"), 2)]
    assert set(engine.user_adapters) == {user_adapter_id("a")}
    assert router.tally.snapshot()["evictions"] == {"lru": 1, "deleted": 1}


def test_asks_the_registry_once_per_interval_and_forgets_users_of_past_intervals(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("hsd_ray.loop.adapter_routing.time.monotonic", lambda: clock[0])
    router, _, registry = make_router(check_s=10.0)

    async def run():
        for i in range(500):  # 500 users, one request each, a second apart
            await router.route(f"user-{i}")
            await router.route(f"user-{i}")  # the same second: not asked again
            clock[0] += 1.0

    asyncio.run(run())
    assert registry.asked == 500
    assert len(router._checked) <= 10  # only the users of the last interval; was one entry per user ever seen
    asyncio.run(router.route("user-499"))  # checked 1 s ago: still within the interval
    assert registry.asked == 500
