"""The queue's and the capture ledger's bookkeeping, as plain objects (their Ray actors are these classes)."""

import time

import pytest

from hsd_ray.core.turns import reply_key
from hsd_ray.core.weights import BASE_ADAPTER
from hsd_ray.loop.capture import CAPTURED, NO_FOLLOWUP, UNMATCHED, ReplyLedger, ServedReply
from hsd_ray.loop.queue import TurnQueue, TurnRef

pytestmark = pytest.mark.unit


def _items(n, user="u", start=0):
    return [TurnRef(f"t{start + i}", user, f"ref{start + i}") for i in range(n)]


def _ids(turns):
    return [t.turn_id for t in turns]


def _in_flight(s):
    return s["pending"] + s["leased"] + s["scored"] + s["training"]


def test_overflow_drops_oldest_and_counts_add_up():
    q = TurnQueue(capacity=3, scored_capacity=2, lease_timeout_s=60)
    assert q.put(_items(5)) == 2
    lease = q.lease(10)
    assert _ids(lease.turns) == ["t2", "t3", "t4"]  # t0, t1 were the oldest
    assert q.complete(lease.lease_id, lease.turns[:2], failed=["t4"])
    batch = q.take_scored(2)
    assert _ids(batch) == ["t2", "t3"] and q.take_scored(1) == []
    q.ack_trained(["t2", "t3"])
    s = q.stats()
    assert s["captured"] == 5 and s["trained"] == 2 and s["dropped"]["overflow"] == 2 and s["dropped"]["unscorable"] == 1
    assert s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def test_expired_lease_is_redelivered_and_late_completion_refused():
    q = TurnQueue(capacity=10, lease_timeout_s=0.05)
    q.put(_items(2))
    lease = q.lease(2)
    time.sleep(0.1)
    again = q.lease(2)  # redelivered, same order
    assert _ids(again.turns) == ["t0", "t1"] and q.stats()["redelivered"] == 2
    assert q.complete(lease.lease_id, lease.turns) is False  # the dead teacher's result never lands
    assert q.complete(again.lease_id, again.turns) is True
    s = q.stats()
    assert s["scored"] == 2 and s["late_completions"] == 1


def test_a_released_lease_goes_back_first_without_using_a_delivery():
    """A teacher whose engine was unreachable hands its lease back: the turns are first in line again, and, with
    max_attempts=1, neither retried as poison nor dead-lettered however often that happens."""
    q = TurnQueue(capacity=10, max_attempts=1)
    q.put(_items(3))
    for _ in range(3):
        lease = q.lease(2)
        assert _ids(lease.turns) == ["t0", "t1"] and q.release(lease.lease_id) == 2
    assert q.release(lease.lease_id) == 0  # released once only
    lease = q.lease(3)
    assert _ids(lease.turns) == ["t0", "t1", "t2"]
    assert q.complete(lease.lease_id, lease.turns[1:], errors={"t0": "poison"})  # its one delivery: dead-lettered
    s = q.stats()
    assert s["released"] == 6 and s["dead_letters"] == 1 and s["scored"] == 2 and s["retried"] == 0, s
    assert s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def test_take_is_all_or_nothing_and_restart_requeues_training():
    q = TurnQueue()
    q.put(_items(3))
    lease = q.lease(3)
    q.complete(lease.lease_id, lease.turns)
    assert len(q.take_scored(2)) == 2
    assert q.requeue_training() == 2
    assert _ids(q.take_scored(3)) == ["t0", "t1", "t2"]


def test_replay_offer_waits_for_room_and_trains_the_final_partial_batch():
    """A replay (offer + lossless) drops nothing at any capacity; the closed source's last 2 < 3 turns still go out."""
    q = TurnQueue(capacity=2, scored_capacity=3, lease_timeout_s=60, lossless=True)
    items, trained = _items(11), []
    while items or trained != [f"t{i}" for i in range(11)]:
        if items:
            items = items[q.offer(items):]  # at most 2 pending at a time: the rest waits in the caller
            assert q.stats()["pending"] <= 2
            if not items:
                q.close()
        lease = q.lease(8)
        if lease is not None:
            assert len(lease.turns) <= 3  # never more than scored has room for
            assert q.complete(lease.lease_id, lease.turns)
        assert q.stats()["scored"] <= 3
        batch = q.take_scored(3)
        assert batch is not None, "drained before every turn was trained"
        q.ack_trained(_ids(batch))
        trained += _ids(batch)
    assert q.take_scored(3) is None  # drained: the learner stops
    s = q.stats()
    assert s["captured"] == s["trained"] == 11 and s["dropped_total"] == 0


