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
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from hsd_ray import metrics
from hsd_ray.core.weights import PolicyVersion, WeightSet

REGISTRY_ACTOR_NAME = "hsd-version-registry"
log = logging.getLogger(__name__)


class VersionRegistry:
    """Plain class; `ray.remote(VersionRegistry)` makes the registry actor."""

    def __init__(self, keep_versions: int = 2):
        self.keep_versions = keep_versions
        self._versions: dict[str, list[tuple[PolicyVersion, list]]] = {}  # adapter -> [(version, [ref])], oldest first

    def publish(self, version: PolicyVersion, ref_box: list, durable: bool = False) -> bool:
        """Register a version. `durable` re-puts the set so this actor owns a copy that outlives the publisher (used
        for the final version of a run: the learner process exits right after)."""
        history = self._versions.setdefault(version.adapter_id, [])
        if history and version.version <= history[-1][0].version:
            return False  # never go backwards (a stale learner must not overwrite a newer policy)
        if durable:
            ref_box = [ray.put(ray.get(ref_box[0]))]
        history.append((version, ref_box))  # holding the ref keeps the object alive while its owner lives
        del history[: -self.keep_versions]
        metrics.set_gauge("hsd_policy_version", version.version, adapter=version.adapter_id)
        return True

    def persist_latest(self, adapter_id: str = "base") -> int:
        """Make the latest version durable (own a copy) without publishing a new one; returns its number."""
        history = self._versions.get(adapter_id)
        if not history:
            return -1
        version, (ref,) = history[-1]
        history[-1] = (version, [ray.put(ray.get(ref))])
        return version.version

    def latest_version(self, adapter_id: str = "base") -> int:
        history = self._versions.get(adapter_id)
        return history[-1][0].version if history else -1

    def latest(self, adapter_id: str = "base") -> tuple[PolicyVersion, list] | None:
        history = self._versions.get(adapter_id)
        return history[-1] if history else None

    def versions(self, adapter_id: str = "base") -> list[PolicyVersion]:
        return [v for v, _ in self._versions.get(adapter_id, [])]


def publish(registry, weights: WeightSet, durable: bool = False) -> float:
    """Put `weights` into the object store once and register it (see VersionRegistry.publish). Returns seconds."""
    t0 = time.perf_counter()
    ref = ray.put(weights)
    ok = ray.get(registry.publish.remote(weights.version, [ref], durable))
    dt = time.perf_counter() - t0
    if ok:
        metrics.observe("hsd_broadcast_s", dt)
    return dt


class WeightFollower:
    """Keeps one engine on the latest published version of its adapter. `poll()` does one check; `start()` runs
    polls on a daemon thread every `poll_s` seconds."""

    def __init__(self, engine, registry, *, role: str, adapter_id: str = "base", poll_s: float = 0.5):
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
        entry = ray.get(self.registry.latest.remote(self.adapter_id))
        if entry is None:
            return False
        version, (ref,) = entry
        t0 = time.perf_counter()
        try:
            weights: WeightSet = ray.get(ref)
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
