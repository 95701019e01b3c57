"""Would judging several user adapters' candidates in one vLLM call pay, side by side in one run
(`python -m bench.bench_multi_lora`)?

In per_user mode the gatekeeper judges one adapter's candidate at a time: it loads it into its engine's one LoRA
slot and generates the probe set's greedy replies (loop/gatekeeper.py `evaluate()`). vLLM can run several resident
adapters in one batch (one `LoRARequest` per prompt, `max_loras` slots). Before the gatekeeper is rebuilt around
that, this measures what it could buy on this machine: the generation that dominates a user candidate's evaluation
(the probe prompts' greedy replies, `version_gate.probe_max_tokens`, and the checkable prompts' and facts',
`check_max_tokens`) for N resident adapters,

- one slot (what the gatekeeper does now): an engine with one LoRA slot (`max_loras` 1), each adapter loaded into
  it in turn, relabelled as the gatekeeper relabels a candidate, then two `engine.generate` calls per adapter;
- one adapter at a time on an engine holding all N (`max_loras` N): two calls per adapter, no loads;
- all adapters in one call per length on that engine: every adapter's prompts in one `LLM.generate`, each prompt
  with its adapter's `LoRARequest` (what a multi-candidate gatekeeper would do).

The arms rotate, `--rounds` each; the greedy replies must be token-identical between them (else the ratios mean
nothing). The ratio of the median seconds, one slot to all in one call, is the most a multi-candidate gatekeeper
could save on generation.

Results print and go to `bench/results/bench_multi_lora-<model>.json`. SmolLM2-135M-Instruct: ~7 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _one_slot(engine, sets: list, lengths: list[tuple[list, int]]) -> dict:
    """Each adapter loaded into the engine's one LoRA slot in turn (relabelled as the shared policy's, as
    `Gatekeeper._load` does), and its replies, one engine call per length."""
    from dataclasses import replace

    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.weights import BASE_ADAPTER

    got = {}
    for weights in sets:
        engine.load_weights(replace(weights, version=replace(weights.version, adapter_id=BASE_ADAPTER)))
        got[weights.version.adapter_id] = [[g.token_ids for g in engine.generate(
            prompts, SamplingParams(max_tokens=n, temperature=0.0, seed=0))] for prompts, n in lengths]
    return got


def _one_at_a_time(engine, adapters: list[str], lengths: list[tuple[list, int]]) -> dict:
    """Each adapter's replies from an engine holding all of them (no loads), one call per adapter and length."""
    from hsd_ray.core.engine_api import SamplingParams

    return {a: [[g.token_ids for g in engine.generate(prompts, SamplingParams(max_tokens=n, temperature=0.0,
                                                                              seed=0, adapter_id=a))]
                for prompts, n in lengths] for a in adapters}


def _all_in_one_call(engine, adapters: list[str], lengths: list[tuple[list, int]]) -> dict:
    """The same replies, every adapter's prompts in one vLLM call per length (a LoRARequest per prompt). Reaches
    into VLLMEngine's internals: this measures a design before the engine interface grows it."""
    from vllm.inputs import TokensPrompt

    from hsd_ray.core.engine_api import SamplingParams

    got = {a: [] for a in adapters}
    for prompts, n in lengths:
        params = SamplingParams(max_tokens=n, temperature=0.0, seed=0)
        requests = [engine._weights_for(a)[1] for a in adapters for _ in prompts]
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for _ in adapters for p in prompts],
                                   engine._vparams(params), use_tqdm=False, lora_request=requests)
        for i, a in enumerate(adapters):  # read as the engine reads its own outputs (end-of-turn token dropped)
            version = engine._weights_for(a)[0]
            got[a].append([engine._to_generation(o, params, version).token_ids
                           for o in outs[i * len(prompts):(i + 1) * len(prompts)]])
    return got


def main(argv: list[str] | None = None) -> int:
    from bench.util import random_user_adapters, write_result
    from hsd_ray.config import Config
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.data import load_probes
    from hsd_ray.engines.factory import make_engine
    from hsd_ray.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m bench.bench_multi_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapters", type=int, default=3, help="resident user adapters judged together")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    model_dir = str(resolve_model(args.model))
    cfg = Config.load(overrides=["personalization.mode=per_user", "engine.kind=vllm"])
    users = [f"bench{i}" for i in range(args.adapters)]
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_multi_lora"
    sets = random_user_adapters(model_dir, users, 0.002, root)  # a small step from zero: first versions
    slot = make_engine(model_dir, cfg.engine, enable_lora=True)  # the gatekeeper's engine: one LoRA slot
    engine = make_engine(model_dir, cfg.engine, enable_lora=True, max_loras=args.adapters)
    for weights in sets:
        engine.load_weights(weights)
    adapters = [w.version.adapter_id for w in sets]
    probes, tok, g = load_probes(cfg.version_gate.probes_path), engine.tokenizer, cfg.version_gate
    ask = [f["prompt"] for f in probes["facts"]] + [c["prompt"] for c in probes["checkable"]]
    lengths = [([render_prompt(tok, [{"role": "user", "content": q}]) for q in probes["probes"]], g.probe_max_tokens),
               ([render_prompt(tok, [{"role": "user", "content": q}]) for q in ask], g.check_max_tokens)]
    arms = {"one_slot": lambda: _one_slot(slot, sets, lengths),
            "one_at_a_time": lambda: _one_at_a_time(engine, adapters, lengths),
            "all_in_one_call": lambda: _all_in_one_call(engine, adapters, lengths)}
    seconds, replies, order = {a: [] for a in arms}, {}, list(arms)
    for i in range(args.rounds):
        for name in order[i % 3:] + order[: i % 3]:  # each arm first once in three rounds
            t0 = time.perf_counter()
            replies[name] = arms[name]()
            seconds[name].append(round(time.perf_counter() - t0, 2))
            print(f"round {i}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    a = replies["one_slot"]
    pairs = [(x, y) for other in ("one_at_a_time", "all_in_one_call") for ad in adapters
             for bx, by in zip(a[ad], replies[other][ad]) for x, y in zip(bx, by)]
    median = {k: statistics.median(s) for k, s in seconds.items()}
    result = {
        "model": args.model, "adapters": args.adapters, "rounds": args.rounds,
        "prompts_per_adapter": {str(n): len(ps) for ps, n in lengths},
        "seconds": seconds, "median_s": median,
        "speedup_over_one_slot": {k: round(median["one_slot"] / m, 2) for k, m in median.items()},
        "identical_to_one_slot": sum(x == y for x, y in pairs), "replies_compared": len(pairs),
        "adapters_differ": len({json.dumps(a[ad]) for ad in adapters}),
        "env": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                "loadavg": os.getloadavg()},
    }
    write_result(result, Path(args.out) / f"bench_multi_lora-{Path(args.model).name}.json")
    os._exit(0)  # two in-process vLLM engines: skip their slow, noisy teardown


if __name__ == "__main__":
    main()
