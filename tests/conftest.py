"""Shared fixtures: cached tiny model, one local Ray per test session (started lazily, stopped at the end)."""

from __future__ import annotations

import os
import socket
import tempfile

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
