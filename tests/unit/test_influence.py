"""Influence limits: the per-user quota and the distinct-users floor (core/influence.py), and how the queue applies
them with exact accounting."""

import pytest

from hsd_ray.config import Config, ConfigError
from hsd_ray.core.influence import UserWindow, pick_batch, shared_turns
from hsd_ray.loop.queue import TurnQueue, TurnRef

pytestmark = pytest.mark.unit


def test_user_window_admits_max_turns_per_sliding_window():
    w = UserWindow(max_turns=2, window_s=10.0)
    assert [w.admit("a", t) for t in (0.0, 1.0, 2.0, 9.9)] == [True, True, False, False]
    assert w.admit("b", 2.0)  # another user has their own quota
    assert w.admit("a", 10.0)  # the turn at 0.0 left the window (now - 10 < t <= now)
    assert not w.admit("a", 10.5)  # 1.0 and 10.0 are inside
    assert w.admit("a", 11.0)


def test_user_window_zero_admits_all_and_forget_and_prune_clear_users():
    assert all(UserWindow(0).admit("a", float(t)) for t in range(1000))
    w = UserWindow(max_turns=1, window_s=5.0)
    assert w.admit("a", 0.0) and not w.admit("a", 1.0)
    w.forget("a")
    assert w.admit("a", 1.0)
    w.prune(now=100.0)
    assert w._admitted == {}
    with pytest.raises(ValueError):
        UserWindow(-1)


def test_shared_turns_keeps_quota_and_floor_for_the_shared_policy_only():
    """personalization.mode=both: every turn trains its user's adapter; these are the ones that also train the shared
    policy, and what is left out is counted by reason."""
    w = UserWindow(max_turns=2, window_s=10.0)
    assert shared_turns(["a", "a", "a", "b"], w, 1, 0.0) == ([0, 1, 3], {"user_quota": 1, "too_few_users": 0})
    assert shared_turns(["a", "b"], w, 1, 1.0) == ([1], {"user_quota": 1, "too_few_users": 0})  # a's 2 used up
    # the floor: turns of one user within quota are all left out, and do not use up the quota
    assert shared_turns(["c", "c"], w, 2, 2.0) == ([], {"user_quota": 0, "too_few_users": 2})
    assert w.used("c", 2.0) == 0
    assert shared_turns(["c", "d", "c"], w, 2, 3.0) == ([0, 1, 2], {"user_quota": 0, "too_few_users": 0})
    assert w.used("c", 3.0) == 2 and w.used("a", 10.5) == 0  # a's turns at 0.0 left the window
    assert shared_turns(["x"] * 5, UserWindow(0), 1, 0.0) == ([0, 1, 2, 3, 4], {"user_quota": 0, "too_few_users": 0})


def test_pick_batch_takes_oldest_but_first_of_each_of_min_users():
    users = ["a", "a", "a", "b", "a", "c"]
    assert pick_batch(users, 3, 1) == [0, 1, 2]
    assert pick_batch(users, 3, 2) == [0, 1, 3]  # b's oldest turn replaces a's third
    assert pick_batch(users, 3, 3) == [0, 3, 5]
    assert pick_batch(users, 4, 3) == [0, 1, 3, 5]
    assert pick_batch(["a", "a", "a"], 2, 2) is None  # one user only: no batch
    assert pick_batch(["a", "b"], 3, 1) is None  # too few turns
    assert pick_batch(["a", "b", "c"], 2, 3) is None  # a batch of 2 cannot hold 3 users
    with pytest.raises(ValueError):
        pick_batch(users, 0, 1)


def _refs(users, start=0):
    return [TurnRef(f"t{start + i}", u, f"ref{start + i}") for i, u in enumerate(users)]


def _scored(q, n):
    lease = q.lease(n)
    q.complete(lease.lease_id, lease.turns)


def _exact(s):
    return s["captured"] == s["trained"] + s["dropped_total"] + s["pending"] + s["leased"] + s["scored"] + s["training"]


