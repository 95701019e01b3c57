"""Weight broadcast: versioned weight sets published once to the object store, followed by replicas and teachers.

The learner exports a `WeightSet` (only the adapter when training LoRA) and hands it to a `BackgroundPublisher`:
one `ray.put` and a registration in the `VersionRegistry` actor happen on a thread, so the next optimizer step does
not wait for the object store (at most one publish in flight; a newer set replaces one still waiting). Replicas and
teachers run a `WeightFollower`: it polls the registry's latest version number (a few bytes), and when it is newer
fetches that version's weight set and applies it through `engine.load_weights`, which holds the engine lock — a
request runs entirely on one version, and a follower that missed versions jumps straight to the latest.

The learner process owns the published object (Ray 2.56 removed `ray.put(_owner=...)`, and re-putting from the
registry doubled the cost of every publish — measured in bench/bench_loop.py). Only the final version of a run is
published `durable` (the registry keeps its own copy), because the learner process exits right after. If the learner
dies mid-run, followers keep serving the version they have; the restarted learner publishes a newer version as soon
as it has resumed. A fetch
that fails is retried on the next poll; a weight set an engine *rejects* is remembered and not retried, and the engine
keeps serving what it had.

Versions are monotonic per adapter id; the registry keeps the last `keep_versions` sets alive (rollback later).

`VersionRegistry` is the registry actor's class (started by loop/job.py); `RegistryClient` is how the learner calls
it; a chat replica runs a `RegistryAttachment`, which finds the registry when it appears (the service also runs
standalone) and keeps a `WeightFollower` attached to it, re-attaching if the registry is replaced.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from hsd_ray import metrics
from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet
from hsd_ray.loop import NAMESPACE

REGISTRY_ACTOR_NAME = "hsd-version-registry"
LOOKUP_RETRY_S = 2.0  # how often a replica looks again for a missing (or replaced) registry actor
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedWeights:
    """A version as the registry holds it: its identity and the ObjectRef of its `WeightSet` (never resolved in
    transit: Ray passes a reference nested in a record as a reference)."""

    version: PolicyVersion
    ref: Any  # ray.ObjectRef[WeightSet]


class VersionRegistry:
    """The registry actor's class (`ray.remote(VersionRegistry)`, named REGISTRY_ACTOR_NAME)."""

    def __init__(self, keep_versions: int = 2):
        self.keep_versions = keep_versions
        self._versions: dict[str, list[PublishedWeights]] = {}  # adapter -> versions, oldest first

    def publish(self, published: PublishedWeights, durable: bool = False) -> bool:
        """Register a version. `durable` re-puts the set so this actor owns a copy that outlives the publisher (used
        for the final version of a run: the learner process exits right after)."""
        version = published.version
        history = self._versions.setdefault(version.adapter_id, [])
        if history and version.version <= history[-1].version.version:
            return False  # never go backwards (a stale learner must not overwrite a newer policy)
        if durable:
            published = PublishedWeights(version, ray.put(ray.get(published.ref)))
        history.append(published)  # holding the ref keeps the object alive while its owner lives
        del history[: -self.keep_versions]
        metrics.set_gauge("hsd_policy_version", version.version, adapter=version.adapter_id)
        return True

    def persist_latest(self, adapter_id: str = BASE_ADAPTER) -> int:
        """Make the latest version durable (own a copy) without publishing a new one; returns its number."""
        history = self._versions.get(adapter_id)
        if not history:
            return -1
        latest = history[-1]
        history[-1] = PublishedWeights(latest.version, ray.put(ray.get(latest.ref)))
        return latest.version.version

    def latest_version(self, adapter_id: str = BASE_ADAPTER) -> int:
        history = self._versions.get(adapter_id)
        return history[-1].version.version if history else -1

    def latest(self, adapter_id: str = BASE_ADAPTER) -> PublishedWeights | None:
        history = self._versions.get(adapter_id)
        return history[-1] if history else None


class RegistryClient:
    """Typed calls on the registry actor (blocking)."""

    def __init__(self, handle):
        self.handle = handle

    @classmethod
    def lookup(cls) -> "RegistryClient":
        return cls(ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE))

    def latest_version(self, adapter_id: str = BASE_ADAPTER) -> int:
        return ray.get(self.handle.latest_version.remote(adapter_id))

    def latest(self, adapter_id: str = BASE_ADAPTER) -> PublishedWeights | None:
        return ray.get(self.handle.latest.remote(adapter_id))

    def persist_latest(self, adapter_id: str = BASE_ADAPTER) -> int:
        return ray.get(self.handle.persist_latest.remote(adapter_id))


