"""A teacher on its own vLLM engine, or on the chat replica's engine: which is cheaper on a small machine?
(`python -m bench.bench_share`)

The loop runs a teacher's hindsight scoring (prompt-logprob mode, top-k) on an offline vLLM engine of its own, beside
the replica's async engine. On a 2-core machine the two engines compete for the same cores; one engine doing both
would save a model copy and a process. Measured here, in one process, side by side in alternating rounds of
`--seconds` each, under the same streamed chat load (`--clients` concurrent streams of `--max-tokens` tokens,
temperature 0.7, back to back):

- `separate`: the teacher scores batches of `--turns` synthetic hindsight turns (teacher and baseline pass each) on
  its own offline `VLLMEngine`, back to back, while the replica's `AsyncVLLMEngine` serves;
- `shared`: the same batches through the serving engine's `score` (one engine core for both);
- `serve_only`: the chat load alone (what the teacher's work costs serving, either way).

Reported per arm: chat tokens/s, time to first token p50/p99, teacher target tokens scored per second; and the
memory one teacher engine takes (resident set growth when it is built). This measures the engines only: sharing in
the loop would also add a Ray call from the teacher actor to the replica per batch, and tie a teacher's batch to one
replica's weight version (the replica swaps weights after a drain; the teacher loads every accepted version).
Results: bench/results/bench_share-<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

from bench.bench_engines import score_requests, synthetic_turns
from bench.bench_serve import QUESTIONS
from bench.util import percentile, rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("separate", "shared", "serve_only")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.bench_share", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=4, help="concurrent chat streams")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--turns", type=int, default=8, help="turns per teacher batch (two score requests each)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of one round")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each arm, the order alternating")
    return p.parse_args(argv)


async def _chat_load(engine, prompts: list, args, stop: threading.Event) -> dict:
    """`--clients` streams back to back until `stop`: tokens and the time to each reply's first token."""
    from hsd_ray.core.engine_api import Generation, SamplingParams

    ttft, tokens = [], 0

    async def client(k: int) -> None:
        nonlocal tokens
        i = k
        while not stop.is_set():
            t0, first = time.perf_counter(), None
            params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, top_p=0.9)
            async for item in engine.stream(prompts[i % len(prompts)], params):
                if first is None and not isinstance(item, Generation) and item.token_ids:
                    first = time.perf_counter() - t0
                if isinstance(item, Generation):
                    tokens += len(item.token_ids)
            ttft.append(first)
            i += args.clients

    await asyncio.gather(*(client(k) for k in range(args.clients)))
    return {"tokens": tokens, "ttft": [t for t in ttft if t is not None]}


def _round(arm: str, serving, teacher, prompts, requests, args) -> dict:
    """One round of `arm`: the chat load for `--seconds`, with the teacher scoring beside it (or not)."""
    stop = threading.Event()
    scored = {"batches": 0, "targets": 0}
    scorer = {"separate": teacher, "shared": serving}.get(arm)

    def teach() -> None:
        while not stop.is_set():
            scorer.score(requests, top_k=20)
            scored["batches"] += 1
            scored["targets"] += sum(len(r.target_ids) for r in requests)

    thread = threading.Thread(target=teach, daemon=True) if scorer is not None else None
    t0 = time.perf_counter()
    if thread is not None:
        thread.start()
    threading.Timer(args.seconds, stop.set).start()
    chat = asyncio.run(_chat_load(serving, prompts, args, stop))
    if thread is not None:
        thread.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "chat_tokens_per_s": chat["tokens"] / wall, "ttft": chat["ttft"],
            "teacher_targets_per_s": scored["targets"] / wall, "teacher_batches": scored["batches"]}


def _summary(rounds: list[dict]) -> dict:
    ttft = [t for r in rounds for t in r["ttft"]]
    wall = sum(r["wall_s"] for r in rounds)
    return {"chat_tokens_per_s": sum(r["chat_tokens_per_s"] * r["wall_s"] for r in rounds) / wall,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "teacher_targets_per_s": sum(r["teacher_targets_per_s"] * r["wall_s"] for r in rounds) / wall,
            "teacher_batches": sum(r["teacher_batches"] for r in rounds), "replies": len(ttft)}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from hsd_ray.config import Config
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.engines.factory import make_engine
    from hsd_ray.models import resolve_model

    model_dir = resolve_model(args.model)
    ecfg = Config.load(overrides=[f"model={args.model}", "engine.kind=vllm", "engine.vllm_async=true"]).engine
    rss0 = rss_mb()
    serving = make_engine(model_dir, ecfg, serving=True)
    rss1 = rss_mb()
    teacher = make_engine(model_dir, ecfg)
    rss2 = rss_mb()
    try:
        prompts = [render_prompt(serving.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
        requests = score_requests(serving.tokenizer, synthetic_turns(args.turns))
        own, shared = teacher.score(requests[:2], top_k=20), serving.score(requests[:2], top_k=20)  # both warm
        assert all(abs(x.logp_T - y.logp_T).max() < 1e-3 for x, y in zip(own, shared)), "engines score differently"
        _round("serve_only", serving, teacher, prompts, requests, argparse.Namespace(**{**vars(args), "seconds": 5}))
        rounds: dict = {arm: [] for arm in ARMS}
        for r in range(args.rounds):
            for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
                rounds[arm].append(_round(arm, serving, teacher, prompts, requests, args))
                print(f"round {r} {arm}: {rounds[arm][-1]['chat_tokens_per_s']:.1f} chat tok/s, "
                      f"{rounds[arm][-1]['teacher_targets_per_s']:.1f} teacher tok/s", flush=True)
    finally:
        teacher.close()
        serving.close()
    res = {arm: _summary(rs) for arm, rs in rounds.items()}
    s, p, o = res["shared"], res["separate"], res["serve_only"]
    out = {"config": vars(args), "env": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                         "date": time.strftime("%Y-%m-%d %H:%M:%S")},
           "memory_mb": {"serving_engine": rss1 - rss0, "teacher_engine": rss2 - rss1}, "results": res,
           "ratios": {"shared/separate chat tokens/s": s["chat_tokens_per_s"] / p["chat_tokens_per_s"],
                      "shared/separate TTFT p50": s["ttft_p50_s"] / p["ttft_p50_s"],
                      "shared/separate teacher tokens/s": s["teacher_targets_per_s"] / p["teacher_targets_per_s"],
                      "separate/serve_only chat tokens/s": p["chat_tokens_per_s"] / o["chat_tokens_per_s"],
                      "shared/serve_only chat tokens/s": s["chat_tokens_per_s"] / o["chat_tokens_per_s"]}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_share-{Path(args.model).name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{'arm':<11} {'chat tok/s':>10} {'TTFT p50':>9} {'p99':>7} {'teacher tok/s':>14}")
    for arm in ARMS:
        a = res[arm]
        print(f"{arm:<11} {a['chat_tokens_per_s']:>10.1f} {a['ttft_p50_s']:>9.3f} {a['ttft_p99_s']:>7.3f} "
              f"{a['teacher_targets_per_s']:>14.1f}")
    print(f"memory: serving engine +{out['memory_mb']['serving_engine']:.0f} MB, teacher engine "
          f"+{out['memory_mb']['teacher_engine']:.0f} MB")
    print("; ".join(f"{k} {v:.2f}x" for k, v in out["ratios"].items()))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
