"""Weight broadcast: versioned weight sets published once to the object store, followed by replicas and teachers.

The learner exports a `WeightSet` (only the adapter when training LoRA) and `publish`es it to the object store; the
registry actor re-puts it so that it owns the copy every follower reads, and the weights outlive the learner process
that made them (a restarted learner does not take the serving weights down with it). Replicas and teachers run a `WeightFollower`: it polls the registry's latest version
number (a few bytes), and when it is newer fetches that version's weight set and applies it through
`engine.load_weights`, which holds the engine lock — a request runs entirely on one version, and a follower that
missed versions jumps straight to the latest. A weight set an engine rejects is remembered and not retried; the engine
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

    def publish(self, version: PolicyVersion, ref_box: list) -> bool:
        history = self._versions.setdefault(version.adapter_id, [])
        if history and version.version <= history[-1][0].version:
            return False  # never go backwards (a stale learner must not overwrite a newer policy)
        # Re-put so this actor owns the copy: objects die with their owner, and the serving weights must outlive
        # the learner process that exported them (Ray 2.56 removed ray.put(_owner=...)).
        owned = ray.put(ray.get(ref_box[0]))
        history.append((version, [owned]))
        del history[: -self.keep_versions]
        metrics.set_gauge("hsd_policy_version", version.version, adapter=version.adapter_id)
        return True

    def latest_version(self, adapter_id: str = "base") -> int:
        history = self._versions.get(adapter_id)
        return history[-1][0].version if history else -1

    def latest(self, adapter_id: str = "base") -> tuple[PolicyVersion, list] | None:
        history = self._versions.get(adapter_id)
        return history[-1] if history else None

    def versions(self, adapter_id: str = "base") -> list[PolicyVersion]:
        return [v for v, _ in self._versions.get(adapter_id, [])]


def publish(registry, weights: WeightSet) -> float:
    """Put `weights` into the object store once (owned by the registry) and register it. Returns seconds taken."""
    t0 = time.perf_counter()
    ref = ray.put(weights)
    ok = ray.get(registry.publish.remote(weights.version, [ref]))
    del ref  # the registry holds its own copy now
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
