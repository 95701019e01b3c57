"""A teacher on its own engine vs on the chat replicas' engine, in the whole loop
(`python -m bench.bench_teacher_engine`).

`bench_share` measured the two engines alone, in one process. This runs the real loop (Serve + capture + queue +
teacher actor + Ray Train learner, engine.kind=vllm) once per arm, in alternating rounds, on one embedded Ray:

- `own`: `teacher.engine=own`, the teacher actor holds an offline vLLM engine that follows the broadcast weights;
- `serving`: `teacher.engine=serving`, the teacher scores through the chat replica's async vLLM engine
  (loop/replica_scorer.py).

Each round is bench/loop/pipeline.py's whole-loop measure (a warm-up batch, N replies, then the clock runs from the
N follow-ups until all N are trained), with `--clients` chat streams running back to back during the timed window:
what a user feels while the teacher works. Reported per arm (median over rounds): turns/s (follow-ups in → trained),
seconds until all N are scored, chat time to first token p50/p99 and streamed tokens/s during the window, and the
resident memory of the teacher actor's processes (with vLLM's engine core, a child process). Ratios are serving / own.
Results: bench/results/bench_teacher_engine-<model>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_serve import QUESTIONS
from bench.loop.common import client, make_config
from bench.util import percentile, rss_mb

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("own", "serving")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.bench_teacher_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--turns", type=int, default=16, help="turns through the loop per round")
    p.add_argument("--batch-turns", type=int, default=4, help="learner.batch_turns")
    p.add_argument("--max-tokens", type=int, default=32, help="reply length (serve.max_tokens)")
    p.add_argument("--clients", type=int, default=2, help="chat streams running during the timed window")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each arm, the order alternating")
    p.add_argument("--name", default="", help="suffix of the results file")
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    return p.parse_args(argv)


def _teacher_rss_mb() -> float:
    """Resident memory of the teacher actors' processes and their children (vLLM's engine core)."""
    import psutil

    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if "TeacherWorker" in " ".join(p.info["cmdline"] or [])]
    return sum(rss_mb(pid) for pid in pids)


@contextlib.contextmanager
def _chat_load(base_url: str, model_name: str, clients: int, max_tokens: int):
    """`clients` streams back to back while the body runs: each reply's time to first token, streamed chunks."""
    result: dict = {"ttft_s": [], "chunks": 0, "replies": 0, "errors": 0}
    stop = threading.Event()
    lock = threading.Lock()

    def run(k: int) -> None:
        c, i = client(base_url), 0
        while not stop.is_set():
            question = QUESTIONS[(7 * k + i) % len(QUESTIONS)]
            t0, first, chunks = time.perf_counter(), None, 0
            try:
                stream = c.chat.completions.create(model=model_name, messages=[{"role": "user", "content": question}],
                                                   user=f"load-{k}", stream=True, max_tokens=max_tokens,
                                                   temperature=0.7, seed=i)
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first if first is not None else time.perf_counter() - t0
                        chunks += 1
            except Exception:  # noqa: BLE001 - counted; the load goes on
                with lock:
                    result["errors"] += 1
                continue
            finally:
                i += 1
            with lock:
                result["chunks"] += chunks
                result["replies"] += 1
                if first is not None:
                    result["ttft_s"].append(first)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        yield result
    finally:
        result["teacher_rss_mb"] = _teacher_rss_mb()
        stop.set()
        for t in threads:
            t.join(timeout=300)
        result["seconds"] = time.perf_counter() - t0


def _round(arm: str, args, log) -> dict:
    from bench.loop.pipeline import bench_whole_loop

    out_dir = tempfile.mkdtemp(prefix=f"hsd-bench-teacher-{arm}-", dir="/tmp")
    try:
        cfg = make_config(args, out_dir)
        load = lambda url: _chat_load(url, cfg.serve.model_name, args.clients, args.max_tokens)  # noqa: E731
        out, _ = bench_whole_loop(cfg, args.turns, log, during=load)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    d = out["during"]
    return {"arm": arm, "turns_per_s": out["turns_per_s"], "scored_s": out["events_s"].get("scored"),
            "trained_s": out["seconds"], "start_loop_s": out["start_loop_s"],
            "chat_ttft_p50_s": percentile(d["ttft_s"], 50), "chat_ttft_p99_s": percentile(d["ttft_s"], 99),
            "chat_chunks_per_s": d["chunks"] / d["seconds"], "chat_replies": d["replies"], "chat_errors": d["errors"],
            "teacher_rss_mb": d["teacher_rss_mb"], "teacher": out["teacher"]}


def _summary(rounds: list[dict]) -> dict:
    keys = ("turns_per_s", "scored_s", "trained_s", "chat_ttft_p50_s", "chat_ttft_p99_s", "chat_chunks_per_s",
            "teacher_rss_mb")
    med = {arm: {k: statistics.median(r[k] for r in rounds if r["arm"] == arm) for k in keys} for arm in ARMS}
    ratios = {k: med["serving"][k] / med["own"][k] for k in keys if med["own"][k]}
    return {"median": med, "ratio_serving_over_own": ratios}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in [os.environ.get("PYTHONPATH")] if x])
    from hsd_ray.loop.runtime import local_ray
    from hsd_ray.models import resolve_model

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    resolve_model(args.model)
    base = list(args.overrides)
    rounds = []
    with local_ray(num_cpus=max(8, os.cpu_count() or 1), log_to_driver=False, quiet=True):
        for r in range(args.rounds):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                args.overrides = ["engine.kind=vllm", f"teacher.engine={arm}", *base]
                log(f"== round {r + 1}, teacher.engine={arm} ==")
                rounds.append(_round(arm, args, log))
                x = rounds[-1]
                log(f"   {x['turns_per_s']:.3f} turns/s, chat TTFT p50 {x['chat_ttft_p50_s']:.2f} s, "
                    f"{x['chat_chunks_per_s']:.1f} chunks/s, teacher {x['teacher_rss_mb']:.0f} MB")
    args.overrides = base
    results = {"config": vars(args), "rounds": rounds, **_summary(rounds),
               "env": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S")},
               "wall_s": time.perf_counter() - start}
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    out = RESULTS / f"bench_teacher_engine-{name}{'-' + args.name if args.name else ''}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps({k: results[k] for k in ("median", "ratio_serving_over_own")}, indent=1))
    print(f"wall {results['wall_s']:.0f} s; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
