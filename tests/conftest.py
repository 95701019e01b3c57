"""Shared fixtures: cached tiny model, one local Ray per test session (started lazily, stopped at the end)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from hsd_ray.models import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 cores here; logical CPUs are over-declared so fractional actors and Train workers fit)."""
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.runtime import LOCAL_RUNTIME_ENV

    temp = tempfile.mkdtemp(prefix="hsdray-", dir="/tmp")  # short path: Ray's unix sockets have a length limit
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        namespace=NAMESPACE,
        _temp_dir=temp,
        log_to_driver=True,
        runtime_env=dict(LOCAL_RUNTIME_ENV),  # no Train PG-cleaner warning every second (hsd_ray/loop/runtime.py)
    )
    yield ray
    from hsd_ray.loop.runtime import disconnect

    disconnect()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_job_submit(cmd: list[str], env: dict, agent_wait_s: float, timeout_s: float) -> tuple[int, str]:
    """Run a `ray job submit` command line → (exit code, stdout + stderr). The dashboard answers before its job agent
    is ready ("No available agent to submit job"): that answer is retried for up to `agent_wait_s`."""
    deadline = time.time() + agent_wait_s
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        text = proc.stdout + proc.stderr
        if "No available agent" not in text or time.time() > deadline:
            return proc.returncode, text
        time.sleep(2)


def pytest_collection_modifyitems(config, items):
    """The observability module runs first. Its driver's embedded Ray (ray.init) cannot move the dashboard agent off
    the fixed port 52365, and once `ray_session` has started the suite's own Ray that port is taken, so
    `ray job submit` against the embedded dashboard would have no job agent to talk to (and be skipped)."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/integration/test_observability.py"))