def test_partial_batch_only_after_close_and_upstream_empty():
    q = TurnQueue(capacity=10, lossless=True)
    q.offer(_items(2))
    lease = q.lease(1)
    q.complete(lease.lease_id, lease.turns)
    assert q.take_scored(4) == []  # not closed: a full batch is awaited
    q.close()
    assert q.take_scored(4) == []  # closed, but t1 is still pending: it may still fill the batch
    lease = q.lease(4)
    q.complete(lease.lease_id, lease.turns)
    assert _ids(q.take_scored(4)) == ["t0", "t1"] and q.take_scored(4) is None


def test_final_remainder_below_the_worker_count_stays_counted():
    q = TurnQueue(capacity=10, lossless=True)
    q.offer(_items(1))
    q.close()
    lease = q.lease(4)
    q.complete(lease.lease_id, lease.turns)
    assert q.take_scored(4, at_least=2) is None  # one turn for two workers: not handed out, the learner stops
    s = q.stats()
    assert s["scored"] == 1 and s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def test_live_put_still_drops_the_oldest_scored():
    q = TurnQueue(capacity=10, scored_capacity=2)
    q.put(_items(3))
    lease = q.lease(3)  # a live queue leases regardless of room in scored
    q.complete(lease.lease_id, lease.turns)
    assert _ids(q.take_scored(2)) == ["t1", "t2"] and q.stats()["dropped"]["scored_overflow"] == 1


def test_forget_user_removes_every_stage():
    q = TurnQueue()
    q.put(_items(2, "alice") + _items(2, "bob", start=2))
    lease = q.lease(3)  # t0, t1 (alice), t2 (bob) leased; t3 (bob) pending
    assert q.forget_user("alice") == 2
    q.complete(lease.lease_id, lease.turns)  # alice's turns were forgotten while leased: not accepted back
    assert _ids(q.take_scored(1)) == ["t2"]
    s = q.stats()
    assert s["dropped"]["forgotten"] == 2 and s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def _reply(user="u", context=None, text="Paris.", age=0.0):
    context = context or [{"role": "user", "content": "Capital of France?"}]
    return ServedReply(user, BASE_ADAPTER, context, text, [5, 6], [-0.1, -0.2], True, 3, time.time() - age)


def test_ledger_matches_exact_followups_only():
    ledger = ReplyLedger(queue=None, reply_ttl_s=60)
    r = _reply()
    assert ledger.record(r) == reply_key("u", r.context, r.reply)
    follow = r.context + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Shorter!"}]
    assert ledger.observe("someone-else", follow) == UNMATCHED
    edited = r.context + [{"role": "assistant", "content": "Paris!"}, {"role": "user", "content": "Shorter!"}]
    assert ledger.observe("u", edited) == UNMATCHED
    assert ledger.observe("u", r.context) == NO_FOLLOWUP
    assert ledger.observe("u", follow) == CAPTURED
    assert ledger.observe("u", follow) == UNMATCHED  # a reply trains once
    s = ledger.stats()
    assert s["recorded"] == 1 and s["captured"] == 1 and s["unmatched"] == 3 and s["outstanding"] == 0


def test_ledger_expiry_and_forget():
    ledger = ReplyLedger(queue=None, reply_ttl_s=10)
    ledger.record(_reply(text="old", age=20))
    ledger.record(_reply(user="alice", text="new"))
    assert ledger.stats()["expired"] == 1
    assert ledger.forget_user("alice") == {"replies": 1, "logged_turns": 0}
    s = ledger.stats()
    assert s["recorded"] == s["captured"] + s["expired"] + s["outstanding"] + s["evicted"] + s["forgotten"]


def test_forgotten_user_is_opted_out_across_a_ledger_restart_until_opting_in(tmp_path):
    from hsd_ray.loop.capture import OPTED_OUT

    def converse(ledger, user):
        r = _reply(user=user)
        ledger.record(r)
        return ledger.observe(user, r.context + [{"role": "assistant", "content": r.reply},
                                                 {"role": "user", "content": "Shorter."}])

    log = str(tmp_path / "log")
    ledger = ReplyLedger(queue=None, reply_ttl_s=60, log_uri=log)
    assert converse(ledger, "alice") == CAPTURED and converse(ledger, "bob") == CAPTURED
    assert ledger.forget_user("alice") == {"replies": 0, "logged_turns": 1}
    assert [t.user_id for t in ledger.log.turns()] == ["bob"]  # her logged turn is gone, his is kept
    [tomb] = ledger.log.tombstones()
    assert tomb["turns_removed"] == 1 and "alice" not in str(tomb)  # named by hash only
    restarted = ReplyLedger(queue=None, reply_ttl_s=60, log_uri=log)  # Ray restarts the actor: opt-out kept
    assert converse(restarted, "alice") == OPTED_OUT and restarted.stats()[OPTED_OUT] == 2  # reply, follow-up
    assert restarted.stats()["recorded"] == 0  # her reply was not even recorded
    assert converse(restarted, "bob") == CAPTURED
    restarted.set_opt_out("alice", False)
    assert converse(ReplyLedger(queue=None, reply_ttl_s=60, log_uri=log), "alice") == CAPTURED  # opted back in


