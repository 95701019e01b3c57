"""Feedback gate: exact RuleGate decisions, NoGate, LinearGate round trip, the fitter, ROC AUC, the shipped follow-up
set (size, fields, disjoint splits, coverage) and the shipped weights meeting the bar on the test split."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hsd_ray.core.feedback import (FEEDBACK_KINDS, NOT_FEEDBACK_KINDS, FeedbackDecision, LinearGate, NoGate, RuleGate,
                                   make_gate)
from hsd_ray.core.feedback_fit import choose_threshold, fit_logistic, prf, roc_auc, train_linear_gate
from bench.feedback_gate import row_categories
from hsd_ray.config import FeedbackConfig
from hsd_ray.data import build_gate, load_feedback_gate, load_followups

pytestmark = pytest.mark.unit

PROMPT, REPLY = "what is the capital of australia", "The capital of Australia is Sydney, its largest city."


@pytest.mark.parametrize("followup, kind", [
    ("No, the capital of Australia is Canberra", "correction"),
    ("that's wrong, it's Canberra", "correction"),
    ("too long", "complaint"),
    ("way too long, I only wanted the name", "complaint"),
    ("I said yes or no only", "complaint"),
    ("stop using emojis", "complaint"),
    ("try again", "rephrase"),
    ("can you say that more simply?", "rephrase"),
    ("what do you mean by largest?", "clarification"),
    ("?", "clarification"),
    ("thanks, perfect", "positive"),
    ("Demasiado largo, solo quería el nombre", "complaint"),
    ("c'est faux", "correction"),
    ("```python\nprint(capital('AU'))\n```\nTraceback: NameError: name 'capital' is not defined", "correction"),
    # standing instructions / preferences about the form of replies (rule:form_preference)
    ("from now on, keep your answers under 30 words", "complaint"),
    ("I prefer replies without any markdown headings", "complaint"),
    ("next time a plain yes or a no is enough", "complaint"),
    ("Could you always reply in British English?", "complaint"),
    ("can you quit it with the exclamation marks, from now on keep a calm tone", "complaint"),
    ("Bitte in Zukunft ohne Aufzählungen", "complaint"),
    ("drop the intro next time", "complaint"),
    ("btw, your date is wrong, it was 1969", "correction"),
    # bare redo requests with no complaint word (rule:rephrase), and another form suggested (rule:complaint)
    ("be more specific", "rephrase"),
    ("please be a little less formal", "rephrase"),
    ("be clearer", "rephrase"),
    ("write it all in lowercase", "rephrase"),
    ("put that in bullet points", "rephrase"),
    ("highlight the key facts", "rephrase"),
    ("use plain english", "rephrase"),
    ("give me the name first", "rephrase"),
    ("highlight the main points", "rephrase"),
    ("number each step", "rephrase"),
    ("put the answer first", "rephrase"),
    ("sois plus précis", "rephrase"),
    ("a table would be clearer", "complaint"),
    ("ask me what I need first next time", "complaint"),
])
def test_rule_gate_feedback(followup, kind):
    d = RuleGate().decide(PROMPT, REPLY, followup)
    assert (d.is_feedback, d.kind) == (True, kind), d
    assert d.weight > 0 and d.score >= 0.5 and d.reason.startswith(("rule:", "short:", "code_error"))


@pytest.mark.parametrize("followup, reason", [
    ("from now on, keep your answers under 30 words", "rule:form_preference"),
    ("Could you always reply in British English?", "rule:form_preference"),
    # how replies address the user is about the form of replies; only telling a name is not (below)
    ("I'd rather you use my first name when you reply", "rule:form_preference"),
    ("please call me by my name, it's Ana", "rule:form_preference"),
    ("drop the intro next time", "rule:complaint"),
])
def test_rule_gate_reason_names_the_rule(followup, reason):
    assert RuleGate().decide(PROMPT, REPLY, followup).reason == reason


@pytest.mark.parametrize("followup, kind", [
    ("ok", "small_talk"),
    ("k", "small_talk"),
    ("how's your day?", "small_talk"),
    ("By the way, what's a good name for a goldfish?", "new_topic"),
    ("now translate it to French", "build_on"),
    ("great, now write a poem about it", "build_on"),
    ("what about Germany?", "build_on"),
    ("continue", "build_on"),
    ("more", "build_on"),
    # a bare "from now on" / "next time" / "I prefer" with no form word, or a new task carrying its own form constraint
    ("from now on call me Sam", None),
    ("My name is Tom, I like hiking", None),
    ("What's the name of that river? I'd like to know", None),
    ("I prefer trains to planes", None),
    ("write a limerick about cheese, in lowercase please", "build_on"),
    # an explicit topic-change opener beats a correction/complaint cue after it
    ("Completely unrelated, but that's wrong of my neighbour, isn't it?", "new_topic"),
    ("Different topic: way too many people skip breakfast, why?", "new_topic"),
    ("btw, random thought: I said I'd learn Italian this year", "new_topic"),
    # the same verbs, for something new
    ("write a poem about the ocean", "build_on"),
    ("write a thank you note to my aunt", None),  # not thanks for the reply
    ("now write it in Spanish", "build_on"),
    ("be honest, do you like cats?", None),
    ("be right back", None),
    # ... whose object is something new, not the reply or a part of it
    ("highlight the pros and cons of solar panels", None),
    ("number the countries by population", None),
    ("use simple words to explain black holes", None),
    ("be less nervous before exams: tips?", None),
    ("give me the weather first", None),
])
def test_rule_gate_not_feedback(followup, kind):
    d = RuleGate().decide(PROMPT, REPLY, followup)
    assert (d.is_feedback, d.weight) == (False, 0.0) and d.score < 0.5, d
    if kind is not None:  # None: no rule fires (the overlap fallback decides the kind)
        assert d.kind == kind, d
    else:
        assert d.reason.startswith("overlap:"), d


def test_rule_gate_unmatched_topic_change_is_not_feedback_and_scored_by_overlap():
    far = RuleGate().decide(PROMPT, REPLY, "How do kangaroos sleep")
    assert not far.is_feedback and far.reason.startswith("overlap:") and far.score == pytest.approx(0.2)


def test_kind_weights_defaults_and_override():
    assert RuleGate().decide(PROMPT, REPLY, "thanks, perfect").weight == 0.5
    assert RuleGate().decide(PROMPT, REPLY, "too long").weight == 1.0
    custom = RuleGate({"positive": 0.2, "complaint": 0.7})
    assert custom.decide(PROMPT, REPLY, "thanks, perfect").weight == 0.2
    assert custom.decide(PROMPT, REPLY, "too long").weight == 0.7


def test_a_partial_kind_weights_config_changes_only_the_kinds_it_names():
    gate = build_gate(FeedbackConfig(gate="rules", kind_weights={"positive": 0.0}))
    thanks = gate.decide(PROMPT, REPLY, "thanks, perfect")
    assert thanks.is_feedback and thanks.kind == "positive" and thanks.weight == 0.0
    assert not thanks.trains  # feedback, but weighing nothing: dropped before scoring (zero_weight)
    assert gate.decide(PROMPT, REPLY, "too long").weight == 1.0 and gate.decide(PROMPT, REPLY, "too long").trains
    assert not gate.decide(PROMPT, REPLY, "how's the weather in Oslo?").trains  # not feedback
    assert gate.decide(PROMPT, REPLY, "what do you mean by largest?").weight == 0.5  # clarification keeps its default


def test_no_gate_passes_everything():
    for f in ("ok", "how's your day?", "No, it's Canberra", ""):
        assert NoGate().decide(PROMPT, REPLY, f) == FeedbackDecision(True, "unknown", 1.0, 1.0, "none")


def _toy():
    rows = [(PROMPT, REPLY, f"that is wrong {i}") for i in range(20)] + \
           [(PROMPT, REPLY, f"tell me about goldfish {i}") for i in range(20)]
    return rows, [1] * 20 + [0] * 20


def test_fitter_separates_a_trivial_set():
    rows, y = _toy()
    gate = train_linear_gate(rows, y, dim=1 << 10, steps=300)
    pred = [gate.score(*r) >= 0.5 for r in rows]
    assert np.mean(np.array(pred) == np.array(y, dtype=bool)) > 0.9
    x_N_D = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    w_D, b = fit_logistic(x_N_D, np.array([1, 1, 0, 0]), steps=200)
    assert w_D[0] > 0 > w_D[1]


def test_linear_gate_round_trips_with_identical_scores():
    rows, y = _toy()
    gate = train_linear_gate(rows, y, dim=1 << 10, steps=100)
    gate.threshold = 0.42
    back = LinearGate.from_dict(gate.to_dict())
    assert back.threshold == 0.42 and back.dim == gate.dim
    for f in ("that is wrong", "goldfish?", "ok", "Demasiado largo"):
        assert back.score(PROMPT, REPLY, f) == gate.score(PROMPT, REPLY, f)
        assert back.decide(PROMPT, REPLY, f) == gate.decide(PROMPT, REPLY, f)


def test_roc_auc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.9], [0, 1, 1]) == pytest.approx(0.75)  # one tie counts 1/2: (0.5 + 1) / 2
    assert roc_auc([0.3, 0.2], [1, 0]) == 1.0 and np.isnan(roc_auc([0.3, 0.2], [1, 1]))


def test_prf_and_threshold_choice():
    m = prf([1, 1, 0, 0], [1, 0, 1, 0])
    assert (m["precision"], m["recall"], m["tp"], m["fp"], m["fn"]) == (0.5, 0.5, 1, 1, 1)
    t, m = choose_threshold([0.9, 0.8, 0.7, 0.6, 0.1], [1, 1, 0, 1, 0], min_precision=0.9)
    assert t == 0.8 and m["precision"] == 1.0 and m["met_precision"]


def test_make_gate():
    assert isinstance(make_gate("none"), NoGate) and isinstance(make_gate("rules"), RuleGate)
    with pytest.raises(ValueError):
        make_gate("learned")
    with pytest.raises(ValueError):
        make_gate("magic")
    w = load_feedback_gate()
    assert make_gate("learned", w, threshold=0.7).threshold == 0.7
    assert make_gate("ensemble", w).threshold == w["meta"]["ensemble"]["threshold"]


def test_feedback_modules_are_pure():
    root = Path(__file__).resolve().parents[2] / "hsd_ray" / "core"
    for name in ("feedback.py", "feedback_rules.py", "feedback_fit.py"):
        tree = ast.parse((root / name).read_text())
        mods = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert mods <= {"__future__", "math", "re", "zlib", "dataclasses", "unicodedata", "numpy", "hsd_ray"}, (name, mods)
        assert len((root / name).read_text().splitlines()) <= 500


# ---- the shipped data ----------------------------------------------------------------------------------------------

ROWS = load_followups()


def test_followups_fields_and_size():
    assert len(ROWS) >= 400
    for r in ROWS:
        assert set(r) == {"id", "split", "prompt", "reply", "followup", "label", "kind", "lang"}
        assert r["split"] in ("train", "dev", "test") and r["prompt"] and r["reply"] and r["followup"].strip()
        assert r["kind"] in FEEDBACK_KINDS + NOT_FEEDBACK_KINDS
        assert r["label"] == ("feedback" if r["kind"] in FEEDBACK_KINDS else "not_feedback")
    share = np.mean([r["label"] == "feedback" for r in ROWS])
    assert 0.4 <= share <= 0.5


def test_followup_splits_disjoint_and_cover_every_kind():
    ids = Counter(r["id"] for r in ROWS)
    assert max(ids.values()) == 1
    texts: dict[str, set[str]] = {}
    for r in ROWS:
        texts.setdefault(" ".join(r["followup"].lower().split()), set()).add(r["split"])
    assert all(len(s) == 1 for s in texts.values())
    for split in ("train", "dev", "test"):
        assert {r["kind"] for r in ROWS if r["split"] == split} == set(FEEDBACK_KINDS + NOT_FEEDBACK_KINDS), split
    n = Counter(r["split"] for r in ROWS)
    assert 0.55 < n["train"] / len(ROWS) < 0.65 and 0.15 < n["test"] / len(ROWS) < 0.25


def test_followup_category_counts():
    cats = Counter(c for r in ROWS for c in row_categories(r))
    assert cats["non_english"] >= 30 and cats["code"] >= 15 and cats["very_short"] >= 30
    assert cats["very_long"] >= 15 and cats["build_on"] >= 30
    for label in ("feedback", "not_feedback"):  # the hard slices hold both labels
        for c in ("non_english", "code", "very_long"):
            assert any(r["label"] == label and c in row_categories(r) for r in ROWS), (label, c)


def test_shipped_default_gate_meets_the_bar_on_test():
    weights = load_feedback_gate()
    assert FeedbackConfig().gate == weights["meta"]["default_gate"]  # the config's default is the dev choice
    gate = make_gate(FeedbackConfig().gate, weights)
    test = [r for r in ROWS if r["split"] == "test"]
    pred = [gate.decide(r["prompt"], r["reply"], r["followup"]).is_feedback for r in test]
    m = prf(pred, [r["label"] == "feedback" for r in test])
    assert m["precision"] >= 0.9 and m["recall"] >= 0.5, m
    meta = load_feedback_gate()["meta"]
    assert meta["default_gate"] in ("rules", "learned", "ensemble") and "dev" in meta
