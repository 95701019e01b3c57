"""Smoke tests of the entry points, each in its own process with a timeout (the last log lines shown on failure)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(args, timeout):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, (proc.stdout + proc.stderr)[-3000:]


def test_train_job_live_with_demo_users(tiny_model_dir, tmp_path):
    """`python train_job.py` on an embedded local Ray: serve + demo users over HTTP + teachers + learner, 2 steps."""
    out = tmp_path / "run"
    proc, tail = _run(
        ["train_job.py", "--config", "cluster/local.yaml", "--max-steps", "2", f"model={tiny_model_dir}",
         f"serve.port={free_port()}", "serve.max_tokens=8", "learner.batch_turns=2", "job.simulate_users=2",
         f"job.output_dir={out}", "job.log_every_s=2", "ray.num_cpus=4", "ray.object_store_bytes=268435456"],
        timeout=600,
    )
    assert proc.returncode == 0, tail
    assert "[job" in proc.stdout and "turns/s" in proc.stdout, tail  # the periodic one-line summary
    # ray[default] is installed: the embedded Ray runs its dashboard (on localhost) and the job says where, with the chat
    assert "[job] chat endpoint: http://127.0.0.1:" in proc.stdout, tail
    assert "[job] Ray dashboard: http://127.0.0.1:" in proc.stdout, tail
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learner"]["step"] == 2 and summary["queue"]["trained"] == 4, summary
    assert summary["capture"]["captured"] >= 4
    assert (out / "final" / "config.json").exists() and (out / "config.yaml").exists()


def test_train_job_with_api_keys_trains_its_demo_users_and_stops_on_sigterm(tiny_model_dir, tmp_path):
    """auth.mode=api_keys: the demo users chat with keys minted for this job (the key file is never written), so
    their turns are captured and trained; SIGTERM (`ray job stop`, `kill`) stops the job as Ctrl-C does."""
    keys, out, log = tmp_path / "keys.jsonl", tmp_path / "run", tmp_path / "job.log"
    subprocess.run([sys.executable, "-m", "hsd_ray.keys", "add", "--file", str(keys), "--user", "alice"], cwd=ROOT,
                   check=True, capture_output=True, timeout=60)
    key_file = keys.read_text()
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "train_job.py", "--config", "cluster/local.yaml", "--duration", "900",
             f"model={tiny_model_dir}", f"serve.port={free_port()}", "serve.max_tokens=8", "learner.batch_turns=2",
             "job.simulate_users=2", "auth.mode=api_keys", f"auth.keys_file={keys}", f"job.output_dir={out}",
             "job.log_every_s=2", "ray.num_cpus=4", "ray.object_store_bytes=268435456"],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 480
        while proc.poll() is None and time.time() < deadline and not re.search(r"trained [1-9]", log.read_text()):
            time.sleep(2)
        assert proc.poll() is None and re.search(r"trained [1-9]", log.read_text()), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    tail = log.read_text()[-3000:]
    assert proc.returncode == 0, tail
    assert "[job] stopping: final checkpoint" in log.read_text(), tail
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queue"]["trained"] >= 2 and summary["capture"]["captured"] >= 2, summary
    assert (out / "final" / "config.json").exists()
    assert keys.read_text() == key_file  # the demo users' keys live in the job's memory only
    assert "HTTP Request" not in log.read_text()  # no log line per demo chat (the openai client's httpx2 logger)


@pytest.mark.parametrize(
    "args, field",
    [(["learner.lr=-1"], "learner.lr"), (["--source", "/nonexistent.jsonl"], "job.source"),
     (["loss.kind=nope"], "loss.kind")],
)
def test_train_job_bad_input_names_the_field(args, field):
    proc, tail = _run(["train_job.py", *args], timeout=60)
    assert proc.returncode == 2, tail
    assert field in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
