"""The version registry's side of per-user adapters (personalization.mode=per_user): deletion and disk restore.

A user's adapter versions are published to the registry like the shared policy's, and gated like them unless
`version_gate.user_adapters` is none (the gatekeeper takes every adapter's candidates in turn). They are not written
to served_weights.pt: the learner keeps every adapter on disk (core/adapter_bank.py), and a restarted registry reads
an adapter back from there the first time a replica asks for it: from `<output_dir>/adapters/.accepted/<adapter_id>/`
(its last accepted version) when adapters are gated, else from `<output_dir>/adapters/<adapter_id>/`.

Deleting a user's data (`forget_adapter`) removes their adapter's versions, its records and its folder, and leaves a
tombstone time that the learner polls (`forgotten_since`) to drop the copy it holds in memory: nothing the user taught
is served or trained on afterwards. Version numbers are not reused.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import ray

from hsd_ray import metrics
from hsd_ray.core.weights import is_user_adapter

log = logging.getLogger(__name__)


class AdapterShelf:
    """Mixed into VersionRegistry (broadcast.py), which owns `gate_users`, `_versions`, `_records`, `_candidates`,
    `_served`, `_highest` and `_save_history`."""

    def _init_shelf(self, adapters_dir: str | None) -> None:
        self.adapters_dir = Path(adapters_dir) if adapters_dir else None
        self._forgotten: dict[str, float] = {}  # adapter -> when its user's data was deleted

    def forget_adapter(self, adapter_id: str) -> bool:
        """Delete a per-user adapter everywhere the registry reaches: versions, records, folder. True if it existed."""
        if not is_user_adapter(adapter_id):
            raise ValueError(f"{adapter_id!r} is not a per-user adapter")
        from hsd_ray.core.adapter_bank import adapter_folders

        existed = bool(self._versions.pop(adapter_id, None)) | bool(self._records.pop(adapter_id, None))
        self._candidates.pop(adapter_id, None)
        self._served.pop(adapter_id, None)
        for folder in adapter_folders(self.adapters_dir, adapter_id):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                existed = True
        self._forgotten[adapter_id] = time.time()
        self._save_history()
        self._count_user_adapters()
        return existed

    def forgotten_since(self, since: float) -> dict[str, float]:
        """Adapters deleted after `since` (the learner drops its copies of them)."""
        return {a: t for a, t in self._forgotten.items() if t > since}

    def _restore_user_adapter(self, adapter_id: str):
        """After a registry restart: the adapter's last saved version from the learner's folder, put in the object
        store (this actor owns it) and served again. None when there is none."""
        if self.adapters_dir is None or adapter_id in self._forgotten or not is_user_adapter(adapter_id):
            return None
        from hsd_ray.core.adapter_bank import accepted_folder, read_adapter
        from hsd_ray.loop.broadcast import PublishedWeights

        folder = accepted_folder(self.adapters_dir, adapter_id) if self.gate_users else self.adapters_dir / adapter_id
        weights = read_adapter(folder, adapter_id)
        if weights is None:
            return None
        published = PublishedWeights(weights.version, ray.put(weights))
        v = weights.version.version
        self._versions[adapter_id] = [published]
        self._records.setdefault(adapter_id, {})[v] = {"version": v, "step": weights.version.step,
                                                       "state": "accepted", "reason": None, "numbers": None}
        self._highest[adapter_id] = max(self._highest.get(adapter_id, 0), v)
        log.info("registry restored v%d of %s from %s", v, adapter_id, self.adapters_dir)
        self._count_user_adapters()
        return published

    def _count_user_adapters(self) -> None:
        metrics.set_gauge("hsd_user_adapters", sum(1 for a, v in self._versions.items() if v and is_user_adapter(a)))
