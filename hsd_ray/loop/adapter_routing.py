"""Which weights answer a user: a chat replica's per-user adapters (personalization.mode=per_user).

In `per_user` mode a request is answered by its user's own adapter (core/weights.user_adapter_id) once the learner
has published one, and by the shared policy before that. `AdapterRouter.route(user)` asks the version registry for
the user's latest adapter version (at most once per `check_s` per user), fetches a newer one from the object store
and loads it into the engine beside the shared policy (engine.load_weights), keeping at most `max_resident` adapters
resident: the least recently used is unloaded and fetched again on its user's next request. An adapter the registry
no longer has (its user's data was deleted) is unloaded. Routing never fails a chat: an adapter that cannot be
fetched or loaded leaves the user on what the replica has (logged and counted); the reply's `system_fingerprint`
names the adapter and version that answered.

Why not Serve's model multiplexing (`serve.multiplexed`): Serve routes on the `serve_multiplexed_model_id` header
chosen by the client, while here the adapter follows from the user, known only after the body is parsed (or the API
key resolved) inside the replica. Routing on it would need a second deployment hop in front of every chat; with
adapters of a few MB loaded in tens of ms (bench/bench_adapters.py), any replica serves any user instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import ray

from hsd_ray import metrics
from hsd_ray.core.weights import BASE_ADAPTER, user_adapter_id
from hsd_ray.loop import NAMESPACE

log = logging.getLogger("ray.serve")


class AdapterRouter:
    """A replica's per-user adapter set over its engine; `route(user)` → the adapter id to generate with."""

    def __init__(self, engine, *, per_user: bool, max_resident: int, check_s: float, where: str = "replica"):
        self.engine, self.per_user = engine, per_user
        self.max_resident, self.check_s, self.where = max_resident, check_s, where
        self._recent: OrderedDict[str, None] = OrderedDict()  # resident adapters, least recently used first
        # adapter -> when the registry was last asked about it, oldest first; an entry older than check_s decides
        # nothing (the next request asks again), so those are dropped: the map holds the users of one interval
        self._checked: OrderedDict[str, float] = OrderedDict()
        self._loading: dict[str, asyncio.Task] = {}
        self._registry = None
        self.tally = metrics.Tally({"loads": "hsd_adapter_loads_total", "load_failures": None,
                                    "evictions": "hsd_adapter_evictions_total"}, {"evictions": ("lru", "deleted")})
        self.load_s: list[float] = []  # the last loads' seconds (fetch + load), for /health and the benchmark

    def trained_adapter(self, user_id: str) -> str:
        """The adapter a turn of this user trains: the user's own in per_user mode, else the shared policy."""
        return user_adapter_id(user_id) if self.per_user else BASE_ADAPTER

    async def route(self, user_id: str) -> str:
        """The adapter that answers `user_id` now: theirs when resident (after bringing it up to date), else base."""
        if not self.per_user:
            return BASE_ADAPTER
        adapter = user_adapter_id(user_id)
        now = time.monotonic()
        if adapter in self._loading:
            await asyncio.shield(self._loading[adapter])
        elif now - self._checked.get(adapter, float("-inf")) >= self.check_s:
            self._note_checked(adapter, now)
            task = asyncio.get_running_loop().create_task(self._refresh(adapter))
            self._loading[adapter] = task
            try:
                await asyncio.shield(task)
            finally:
                self._loading.pop(adapter, None)
        if adapter in self.engine.user_adapters:
            self._recent[adapter] = None
            self._recent.move_to_end(adapter)
            return adapter
        return BASE_ADAPTER

    def _note_checked(self, adapter: str, now: float) -> None:
        self._checked.pop(adapter, None)
        while self._checked and now - next(iter(self._checked.values())) >= self.check_s:
            self._checked.popitem(last=False)
        self._checked[adapter] = now

    def stats(self) -> dict:
        recent = sorted(self.load_s[-100:])
        return {"per_user": self.per_user, "resident": len(self.engine.user_adapters), "max_resident":
                self.max_resident, **self.tally.snapshot(),
                "load_s_p50": recent[len(recent) // 2] if recent else None}

    async def _refresh(self, adapter: str) -> None:
        """Bring `adapter` to the version the registry serves — newer, or an earlier one after an admin rollback — or
        unload it when the registry no longer has it."""
        try:
            registry = self._find_registry()
            if registry is None:
                return
            t0 = time.perf_counter()
            published = await registry.latest.remote(adapter)
            have = self.engine.user_adapters.get(adapter)
            if published is None:
                if have is not None:
                    await self._evict(adapter, "deleted")
                return
            if have is not None and have.version == published.version.version:
                return
            weights = await published.ref
            while adapter not in self.engine.user_adapters and len(self.engine.user_adapters) >= self.max_resident:
                await self._evict(next(iter(self._recent)), "lru")
            await asyncio.to_thread(self.engine.load_weights, weights)
            seconds = time.perf_counter() - t0
            self.load_s = [*self.load_s[-999:], seconds]
            self.tally.add("loads")
            metrics.observe("hsd_adapter_load_s", seconds)
        except Exception as e:  # noqa: BLE001 - the chat is answered with what the replica has
            self.tally.add("load_failures")
            self._registry = None
            log.warning("%s: adapter %s not loaded (%s: %s); answering with what is resident", self.where, adapter,
                        type(e).__name__, e)

    async def _evict(self, adapter: str, reason: str) -> None:
        self._recent.pop(adapter, None)
        await asyncio.to_thread(self.engine.evict_adapter, adapter)
        self.tally.add("evictions", label=reason)

    def _find_registry(self):
        if self._registry is None:
            from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME

            try:
                self._registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
            except ValueError:  # the service runs without the loop
                return None
        return self._registry
