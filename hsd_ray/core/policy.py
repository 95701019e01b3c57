"""The trainable policy: LoRA wrapping (peft), optimizer, exported weight sets, and the reference policy for the KL
anchor. Torch + peft only; the Ray Train learner and the tests build on these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import copy
import time
from contextlib import contextmanager

import torch

from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet

if TYPE_CHECKING:  # the core reads config attributes only; it does not need pydantic at run time
    from hsd_ray.config import LearnerConfig, LoraConfig


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` with a peft LoRA adapter (only adapter weights stay trainable)."""
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(lora))


def peft_lora_config(lora: LoraConfig):
    """peft's LoraConfig for our config section."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def unwrap(model):
    """DDP → module."""
    return model.module if hasattr(model, "module") and not is_peft(model) else model


def make_optimizer(model, cfg: LearnerConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Online learning has no horizon, so no cosine decay: linear warm-up, then constant.
    warmup = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return optimizer, scheduler


def export_weights(model, version: int, step: int, adapter_id: str = BASE_ADAPTER) -> WeightSet:
    """A detached CPU copy of what serving needs: the adapter only when training LoRA, else the full state dict."""
    model = unwrap(model)
    pv = PolicyVersion(adapter_id=adapter_id, version=version, step=step, created_at=time.time())
    if is_peft(model):
        from peft import get_peft_model_state_dict

        tensors = cpu_copy(get_peft_model_state_dict(model))
        return WeightSet(pv, "lora", tensors, lora_config_dict(model.peft_config["default"]))
    # each shared tensor once: a tied lm_head is the embedding under a second name (21% of SmolLM2's bytes)
    aliases = tied_aliases(model)
    return WeightSet(pv, "full", cpu_copy({k: v for k, v in model.state_dict().items() if k not in aliases}))


def lora_config_dict(cfg) -> dict:
    """A peft LoraConfig as the dict a LoRA WeightSet carries (what the engines rebuild it from)."""
    return {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
            "target_modules": sorted(cfg.target_modules), "bias": cfg.bias, "task_type": "CAUSAL_LM"}


def tied_aliases(model) -> dict[str, str]:
    """state-dict name → the earlier name whose parameter it shares (a tied lm_head → the embedding). By parameter
    identity, so it also works on a meta-device model; the engines accept a weight set with or without the alias."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def base_weights(model) -> dict:
    """A model's own weights by their transformers names, whether or not peft has wrapped its layers: peft renames a
    wrapped layer's weight `…q_proj.base_layer.weight` and puts its adapters' `lora_*` tensors beside it. The tensors
    share storage with the model, so copying into them loads new shared weights under resident adapters."""
    if hasattr(model, "get_base_model"):  # a PeftModel (the model inside has a `peft_config` too, once wrapped)
        model = model.get_base_model()
    return {name.replace(".base_layer.", "."): t for name, t in model.state_dict().items() if ".lora_" not in name}


def cpu_copy(tensors: dict) -> dict:
    """Detached CPU copies of `tensors`. From a GPU each copy lands in page-locked memory, issued asynchronously with
    one synchronisation at the end: per-tensor copies into pageable memory ran at ~1 GB/s on an H100 (52 GB/s
    pinned; bench/results/gpu_check-h100.json), which stalled every publish of a 0.5B model by a second."""
    out = {}
    cuda = False
    for name, t in tensors.items():
        t = t.detach()
        if t.is_cuda:
            cuda = True
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t, non_blocking=True)
            out[name] = buf
        else:
            out[name] = t.to("cpu", copy=True)
    if cuda:
        torch.cuda.synchronize()
    return out


def trainable_state(model) -> dict:
    """What a checkpoint keeps of the policy: the whole state dict, or only the adapter's (trainable) tensors."""
    model = unwrap(model)
    state = model.state_dict()
    if is_peft(model):
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in names}
    return state


def load_trainable_state(model, state: dict) -> None:
    """Load a `trainable_state` strictly: every key the model expects and no other (a LoRA model: exactly its adapter
    keys). Raises ValueError naming the mismatched keys instead of silently keeping initial values."""
    model = unwrap(model)
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    model.load_state_dict(state, strict=not is_peft(model))  # a peft model: the base keys are not in `state`


def resume_policy(model, state: dict | None, *, kl_on: bool, kind: str = "initial", ema_rate: float = 0.05):
    """Load a checkpoint's policy into `model` and return the KL reference (None when kl_on is False).

    Order matters: the reference is taken from `model` BEFORE the checkpoint is loaded, so the "initial" anchor is
    the base weights after any number of restarts; an "ema" reference gets its own checkpointed state back."""
    reference = ReferencePolicy(model, kind, ema_rate) if kl_on else None
    if state is not None:
        load_trainable_state(model, state["model"])
        if reference is not None and state.get("reference") is not None:
            reference.load_state_dict(state["reference"])
    return reference


class ReferencePolicy:
    """The policy the KL penalty anchors to: the starting weights ("initial") or an EMA of the policy ("ema").

    For a LoRA policy with reference="initial" no copy is made: the base model with the adapter disabled *is* the
    starting policy. Otherwise a frozen copy is kept (2× weight memory) and, for "ema", moved toward the policy after
    each step: ref ← (1 − rate)·ref + rate·policy. Build it before loading a checkpoint (`resume_policy`); only the
    EMA has state to checkpoint (`state_dict`).
    """

    def __init__(self, model, kind: str = "initial", ema_rate: float = 0.05):
        model = unwrap(model)
        self.kind, self.ema_rate = kind, ema_rate
        self._adapter_off = kind == "initial" and is_peft(model)
        self._policy = model
        self._copy = None
        if not self._adapter_off:
            self._copy = copy.deepcopy(model).eval()
            for p in self._copy.parameters():
                p.requires_grad_(False)

    @contextmanager
    def model(self):
        if self._adapter_off:
            with self._policy.disable_adapter():
                yield self._policy
        else:
            yield self._copy

    @torch.no_grad()
    def update(self) -> None:
        if self.kind != "ema" or self._copy is None:
            return
        for ref_p, p in zip(self._copy.parameters(), self._policy.parameters()):
            ref_p.lerp_(p.detach(), self.ema_rate)

    def state_dict(self) -> dict | None:
        """The EMA copy's weights (what a checkpoint must keep); None for "initial" (the base weights are known)."""
        return self._copy.state_dict() if self.kind == "ema" and self._copy is not None else None

    def load_state_dict(self, state: dict) -> None:
        if self.kind == "ema" and self._copy is not None:
            self._copy.load_state_dict(state, strict=True)
