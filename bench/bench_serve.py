"""Chat throughput with and without cross-request batching, side by side in one run (`python -m bench.bench_serve`).

Two Serve apps of one replica each on the same engine kind, identical but for `serve.max_batch` (1 = every request
its own engine call, vs --max-batch), capture off. The same `--clients` concurrent OpenAI clients send the same
`--requests` chat requests (unseeded, so they may share calls; max_tokens fixed) to each app; the apps are measured
in alternating rounds (A B B A ...), after a warm-up. Reported per app: requests/s, generated tokens/s, p50 / p99
latency, and the batches the replica formed (GET /health); then the ratios batched / unbatched.

Default: SmolLM2-135M-Instruct on the vLLM engine (CPU), 8 clients, 32 requests per round, 2 rounds, max_tokens 32.
Results: bench/results/bench_serve-<model>-<engine>.json. Extra `section.field=value` arguments override the Config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.util import free_port, percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = [
    "What is the capital of France?", "Give me one tip for sleeping better.", "Explain what a prime number is.",
    "How do I boil an egg?", "What does a CPU do?", "Name three primary colours.", "Why is the sky blue?",
    "What is photosynthesis?", "Suggest a name for a pet cat.", "Write a haiku about rain.",
]


def _round(url: str, args, tag: str) -> dict:
    """`args.requests` requests from `args.clients` concurrent clients; wall time, latencies, tokens."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)

    def one(i: int):
        t0 = time.perf_counter()
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=args.max_tokens, temperature=0.7, user=f"{tag}-{i}")
        return time.perf_counter() - t0, r.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        done = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "latencies_s": [d[0] for d in done], "tokens": sum(d[1] for d in done)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=32, help="requests per round and app")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per app (alternating order)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8, help="serve.max_batch of the batched app")
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import httpx
    import ray
    from ray import serve

    from hsd_ray.config import Config
    from hsd_ray.loop.runtime import local_ray
    from hsd_ray.loop.serve import build_app, serving_port
    from hsd_ray.models import resolve_model

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    resolve_model(args.model)
    cfg = Config.load(overrides=[f"model={args.model}", f"engine.kind={args.engine}", "capture.enabled=false",
                                 f"serve.max_tokens={args.max_tokens}", f"serve.port={free_port()}", *args.overrides])
    apps = {"unbatched": 1, "batched": args.max_batch}
    out: dict = {"config": {**{k: v for k, v in vars(args).items()}},
                 "env": {"ray": ray.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                         "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()[0]}}
    t_start = time.perf_counter()
    with local_ray(num_cpus=max(8, os.cpu_count() or 1), log_to_driver=False, quiet=True, keep_logs_on_error=False):
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port})
        port = serving_port(cfg.serve.port)
        urls = {}
        for name, max_batch in apps.items():
            c = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"max_batch": max_batch})})
            serve.run(build_app(c), name=f"bench-{name}", route_prefix=f"/{name}")
            urls[name] = f"http://127.0.0.1:{port}/{name}/v1"
        for name, url in urls.items():  # warm-up (first calls compile / allocate)
            _round(url, argparse.Namespace(**{**vars(args), "requests": args.clients}), f"warm-{name}")
        rounds: dict[str, list[dict]] = {n: [] for n in apps}
        for r in range(args.rounds):
            order = list(apps) if r % 2 == 0 else list(reversed(apps))
            for name in order:
                rounds[name].append(_round(urls[name], args, f"r{r}-{name}"))
                print(f"round {r} {name}: {rounds[name][-1]['wall_s']:.1f} s", flush=True)
        for name, url in urls.items():
            lat = [x for rd in rounds[name] for x in rd["latencies_s"]]
            wall = sum(rd["wall_s"] for rd in rounds[name])
            n = args.requests * args.rounds
            health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30).json()
            out[name] = {"max_batch": apps[name], "requests": n, "wall_s": wall, "requests_per_s": n / wall,
                         "tokens_per_s": sum(rd["tokens"] for rd in rounds[name]) / wall,
                         "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "batching": health["batching"],
                         "round_wall_s": [rd["wall_s"] for rd in rounds[name]]}
        out["ratio_requests_per_s"] = out["batched"]["requests_per_s"] / out["unbatched"]["requests_per_s"]
        out["ratio_tokens_per_s"] = out["batched"]["tokens_per_s"] / out["unbatched"]["tokens_per_s"]
        out["ratio_p50"] = out["batched"]["p50_s"] / out["unbatched"]["p50_s"]
        out["wall_s"] = time.perf_counter() - t_start
        out["env"]["loadavg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_serve-{Path(args.model).name}-{args.engine}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{args.clients} concurrent clients, {args.requests} requests x {args.rounds} rounds per app, "
          f"max_tokens {args.max_tokens}, {args.model} on {args.engine}")
    print(f"{'app':<10} {'max_batch':>9} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7}  batches (largest)")
    for name in apps:
        a = out[name]
        b = a["batching"]
        print(f"{name:<10} {a['max_batch']:>9} {a['requests_per_s']:>7.2f} {a['tokens_per_s']:>7.1f} "
              f"{a['p50_s']:>7.2f} {a['p99_s']:>7.2f}  {b['engine_calls']} for {b['requests']} ({b['largest_batch']})")
    print(f"batched / unbatched: {out['ratio_requests_per_s']:.2f}x requests/s, {out['ratio_tokens_per_s']:.2f}x "
          f"tokens/s, p50 latency {out['ratio_p50']:.2f}x")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