def test_tally_counts_and_snapshot_agree():
    from hsd_ray.metrics import Tally

    t = Tally({"seen": None, "dropped": "hsd_turns_dropped_total"}, labels={"dropped": ("overflow", "lost")})
    t.add("seen", 2)
    t.add("dropped", 3, "overflow")
    t.add("dropped", 1, "not_feedback")  # a label not declared up front is counted too
    t.add("seen", 0)
    snap = t.snapshot()
    assert snap == {"seen": 2, "dropped": {"overflow": 3, "lost": 0, "not_feedback": 1}}
    assert t.total("dropped") == 4 and t["seen"] == 2
    snap["dropped"]["overflow"] = 99  # a snapshot is a copy
    assert t["dropped"]["overflow"] == 3
    with pytest.raises(KeyError):
        Tally({"x": "hsd_no_such_metric"})


def test_not_feedback_turns_are_dropped_and_decisions_counted_once():
    q = TurnQueue(lease_timeout_s=0.05)
    q.put(_items(3))
    stale = q.lease(3)
    time.sleep(0.1)
    fresh = q.lease(3)  # re-delivered: the first teacher's decisions must not count
    assert q.complete(stale.lease_id, stale.turns[:1], not_feedback=["t1", "t2"],
                      decisions=["feedback:complaint", "not_feedback:new_topic", "not_feedback:new_topic"]) is False
    assert q.complete(fresh.lease_id, fresh.turns[:1], not_feedback=["t1", "t2"],
                      decisions=["feedback:complaint", "not_feedback:new_topic", "not_feedback:small_talk"])
    s = q.stats()
    assert s["gate"] == {"feedback:complaint": 1, "not_feedback:new_topic": 1, "not_feedback:small_talk": 1}
    assert s["dropped"]["not_feedback"] == 2 and s["scored"] == 1
    assert s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def test_zero_weight_feedback_is_dropped_under_its_own_reason():
    q = TurnQueue(lease_timeout_s=60)
    q.put(_items(3))
    lease = q.lease(3)
    assert q.complete(lease.lease_id, lease.turns[:1], not_feedback=["t1"], zero_weight=["t2"],
                      decisions=["feedback:complaint", "not_feedback:new_topic", "feedback:positive"])
    s = q.stats()
    assert s["dropped"]["zero_weight"] == 1 and s["dropped"]["not_feedback"] == 1 and s["scored"] == 1
    assert s["gate"]["feedback:positive"] == 1  # the decision is still counted as the gate made it
    assert s["captured"] == s["trained"] + s["dropped_total"] + _in_flight(s)


def test_ledger_redacts_pii_before_the_log_and_the_queue_and_store_false_is_never_recorded(tmp_path):
    import asyncio

    import pyarrow.parquet as pq

    from hsd_ray.loop.capture import CaptureClient

    ledger = ReplyLedger(queue=None, reply_ttl_s=60, log_uri=str(tmp_path / "log"))
    r = _reply()
    r.context = [{"role": "user", "content": "I'm jane@example.com, card 4111 1111 1111 1111. Capital of France?"}]
    ledger.record(r)
    follow = r.context + [{"role": "assistant", "content": r.reply},
                          {"role": "user", "content": "Shorter. Call 415-555-2671 if unsure."}]
    assert ledger.observe("u", follow) == CAPTURED
    assert ledger.stats()["redacted"] == 1
    [turn] = ledger.log.turns()
    assert turn.context[0]["content"] == "I'm [EMAIL], card [CARD]. Capital of France?"
    assert turn.followup == "Shorter. Call [PHONE] if unsure." and turn.reply_token_ids == r.token_ids
    on_disk = " ".join(str(pq.read_table(f).to_pylist()) for f in (tmp_path / "log").rglob("*.parquet"))
    assert "jane@" not in on_disk and "4111" not in on_disk and "555-2671" not in on_disk

    client = CaptureClient(enabled=True, call_timeout_s=1.0)  # no Ray: a stored reply would look for the ledger
    private = _reply()
    private.store = False
    asyncio.run(client.record(private))
    assert client.stats()["not_stored"] == 1 and client.stats()["recorded"] == 0
