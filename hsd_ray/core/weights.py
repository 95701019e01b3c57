"""Versioned weight sets: what the learner publishes and engines load. Keyed by adapter id so per-user adapters
(many versions per user, only some resident) fit the same records as the shared policy ("base")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BASE_ADAPTER = "base"  # adapter id of the shared policy (per-user adapters get their own ids)
USER_ADAPTER_PREFIX = "user-"


def user_adapter_id(user_id: str) -> str:
    """The adapter id of a user's own adapter (personalization.mode=per_user): a hash, so a user id never becomes a
    path or a metric label, and the same user always maps to the same adapter (deletion finds it)."""
    return USER_ADAPTER_PREFIX + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:16]


def is_user_adapter(adapter_id: str) -> bool:
    return adapter_id.startswith(USER_ADAPTER_PREFIX)


def in_shard(adapter_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether a user adapter belongs to learner worker `rank` of `world` (`shard` = (rank, world); None = one worker
    owns every adapter): by its hash, so a user's turns always go to the same worker."""
    return shard is None or int(adapter_id.removeprefix(USER_ADAPTER_PREFIX), 16) % shard[1] == shard[0]


@dataclass(frozen=True)
class PolicyVersion:
    """Identity of a weight set: which adapter (the shared policy is "base") and its monotonic version number."""

    adapter_id: str = BASE_ADAPTER
    version: int = 0
    step: int = 0  # learner optimizer step that produced it
    created_at: float = 0.0

    def fingerprint(self) -> str:
        """What the chat API reports as `system_fingerprint`."""
        return f"hsd-{self.adapter_id}-v{self.version}"


@dataclass
class WeightSet:
    """A versioned set of tensors to load: the whole model (kind="full") or a peft LoRA adapter (kind="lora").

    `tensors` maps parameter names to CPU tensors: HF names of the base model for "full"; peft adapter names
    (as in `get_peft_model_state_dict`) for "lora", with `lora_config` holding the peft LoraConfig as a dict.
    """

    version: PolicyVersion
    kind: str  # "full" | "lora"
    tensors: dict  # name -> torch.Tensor (CPU)
    lora_config: dict | None = None

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def zeroed(self, version: PolicyVersion) -> "WeightSet":
        """An all-zero copy labelled `version`. Of a LoRA set: an adapter that adds exactly nothing (lora_B = 0), so
        loading it takes an engine's LoRA slot back to the weights underneath."""
        return WeightSet(version, self.kind, {k: t.new_zeros(t.shape) for k, t in self.tensors.items()},
                         self.lora_config)


class WeightLoadError(RuntimeError):
    """A weight set could not be applied (wrong names/shapes/dtype); the engine still serves its previous version."""


def validate_tensors(tensors: dict, expected: dict, require_all: bool) -> None:
    """Names, shapes and finiteness checked before anything is copied."""
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise WeightLoadError(f"weight set has unknown tensors, e.g. {unknown[:3]}")
    if require_all:
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise WeightLoadError(f"weight set is missing tensors, e.g. {missing[:3]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise WeightLoadError(f"{name}: shape {tuple(t.shape)} != expected {tuple(expected[name].shape)}")
        if t.is_floating_point() and not t.isfinite().all():
            raise WeightLoadError(f"{name}: contains NaN or inf")
