"""The noise floor of the learning benchmark's evaluation: the base model evaluated `--repeats` times, exactly as a
run's evaluation (same split, prompts, samples, max_tokens, capability prompts) but with different sampling seeds.

    python -m bench.learning.noise --split test --repeats 3 [--model smollm2-135m-instruct] [--engine vllm|hf]

Repeat r samples prompt i with seed r * 1_000_003 + i (repeat 0 is every run's first evaluation). For every metric —
compliance with each preference, yes/no correctness / good / said-yes, capability — it reports the values, their
mean, std (sample) and spread (max − min), and the FLOOR the report compares deltas with:

    floor = max(spread over repeats, 2 · sqrt(p (1 − p) / n))
    (n = replies behind the metric, p = (mean · n + 1) / (n + 2))

The second term is the binomial standard error of the prompts/samples themselves: it keeps greedy metrics
(capability, identical across sampling seeds) and a lucky small spread from claiming a zero noise floor.
Writes bench/results/learning/noise-<model>-<split>.json (read by `report.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

from bench.learning.preferences import PREFERENCES
from bench.learning.prompts import EVAL_SPLITS, build_prompt_sets
from bench.learning.scoring import metric_n, metric_values, run_suite

SEED_STRIDE = 1_000_003


def engine_generator(engine, top_p: float):
    """`generate(prompts, temperature, max_tokens, seed)` on an in-process engine, as the benchmark's evaluator."""
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.engine_api import SamplingParams

    def generate(prompts: list[str], temperature: float, max_tokens: int, seed: int) -> list[dict]:
        ids = [render_prompt(engine.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return [{"text": g.text, "finish_reason": "stop" if g.finished else "length", "fingerprint": None}
                for g in engine.generate(ids, params)]

    return generate


def floors(evals: list[dict]) -> dict[str, dict]:
    """Per metric: values over repeats, mean, std, spread, n, binomial term and floor (see module doc)."""
    values = [metric_values(e) for e in evals]
    ns = metric_n(evals[0])
    out = {}
    for k in values[0]:
        vs = [v[k] for v in values]
        mean = statistics.fmean(vs)
        n = max(1, ns.get(k, 1))
        p = (mean * n + 1.0) / (n + 2.0)  # Laplace: a metric at 0% or 100% still has a non-zero floor
        binomial = 2.0 * math.sqrt(p * (1.0 - p) / n)
        spread = max(vs) - min(vs)
        out[k] = {"values": vs, "mean": mean, "std": statistics.stdev(vs) if len(vs) > 1 else 0.0, "spread": spread,
                  "n": n, "binomial_2se": binomial, "floor": max(spread, binomial)}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.learning.noise", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--heldout-yes-no", type=int, default=20)
    p.add_argument("--capability", type=int, default=200)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--capability-max-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7, help="the loop's serve.temperature")
    p.add_argument("--top-p", type=float, default=0.9, help="the loop's serve.top_p")
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/learning")
    args = p.parse_args(argv)
    if args.repeats < 2:
        p.error("--repeats >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hsd_ray.config import EngineConfig
    from hsd_ray.engines.factory import make_engine
    from hsd_ray.models import resolve_model

    t0 = time.time()
    engine = make_engine(resolve_model(args.model), EngineConfig(kind=args.engine))
    prompts = build_prompt_sets(args.prompt_seed, args.heldout, args.heldout_yes_no, args.capability)
    generate = engine_generator(engine, args.top_p)
    evals = []
    for r in range(args.repeats):
        ev = run_suite(generate, prompts, args.split, list(PREFERENCES.values()), samples=args.samples,
                       temperature=args.temperature, max_tokens=args.max_tokens,
                       capability_max_tokens=args.capability_max_tokens, seed=r * SEED_STRIDE)
        ev["sampling_seed"] = r * SEED_STRIDE
        evals.append(ev)
        print(f"repeat {r}: " + " ".join(f"{k} {100 * v:.0f}%" for k, v in metric_values(ev).items()), flush=True)
    metrics = floors(evals)
    print(f"\n{'metric':<28} {'values':<22} {'spread':>7} {'std':>6} {'2·SE':>6} {'floor':>6}")
    for k, m in metrics.items():
        vals = " ".join(f"{100 * v:.0f}" for v in m["values"])
        print(f"{k:<28} {vals:<22} {100 * m['spread']:>6.1f} {100 * m['std']:>6.1f} {100 * m['binomial_2se']:>6.1f} "
              f"{100 * m['floor']:>6.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"noise-{Path(args.model).name}-{args.split}.json"
    for ev in evals:  # keep the JSON small: a few replies per repeat
        ev["replies"] = ev["replies"][:6]
        ev["capability"]["answers"] = ev["capability"]["answers"][:6]
        ev["capability"].pop("fingerprints", None)
    path.write_text(json.dumps({"config": vars(args), "metrics": metrics, "evals": evals,
                                "wall_s": time.time() - t0, "cpus": os.cpu_count()}, indent=1) + "\n")
    print(f"\n{path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
