"""The online loop on Ray, measured side by side in one run (`python -m bench.bench_loop`).

1. Pipeline throughput (turns/s), the same N turns through each stage alone and through the whole loop
   (bench/loop/pipeline.py, bench/loop/stages.py): (a) capture + queue (ReplyLedger + TurnQueue actors, N follow-ups
   `observe`d); (b) teacher scoring (a real TeacherWorker on its own queue); (c) learner steps (`learner_step` in an
   actor with the learner's CPUs); (d) the whole loop: `running_loop` (Serve + capture + teacher) and the Ray Train
   learner; after a warm-up batch, N replies over HTTP (not timed), then the clock runs from sending the N follow-ups
   (max_tokens=1) until the queue's `trained` count has grown by N; also when the last step was published and when
   the serving replica applied it (GET /health). Whole / slowest stage is reported (1.0 = perfect pipelining).
2. Chat latency with capture on vs off (bench/loop/latency.py): two Serve apps of one replica each, the same
   conversations sent to both, interleaved, sequentially, greedy, after a warm-up; client-side p50 / p99.
3. Weight broadcast (bench/loop/broadcast.py): `export_weights` + `broadcast.publish` + a WeightFollower's `poll()`
   in a follower actor, vs a raw in-process copy of the same tensors; full weights and LoRA r=16; one warm-up round,
   median of the rest.

Everything runs on one embedded local Ray started here (`local_ray`; logical CPUs over-declared like the tests; every
actor's torch threads follow its CPU reservation, as in the real loop). Results print as a table (bench/loop/report.py)
and are written to `bench/results/bench_loop-<model>.json` (`--only X` writes `bench_loop-<model>-X.json`). Default:
SmolLM2-135M-Instruct on CPU, 16 turns, max_tokens 32, batch_turns 4: 5-6.5 min on 2 cores (more when other jobs load
the machine). Extra `section.field=value` arguments override the loop Config.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.loop.common import make_config
from bench.loop.report import format_results

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("pipeline", "latency", "broadcast")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.bench_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="smollm2-135m-instruct | tiny-random | a folder")
    p.add_argument("--turns", type=int, default=16, help="turns through the pipeline (multiple of --batch-turns)")
    p.add_argument("--only", choices=PARTS, help="run one part only")
    p.add_argument("--max-tokens", type=int, default=32, help="reply length (serve.max_tokens)")
    p.add_argument("--batch-turns", type=int, default=4, help="learner.batch_turns")
    p.add_argument("--capture-rounds", type=int, default=3, help="timed rounds of (a) (best kept)")
    p.add_argument("--latency-requests", type=int, default=30, help="requests per capture mode (even)")
    p.add_argument("--latency-warmup", type=int, default=2, help="warm-up conversations per mode")
    p.add_argument("--broadcast-repeats", type=int, default=3, help="timed broadcast rounds per kind")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the broadcast measure")
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    args = p.parse_args(argv)
    if args.turns < args.batch_turns or args.turns % args.batch_turns:
        p.error("--turns must be a positive multiple of --batch-turns")
    if args.latency_requests < 2 or args.latency_requests % 2:
        p.error("--latency-requests must be even (question + follow-up)")
    return args


def _run_parts(cfg, args, log, ray_temp: str, results: dict) -> None:
    """Each part in turn; a part that fails is reported in results["errors"] and the others still run."""
    from bench.loop.broadcast import bench_broadcast
    from bench.loop.latency import bench_latency
    from bench.loop.pipeline import bench_pipeline

    funcs = {"pipeline": functools.partial(bench_pipeline, ray_temp=ray_temp), "latency": bench_latency,
             "broadcast": bench_broadcast}
    for part in [args.only] if args.only else list(PARTS):
        log(f"== {part} ==  (1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        results.setdefault("loadavg_at_start", {})[part] = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            results[part] = funcs[part](cfg, args, log)
        except Exception as e:  # noqa: BLE001 - report it and go on with the other parts
            import traceback

            results["errors"][part] = f"{type(e).__name__}: {e}"
            log(f"!! {part} failed: {type(e).__name__}: {str(e)[:400]} (full text in the JSON)")
            traceback.print_tb(e.__traceback__)
        results.setdefault("part_wall_s", {})[part] = time.perf_counter() - t0
        log(f"== {part} done in {time.perf_counter() - t0:.0f}s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in [os.environ.get("PYTHONPATH")] if x])
    import ray
    import torch
    from transformers.utils import logging as hf_logging

    from hsd_ray.loop.runtime import local_ray
    from hsd_ray.models import resolve_model

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("ray", "ray.serve", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start, load_before = time.perf_counter(), os.getloadavg()[0]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    resolve_model(args.model)  # build once here, not in three actors at the same time
    out_dir = tempfile.mkdtemp(prefix="hsd-bench-loop-", dir="/tmp")
    cfg = make_config(args, out_dir)
    results: dict = {
        "config": {**{k: v for k, v in vars(args).items() if k != "overrides"}, "overrides": args.overrides,
                   "loop_config": json.loads(cfg.model_dump_json())},
        "env": {"ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "cpus": os.cpu_count(), "object_store_bytes": cfg.ray.object_store_bytes,
                "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "errors": {},
    }
    try:
        # log_to_driver off: worker output stays in the temp folder (the learner's log lines are read from there)
        with local_ray(num_cpus=max(8, os.cpu_count() or 1), object_store_bytes=cfg.ray.object_store_bytes,
                       log_to_driver=False, quiet=True) as ray_temp:
            _run_parts(cfg, args, log, ray_temp, results)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - start
    results["env"]["loadavg_1min"] = [load_before, os.getloadavg()[0]]

    print()
    print(format_results(results))
    for part, err in results["errors"].items():
        print(f"!! {part} FAILED: {err[:400]}{' …' if len(err) > 400 else ''}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    out = RESULTS / (f"bench_loop-{name}.json" if not args.only else f"bench_loop-{name}-{args.only}.json")
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    load = results["env"]["loadavg_1min"]
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    print(f"\nwall {results['wall_s']:.0f} s; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after "
          f"({os.cpu_count()} CPUs); results written to {out}")
    print(f"command: cd {REPO} && {exe} -m bench.bench_loop {shlex.join(argv)}".rstrip())
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
