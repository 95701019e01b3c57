"""Poison turns cannot stall anything: delivery attempts, retries, dead letters (loop/queue.py) and the teacher's
bisection of a failing batch (loop/teacher.py), as plain objects."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from hsd_ray.loop import teacher as teacher_mod
from hsd_ray.loop.queue import TurnQueue, TurnRef

pytestmark = pytest.mark.unit


def _items(n, user="u"):
    return [TurnRef(f"t{i}", user, f"ref{i}") for i in range(n)]


def _exact(q: TurnQueue) -> dict:
    s = q.stats()
    in_flight = s["pending"] + s["leased"] + s["scored"] + s["training"]
    assert s["captured"] == s["trained"] + s["dropped_total"] + in_flight, s
    return s


def test_failing_turn_is_retried_then_dead_lettered_and_the_others_go_on():
    q = TurnQueue(max_attempts=3)
    q.put(_items(3))
    for attempt in range(1, 4):
        lease = q.lease(8)
        assert "t1" in [t.turn_id for t in lease.turns]
        good = [t for t in lease.turns if t.turn_id != "t1"]
        assert q.complete(lease.lease_id, good, errors={"t1": f"TypeError: bad token (try {attempt})"})
        s = _exact(q)
        assert s["pending"] == (1 if attempt < 3 else 0)
    s = _exact(q)
    assert s["scored"] == 2 and s["dropped"]["dead_letter"] == 1 and s["retried"] == 2 and s["dead_letters"] == 1
    [dead] = q.dead_letters()
    assert dead["turn_id"] == "t1" and dead["attempts"] == 3 and dead["error"] == "TypeError: bad token (try 3)"
    assert q.lease(8) is None  # never retried again
    q.ack_trained([t.turn_id for t in q.take_scored(2)])
    assert _exact(q)["trained"] == 2


def test_a_lease_that_keeps_expiring_is_bounded_by_the_attempts():
    q = TurnQueue(lease_timeout_s=0.02, max_attempts=2)
    q.put(_items(2))
    q.lease(8)
    time.sleep(0.05)
    assert len(q.lease(8).turns) == 2  # second delivery
    time.sleep(0.05)
    s = _exact(q)
    assert s["redelivered"] == 2 and s["dropped"]["dead_letter"] == 2 and s["pending"] == s["leased"] == 0
    assert all("lease expired" in d["error"] and d["attempts"] == 2 for d in q.dead_letters())


def test_dead_letters_are_bounded_and_forgotten_with_their_user():
    q = TurnQueue(max_attempts=1, dead_letter_capacity=2)
    q.put(_items(3, "alice"))
    lease = q.lease(3)
    q.complete(lease.lease_id, [], errors={t.turn_id: "boom" for t in lease.turns})
    s = _exact(q)
    assert s["dropped"]["dead_letter"] == 3 and s["dead_letters"] == 2  # all counted, the newest two kept
    q.forget_user("alice")
    assert q.dead_letters() == [] and _exact(q)["dropped"]["dead_letter"] == 3


def test_success_clears_the_attempt_count():
    q = TurnQueue(max_attempts=2)
    q.put(_items(1))
    lease = q.lease(1)
    q.complete(lease.lease_id, [], errors={"t0": "transient"})
    lease = q.lease(1)
    assert q.complete(lease.lease_id, lease.turns)
    assert q._attempts == {} and _exact(q)["scored"] == 1


def test_teacher_bisects_a_failing_batch(monkeypatch):
    calls = []

    def fake_score(engine, turns, hindsight, loss):
        calls.append(len(turns))
        if any(t.turn_id == "poison" for t in turns):
            raise TypeError("token id 99999 out of range")
        for t in turns:
            t.scores = "ok"

    monkeypatch.setattr(teacher_mod, "score_turns", fake_score)
    worker = object.__new__(teacher_mod.TeacherWorker)
    worker.settings, worker.engine, worker.name = SimpleNamespace(hindsight=None, loss=None), None, "t"
    turns = [SimpleNamespace(turn_id=f"g{i}", scores=None) for i in range(7)]
    turns.insert(5, SimpleNamespace(turn_id="poison", scores=None))
    errors = {}
    worker._score_bisect(turns, errors)
    assert errors == {"poison": "TypeError: token id 99999 out of range"}
    assert all(t.scores == "ok" for t in turns if t.turn_id != "poison")
    assert len(calls) <= 1 + 2 * 3  # the batch, then two halves per level of a binary search over 8


def test_teacher_drops_zero_weight_feedback_before_scoring(monkeypatch):
    """feedback.kind_weights={positive: 0}: a "thanks" is feedback, but it gets no teacher pass and no learner slot
    (dropped as zero_weight); a complaint is scored; a new topic is dropped as not_feedback."""
    from hsd_ray.config import FeedbackConfig
    from hsd_ray.data import build_gate
    from hsd_ray.metrics import Tally

    scored_ids, completed = [], {}

    def fake_score(engine, turns, hindsight, loss):
        scored_ids.extend(t.turn_id for t in turns)

    def turn(tid, followup):
        return SimpleNamespace(turn_id=tid, reply="Canberra is the capital of Australia, a planned city ...",
                               followup=followup, policy_version=0, feedback=None, is_scorable=lambda: True,
                               last_user_message=lambda: "What is the capital of Australia?")

    turns = [turn("complaint", "too long, keep it short"), turn("thanks", "thanks, perfect"),
             turn("topic", "how do volcanoes form?")]
    monkeypatch.setattr(teacher_mod, "score_turns", fake_score)
    monkeypatch.setattr(teacher_mod, "fetch_turns", lambda refs: (turns, []))
    monkeypatch.setattr(teacher_mod.TurnRef, "put", staticmethod(lambda t: t.turn_id))
    worker = object.__new__(teacher_mod.TeacherWorker)
    worker.settings, worker.engine, worker.name = SimpleNamespace(hindsight=None, loss=None), None, "t"
    worker.gate = build_gate(FeedbackConfig(gate="rules", kind_weights={"positive": 0.0}))
    worker.tally = Tally({"failed": None, "errors": None})
    worker.queue = SimpleNamespace(complete=lambda lease, scored, failed, lost, not_feedback, decisions, errors,
                                   receptions, zero_weight: completed.update(
                                       scored=scored, not_feedback=not_feedback, zero_weight=zero_weight,
                                       decisions=decisions) or True)
    accepted, scored = worker._score_lease(SimpleNamespace(turns=[]))
    assert accepted and scored_ids == ["complaint"] and [t.turn_id for t in scored] == ["complaint"]
    assert completed["scored"] == ["complaint"] and completed["zero_weight"] == ["thanks"]
    assert completed["not_feedback"] == ["topic"]
    assert "feedback:positive" in completed["decisions"]
