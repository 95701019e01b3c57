"""What a weight swap costs streaming clients on the async vLLM engine (`python -m bench.bench_swap`).

In-process, no Ray: one `AsyncVLLMEngine` (engines/vllm_async.py), `--clients` coroutines streaming replies back to back
(unseeded, temperature 0.7, `--max-tokens`), and a thread that loads a new full weight set every `--every` seconds
(the weight follower's call). A swap drains: new requests wait at the door while in-flight ones finish, then the set
loads. Reported: each swap's pause (drain + load, and load alone) p50/p99, and the time to first token of requests that
arrived while the door was shut vs those that did not — the latency a swap adds, p50/p99.

Default: the tiny random model (fast); `--model smollm2-135m-instruct` for the real one. Prints one JSON object and
writes it to `bench/results/bench_swap-<model>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from bench.util import percentile


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    p.add_argument("--every", type=float, default=4.0, help="seconds between swaps")
    return p.parse_args()


def main() -> None:
    args = _args()
    import torch
    from transformers import AutoModelForCausalLM

    from hsd_ray.core.engine_api import Generation, SamplingParams
    from hsd_ray.core.policy import export_weights
    from hsd_ray.engines.vllm_async import AsyncVLLMEngine
    from hsd_ray.models import resolve_model

    model_dir = resolve_model(args.model)
    engine = AsyncVLLMEngine(model_dir, max_model_len=512, kv_cache_bytes=256 * 2**20)
    tok = engine.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)  # BatchEncoding in transformers 5
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    shut: list[tuple[float, float]] = []  # (start, end) of every swap, time.monotonic
    stop = threading.Event()

    def swapper():
        version = 0
        while not stop.wait(args.every):
            version += 1
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 + 1e-3)
            weights = export_weights(model, version=version, step=version)
            t0 = time.monotonic()
            engine.load_weights(weights)
            shut.append((t0, time.monotonic()))

    requests: list[tuple[float, float, float]] = []  # (arrival, ttft, total)

    async def client(deadline: float):
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7)
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            ttft = None
            async for item in engine.stream(prompt, params):
                if ttft is None and not isinstance(item, Generation):
                    ttft = time.monotonic() - t0
            requests.append((t0, ttft or 0.0, time.monotonic() - t0))

    async def load():
        deadline = time.monotonic() + args.duration
        await asyncio.gather(*(client(deadline) for _ in range(args.clients)))

    asyncio.run(load())  # warm-up round without swaps
    requests.clear()
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    asyncio.run(load())
    stop.set()
    thread.join()

    def hit(arrival: float) -> bool:
        return any(a <= arrival <= b for a, b in shut)

    during = [r[1] for r in requests if hit(r[0])]
    calm = [r[1] for r in requests if not hit(r[0])]
    pause = [b - a for a, b in shut]
    loads = [s["load_s"] for s in engine.swaps]

    def pct(xs):
        return {"n": len(xs), "p50": percentile(xs, 50) if xs else None, "p99": percentile(xs, 99) if xs else None}

    result = {
        "command": "python -m bench.bench_swap " + " ".join(sys.argv[1:]), "model": args.model, "clients": args.clients, "max_tokens": args.max_tokens, "load_avg": os.getloadavg(),
        "swap_pause_s": pct(pause), "swap_load_s": pct(loads),
        "ttft_s_arrived_during_swap": pct(during), "ttft_s_otherwise": pct(calm),
        "added_ttft_s": {k: (pct(during)[k] - pct(calm)[k]) if during and calm else None for k in ("p50", "p99")},
    }
    print(json.dumps(result, indent=1))
    out = Path("bench/results") / f"bench_swap-{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
