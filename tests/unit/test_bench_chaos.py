"""The chaos benchmark's bookkeeping (bench/chaos.py), exactly: the accounting check and the availability window."""

from __future__ import annotations

import pytest

from bench import chaos

pytestmark = pytest.mark.unit


def _queue(**kw) -> dict:
    q = {"captured": 10, "trained": 6, "dropped_total": 2, "pending": 1, "leased": 0, "scored": 1, "training": 0}
    q.update(kw)
    return q


def test_accounting_is_exact_or_off():
    assert chaos.accounting(_queue()) == (True, {"captured": 10, "trained": 6, "dropped": 2, "in_flight": 2})
    assert chaos.accounting(_queue(captured=11))[0] is False  # a turn neither trained, dropped nor in flight
    assert chaos.accounting(_queue(trained=7))[0] is False  # one trained twice


def test_availability_window_counts_only_its_requests():
    traffic = chaos.Traffic("http://127.0.0.1:9/v1")  # no request is made
    traffic.log = [(1.0, True, None), (2.0, False, "APIConnectionError: x"), (3.0, True, None),
                   (4.0, False, "InternalServerError: y"), (9.0, False, "late")]
    assert traffic.window(2.0, 4.0) == {"sent": 3, "answered": 1,
                                        "errors": ["APIConnectionError: x", "InternalServerError: y"]}
    assert traffic.window(5.0, 8.0) == {"sent": 0, "answered": 0, "errors": []}


def test_unknown_kill_is_refused():
    with pytest.raises(ValueError, match="train_worker"):
        chaos.kill(None, "everything", None)


class _Ended:
    """A finished stream as `_stream_row` reads it."""

    def __init__(self, replica, finish_reason=None, error=None):
        self.replica, self.finish_reason, self.error, self.chunks = replica, finish_reason, error, 3

    def join(self, timeout=None):
        pass

    def outcome(self):
        return chaos.Stream.outcome(self)


def test_streams_are_told_apart_complete_cut_or_silently_truncated():
    row = chaos._stream_row([_Ended("k", error="APIConnectionError: x"), _Ended("k", "length"), _Ended("o", "stop")],
                            victim="k")
    assert row["killed_replica_streams"] == {"on_killed_replica": 2, "cut": 1, "completed": 1}
    assert row["silently_truncated"] == 0 and row["other_streams_finished"] is True
    row = chaos._stream_row([_Ended("k"), _Ended("o", error="boom")], victim="k")  # ended with neither: silent
    assert row["silently_truncated"] == 1 and row["other_streams_finished"] is False