def publish(registry, weights: WeightSet, durable: bool = False) -> float:
    """Put `weights` into the object store once and register it (see VersionRegistry.publish). Returns seconds."""
    t0 = time.perf_counter()
    ok = ray.get(registry.publish.remote(PublishedWeights(weights.version, ray.put(weights)), durable))
    dt = time.perf_counter() - t0
    if ok:
        metrics.observe("hsd_broadcast_s", dt)
    return dt


class WeightFollower:
    """Keeps one engine on the latest published version of its adapter. `poll()` does one check; `start()` runs
    polls on a daemon thread every `poll_s` seconds."""

    def __init__(self, engine, registry, *, role: str, adapter_id: str = BASE_ADAPTER, poll_s: float = 0.5):
        self.engine, self.registry, self.role, self.adapter_id, self.poll_s = engine, registry, role, adapter_id, poll_s
        self._rejected: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def poll(self) -> bool:
        """Load the latest version if newer than the engine's; True if a new version was applied."""
        latest = ray.get(self.registry.latest_version.remote(self.adapter_id))
        current = self.engine.version.version
        if latest <= current or latest in self._rejected:
            return False
        published = ray.get(self.registry.latest.remote(self.adapter_id))
        if published is None:
            return False
        version = published.version
        t0 = time.perf_counter()
        try:
            weights: WeightSet = ray.get(published.ref)
        except Exception as e:  # noqa: BLE001 - e.g. the learner that owns it died: keep serving, retry later
            self.last_error = f"fetch v{version.version}: {e}"
            return False
        try:
            self.engine.load_weights(weights)
        except Exception as e:  # noqa: BLE001 - a bad weight set must never take the engine down
            self._rejected.add(version.version)
            self.last_error = f"v{version.version}: {e}"
            metrics.inc("hsd_weight_load_failures_total", role=self.role)
            log.warning("%s rejected weights %s: %s", self.role, version.fingerprint(), e)
            return False
        metrics.observe("hsd_weight_load_s", time.perf_counter() - t0, role=self.role)
        return True

    def start(self) -> "WeightFollower":
        self._thread = threading.Thread(target=self._run, name=f"weight-follower-{self.role}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - registry briefly unreachable: try again next tick
                self.last_error = str(e)


class BackgroundPublisher:
    """Publishes weight sets on a daemon thread: `submit` returns at once; `flush` waits until all are published."""

    def __init__(self, registry, on_published=None):
        self.registry, self.on_published = registry, on_published
        self._cv = threading.Condition()
        self._waiting: tuple[WeightSet, bool] | None = None
        self._busy = False
        self.errors: list[str] = []
        threading.Thread(target=self._run, name="weight-publisher", daemon=True).start()

    def submit(self, weights: WeightSet, durable: bool = False) -> None:
        with self._cv:
            self._waiting = (weights, durable)  # an older set still waiting is superseded: followers want the latest
            self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._waiting is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting is not None)
                (weights, durable), self._waiting, self._busy = self._waiting, None, True
            try:
                seconds = publish(self.registry, weights, durable)
                if self.on_published is not None:
                    self.on_published(weights.version, seconds)
            except Exception as e:  # noqa: BLE001 - a failed publish must not kill training; the next one retries
                self.errors.append(f"v{weights.version.version}: {e}")
                log.warning("publishing %s failed: %s", weights.version.fingerprint(), e)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


class RegistryAttachment:
    """A replica's link to the registry: looks for the registry actor every LOOKUP_RETRY_S on a daemon thread and keeps
    a started `WeightFollower` on the current one (a restarted registry is a new actor: the follower is replaced)."""

    def __init__(self, engine, *, role: str, poll_s: float, where: str = "replica"):
        self.engine, self.role, self.poll_s, self.where = engine, role, poll_s, where
        self.follower: WeightFollower | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="hsd-registry-attach", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.follower is not None:
            self.follower.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
            except Exception:  # noqa: BLE001 - not running (standalone), or Ray briefly unreachable
                registry = None
            current = self.follower.registry if self.follower is not None else None
            if registry is not None and _actor_id(registry) != _actor_id(current):
                if self.follower is not None:
                    self.follower.stop()
                self.follower = WeightFollower(self.engine, registry, role=self.role, poll_s=self.poll_s).start()
                log.info("%s follows the weight registry", self.where)
            self._stop.wait(LOOKUP_RETRY_S)


def _actor_id(handle) -> object:
    return getattr(handle, "_actor_id", None) if handle is not None else None
