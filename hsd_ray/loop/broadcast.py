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

Versions are monotonic per adapter id; the registry keeps the last `keep_versions` accepted sets alive. With the
version gate on, a published version is a candidate that followers never see until the gatekeeper (gatekeeper.py)
accepts it.

`VersionRegistry` is the registry actor's class (started by loop/job.py); `RegistryClient` is how the learner calls
it; a chat replica runs a `RegistryAttachment`, which finds the registry when it appears (the service also runs
standalone) and keeps a `WeightFollower` attached to it, re-attaching if the registry is replaced.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from hsd_ray import metrics
from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet, in_shard, is_user_adapter
from hsd_ray.data.files import replace_atomically
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.adapter_shelf import AdapterShelf

REGISTRY_ACTOR_NAME = "hsd-version-registry"
LOOKUP_RETRY_S = 2.0  # how often a replica looks again for a missing (or replaced) registry actor
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedWeights:
    """A version as the registry holds it: its identity and the ObjectRef of its `WeightSet` (never resolved in
    transit: Ray passes a reference nested in a record as a reference)."""

    version: PolicyVersion
    ref: Any  # ray.ObjectRef[WeightSet]
    # a per-user candidate's: ObjectRef of its user's latest prompts (message lists) the gate also tries it on; in
    # memory only (never written to disk, dropped once decided)
    probes: Any = None