def test_queue_drops_turns_beyond_a_users_quota_and_accounting_stays_exact():
    q = TurnQueue(max_turns_per_user=2, quota_window_s=3600)
    q.put(_refs(["a", "a", "a", "b"]))
    assert q.offer(_refs(["a", "b", "b"], start=4)) == 3  # a replay is held to the same quota
    s = q.stats()
    assert s["captured"] == 7 and s["pending"] == 4 and s["dropped"]["user_quota"] == 3 and _exact(s)
    assert [t.turn_id for t in q.lease(10).turns] == ["t0", "t1", "t3", "t5"]
    q.forget_user("a")
    q.put(_refs(["a"], start=7))  # a deleted user's record goes too: they start afresh
    assert q.stats()["pending"] == 1


def test_queue_holds_a_batch_until_enough_users_and_counts_each_wait_once():
    q = TurnQueue(min_users_per_step=2)
    q.put(_refs(["a", "a", "a"]))
    _scored(q, 3)
    assert q.take_scored(2) == [] and q.take_scored(2) == []
    assert q.stats()["steps_held_for_users"] == 1
    q.put(_refs(["b"], start=3))
    _scored(q, 1)
    assert [t.turn_id for t in q.take_scored(2)] == ["t0", "t3"]
    assert q.take_scored(2) == []  # a's two turns wait again: a second wait
    s = q.stats()
    assert s["steps_held_for_users"] == 2 and s["scored"] == 2 and _exact(s)


def test_per_user_workers_take_only_their_own_users_turns():
    """Per-user adapters on two learner workers: each takes (round robin) and requeues only the turns of the users
    whose adapters it owns; together they take every turn once."""
    from hsd_ray.core.weights import in_shard, user_adapter_id

    users = ["ann", "ben", "cat", "dan", "eve", "fay"]
    owner = {u: 0 if in_shard(user_adapter_id(u), (0, 2)) else 1 for u in users}
    assert set(owner.values()) == {0, 1}
    q = TurnQueue(round_robin_users=True)
    q.put(_refs(users * 2))
    _scored(q, 12)
    taken = {0: [], 1: []}
    for rank in (0, 1, 0, 1):
        batch = q.take_scored(2, shard=(rank, 2))
        assert batch and all(owner[t.user_id] == rank for t in batch)
        taken[rank] += batch
    assert q.requeue_training((1, 2)) == 4 and q.stats()["training"] == 4  # worker 0's batches stay in flight
    again = q.take_scored(2, shard=(1, 2))
    assert [t.turn_id for t in again] == [t.turn_id for t in taken[1][:2]]  # back at the front of scored
    s = q.stats()
    assert s["scored"] + s["training"] == 12 and _exact(s)


def test_end_of_a_closed_source_drops_what_can_never_make_a_batch():
    q = TurnQueue(min_users_per_step=2, lossless=True)
    q.offer(_refs(["a", "b", "a", "a"]))
    _scored(q, 4)
    q.close()
    assert [t.turn_id for t in q.take_scored(2)] == ["t0", "t1"]
    q.ack_trained(["t0", "t1"])
    assert q.take_scored(2) is None  # only a's turns are left: dropped, the replay ends
    s = q.stats()
    assert s["trained"] == 2 and s["dropped"]["too_few_users"] == 2 and s["scored"] == 0 and _exact(s)


def test_a_replay_with_scored_full_of_one_user_makes_room_instead_of_deadlocking():
    q = TurnQueue(scored_capacity=2, min_users_per_step=2, lossless=True)
    q.offer(_refs(["a", "a", "a", "b"]))
    _scored(q, 10)  # lossless: only 2 fit in scored
    assert q.stats()["scored"] == 2 and q.lease(10) is None
    assert q.take_scored(2) == []  # full of a: the oldest goes, so the teachers can lease again
    _scored(q, 10)
    assert q.take_scored(2) == [] and q.stats()["dropped"]["too_few_users"] == 2
    _scored(q, 10)  # b's turn
    assert sorted(t.user_id for t in q.take_scored(2)) == ["a", "b"]
    assert _exact(q.stats())


def test_config_refuses_a_users_floor_above_the_batch():
    with pytest.raises(ConfigError, match="influence.min_users_per_step"):
        Config.load(overrides=["influence.min_users_per_step=5", "learner.batch_turns=4"])
    assert Config.load(overrides=["influence.min_users_per_step=4"]).influence.min_users_per_step == 4
