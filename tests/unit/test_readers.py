"""Logged-chat readers (core/turns.py): OpenAI, ShareGPT and WildChat layouts, filters, malformed records skipped
and reported with their line number (never the end of a replay)."""

from __future__ import annotations

import json

import pytest

from hsd_ray.core.turns import ReadReport, read_conversations, turns_from_source

pytestmark = pytest.mark.unit

OPENAI = {"user": "a", "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1"},
                                    {"role": "user", "content": "o1"}]}
SHAREGPT = {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "q2"},
                              {"from": "gpt", "value": "r2"}, {"from": "human", "value": "o2"}]}
WILDCHAT = {"hashed_ip": "ip9", "language": "English", "toxic": False,
            "conversation": [{"role": "user", "content": "q3", "turn_identifier": 1},
                             {"role": "assistant", "content": "r3"}, {"role": "user", "content": "o3"}]}


def _write(tmp_path, lines) -> str:
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return str(path)


def test_three_layouts_give_the_same_turns(tmp_path):
    path = _write(tmp_path, [OPENAI, SHAREGPT, WILDCHAT])
    convs = list(read_conversations(path))
    assert [u for u, _ in convs] == ["a", "anonymous", "ip9"]
    assert convs[1][1][0] == {"role": "system", "content": "be brief"} and convs[1][1][2]["role"] == "assistant"
    turns = list(turns_from_source(path))
    assert [(t.reply, t.followup) for t in turns] == [("r1", "o1"), ("r2", "o2"), ("r3", "o3")]


def test_malformed_records_are_skipped_with_their_line(tmp_path):
    lines = [OPENAI, b"{not json", {"messages": []}, {"conversations": [{"from": "alien", "value": "x"}]},
             b'{"messages": [{"role": "user", "content": "\\ud800"}]}', b"\xff\xfe", b"[1, 2]", {"other": 1},
             b"[" * 5000, SHAREGPT]
    path = _write(tmp_path, lines)
    report = ReadReport()
    turns = list(turns_from_source(path, report=report))
    assert len(turns) == 2 and report.records == 10
    lines_skipped = [int(where.rsplit(":", 1)[1]) for where, _ in report.skipped]
    assert lines_skipped == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = dict((int(w.rsplit(":", 1)[1]), why) for w, why in report.skipped)
    assert "not JSON" in reasons[2] and "non-empty" in reasons[3] and "Unicode" in reasons[5]
    assert "8 malformed skipped" in report.summary()


def test_language_and_toxic_filters_are_counted(tmp_path):
    toxic = {**WILDCHAT, "toxic": True}
    french = {**WILDCHAT, "language": "French"}
    path = _write(tmp_path, [WILDCHAT, toxic, french, OPENAI])
    report = ReadReport()
    kept = list(read_conversations(path, language="english", drop_toxic=True, report=report))
    assert len(kept) == 1 and report.filtered == {"toxic": 1, "language": 2}  # OPENAI has no language field
    assert len(list(read_conversations(path))) == 4


def test_parquet_in_sharegpt_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "logs.parquet"
    pq.write_table(pa.table({"conversations": [json.dumps(SHAREGPT["conversations"]), "not json"]}), path)
    report = ReadReport()
    assert [t.followup for t in turns_from_source(path, report=report)] == ["o2"]
    assert report.skipped == [(f"{path}: row 1", "conversations is not JSON")]
