"""Queue and ledger crashes with the durable turn log, on a real local Ray: the real ReplyLedger captures turns
(logging each before the hand-over), and the queue and ledger actors are killed with `ray.kill(no_restart=False)`,
so Ray restarts them. No acknowledged (logged) turn is lost, none is trained twice, and the counts stay exact."""

from __future__ import annotations

import time

import pytest
import ray

from hsd_ray.data.turnlog import TurnLog
from hsd_ray.loop.capture import CAPTURED, ReplyLedger, ServedReply
from hsd_ray.loop.job import control_actor_options
from hsd_ray.loop.queue import TurnQueue
from hsd_ray.loop.queue_client import QueueClient, fetch_turns
from tests.integration.test_loop import _wait

pytestmark = pytest.mark.integration


def _exact(s: dict) -> dict:
    in_flight = s["pending"] + s["leased"] + s["scored"] + s["training"]
    assert s["captured"] == s["trained"] + s["dropped_total"] + in_flight, s
    return s


def _capture(ledger, n: int, start: int = 0) -> None:
    """n served replies and their follow-ups through the real ledger: n acknowledged turns."""
    for i in range(start, start + n):
        ctx = [{"role": "user", "content": f"question {i}"}]
        reply = ServedReply(f"user-{i % 3}", "base", ctx, f"answer {i}", [5, 6, i], [-0.1, -0.2, -0.3], True, 0,
                            time.time())
        ray.get(ledger.record.remote(reply))
        msgs = [*ctx, {"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": "too long"}]
        assert ray.get(ledger.observe.remote(reply.user_id, msgs)) == CAPTURED


def test_queue_and_ledger_crashes_lose_no_acknowledged_turn(ray_session, tmp_path):
    uri = str(tmp_path / "turnlog")
    handle = ray.remote(TurnQueue).options(**control_actor_options("test-rebuild-queue")).remote(
        64, 64, 60.0, log_uri=uri)
    ledger = ray.remote(ReplyLedger).options(**control_actor_options("test-rebuild-ledger")).remote(
        handle, 3600.0, 5, log_uri=uri)
    queue = QueueClient(handle)
    try:
        _capture(ledger, 8)
        _wait(lambda: queue.stats()["captured"] == 8, 60, "8 turns captured")
        lease = queue.lease(6)
        ids = [t.turn_id for t in lease.turns]
        assert queue.complete(lease, lease.turns[:5], failed=[], lost=[], not_feedback=[ids[5]])
        first = queue.take_scored(2)
        queue.ack_trained_nowait([t.turn_id for t in first])  # trained: t0, t1
        in_training = queue.take_scored(2)  # the learner holds this batch when the queue dies
        before = _exact(queue.stats())
        assert before["trained"] == 2 and before["dropped"]["not_feedback"] == 1 and before["training"] == 2

        ray.kill(handle, no_restart=False)  # Ray restarts it; it rebuilds from the log
        after = _exact(_wait(lambda: (s := queue.stats())["training"] == 0 and s, 60, "the rebuilt queue"))  # ray.kill is asynchronous
        assert (after["captured"], after["trained"], after["dropped_total"]) == (8, 2, 1)
        assert after["pending"] == 5 and after["training"] == 0  # every open turn waits again: 5 = 8 - 2 - 1
        queue.ack_trained_nowait([t.turn_id for t in in_training])  # the learner's late ack reaches the new queue
        s = _exact(queue.stats())
        assert s["trained"] == 4 and s["pending"] == 3  # trained once: taken out of pending, not trained again
        queue.put([t for t in first + in_training])  # a replay of already finished turns is not taken again
        assert _exact(queue.stats())["captured"] == 8

        _capture(ledger, 2, start=8)  # payloads owned by the ledger ...
        _wait(lambda: queue.stats()["captured"] == 10, 60, "10 turns captured")
        ray.kill(ledger, no_restart=False)  # ... die with it
        lease = _wait(lambda: queue.lease(10), 60, "a lease")
        _wait(lambda: fetch_turns(lease.turns[-2:])[1], 30, "lost payloads")  # Ray has noticed the owner's death
        live, lost = fetch_turns(lease.turns)
        assert {t.turn_id for t in lost} >= {t.turn_id for t in lease.turns[-2:]}
        assert queue.complete(lease, [t for t in lease.turns if t not in lost], [], [t.turn_id for t in lost])
        s = _exact(queue.stats())
        assert s["recovered"] == len(lost) and s["dropped"]["lost"] == 0 and s["pending"] == len(lost)
        again = queue.lease(10)
        assert fetch_turns(again.turns)[1] == []  # read back from the log: this queue owns the payloads now
        assert {t.turn_id for t in again.turns} == {t.turn_id for t in lost}

        _capture(ledger, 1, start=10)  # the restarted ledger captures and logs as before
        _wait(lambda: queue.stats()["captured"] == 11, 60, "11 turns captured")
        assert ray.get(ledger.stats.remote())["log_errors"] == 0
        st = TurnLog(uri).state()
        assert st.captured == 11 and st.trained == 4 and len(st.open_turns) == 11 - 4 - 1
    finally:
        for actor in (ledger, handle):
            ray.kill(actor, no_restart=True)
