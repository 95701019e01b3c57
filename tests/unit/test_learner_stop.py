"""Ctrl-C while the driver waits on the learner must still end in a clean stop (final checkpoint and weights).

Found by trying `make run` as a newcomer: Ctrl-C during the run left no `runs/local/final`. In CPython 3.11 a
KeyboardInterrupt that lands inside `Thread.join()` releases the running thread's state lock, so `is_alive()` turned
False while Ray Train's fit() still ran, and `Loop.stop_learner` skipped the stop request and the wait.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest

from hsd_ray.config import Config
from hsd_ray.loop import job


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _Control:
    """The LearnerControl actor's `request_stop`, as the learner sees it (an Event)."""

    def __init__(self):
        self.stop = threading.Event()
        self.request_stop = _Remote(self.stop.set)


class _Trainer:
    """fit() runs until asked to stop, then takes a moment for its final weights, like Learner.finish."""

    def __init__(self, control: _Control):
        self.control = control

    def fit(self):
        self.control.stop.wait(30)
        time.sleep(0.3)
        return "final weights written"


@pytest.fixture
def learner_thread(monkeypatch):
    # A driver has Python's own Ctrl-C handler. Earlier tests may have left SIG_DFL behind (an in-process vLLM
    # engine core resets SIGINT to SIG_DFL when it stops), and then interrupt_main() does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    control = _Control()
    monkeypatch.setattr(job, "learner_settings", lambda cfg: None)
    monkeypatch.setattr(job, "make_trainer", lambda settings, lcfg: _Trainer(control))
    thread = job.LearnerThread(Config())
    thread.start()
    yield thread, control
    control.stop.set()
    thread.wait(10)
    signal.signal(signal.SIGINT, previous)


def _interrupted_wait(thread: job.LearnerThread) -> None:
    threading.Timer(0.2, _thread.interrupt_main).start()  # what a terminal's Ctrl-C does to the driver
    with pytest.raises(KeyboardInterrupt):
        thread.wait(10)


def test_a_ctrl_c_while_waiting_leaves_the_learner_running(learner_thread):
    thread, _ = learner_thread
    _interrupted_wait(thread)
    assert thread.running and thread.result is None


def test_stop_after_ctrl_c_asks_the_learner_to_stop_and_waits_for_its_final_weights(learner_thread):
    thread, control = learner_thread
    _interrupted_wait(thread)
    loop = job.Loop(Config(), queue=None, registry=None, control=control, ledger=None, learner=thread)
    loop.stop_learner(timeout=10)
    assert control.stop.is_set()
    assert not thread.running and thread.result == "final weights written" and thread.error is None
