"""Per-user LoRA adapters on one frozen shared policy, as the learner holds them (personalization.mode=per_user).

Each user's adapter is a named peft adapter on the same base model with its own AdamW state, step count and version.
A step activates one adapter (peft marks only the active adapter trainable), so a user's turns can only move that
user's adapter: the base weights and every other adapter stay bit-identical (tests/unit/test_adapter_bank.py).

At most `max_resident` adapters stay in memory; the least recently stepped one is saved and dropped, and loaded back
from disk (weights and optimizer state) when its user's turns arrive again. On disk an adapter is peft's own format,
so any peft / vLLM user can load it:

    <root>/<adapter_id>/adapter_config.json, adapter_model.safetensors   (the layout of PeftModel.save_pretrained)
    <root>/<adapter_id>/optimizer.pt, hsd_version.json                    (AdamW state, absent = fresh; version, steps)
    <root>/.accepted/<adapter_id>/...                                      (version gate on: the last accepted state)

With the version gate on, the learner snapshots each candidate (`snapshot`), writes it as the accepted state once the
gatekeeper accepts it (`save_accepted`), and after a rejection goes back to that state (`roll_back`).

Torch + peft only (no Ray): the learner process (loop/personal_learner.py) drives it.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hsd_ray.core.policy import cpu_copy, lora_config_dict, peft_lora_config
from hsd_ray.core.weights import PolicyVersion, WeightSet, validate_tensors

if TYPE_CHECKING:
    from hsd_ray.config import LoraConfig, LossConfig
    from hsd_ray.core.batch import HindsightBatch, PackedSequences

ADAPTERS_DIR = "adapters"  # under job.output_dir: one folder per user adapter
VERSION_FILE = "hsd_version.json"  # in an adapter's folder: its version and step count
OPTIMIZER_FILE = "optimizer.pt"  # in an adapter's folder: its AdamW state
ACCEPTED_DIR = ".accepted"  # under root, version gate on: each adapter's last accepted state
_IDLE = "idle"  # peft needs one adapter to exist; this one never trains and never answers


@dataclass
class AdapterState:
    """One adapter at one point: peft-named LoRA tensors (CPU), AdamW state dict, version, steps."""

    tensors: dict
    optimizer: dict
    version: int
    steps: int


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
             reference=None, retain: PackedSequences | None = None) -> dict:
        """One optimizer step of `adapter_id` (created from zero, or loaded from disk, if not resident); `retain`:
        replayed reference replies for the retain anchor (loss.retain_coef > 0)."""
        from hsd_ray.core.train_step import learner_step

        state = self._activate(adapter_id)
        metrics = learner_step(self.model, state["optimizer"], batch, loss, grad_clip=grad_clip, reference=reference,
                               retain=retain)
        state["steps"] += 1
        return metrics

    def export(self, adapter_id: str, version: int, step: int) -> WeightSet:
        """The adapter's tensors as a LoRA WeightSet (peft names without the adapter name, as engines load them)."""
        from peft import get_peft_model_state_dict

        self._activate(adapter_id)
        tensors = cpu_copy(get_peft_model_state_dict(self.model, adapter_name=adapter_id))
        pv = PolicyVersion(adapter_id=adapter_id, version=version, step=step, created_at=time.time())
        return WeightSet(pv, "lora", tensors, lora_config_dict(self.peft_config))

    @torch.no_grad()
    def load_shared(self, tensors: dict) -> None:
        """New weights for the shared policy under every adapter (personalization.mode=both: its latest accepted
        version); the adapters and their optimizer states stay. `tensors` by transformers names (a full WeightSet's);
        every name is checked before anything is copied."""
        from hsd_ray.core.policy import base_weights

        params = base_weights(self.model)
        validate_tensors(tensors, params, require_all=False)
        for name, t in tensors.items():
            params[name].copy_(t)

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

    def snapshot(self, adapter_id: str) -> AdapterState:
        """A copy of the adapter as it is now (weights, optimizer state, version, steps), e.g. a gated candidate's."""
        from peft import get_peft_model_state_dict

        state = self._activate(adapter_id)
        return AdapterState(cpu_copy(get_peft_model_state_dict(self.model, adapter_name=adapter_id)),
                            copy.deepcopy(state["optimizer"].state_dict()), state["version"], state["steps"])

    def save(self, adapter_id: str, state: AdapterState | None = None) -> None:
        """Write the adapter's working state under root (what a restarted learner resumes from); `state`: a snapshot
        of it taken just now (not copied again)."""
        if self.root is not None and adapter_id in self._resident:
            self._write(self.root / adapter_id, state or self.snapshot(adapter_id))

    def save_accepted(self, adapter_id: str, state: AdapterState) -> None:
        """Write `state` as the adapter's last accepted version (version gate): what a rollback returns to and what a
        restarted registry serves (accepted_folder)."""
        if self.root is not None:
            self._write(accepted_folder(self.root, adapter_id), state)

    def roll_back(self, adapter_id: str) -> int | None:
        """Back to the last accepted state (weights and optimizer state; from zero if none was accepted): the working
        copy in memory and on disk is replaced. Returns the accepted version (None: back to zero)."""
        if adapter_id in self._resident:
            self._drop(adapter_id)
        if self.root is None:
            return None
        working, accepted = self.root / adapter_id, accepted_folder(self.root, adapter_id)
        shutil.rmtree(working, ignore_errors=True)
        if not (accepted / VERSION_FILE).exists():
            return None
        shutil.copytree(accepted, working)
        return self._saved_meta(adapter_id)["version"]

    def restart_from(self, weights: WeightSet, steps: int, accepted: bool) -> None:
        """Make a published version of the adapter its working state (and, `accepted`: its last accepted state), with
        a fresh AdamW state: an admin rolled its user back to that version, whose optimizer state was not kept.
        Without a root nothing is kept, so the adapter starts again from zero (as `roll_back`)."""
        adapter_id = weights.version.adapter_id
        if adapter_id in self._resident:
            self._drop(adapter_id)
        if self.root is None:
            return
        state = AdapterState(dict(weights.tensors), {}, weights.version.version, steps)
        self._write(self.root / adapter_id, state)
        if accepted:
            self._write(accepted_folder(self.root, adapter_id), state)

    def delete(self, adapter_id: str) -> bool:
        """Forget the adapter everywhere (memory and disk): its user's data was deleted. True if it existed."""
        existed = adapter_id in self._resident
        if existed:
            self._drop(adapter_id)
        for folder in adapter_folders(self.root, adapter_id):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
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
            optimizer_file = self.root / adapter_id / OPTIMIZER_FILE
            if optimizer_file.exists():  # absent after a restart from a published version (restart_from)
                optimizer.load_state_dict(torch.load(optimizer_file, weights_only=False))
            state.update(steps=saved["steps"], version=saved["version"])
        self._resident[adapter_id] = state

    def _drop(self, adapter_id: str) -> None:
        del self._resident[adapter_id]
        if self.model.active_adapter == adapter_id:
            self.model.set_adapter(_IDLE)
        self.model.delete_adapter(adapter_id)

    def _write(self, folder: Path, state: AdapterState) -> None:
        """peft's plain layout (what PeftModel.save_pretrained writes for one adapter) + optimizer.pt + the version
        file, written to a temporary folder and moved into place."""
        from safetensors.torch import save_file

        tmp = folder.parent / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(state.tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        self.peft_config.save_pretrained(str(tmp))
        if state.optimizer:  # none after a restart from a published version: a fresh AdamW
            torch.save(state.optimizer, tmp / OPTIMIZER_FILE)
        (tmp / VERSION_FILE).write_text(json.dumps({"version": state.version, "steps": state.steps,
                                                    "saved_at": time.time()}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)

    def _saved_meta(self, adapter_id: str) -> dict | None:
        """{version, steps, saved_at} of the adapter's folder; None when it has none (never saved)."""
        if self.root is None:
            return None
        try:
            return json.loads((self.root / adapter_id / VERSION_FILE).read_text())
        except (OSError, ValueError):
            return None


def accepted_folder(root: str | Path, adapter_id: str) -> Path:
    """Where the adapter's last accepted state is kept (version gate on); a dot folder, so not an adapter itself."""
    return Path(root) / ACCEPTED_DIR / adapter_id


def adapter_folders(root: str | Path | None, adapter_id: str) -> list[Path]:
    """Every folder holding the adapter (working state, accepted state): what deleting its user's data removes."""
    return [] if root is None else [Path(root) / adapter_id, accepted_folder(root, adapter_id)]


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
