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


# Ray Train v2 starts a detached `PlacementGroupCleaner` actor per run that asks the state API every second whether
# the Train controller is still alive. The state API needs the dashboard, which an embedded local Ray here runs
# without (include_dashboard=False: it costs a process and memory on a small machine), so every check fails and
# logs "Failed to query Ray Train Controller actor state ..." at WARNING: 45 lines in a 60 s `train_job.py` run,
# 166 in a `make run`. The cleaner only matters when a controller dies while the cluster lives on; an embedded Ray
# dies with its driver. Ray has no setting for the cleaner, so every worker of an embedded Ray drops exactly that
# message (its other warnings stay); a cluster with a dashboard (ray job submit) never logs it and is left alone.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
_CLEANER_NOISE = "Failed to query Ray Train Controller actor state"


def _drop_cleaner_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_CLEANER_NOISE)


def quiet_train_cleaner() -> None:
    """Worker setup hook of an embedded Ray: drop the Train PG cleaner's state-API warning (see above)."""
    logging.getLogger(_CLEANER_LOGGER).addFilter(_drop_cleaner_noise)


LOCAL_RUNTIME_ENV = {"worker_process_setup_hook": quiet_train_cleaner}


def connect(rcfg: RayConfig) -> None:
    """Attach to the cluster this runs on (ray job submit sets RAY_ADDRESS), or start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = rcfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE)
    else:
        ray.init(address="local", num_cpus=rcfg.num_cpus, object_store_memory=rcfg.object_store_bytes,
                 namespace=NAMESPACE, include_dashboard=False, runtime_env=LOCAL_RUNTIME_ENV)


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
             logging_level=logging.WARNING if quiet else logging.INFO, runtime_env=LOCAL_RUNTIME_ENV)
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
