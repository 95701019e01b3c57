"""Attaching to Ray: the cluster a job was submitted to, or an embedded local Ray. Used by the job, every benchmark
and the tests, so a local Ray is started one way everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from typing import Iterator

import ray

from hsd_ray.config import RayConfig
from hsd_ray.loop import NAMESPACE


# Ray Train v2 starts a detached `PlacementGroupCleaner` actor per run that asks the state API every second whether
# the Train controller is still alive. The state API needs the dashboard; an embedded Ray without one (the tests'
# local_ray(), `ray.dashboard=false`) fails every check and logs "Failed to query Ray Train Controller actor
# state ..." at WARNING: 45 lines in a 60 s `train_job.py` run, 166 in a `make run`. The cleaner only matters when a controller dies while the cluster lives on; an embedded Ray
# dies with its driver. Ray has no setting for the cleaner, so every worker of an embedded Ray drops exactly that
# message (its other warnings stay); with a dashboard the check succeeds and the filter never fires.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
_CLEANER_NOISE = "Failed to query Ray Train Controller actor state"


def _drop_cleaner_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_CLEANER_NOISE)


def quiet_train_cleaner() -> None:
    """Worker setup hook of an embedded Ray: drop the Train PG cleaner's state-API warning (see above)."""
    logging.getLogger(_CLEANER_LOGGER).addFilter(_drop_cleaner_noise)


# ray.init replaces the hook in the dict it is given with its import path: always pass a copy
LOCAL_RUNTIME_ENV = {"worker_process_setup_hook": quiet_train_cleaner}


def connect(rcfg: RayConfig) -> str | None:
    """Attach to the cluster this runs on (ray job submit sets RAY_ADDRESS), or start an embedded local Ray.

    Returns the Ray dashboard's URL (None when no dashboard runs). An embedded Ray starts its dashboard (job, actor and
    metrics views, `ray job submit`) when `ray[default]` is installed, unless `ray.dashboard=false`.
    """
    if ray.is_initialized():
        return dashboard_url()
    if rcfg.auth_mode is not None:
        _set_auth_mode(rcfg.auth_mode)
    address = rcfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, namespace=NAMESPACE)
    else:
        ctx = ray.init(address="local", num_cpus=rcfg.num_cpus, object_store_memory=rcfg.object_store_bytes,
                       namespace=NAMESPACE, include_dashboard=rcfg.dashboard, dashboard_host=rcfg.dashboard_host,
                       dashboard_port=rcfg.dashboard_port, runtime_env=dict(LOCAL_RUNTIME_ENV))
    return _as_url(ctx.dashboard_url)


def _set_auth_mode(mode: str) -> None:
    """RAY_AUTH_MODE for this process and the Ray processes it starts. Ray reads the mode only from the environment
    and caches its config at import, so the config is re-read the way Ray does when it turns token mode on itself
    (ray._private.authentication.authentication_token_setup._enable_token_auth)."""
    os.environ["RAY_AUTH_MODE"] = mode
    from ray._raylet import Config as RayletConfig

    RayletConfig.initialize("")


def dashboard_url() -> str | None:
    """The connected cluster's dashboard URL, `http://host:port` (None without a dashboard)."""
    try:
        return _as_url(ray.get_runtime_context().worker.node.address_info.get("webui_url"))
    except Exception:  # noqa: BLE001 - not connected, or a client connection without node info
        return None


def _as_url(address: str | None) -> str | None:
    if not address:
        return None
    return address if "://" in address else f"http://{address}"


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
    dashboard: bool = False,
) -> Iterator[str]:
    """A fresh embedded local Ray in its own temp folder (yields the folder); Serve and Ray are stopped on exit.

    Logical CPUs default to 8 (more than this machine's 2 cores): the loop's actors and Train workers reserve
    fractions of a CPU and must all fit. If the body raises, the Ray logs are kept and their place is added to the
    error; otherwise the folder is removed. `dashboard=True` starts the dashboard (and with it the metrics agent and
    Prometheus files under the temp folder) on a free port on 127.0.0.1; `dashboard_url()` names it.
    """
    temp = tempfile.mkdtemp(prefix="hsdray-", dir="/tmp")  # short path: Ray's unix sockets have a length limit
    extra = dict(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=_free_port()) if dashboard else \
        dict(include_dashboard=False)
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_bytes, namespace=NAMESPACE,
             _temp_dir=temp, log_to_driver=log_to_driver, logging_level=logging.WARNING if quiet else logging.INFO,
             runtime_env=dict(LOCAL_RUNTIME_ENV), **extra)
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


# what only the head offers (the chat replicas and control actors stay on it) and what only a worker node offers (the
# teachers and Train workers go there): the resources `serve/teacher/learner.resources` ask for on a local cluster
HEAD_RESOURCE, WORKER_RESOURCE = "hsd_head", "hsd_trainer"


@contextlib.contextmanager
def local_two_nodes(*, head_cpus: int = 4, worker_cpus: int = 3,
                    object_store_bytes: int = 256 * 2**20) -> Iterator[tuple]:
    """A head and a worker node on this machine (real raylets, `ray.cluster_utils.Cluster`), connected to.

    Yields `(cluster, worker, worker_args)`: `cluster.remove_node(worker)` kills the worker node with every process on
    it, `cluster.add_node(**worker_args)` brings up a replacement offering the same resources. The head offers
    HEAD_RESOURCE, the worker WORKER_RESOURCE. One process can hold one Ray: not inside another local_ray().
    """
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="hsd2n-", dir="/tmp")  # short path: Ray's unix sockets have a length limit
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "resources": {HEAD_RESOURCE: 100}, "include_dashboard": False, "temp_dir": temp,
        "dashboard_agent_listen_port": None,  # a free port, not 52365: another Ray may run on this machine
        "object_store_memory": object_store_bytes})
    worker_args = {"num_cpus": worker_cpus, "resources": {WORKER_RESOURCE: 10},
                   "object_store_memory": object_store_bytes}
    try:
        worker = cluster.add_node(**worker_args)
        ray.init(address=cluster.address, namespace=NAMESPACE, runtime_env=dict(LOCAL_RUNTIME_ENV))
        yield cluster, worker, worker_args
    finally:
        disconnect()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
