"""The durable turn log (hsd_ray/data/turnlog.py): append-only segments, outcomes keyed by turn id, the state a
restarted queue rebuilds from, retention, and reading it back as a replay source."""

from __future__ import annotations

import time

import pytest

from hsd_ray.core.turns import Turn
from hsd_ray.data.turnlog import OUTCOMES, TURNS, TurnLog, is_turn_log

pytestmark = pytest.mark.unit


def _turn(i: int, user: str = "u") -> Turn:
    return Turn(context=[{"role": "user", "content": f"q{i} ✓"}], reply=f"a{i}", followup=f"o{i}", user_id=user,
                reply_token_ids=[i, i + 1, 7], reply_logprobs=[-0.5, -1.25, -0.01], reply_finished=i % 2 == 0,
                policy_version=i, turn_id=f"t{i}")


def test_turns_round_trip_exactly_and_in_order(tmp_path):
    log = TurnLog(str(tmp_path / "log"))
    assert is_turn_log(str(tmp_path / "log")) and not is_turn_log(str(tmp_path))
    for i in range(3):
        log.append_turns([_turn(i)])
    log.append_turns([_turn(3), _turn(4)])
    back = log.turns()
    assert [t.turn_id for t in back] == ["t0", "t1", "t2", "t3", "t4"]
    for got, want in zip(back, [_turn(i) for i in range(5)]):
        for f in ("context", "reply", "followup", "user_id", "reply_token_ids", "reply_logprobs", "reply_finished",
                  "policy_version", "turn_id", "source"):
            assert getattr(got, f) == getattr(want, f), f
    assert [t.turn_id for t in log.turns({"t1", "t4", "nope"})] == ["t1", "t4"]


def test_state_counts_add_up_and_first_outcome_wins(tmp_path):
    log = TurnLog(str(tmp_path))
    log.append_turns([_turn(i) for i in range(6)])
    log.append_turns([_turn(2)])  # logged twice (a replay offered again): one turn
    log.append_outcomes(["t0", "t1"], "trained")
    log.append_outcomes(["t2"], "dropped:not_feedback")
    log.append_outcomes(["t1"], "dropped:lost")  # a later outcome of a trained turn does not count it twice
    log.append_outcomes(["ghost"], "trained")  # a turn not in the log (pruned): ignored
    log.append_rejected(1)
    st = log.state()
    assert st.captured == 6 and st.trained == 1 and dict(st.dropped) == {"not_feedback": 1, "rejected": 1}
    assert [t.turn_id for t in st.open_turns] == ["t3", "t4", "t5"]
    assert st.captured == st.trained + sum(st.dropped.values()) + len(st.open_turns)
    assert st.known == {f"t{i}" for i in range(6)}


def test_retention_deletes_old_segments_only(tmp_path):
    log = TurnLog(str(tmp_path), retention_s=60)
    log.append_turns([_turn(0)])
    log.append_outcomes(["t0"], "trained")
    assert log.prune() == 0
    assert log.prune(now=time.time() + 61) == 2
    assert log.turns() == [] and log.outcomes() == []
    assert (tmp_path / TURNS).is_dir() and (tmp_path / OUTCOMES).is_dir()


def test_a_torn_write_leaves_no_visible_segment(tmp_path):
    log = TurnLog(str(tmp_path))
    log.append_turns([_turn(0)])
    (tmp_path / TURNS / ".00000000000000000001-deadbeef.parquet.tmp").write_bytes(b"PAR1 half a segment")
    assert [t.turn_id for t in log.turns()] == ["t0"]


def test_uri_form_works_like_a_path(tmp_path):
    log = TurnLog(f"file://{tmp_path}/viauri")
    log.append_turns([_turn(5)])
    assert [t.turn_id for t in TurnLog(str(tmp_path / "viauri")).turns()] == ["t5"]


def test_forget_user_rewrites_only_their_segments_keeps_time_and_leaves_a_tombstone(tmp_path):
    from hsd_ray.data.turnlog import user_hash

    log = TurnLog(str(tmp_path), retention_s=60)
    log.append_turns([_turn(0, "alice"), _turn(1, "bob")])
    log.append_turns([_turn(2, "bob")])
    log.append_turns([_turn(3, "alice")])
    log.append_outcomes(["t0", "t1"], "trained")
    names = sorted(p.name for p in (tmp_path / TURNS).glob("*.parquet"))
    assert log.forget_user("alice") == 2
    after = sorted(p.name for p in (tmp_path / TURNS).glob("*.parquet"))
    assert len(after) == 2 and after[1] == names[1]  # bob's own segment untouched; the mixed one rewritten ...
    assert after[0].split("-")[0] == names[0].split("-")[0] and after[0] != names[0]  # ... under its old time
    assert [t.turn_id for t in log.turns()] == ["t1", "t2"]
    st = log.state()  # t0's "trained" outcome now refers to nothing: ignored, the counts still add up
    assert st.captured == 2 and st.trained == 1 and [t.turn_id for t in st.open_turns] == ["t2"]
    assert log.opted_out() == {user_hash("alice")} and log.tombstones()[0]["turns_removed"] == 2
    assert log.forget_user("nobody") == 0 and log.opted_out() == {user_hash("alice"), user_hash("nobody")}
    log.set_opt_out("alice", False)
    assert log.opted_out() == {user_hash("nobody")}
    assert log.prune(now=time.time() + 3600) >= 1 and len(log.tombstones()) == 2  # retention keeps tombstones
