"""`ray job submit -- python train_job.py` against a real `ray start --head` cluster runs a short job to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, ray_job_submit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_ray_job_submit_replays_logged_conversations(tiny_model_dir, tmp_path):
    bin_dir = Path(sys.executable).parent
    # Ray 2.60 secures new clusters with a token: use it explicitly (generated once into ~/.ray if missing).
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="hsdjob-", dir="/tmp")
    gcs, dash = free_port(), free_port()
    source = tmp_path / "logs.jsonl"
    with source.open("w") as f:
        for i in range(4):
            msgs = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "A long answer."},
                    {"role": "user", "content": "Too long."}]
            f.write(json.dumps({"user": f"u{i}", "messages": msgs}) + "\n")
    out = tmp_path / "run"
    ray = str(bin_dir / "ray")
    start = [ray, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", "--num-cpus=4", f"--temp-dir={temp}", "--include-dashboard=true",
             "--disable-usage-stats",
             # every agent port explicit: the test session's own Ray already holds the default ones
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--ray-client-server-port={free_port()}"]
    subprocess.run([ray, "get-auth-token", "--generate"], check=True, env=env, timeout=60, capture_output=True)
    # --block keeps `ray start` in the foreground as the parent of this cluster's processes: stopping its process
    # group stops exactly this cluster (`ray stop` would stop every Ray on the machine, the test session's included).
    head = subprocess.Popen([*start, "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 60
        while time.time() < deadline:  # the job API comes up a moment after `ray start` returns
            if subprocess.run([ray, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(1)
        cmd = [
            # no excludes: the README's command, so .gitignore and .rayignore alone must keep the upload small
            ray, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
            "python", "train_job.py", "--source", str(source), "--max-steps", "2",
            f"model={tiny_model_dir}", "engine.kind=hf", "learner.batch_turns=2", "learner.cpus_per_worker=1",
            f"job.output_dir={out}", "job.log_every_s=2",
        ]
        returncode, log = ray_job_submit(cmd, env, agent_wait_s=120, timeout_s=600)
        assert returncode == 0, log[-4000:]
        assert "succeeded" in log.lower(), log[-4000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["queue"]["captured"] == 4 and summary["queue"]["trained"] == 4, summary
        assert summary["learner"]["step"] == 2 and summary["published_version"] >= 1
        assert (out / "final" / "config.json").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
