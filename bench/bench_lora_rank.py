"""What vLLM's LoRA slot size costs, side by side in one run (`python -m bench.bench_lora_rank`).

vLLM pads every adapter to the engine's `max_lora_rank`, and its CPU LoRA kernels (`PunicaWrapperCPU`) cost in
proportion to that size, not to the adapter's own rank. The workload is the version gate's evaluation of one
per-user adapter (loop/gatekeeper.py `evaluate()`: probe and checkable greedy replies, the KL scoring passes, the
reference text's perplexity) — what every user's adapter version waits for before it is served in per_user mode.

Two gatekeepers on vLLM in this process, each holding the same rank-8 adapter (personalization.lora, small random
B matrices), one built with `engine.max_lora_rank` 8 (what the config resolves it to: the largest rank it trains)
and one with 64 (the default before it was resolved); their `evaluate()` calls alternate, `--rounds` each. The gate
numbers must be the same at both sizes (the padding is zeros); the ratio of the median seconds is the saving.

Results print and go to `bench/results/bench_lora_rank-<model>.json`. SmolLM2-135M-Instruct: ~5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    from bench.util import random_user_adapters, write_result
    from hsd_ray.config import Config
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings
    from hsd_ray.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m bench.bench_lora_rank", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--ranks", default="8,64", help="engine.max_lora_rank values, compared with the first")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    model_dir = str(resolve_model(args.model))
    ranks = [int(r) for r in args.ranks.split(",")]
    per_user = ["personalization.mode=per_user", "learner.batch_turns=2", "engine.kind=vllm"]
    base = Config.load(overrides=per_user)
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_lora_rank"
    (weights,) = random_user_adapters(model_dir, ["bench"], 0.002, root)  # a small step from zero: a first version
    gates = {}
    for rank in ranks:
        cfg = Config.load(overrides=[*per_user, f"engine.max_lora_rank={rank}"])
        gates[rank] = Gatekeeper(GatekeeperSettings(model_dir, cfg.engine, cfg.version_gate, enable_lora=True),
                                 registry=None)
        gates[rank]._load(weights)
    seconds, numbers = {r: [] for r in ranks}, {}
    for i in range(args.rounds):
        for rank in ranks if i % 2 == 0 else reversed(ranks):
            t0 = time.perf_counter()
            got, _ = gates[rank].evaluate()
            seconds[rank].append(round(time.perf_counter() - t0, 2))
            numbers[rank] = {k: got.to_dict()[k] for k in ("accuracy", "ppl", "loops", "length")}
            print(f"round {i}: max_lora_rank {rank}: {seconds[rank][-1]:.1f} s  {numbers[rank]}", flush=True)
    first = ranks[0]
    result = {
        "model": args.model, "adapter_rank": base.personalization.lora.r, "rounds": args.rounds,
        "evaluate_s": {str(r): s for r, s in seconds.items()},
        "median_s": {str(r): statistics.median(s) for r, s in seconds.items()},
        "ratio_to_first": {str(r): round(statistics.median(seconds[r]) / statistics.median(seconds[first]), 2)
                           for r in ranks},
        "same_gate_numbers": all(numbers[r] == numbers[first] for r in ranks),
        "gate_numbers": {str(r): n for r, n in numbers.items()},
        "env": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    write_result(result, Path(args.out) / f"bench_lora_rank-{Path(args.model).name}.json")
    os._exit(0)  # two in-process vLLM engines: skip their slow, noisy teardown


if __name__ == "__main__":
    main()
