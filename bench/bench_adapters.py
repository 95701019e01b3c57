"""What per-user adapters cost a serving engine (`python -m bench.bench_adapters`): throughput with N resident
adapters against none (same engine, same run, alternating), the latency of loading a user's adapter, and memory per
resident adapter.

In-process, no Ray. The engine a chat replica runs (`--engine vllm`: `AsyncVLLMEngine`, continuous batching;
`--engine hf`: `HFEngine`), the adapters shaped as personalization.lora makes them (rank 8 on q/k/v/o by default),
random B matrices so they really change the replies.

- throughput: `--requests` concurrent seeded requests (`--max-tokens`, temperature 0.7), (a) all on the shared policy,
  (b) all on one user's adapter, (c) spread round-robin over the N resident adapters; rounds alternate a, b, c, a, b,
  c ... `--rounds` times each; the ratios b / a (what LoRA itself costs) and c / a (N adapters against none) of
  generated tokens per second (median over rounds);
- switch: seconds to load a user's adapter into the engine (a new user, and a new version of a resident one) — what a
  replica's AdapterRouter adds to the first request after a new version (its object-store fetch comes on top);
- memory: the adapter's bytes as sent, and the resident set size of the engine's processes before and after loading
  the N adapters (vLLM preallocates `max_loras` slots at start-up, so its growth per adapter is small). The adapters
  are made in a child process, so memory they freed cannot hide the engine's growth.

Prints one JSON object and writes it to `bench/results/bench_adapters-<model>-<engine>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.util import percentile, rss_mb


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--adapters", type=int, default=8, help="N resident per-user adapters")
    p.add_argument("--requests", type=int, default=16, help="concurrent requests per round")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each arm (alternating)")
    p.add_argument("--device", default="cpu", help="the hf engine's torch device ('cuda': GPU memory per adapter too)")
    p.add_argument("--random-weights", action="store_true", help="the model's config and tokenizer with random "
                   "weights (a machine without the weights; replies run to max_tokens)")
    p.add_argument("--tag", default="", help="suffix of the result file's name (e.g. the device)")
    return p.parse_args()


def _make_adapters(model_dir: str, n: int, tmp: str) -> list:
    from bench.util import random_user_adapters

    return random_user_adapters(model_dir, [f"bench-user-{i}" for i in range(n + 1)], 0.02, tmp)  # +1: not resident


def _throughput(engine, prompt: list[int], adapters: list[str | None], max_tokens: int) -> float:
    """Generated tokens per second of len(adapters) concurrent requests (None: the shared policy)."""
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.weights import BASE_ADAPTER

    params = [SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=i, adapter_id=a or BASE_ADAPTER)
              for i, a in enumerate(adapters)]
    t0 = time.perf_counter()
    if engine.continuous_batching:
        async def one(p):
            last = None
            async for last in engine.stream(prompt, p):
                pass
            return last

        async def all_of():
            return await asyncio.gather(*(one(p) for p in params))

        gens = asyncio.run(all_of())
    else:
        gens = [engine.generate([prompt], p)[0] for p in params]
    return sum(len(g.token_ids) for g in gens) / (time.perf_counter() - t0)


def main() -> None:
    import tempfile

    args = _args()
    from hsd_ray.config import EngineConfig
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.engines.factory import make_engine
    from bench.util import model_folder

    model_dir = model_folder(args.model, args.random_weights)
    tmp = tempfile.mkdtemp(prefix="hsd-bench-adapters-")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        sets = pool.submit(_make_adapters, model_dir, args.adapters, tmp).result()
    engine = make_engine(model_dir, EngineConfig(kind=args.engine, max_lora_rank=8, max_model_len=1024,
                                                 device=args.device),
                         enable_lora=True, serving=True, max_loras=args.adapters)
    prompt = render_prompt(engine.tokenizer, [{"role": "user", "content": "Tell me about the sea."}])
    _throughput(engine, prompt, [None] * 2, 8)  # warm-up
    rss_before, gpu_before = rss_mb(), _gpu_mb(args.device)
    new_user = []
    for weights in sets[: args.adapters]:
        t0 = time.perf_counter()
        engine.load_weights(weights)
        new_user.append(time.perf_counter() - t0)
    rss_after, gpu_after = rss_mb(), _gpu_mb(args.device)
    names = [w.version.adapter_id for w in sets[: args.adapters]]
    spread = [names[i % len(names)] for i in range(args.requests)]
    _throughput(engine, prompt, spread[: args.adapters], 8)  # warm every adapter once
    base_tps, one_tps, spread_tps = [], [], []
    for _ in range(args.rounds):
        base_tps.append(_throughput(engine, prompt, [None] * args.requests, args.max_tokens))
        one_tps.append(_throughput(engine, prompt, [names[0]] * args.requests, args.max_tokens))
        spread_tps.append(_throughput(engine, prompt, spread, args.max_tokens))
    new_version = []
    for weights in sets[: args.adapters]:  # a new version of every resident adapter
        bumped = copy.copy(weights)
        bumped.version = type(weights.version)(weights.version.adapter_id, 2, 2, time.time())
        t0 = time.perf_counter()
        engine.load_weights(bumped)
        new_version.append(time.perf_counter() - t0)
    adapter_mb = sets[0].num_bytes() / 2**20
    result = {
        "benchmark": "bench_adapters", "model": args.model, "engine": args.engine, "adapters": args.adapters,
        "requests": args.requests, "max_tokens": args.max_tokens, "rounds": args.rounds,
        "lora": sets[0].lora_config,
        "tokens_per_s": {"shared_policy": base_tps, "one_adapter": one_tps, "n_adapters": spread_tps},
        "throughput_ratio_one_vs_0": statistics.median(one_tps) / statistics.median(base_tps),
        "throughput_ratio_n_vs_0": statistics.median(spread_tps) / statistics.median(base_tps),
        "load_new_user_s": {"p50": percentile(new_user, 50), "max": max(new_user)},
        "load_new_version_s": {"p50": percentile(new_version, 50), "max": max(new_version)},
        "adapter_mb": adapter_mb,
        "rss_mb": {"before": rss_before, "after": rss_after,
                   "per_adapter": (rss_after - rss_before) / args.adapters},
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
        "random_weights": args.random_weights,
    }
    if gpu_before is not None:  # what the adapters' tensors take on the GPU (the caching allocator's live bytes)
        result["gpu_mb"] = {"before": gpu_before, "after": gpu_after,
                            "per_adapter": (gpu_after - gpu_before) / args.adapters}
    if hasattr(engine, "close"):
        engine.close()
    print(json.dumps(result, indent=1))
    tag = f"-{args.tag}" if args.tag else ""
    out = Path("bench/results") / f"bench_adapters-{Path(args.model).name}-{args.engine}{tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}", file=sys.stderr)


def _gpu_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / 2**20


if __name__ == "__main__":
    main()
