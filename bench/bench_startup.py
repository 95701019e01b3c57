"""What a newcomer waits for in `make run`, per serving engine, side by side (`python -m bench.bench_startup`).

For each engine (`--engines`, default hf then vllm; `--repeats` alternates the order), `train_job.py` runs with `make
run`'s config (cluster/local.yaml, its demo users included) plus `engine.kind=<engine>`, in a fresh output folder,
stopping after `--max-steps` optimizer steps. Measured from the moment the command starts: the first answered chat
request (a newcomer's `python -m hsd_ray.chat`), then one streamed request's time to first token and total time, and
the time until the job ended by itself (its steps trained, versions gated, final weights written).
Results: bench/results/bench_startup-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_serve import _streamed
from bench.util import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def _first_reply(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until a chat request is answered (polling), from now."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="newcomer", max_retries=0, timeout=120)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"train_job.py exited with {proc.returncode} before answering")
        try:
            client.chat.completions.create(model="m", messages=ASK, max_tokens=16)
            return time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - not up yet (connection refused, 404 before the app is deployed, ...)
            time.sleep(1.0)
    raise TimeoutError(f"no chat reply within {timeout_s:.0f} s")


def measure(engine: str, args) -> dict:
    from openai import OpenAI

    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"startup-{engine}-") as out:
        cmd = [sys.executable, "train_job.py", "--config", "cluster/local.yaml", "--max-steps", str(args.max_steps),
               f"model={args.model}", f"engine.kind={engine}", f"serve.port={port}", f"job.output_dir={out}",
               "ray.dashboard=false", "ray.auth_mode=disabled", *args.overrides]
        log_path = Path(tempfile.gettempdir()) / f"bench_startup-{engine}.log"  # the job's own output, if it fails
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            _first_reply(url, proc, args.timeout_s)
            first = time.perf_counter() - t0  # from the command's start, as a newcomer waits
            client = OpenAI(base_url=url, api_key="newcomer", max_retries=0, timeout=300)
            timed = _streamed(client, ASK, args.max_tokens, "newcomer")
            stream = {"ttft_s": timed["ttft_s"], "total_s": timed["latency_s"]}
            rc = proc.wait(timeout=args.timeout_s)
            done = time.perf_counter() - t0
            final = (Path(out) / "final").is_dir()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    return {"engine": engine, "first_reply_s": first, "stream": stream, "job_s": done, "exit_code": rc,
            "final_written": final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engines", default="hf,vllm")
    p.add_argument("--repeats", type=int, default=1, help="rounds; the engine order alternates")
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    args = p.parse_args(argv)
    engines = args.engines.split(",")
    RESULTS.mkdir(exist_ok=True)
    runs = []
    for r in range(args.repeats):
        for engine in engines if r % 2 == 0 else engines[::-1]:
            runs.append(measure(engine, args))
            m = runs[-1]
            print(f"{engine:<5} first reply {m['first_reply_s']:6.1f} s | streamed: first token "
                  f"{m['stream']['ttft_s'] or float('nan'):5.2f} s, whole {m['stream']['total_s']:5.2f} s | job done "
                  f"({args.max_steps} steps) {m['job_s']:6.1f} s, exit {m['exit_code']}, final {m['final_written']}",
                  flush=True)
    out = {"config": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "runs": runs}
    path = RESULTS / f"bench_startup-{Path(args.model).name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
