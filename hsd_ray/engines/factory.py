"""Build the engine an `EngineConfig` asks for (hf | vllm) on a resolved model folder.

vLLM is imported only when a vLLM engine is built, so importing this module (and every process that only needs the
transformers engine or the config) never pays vLLM's import time or its environment side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hsd_ray.core.weights import BASE_ADAPTER

if TYPE_CHECKING:  # pragma: no cover
    from hsd_ray.config import EngineConfig
    from hsd_ray.core.engine_api import Engine


def make_engine(
    model_dir: str | Path,
    ecfg: "EngineConfig",
    *,
    enable_lora: bool = False,
    adapter_id: str = BASE_ADAPTER,
    score_token_budget: int = 8192,
    serving: bool = False,
    max_loras: int = 1,
) -> "Engine":
    """An `HFEngine` (kind="hf") or a `VLLMEngine` (kind="vllm") for the model in `model_dir`.

    `enable_lora` only matters for vLLM (it must reserve LoRA slots at start-up; the HF engine wraps itself in peft on
    the first LoRA set); `score_token_budget` only for HF (vLLM schedules its own batches). `serving` (a chat
    replica) with kind="vllm" and `ecfg.vllm_async` gives an `AsyncVLLMEngine` (engines/vllm_async.py). `max_loras`:
    adapters vLLM runs in one batch (per-user adapters: a replica's resident ones).
    """
    if ecfg.kind == "hf":
        from hsd_ray.engines.hf import HFEngine

        return HFEngine(
            model_dir,
            dtype=ecfg.dtype,
            device=ecfg.device,
            score_token_budget=score_token_budget,
            adapter_id=adapter_id,
        )
    if ecfg.kind == "vllm":
        from hsd_ray.engines.vllm import VLLMEngine

        if enable_lora and ecfg.max_lora_rank is None:  # Config resolves it; a bare EngineConfig must say
            raise ValueError("engine.max_lora_rank must be set for a vLLM engine with LoRA adapters")

        engine_cls, extra = VLLMEngine, {}
        if serving and ecfg.vllm_async:
            from hsd_ray.engines.vllm_async import AsyncVLLMEngine

            engine_cls, extra = AsyncVLLMEngine, {"max_num_seqs": ecfg.vllm_max_num_seqs}
        return engine_cls(
            model_dir,
            dtype=ecfg.dtype,
            max_model_len=ecfg.max_model_len,
            kv_cache_bytes=ecfg.vllm_kv_cache_bytes,
            gpu_memory_utilization=ecfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=ecfg.vllm_tensor_parallel_size,
            max_logprobs=ecfg.vllm_max_logprobs,
            enforce_eager=ecfg.vllm_enforce_eager,
            enable_lora=enable_lora,
            max_lora_rank=ecfg.max_lora_rank,
            max_loras=max_loras,
            adapter_id=adapter_id,
            **extra,
        )
    raise ValueError(f"unknown engine kind {ecfg.kind!r} (expected 'hf' or 'vllm')")