class VersionRegistry(AdapterShelf):
    """The registry actor's class (`ray.remote(VersionRegistry)`, named REGISTRY_ACTOR_NAME).

    With `gated` (version_gate.enabled) a published version is a *candidate*: `latest`/`latest_version`, which the
    followers poll, return only accepted versions; the gatekeeper takes the newest candidate (`candidate`), and
    `accept`s or `reject`s it with its numbers. An older candidate still undecided when a newer one arrives is
    `superseded`. Every version number ever published is remembered (`highest_version`): none is reused.

    `history_path` (the job's `<output_dir>/versions.json`) keeps the version records — states, gate numbers and
    reasons, the highest number — across a job restart. `weights_path` (`<output_dir>/served_weights.pt`,
    broadcast.persist_weights) keeps the served weight set of each adapter, written on a background thread whenever
    the served version changes (the newest wins; the registry never waits for the disk): a registry restarted by Ray
    (or a job restarted) serves that version again at once, so a restarted replica gets it, not v0. Without it,
    nothing is served after a restart until the learner's next version is accepted."""

    def __init__(self, keep_versions: int = 2, gated: bool = False, history_path: str | None = None,
                 weights_path: str | None = None, adapters_dir: str | None = None, gate_users: bool = False):
        self.keep_versions, self.gated = keep_versions, gated
        self.gate_users = gated and gate_users  # per-user adapters are candidates too (version_gate.user_adapters)
        self.history_path = Path(history_path) if history_path else None
        self.weights_path = Path(weights_path) if weights_path else None
        self._versions: dict[str, list[PublishedWeights]] = {}  # adapter -> accepted versions, oldest first
        self._candidates: dict[str, PublishedWeights] = {}  # adapter -> the newest undecided candidate
        self._records: dict[str, dict[int, dict]] = {}  # adapter -> version -> {state, step, reason, numbers}
        self._highest: dict[str, int] = {}
        self._served: dict[str, PublishedWeights] = {}  # adapter -> an earlier accepted version an admin rolled back to
        self._rollback_to: dict[str, int] = {}  # adapter -> that version, until the learner has taken it
        self._saver = WeightSaver(self.weights_path) if self.weights_path is not None else None
        self._init_shelf(adapters_dir)  # per-user adapters: deletion, restore from the learner's folder
        self._load_history()
        self._load_served_weights()

    def publish(self, published: PublishedWeights, durable: bool = False) -> bool:
        """Register a version (a candidate when gated). `durable` re-puts the set so this actor owns a copy that
        outlives the publisher (used for the final version of a run: the learner process exits right after)."""
        version = published.version
        adapter = version.adapter_id
        if version.version <= self._highest.get(adapter, 0):
            return False  # never go backwards (a stale learner must not overwrite a newer policy), never reuse
        self._highest[adapter] = version.version
        if durable:
            published = PublishedWeights(version, ray.put(ray.get(published.ref)), published.probes)
        records = self._records.setdefault(adapter, {})
        records[version.version] = {"version": version.version, "step": version.step, "state": "candidate",
                                    "reason": None, "numbers": None}
        if self.gate_users if is_user_adapter(adapter) else self.gated:
            previous = self._candidates.get(adapter)
            if previous is not None:
                records[previous.version.version]["state"] = "superseded"
            self._candidates[adapter] = published
            self._save_history()
            return True
        self._accept(published)
        return True

    def candidate(self, adapter_id: str = BASE_ADAPTER) -> PublishedWeights | None:
        """The newest undecided candidate (the gatekeeper evaluates it)."""
        return self._candidates.get(adapter_id)

    def next_candidate(self) -> PublishedWeights | None:
        """The candidate that has waited longest, of any adapter: one gatekeeper serves every user in turn."""
        return min(self._candidates.values(), key=lambda p: p.version.created_at, default=None)

    def accept(self, version: int, numbers: dict | None = None, adapter_id: str = BASE_ADAPTER) -> bool:
        """The candidate passed the gate: followers may load it now."""
        published = self._candidates.get(adapter_id)
        if published is None or published.version.version != version:
            return False
        del self._candidates[adapter_id]
        self._records[adapter_id][version]["numbers"] = numbers
        self._accept(PublishedWeights(published.version, published.ref))  # its user's prompts are let go
        return True

    def reject(self, version: int, reason: str, numbers: dict | None = None, adapter_id: str = BASE_ADAPTER) -> bool:
        """The candidate failed the gate: it is never served (its weights are released)."""
        published = self._candidates.get(adapter_id)
        if published is None or published.version.version != version:
            return False
        del self._candidates[adapter_id]
        self._records[adapter_id][version].update(state="rejected", reason=reason, numbers=numbers)
        self._save_history()
        return True

    def rollback(self, version: int, adapter_id: str = BASE_ADAPTER) -> dict:
        """Serve an earlier accepted version again (admin API): followers switch to it, an undecided candidate is
        superseded, and the learner restarts from it (`learner_news`). Only versions still held (the last
        `keep_versions` accepted) can be served again."""
        target = next((p for p in self._versions.get(adapter_id, []) if p.version.version == version), None)
        if target is None:
            held = [p.version.version for p in self._versions.get(adapter_id, [])]
            return {"ok": False, "error": f"v{version} is not an accepted version still held (held: {held})"}
        candidate = self._candidates.pop(adapter_id, None)
        if candidate is not None:
            self._records[adapter_id][candidate.version.version]["state"] = "superseded"
        self._served[adapter_id] = target
        self._rollback_to[adapter_id] = version
        self._records[adapter_id][version]["rolled_back_at"] = time.time()
        if not is_user_adapter(adapter_id):  # one label per user would flood Prometheus
            metrics.set_gauge("hsd_policy_version", version, adapter=adapter_id)
        self._save_history()
        self._save_served()
        return {"ok": True, "version": version}

    def learner_news(self, pending: int | None, adapter_id: str = BASE_ADAPTER) -> dict:
        """One call per learner check: the decision on its pending candidate, and a rollback to take (then cleared)."""
        return {"decision": None if pending is None else self.decision(pending, adapter_id),
                "rollback": self._rollback_to.pop(adapter_id, None)}

    def take_user_rollbacks(self, shard: tuple[int, int] | None = None) -> dict[str, int]:
        """Every user adapter (of the learner worker's `shard`) an admin rolled back since the last call -> the
        version (the per-user learner restarts each from it); handed out once."""
        taken = {a: v for a, v in self._rollback_to.items() if is_user_adapter(a) and in_shard(a, shard)}
        for adapter in taken:
            del self._rollback_to[adapter]
        return taken

    def decision(self, version: int, adapter_id: str = BASE_ADAPTER) -> str | None:
        """"candidate", "accepted", "rejected", "superseded", or None for a number never published."""
        record = self._records.get(adapter_id, {}).get(version)
        return None if record is None else record["state"]

    def versions(self, adapter_id: str = BASE_ADAPTER) -> list[dict]:
        """Every published version with its state and gate numbers, oldest first; the served one is `current`."""
        current = self.latest_version(adapter_id)
        return [{**r, "current": r["version"] == current} for _, r in sorted(self._records.get(adapter_id, {}).items())]

    def user_version_counts(self) -> dict[str, int]:
        """Per-user adapters, all users together (counts, not one label per user): how many adapters have versions,
        and their versions by state (accepted, rejected, candidate, superseded)."""
        users = [records for a, records in self._records.items() if is_user_adapter(a) and records]
        states = Counter(r["state"] for records in users for r in records.values())
        return {"adapters": len(users), **{k: states[k] for k in ("accepted", "rejected", "candidate", "superseded")}}

    def highest_version(self, adapter_id: str = BASE_ADAPTER) -> int:
        """The highest number ever published (accepted, candidate or rejected); the next version is above it."""
        return self._highest.get(adapter_id, 0)

    def _accept(self, published: PublishedWeights) -> None:
        version = published.version
        history = self._versions.setdefault(version.adapter_id, [])
        history.append(published)  # holding the ref keeps the object alive while its owner lives
        del history[: -self.keep_versions]
        self._served.pop(version.adapter_id, None)  # a newly accepted version is served, after any rollback
        self._records[version.adapter_id][version.version]["state"] = "accepted"
        if is_user_adapter(version.adapter_id):  # one label per user would flood Prometheus: counted instead
            self._count_user_adapters()
        else:
            metrics.set_gauge("hsd_policy_version", version.version, adapter=version.adapter_id)
        self._save_history()
        self._save_served()

    def _save_served(self) -> None:
        if self._saver is not None:
            # per-user adapters are on disk already (the learner's adapters folder): only the shared policy here
            self._saver.submit({a: self.latest(a) for a in self._versions
                                if not is_user_adapter(a) and self.latest(a) is not None})

    def _load_served_weights(self) -> None:
        """The served weight sets saved by an earlier incarnation, put into the object store (this actor owns them)."""
        if self.weights_path is None or not self.weights_path.exists():
            return
        try:
            import torch

            saved: dict[str, WeightSet] = torch.load(self.weights_path, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: serve nothing until the next version
            log.warning("served weights %s unreadable (%s); nothing served until the next version",
                        self.weights_path, e)
            return
        for adapter, weights in saved.items():
            v = weights.version.version
            self._records.setdefault(adapter, {}).setdefault(v, {"version": v, "step": weights.version.step,
                                                                 "state": "accepted", "reason": None, "numbers": None})
            self._highest[adapter] = max(self._highest.get(adapter, 0), v)
            self._versions[adapter] = [PublishedWeights(weights.version, ray.put(weights))]
            metrics.set_gauge("hsd_policy_version", v, adapter=adapter)
            log.info("registry restored v%d of %s from %s", v, adapter, self.weights_path)

    def _save_history(self) -> None:
        """Write the records (atomically: temp file + rename); a failure is logged, never raised."""
        if self.history_path is None:
            return
        try:
            data = {"highest": self._highest, "records": {a: list(r.values()) for a, r in self._records.items()}}
            replace_atomically(self.history_path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str)))
        except OSError as e:
            log.warning("could not save the version history to %s: %s", self.history_path, e)

    def _load_history(self) -> None:
        if self.history_path is None or not self.history_path.exists():
            return
        try:
            data = json.loads(self.history_path.read_text())
            highest = {a: int(v) for a, v in data.get("highest", {}).items()}
            records = {a: {int(r["version"]): r for r in rs} for a, rs in data.get("records", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("version history %s unreadable (%s); starting a new one", self.history_path, e)
            return
        self._highest, self._records = highest, records
        for r in (r for rs in records.values() for r in rs.values()):
            if r["state"] == "candidate":  # undecided when the job stopped: never served
                r["state"] = "superseded"

    def persist_latest(self, adapter_id: str = BASE_ADAPTER) -> int:
        """Make the latest version durable (own a copy) without publishing a new one; returns its number."""
        history = self._versions.get(adapter_id)
        if not history:
            return -1
        latest = history[-1]
        history[-1] = PublishedWeights(latest.version, ray.put(ray.get(latest.ref)))
        return latest.version.version

    def latest_version(self, adapter_id: str = BASE_ADAPTER) -> int:
        """The served version (-1 when none): the newest accepted one, or the one an admin rolled back to."""
        latest = self.latest(adapter_id)
        return latest.version.version if latest is not None else -1

    def latest(self, adapter_id: str = BASE_ADAPTER) -> PublishedWeights | None:
        if adapter_id in self._served:
            return self._served[adapter_id]
        history = self._versions.get(adapter_id)
        return history[-1] if history else self._restore_user_adapter(adapter_id)


class WeightSaver:
    """Writes {adapter: WeightSet} to one file on a daemon thread (temp file + rename); a newer submission replaces
    one still waiting, so the disk never holds back the registry and the file always holds one whole version."""

    def __init__(self, path: Path):
        self.path = path
        self._cv = threading.Condition()
        self._waiting: dict | None = None
        self.saved: dict[str, int] = {}  # adapter -> version now on disk
        threading.Thread(target=self._run, name="served-weights-saver", daemon=True).start()

    def submit(self, served: dict[str, PublishedWeights]) -> None:
        with self._cv:
            self._waiting = served
            self._cv.notify()

    def _run(self) -> None:
        import torch

        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting is not None)
                served, self._waiting = self._waiting, None
            if {a: p.version.version for a, p in served.items()} == self.saved:
                continue
            try:
                weights = {a: ray.get(p.ref) for a, p in served.items()}
                replace_atomically(self.path, lambda tmp: torch.save(weights, tmp))
                self.saved = {a: w.version.version for a, w in weights.items()}
            except Exception as e:  # noqa: BLE001 - the weights' owner died, or the disk is full: try on the next
                log.warning("could not save the served weights to %s: %s", self.path, e)


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

    def highest_version(self, adapter_id: str = BASE_ADAPTER) -> int:
        return ray.get(self.handle.highest_version.remote(adapter_id))

    def decision(self, version: int, adapter_id: str = BASE_ADAPTER) -> str | None:
        return ray.get(self.handle.decision.remote(version, adapter_id))

    def versions(self, adapter_id: str = BASE_ADAPTER) -> list[dict]:
        return ray.get(self.handle.versions.remote(adapter_id))

    def learner_news(self, pending: int | None, adapter_id: str = BASE_ADAPTER) -> dict:
        return ray.get(self.handle.learner_news.remote(pending, adapter_id))


def publish(registry, weights: WeightSet, durable: bool = False, probes: list | None = None) -> float:
    """Put `weights` into the object store once and register it (see VersionRegistry.publish); `probes`: the latest
    prompts the candidate trained on, for the gate. Returns seconds."""
    t0 = time.perf_counter()
    probes_ref = ray.put(probes) if probes else None
    ok = ray.get(registry.publish.remote(PublishedWeights(weights.version, ray.put(weights), probes_ref), durable))
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
        """Load the served version if it is not the engine's (newer, or an earlier one after an admin rollback); True
        if a new version was applied."""
        latest = ray.get(self.registry.latest_version.remote(self.adapter_id))
        current = self.engine.version.version
        if latest < 0 or latest == current or latest in self._rejected:
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
        self._waiting: tuple[WeightSet, bool, list | None] | None = None  # (weights, durable, probes) to publish
        self._busy = False
        self.errors: list[str] = []
        threading.Thread(target=self._run, name="weight-publisher", daemon=True).start()

    def submit(self, weights: WeightSet, durable: bool = False, probes: list | None = None) -> None:
        with self._cv:
            self._waiting = (weights, durable, probes)  # a set still waiting is superseded: followers want the latest
            self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._waiting is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting is not None)
                (weights, durable, probes), self._waiting, self._busy = self._waiting, None, True
            try:
                seconds = publish(self.registry, weights, durable, probes)
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
    a started `WeightFollower` on the current one (a restarted registry is a new actor: the follower is replaced).
    The first look, and the first weight load, happen before the constructor returns: a replica that starts (or is
    restarted) while a loop runs serves the latest published version from its first request, not v0."""

    def __init__(self, engine, *, role: str, poll_s: float, where: str = "replica"):
        self.engine, self.role, self.poll_s, self.where = engine, role, poll_s, where
        self.follower: WeightFollower | None = None
        self._stop = threading.Event()
        self._attach()
        if self.follower is not None:
            try:
                self.follower.poll()
            except Exception as e:  # noqa: BLE001 - the registry is restarting: the follower's thread tries again
                log.warning("%s: first weight poll failed (%s); serving what it has", where, e)
        threading.Thread(target=self._run, name="hsd-registry-attach", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.follower is not None:
            self.follower.stop()

    def _run(self) -> None:
        while not self._stop.wait(LOOKUP_RETRY_S):
            self._attach()

    def _attach(self) -> None:
        try:
            registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
        except Exception:  # noqa: BLE001 - not running (standalone), or Ray briefly unreachable
            return
        current = self.follower.registry if self.follower is not None else None
        if _actor_id(registry) != _actor_id(current):
            if self.follower is not None:
                self.follower.stop()
            self.follower = WeightFollower(self.engine, registry, role=self.role, poll_s=self.poll_s).start()
            log.info("%s follows the weight registry", self.where)


def _actor_id(handle) -> object:
    return getattr(handle, "_actor_id", None) if handle is not None else None
