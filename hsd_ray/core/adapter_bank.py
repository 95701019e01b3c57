"""Per-user LoRA adapters on one frozen shared policy, as the learner holds them (personalization.mode=per_user).

Each user's adapter is a named peft adapter on the same base model with its own AdamW state, step count and version.
A step activates one adapter (peft marks only the active adapter trainable), so a user's turns can only move that
user's adapter: the base weights and every other adapter stay bit-identical (tests/unit/test_adapter_bank.py).

At most `max_resident` adapters stay in memory; the least recently stepped one is saved and dropped, and loaded back
from disk (weights and optimizer state) when its user's turns arrive again. On disk an adapter is peft's own format,
so any peft / vLLM user can load it:

    <root>/<adapter_id>/adapter_config.json, adapter_model.safetensors   (PeftModel.save_pretrained)
    <root>/<adapter_id>/optimizer.pt, hsd_version.json                    (AdamW state; version, steps)

Torch + peft only (no Ray): the learner process (loop/personal_learner.py) drives it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hsd_ray.core.policy import cpu_copy, lora_config_dict, peft_lora_config
from hsd_ray.core.weights import PolicyVersion, WeightSet

if TYPE_CHECKING:
    from hsd_ray.config import LoraConfig, LossConfig
    from hsd_ray.core.batch import HindsightBatch

ADAPTERS_DIR = "adapters"  # under job.output_dir: one folder per user adapter
VERSION_FILE = "hsd_version.json"  # in an adapter's folder: its version and step count
OPTIMIZER_FILE = "optimizer.pt"  # in an adapter's folder: its AdamW state
_IDLE = "idle"  # peft needs one adapter to exist; this one never trains and never answers


class AdapterBank:
    """The learner's per-user adapters: create, step, export, persist, evict, delete."""

    def __init__(self, model, lora: LoraConfig, *, lr: float, weight_decay: float = 0.0, root: str | Path | None,
                 max_resident: int = 64):
        from peft import get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        self.peft_config = peft_lora_config(lora)
        self.model = get_peft_model(model, self.peft_config, adapter_name=_IDLE)
        self.lr, self.weight_decay = lr, weight_decay
        self.root = Path(root) if root is not None else None
        self.max_resident = max_resident
        self._resident: OrderedDict[str, dict] = OrderedDict()  # adapter id -> {optimizer, steps, version}
        self.loaded_from_disk = 0

    # ---- what the learner calls -------------------------------------------------------------------------------
    def step(self, adapter_id: str, batch: HindsightBatch, loss: LossConfig, *, grad_clip: float,
             reference=None) -> dict:
        """One optimizer step of `adapter_id` (created from zero, or loaded from disk, if not resident)."""
        from hsd_ray.core.train_step import learner_step

        state = self._activate(adapter_id)
        metrics = learner_step(self.model, state["optimizer"], batch, loss, grad_clip=grad_clip, reference=reference)
        state["steps"] += 1
        return metrics

    def export(self, adapter_id: str, version: int, step: int) -> WeightSet:
        """The adapter's tensors as a LoRA WeightSet (peft names without the adapter name, as engines load them)."""
        from peft import get_peft_model_state_dict

        self._activate(adapter_id)
        tensors = cpu_copy(get_peft_model_state_dict(self.model, adapter_name=adapter_id))
        pv = PolicyVersion(adapter_id=adapter_id, version=version, step=step, created_at=time.time())
        return WeightSet(pv, "lora", tensors, lora_config_dict(self.peft_config))

    def set_version(self, adapter_id: str, version: int) -> None:
        self._activate(adapter_id)["version"] = version

    def version(self, adapter_id: str) -> int:
        """The adapter's last published version (0: never published); read from disk for an evicted adapter."""
        if adapter_id in self._resident:
            return self._resident[adapter_id]["version"]
        saved = self._saved_meta(adapter_id)
        return saved["version"] if saved else 0

    def steps(self, adapter_id: str) -> int:
        return self._activate(adapter_id)["steps"]

    def save(self, adapter_id: str) -> None:
        """Write the adapter and its optimizer state under root (peft format + optimizer.pt), atomically per file."""
        if self.root is None or adapter_id not in self._resident:
            return
        state = self._resident[adapter_id]
        folder = self.root / adapter_id
        tmp = self.root / f".{adapter_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp), selected_adapters=[adapter_id])
        # save_pretrained puts a non-default adapter in a subfolder named after it; flatten to peft's plain layout
        nested = tmp / adapter_id
        if nested.is_dir():
            for f in nested.iterdir():
                f.replace(tmp / f.name)
            nested.rmdir()
        torch.save(state["optimizer"].state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / VERSION_FILE).write_text(json.dumps({"version": state["version"], "steps": state["steps"],
                                                    "saved_at": time.time()}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)

    def delete(self, adapter_id: str) -> bool:
        """Forget the adapter everywhere (memory and disk): its user's data was deleted. True if it existed."""
        existed = adapter_id in self._resident
        if existed:
            self._drop(adapter_id)
        if self.root is not None and (self.root / adapter_id).exists():
            shutil.rmtree(self.root / adapter_id, ignore_errors=True)
            existed = True
        return existed

    def resident(self) -> list[str]:
        return list(self._resident)

    def on_disk(self) -> list[str]:
        if self.root is None or not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    # ---- internals ---------------------------------------------------------------------------------------------
    def _activate(self, adapter_id: str) -> dict:
        """Make `adapter_id` the active (and only trainable) adapter, bringing it into memory first."""
        if adapter_id == _IDLE:
            raise ValueError(f"{_IDLE!r} is reserved")
        if adapter_id not in self._resident:
            self._bring_in(adapter_id)
        self._resident.move_to_end(adapter_id)
        if self.model.active_adapter != adapter_id:
            self.model.set_adapter(adapter_id)
        return self._resident[adapter_id]

    def _bring_in(self, adapter_id: str) -> None:
        while len(self._resident) >= self.max_resident:
            oldest = next(iter(self._resident))
            self.save(oldest)
            self._drop(oldest)
        saved = self._saved_meta(adapter_id)
        if saved is not None:
            self.model.load_adapter(str(self.root / adapter_id), adapter_name=adapter_id, is_trainable=True)
            self.loaded_from_disk += 1
        else:
            self.model.add_adapter(adapter_id, self.peft_config)
        self.model.set_adapter(adapter_id)
        params = [p for n, p in self.model.named_parameters() if f".{adapter_id}." in n]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        state = {"optimizer": optimizer, "steps": 0, "version": 0}
        if saved is not None:
            optimizer.load_state_dict(torch.load(self.root / adapter_id / OPTIMIZER_FILE, weights_only=False))
            state.update(steps=saved["steps"], version=saved["version"])
        self._resident[adapter_id] = state

    def _drop(self, adapter_id: str) -> None:
        del self._resident[adapter_id]
        if self.model.active_adapter == adapter_id:
            self.model.set_adapter(_IDLE)
        self.model.delete_adapter(adapter_id)

    def _saved_meta(self, adapter_id: str) -> dict | None:
        """{version, steps, saved_at} of the adapter's folder; None when it has none (never saved)."""
        if self.root is None:
            return None
        try:
            return json.loads((self.root / adapter_id / VERSION_FILE).read_text())
        except (OSError, ValueError):
            return None


def read_adapter(folder: str | Path, adapter_id: str) -> WeightSet | None:
    """A saved adapter (peft format, as `AdapterBank.save` writes it) as the LoRA WeightSet it was published as; None
    when the folder holds no whole adapter."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / VERSION_FILE).read_text())
        lora = lora_config_dict(LoraConfig.from_pretrained(str(folder)))
        tensors = load_file(str(folder / "adapter_model.safetensors"))
    except (OSError, ValueError):
        return None
    pv = PolicyVersion(adapter_id=adapter_id, version=int(meta["version"]), step=int(meta["steps"]),
                       created_at=float(meta.get("saved_at", 0.0)))
    return WeightSet(pv, "lora", tensors, lora)
