"""Part 2, chat latency with capture on vs off: two Serve apps of one replica each (capture.enabled true / false; the
named ReplyLedger actor exists, on its own queue), the same conversations (question + follow-up) sent to both,
interleaved with alternating order, sequentially and greedy (temperature 0: the same tokens are generated on both),
after a warm-up; client-side p50 / p99 / mean per mode, over all requests and over the follow-ups alone (the requests
that capture observes), plus the ledger's counts to confirm every follow-up of the "on" app was captured.
"""

from __future__ import annotations

import statistics
import time

from bench.loop.common import FOLLOWUPS, QUESTIONS, chat, client, health, quiet_serve
from bench.util import percentile


def _start_ledger(cfg, queue):
    """The named ledger the replicas look up (the whole loop's ledger may still hold the name for a moment)."""
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger

    for _ in range(50):
        try:
            ledger = ray.remote(ReplyLedger).options(name=LEDGER_ACTOR_NAME, namespace=NAMESPACE, num_cpus=0).remote(
                queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages)
            ray.get(ledger.stats.remote())
            return ledger
        except ValueError:
            time.sleep(0.2)
    return None


def _summary(lat: dict, modes, n_conv: int, args, cfg, wall: float, urls: dict, ledger_stats: dict) -> dict:
    hs = {m: health(u) for m, u in urls.items()}
    out: dict = {"requests_per_mode": 2 * n_conv, "conversations_per_mode": n_conv,
                 "warmup_conversations_per_mode": args.latency_warmup, "replicas_per_mode": cfg.serve.replicas,
                 "max_tokens": cfg.serve.max_tokens, "temperature": 0, "wall_s": wall,
                 "ledger": ledger_stats, "replica_capture": {m: h["capture"] for m, h in hs.items()}}
    for mode in modes:
        all_ = lat[mode]["first"] + lat[mode]["followup"]
        out[mode] = {"p50_s": percentile(all_, 50), "p99_s": percentile(all_, 99), "mean_s": statistics.mean(all_),
                     "followup_p50_s": percentile(lat[mode]["followup"], 50),
                     "followup_p99_s": percentile(lat[mode]["followup"], 99),
                     "first_p50_s": percentile(lat[mode]["first"], 50), "samples_s": lat[mode]}
    out["ratio_p50"] = out["on"]["p50_s"] / out["off"]["p50_s"]
    out["ratio_p99"] = out["on"]["p99_s"] / out["off"]["p99_s"]
    out["ratio_followup_p50"] = out["on"]["followup_p50_s"] / out["off"]["followup_p50_s"]
    expected = n_conv + args.latency_warmup
    if ledger_stats["captured"] != expected:
        out["capture_problem"] = f"ledger captured {ledger_stats['captured']} follow-ups, expected {expected}"
    return out


def bench_latency(cfg, args, log) -> dict:
    import ray
    from ray import serve

    from hsd_ray.loop.queue import TurnQueue
    from hsd_ray.loop.serve import build_app, serving_port

    queue = ray.remote(TurnQueue).options(num_cpus=0).remote(cfg.queue.capacity, cfg.queue.scored_capacity,
                                                             cfg.queue.lease_timeout_s)
    ledger = _start_ledger(cfg, queue)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    quiet_serve()
    port = serving_port(cfg.serve.port)
    modes = {"on": True, "off": False}
    urls = {}
    try:
        for mode, enabled in modes.items():
            c = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"enabled": enabled})})
            serve.run(build_app(c), name=f"bench-capture-{mode}", route_prefix=f"/{mode}")
            urls[mode] = f"http://127.0.0.1:{port}/{mode}/v1"
        clients = {m: client(u) for m, u in urls.items()}
        n_conv = args.latency_requests // 2
        lat: dict[str, dict[str, list[float]]] = {m: {"first": [], "followup": []} for m in modes}

        def conversation(mode: str, i: int, tag: str, record: bool) -> None:
            client_, user = clients[mode], f"lat-{tag}-{mode}-{i}"
            q = QUESTIONS[(i + 7) % len(QUESTIONS)]
            t0 = time.perf_counter()
            r = chat(client_, cfg, [{"role": "user", "content": q}], user, temperature=0, seed=i)
            t1 = time.perf_counter()
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": r.choices[0].message.content},
                    {"role": "user", "content": FOLLOWUPS[i % len(FOLLOWUPS)]}]
            chat(client_, cfg, msgs, user, temperature=0, seed=i)
            t2 = time.perf_counter()
            if record:
                lat[mode]["first"].append(t1 - t0)
                lat[mode]["followup"].append(t2 - t1)

        for i in range(args.latency_warmup):
            for mode in modes:
                conversation(mode, i, "warm", False)
        t0 = time.perf_counter()
        for i in range(n_conv):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for mode in order:
                conversation(mode, i, "run", True)
        wall = time.perf_counter() - t0
        return _summary(lat, modes, n_conv, args, cfg, wall, urls, ray.get(ledger.stats.remote()))
    finally:
        for mode in urls:
            serve.delete(f"bench-capture-{mode}")
        if ledger is not None:
            ray.kill(ledger)
        ray.kill(queue)
