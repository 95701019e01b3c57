"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import socket
from pathlib import Path


def cuda_sync(device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously, so a timer must); no-op elsewhere.
    `device`: a torch.device or its name."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def write_result(result: dict, out: Path) -> None:
    """A benchmark's result: printed as JSON, then written to `out` (its folder made if missing)."""
    import json

    print(json.dumps(result, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a Serve HTTP proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy); NaN for no samples."""
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def rss_mb(pid: int | None = None) -> float:
    """Resident set size (MiB) of a process (default: this one) and its children (vLLM's engine core runs in one)."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def random_user_adapters(model_dir: str, users: list[str], std: float, root) -> list:
    """One exported adapter (personalization.lora's shape, version 1) per user, its lora_B drawn from N(0, std) under
    seed 0: peft starts B at zero, so an adapter moves the model only once B is not."""
    import torch

    from hsd_ray.config import Config
    from hsd_ray.core.adapter_bank import AdapterBank
    from hsd_ray.core.weights import user_adapter_id
    from hsd_ray.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(model_dir, "float32", "cpu")
    bank = AdapterBank(model, Config().personalization.lora, lr=1e-4, root=root, max_resident=len(users))
    torch.manual_seed(0)
    sets = []
    for user in users:
        adapter = user_adapter_id(user)
        bank._activate(adapter)
        with torch.no_grad():
            for name, p in bank.model.named_parameters():
                if f".{adapter}." in name and "lora_B" in name:
                    p.normal_(0, std)
        sets.append(bank.export(adapter, 1, 1))
    return sets


def model_folder(model: str, random_weights: bool = False) -> str:
    """The model's local folder (`resolve_model`), or with `random_weights` a copy of it with random weights: then a
    folder holding only its config and tokenizer will do (resolve_model wants weights in it)."""
    from hsd_ray.models import resolve_model

    if not random_weights:
        return str(resolve_model(model))
    return random_weights_copy(model if Path(model).is_dir() else str(resolve_model(model)))


def random_weights_copy(model_dir: str, seed: int = 0) -> str:
    """A copy of the model folder (its config and tokenizer; weights not needed) with seeded random weights: for a
    machine that cannot hold the real ones (the GPU machine gets at most 64 MiB). Greedy replies of random weights
    never end early, so every reply runs to max_tokens: generation times are an upper bound (the real SmolLM2's
    greedy replies to the gate's probes average 40 of 48 tokens)."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp(prefix="hsd-random-"))
    for f in Path(model_dir).iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out)).save_pretrained(out)
    return str(out)
