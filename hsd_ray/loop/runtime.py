"""Attaching to Ray: the cluster a job was submitted to, or an embedded local Ray. Used by the job, every benchmark
and the tests, so a local Ray is started one way everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from typing import Iterator

import ray

from hsd_ray.config import RayConfig
from hsd_ray.loop import NAMESPACE


def connect(rcfg: RayConfig) -> None:
    """Attach to the cluster this runs on (ray job submit sets RAY_ADDRESS), or start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = rcfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE)
    else:
        ray.init(address="local", num_cpus=rcfg.num_cpus, object_store_memory=rcfg.object_store_bytes,
                 namespace=NAMESPACE, include_dashboard=False)


def disconnect() -> None:
    """Stop Serve (if this driver started it) and leave Ray."""
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve never started, or its controller is already gone
        pass
    ray.shutdown()


@contextlib.contextmanager
def local_ray(
    *,
    num_cpus: int = 8,
    object_store_bytes: int = 256 * 2**20,
    log_to_driver: bool = True,
    quiet: bool = False,
    keep_logs_on_error: bool = True,
) -> Iterator[str]:
    """A fresh embedded local Ray in its own temp folder (yields the folder); Serve and Ray are stopped on exit.

    Logical CPUs default to 8 (more than this machine's 2 cores): the loop's actors and Train workers reserve
    fractions of a CPU and must all fit. If the body raises, the Ray logs are kept and their place is added to the
    error; otherwise the folder is removed.
    """
    temp = tempfile.mkdtemp(prefix="hsdray-", dir="/tmp")  # short path: Ray's unix sockets have a length limit
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_bytes,
             namespace=NAMESPACE, _temp_dir=temp, log_to_driver=log_to_driver,
             logging_level=logging.WARNING if quiet else logging.INFO)
    failed = False
    try:
        yield temp
    except BaseException as e:
        failed = keep_logs_on_error
        if failed and isinstance(e, Exception):
            e.add_note(f"(Ray logs kept in {temp}/session_latest/logs)")
        raise
    finally:
        disconnect()
        if not failed:
            shutil.rmtree(temp, ignore_errors=True)
