"""Part 3, weight broadcast vs a raw copy: the learner's `export_weights` + `broadcast.publish` (one `ray.put` and a
VersionRegistry registration) + a WeightFollower's `poll()` in a follower actor with a chat replica's CPUs (fetch
from the object store + `engine.load_weights`), against a raw in-process copy of the same tensors (`dst.copy_(src)`
per tensor, timed first while nothing else runs). Measured for the full weights and for a LoRA adapter (r=16 by
default): one warm-up round, median of the rest, with the follower's lookup / fetch / load split out.
"""

from __future__ import annotations

import statistics
import time

from bench.loop.common import RAW_REPEATS, FollowerProbe, spilled


def _raw_copy(src: dict, repeats: int) -> list[float]:
    import torch

    dst = {k: torch.empty_like(v) for k, v in src.items()}
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # first = warm-up (page faults of the fresh destination)
            t0 = time.perf_counter()
            for k, v in src.items():
                dst[k].copy_(v)
            times.append(time.perf_counter() - t0)
    return times[1:]


def _rounds(model, src: dict, registry, follower, version: int, repeats: int,
            kind: str) -> tuple[list, int, tuple[int, int]]:
    """Round 0 (warm-up; LoRA: the follower wraps its model), then `repeats` timed rounds of export, publish, poll."""
    import ray
    import torch

    from hsd_ray.core.policy import export_weights
    from hsd_ray.loop.broadcast import publish

    rounds = []
    for _ in range(repeats + 1):
        with torch.no_grad():  # a learner step changed the weights (keeps every round a real update)
            for p in src.values():
                p.add_(1e-6)
        version += 1
        t0 = time.perf_counter()
        ws = export_weights(model, version, version)
        t1 = time.perf_counter()
        publish_s = publish(registry, ws)
        t2 = time.perf_counter()
        p = ray.get(follower.poll.remote())
        t3 = time.perf_counter()
        if not p["applied"] or p["version"] != version:
            raise RuntimeError(f"follower did not apply v{version} ({kind}): {p}")
        nbytes, ntensors = ws.num_bytes(), len(ws.tensors)
        del ws
        rounds.append({"export_s": t1 - t0, "publish_s": publish_s, "publish_wall_s": t2 - t1,
                       "poll_s": p["s"], "poll_wall_s": t3 - t2, "total_s": t3 - t0})
    return rounds, version, (nbytes, ntensors)


def bench_broadcast(cfg, args, log) -> dict:
    import ray
    import torch

    from hsd_ray.config import LoraConfig
    from hsd_ray.core.policy import apply_lora, export_weights, unwrap
    from hsd_ray.loop.broadcast import VersionRegistry
    from hsd_ray.models import load_model_and_tokenizer, resolve_model

    model_dir = resolve_model(cfg.model)
    registry = ray.remote(VersionRegistry).options(num_cpus=0).remote(cfg.broadcast.keep_versions)
    follower = ray.remote(FollowerProbe).options(num_cpus=cfg.serve.cpus_per_replica).remote(str(model_dir), registry)
    model, _ = load_model_and_tokenizer(model_dir, "float32", "cpu")
    version = 0
    out: dict = {"follower_torch_threads": ray.get(follower.threads.remote()), "driver_torch_threads":
                 torch.get_num_threads(), "keep_versions": cfg.broadcast.keep_versions}
    try:
        for kind in ("full", "lora"):
            if kind == "lora":
                model = apply_lora(model, LoraConfig(enabled=True, r=args.lora_r, alpha=2 * args.lora_r))
                src = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
            else:
                src = dict(model.state_dict())
            # The raw baseline first, while nothing else runs (no publish, no object spilling in the background).
            raw = _raw_copy({k: v.detach() for k, v in src.items()}, RAW_REPEATS)
            raw_med = statistics.median(raw)
            rounds, version, (nbytes, ntensors) = _rounds(model, src, registry, follower, version,
                                                          args.broadcast_repeats, kind)
            timed = rounds[1:]
            med = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
            breakdown = ray.get(follower.breakdown.remote())
            ws = export_weights(model, version, version)
            t0 = time.perf_counter()
            ref = ray.put(ws)  # the driver's share of publish (the rest: the registry call)
            breakdown["driver_put_s"] = time.perf_counter() - t0
            del ref, ws
            out[kind] = {"bytes": nbytes, "tensors": ntensors, "rounds": rounds, "median": med,
                         "follower_breakdown": breakdown, "raw_copy_s": raw, "raw_copy_median_s": raw_med,
                         "min_total_s": min(r["total_s"] for r in timed), "ratio": med["total_s"] / raw_med,
                         "ratio_best": min(r["total_s"] for r in timed) / min(raw),
                         "broadcast_GBps": nbytes / med["total_s"] / 1e9,
                         "raw_GBps": nbytes / raw_med / 1e9}
            log(f"  {kind}: {nbytes / 2**20:.1f} MiB, broadcast {med['total_s']:.3f}s vs raw copy {raw_med:.4f}s")
        out["spilled"] = spilled()
    finally:
        ray.kill(follower)
        ray.kill(registry)
        del model
    return out
