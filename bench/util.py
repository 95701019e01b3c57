"""Small helpers shared by the benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a Serve HTTP proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy); NaN for no samples."""
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def rss_mb(pid: int | None = None) -> float:
    """Resident set size (MiB) of a process (default: this one) and its children (vLLM's engine core runs in one)."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
