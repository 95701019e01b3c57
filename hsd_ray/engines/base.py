"""What both engines share, engine-neutral: the versioned load under the engine lock, a whole-reply `stream`, the checks every weight set
passes before it touches a model, token-budget batching, and cutting a reply at a stop string.

Used by engines/hf.py and engines/vllm.py only; the engine interface and its records live in hsd_ray.core.engine_api.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import torch

from hsd_ray.core.engine_api import Generation, GenerationDelta, SamplingParams
from hsd_ray.core.weights import PolicyVersion, WeightLoadError, WeightSet, is_user_adapter


class VersionedWeights:
    """Shared by the engines: apply a WeightSet under the engine's lock and move `version` only once it applied.

    An engine provides `_lock`, `_version`, `_load_full(tensors)` and `_load_lora(weights)`; each loader validates the
    whole set before it touches the model, so a rejected set leaves the previous version serving.
    """

    continuous_batching = False  # offline engines: one generate call at a time, batched by loop/batching.py

    @property
    def user_adapters(self) -> dict[str, PolicyVersion]:
        """Resident per-user adapters (personalization.mode=per_user) → the version each holds."""
        if not hasattr(self, "_user_adapters"):
            self._user_adapters: dict[str, PolicyVersion] = {}
        return self._user_adapters

    def evict_adapter(self, adapter_id: str) -> None:
        """Unload a per-user adapter (least recently used, or its user's data was deleted)."""
        with self._lock:
            if self.user_adapters.pop(adapter_id, None) is not None:
                self._unload_user_adapter(adapter_id)

    def _load_user_adapter(self, weights: WeightSet) -> None:
        raise WeightLoadError(f"{type(self).__name__} does not serve per-user adapters")

    def _unload_user_adapter(self, adapter_id: str) -> None:
        pass

    @property
    def version(self) -> PolicyVersion:
        return self._version

    async def stream(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[GenerationDelta | Generation]:
        """The offline engines' stream: the whole reply is generated (on a worker thread), then yielded as one delta
        and its Generation."""
        import asyncio

        (gen,) = await asyncio.to_thread(self.generate, [prompt], params)
        yield GenerationDelta(list(gen.token_ids), gen.text, list(gen.logprobs), gen.version)
        yield gen

    def load_weights(self, weights: WeightSet) -> None:
        with self._lock:
            if is_user_set(weights):  # one user's adapter beside the shared policy
                self._load_user_adapter(weights)
                self.user_adapters[weights.version.adapter_id] = weights.version
                return
            if weights.kind == "full":
                self._load_full(weights.tensors)
            elif weights.kind == "lora":
                self._load_lora(weights)
            else:
                raise WeightLoadError(f"unknown weight set kind {weights.kind!r}")
            self._version = weights.version


def is_user_set(weights: WeightSet) -> bool:
    """True for a per-user adapter's weight set (which must be a LoRA adapter), False for the shared policy's."""
    if not is_user_adapter(weights.version.adapter_id):
        return False
    if weights.kind != "lora":
        raise WeightLoadError(f"a per-user weight set must be a LoRA adapter, not {weights.kind!r}")
    return True


def chunk_by_budget(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so that (rows × longest row) ≤ token_budget per group (a single longer row is its own group)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def check_tied(tensors: dict, aliases: dict[str, str]) -> None:
    """A set that sends a tied alias (lm_head) must give it the values of the tensor it is tied to."""
    for alias, source in aliases.items():
        if alias in tensors and not torch.equal(tensors[alias], tensors[source]):
            raise WeightLoadError(f"{alias} is tied to {source} in this model but the set gives it other values")


def trim_to_text(tokenizer, ids: list[int], logprobs: list[float], text: str):
    """Shortest prefix of ids whose decoding covers `text` (used to cut a reply at a stop string)."""
    n = 0
    while n < len(ids) and len(tokenizer.decode(ids[:n], skip_special_tokens=True)) < len(text):
        n += 1
    return ids[:n], logprobs[:n], text
