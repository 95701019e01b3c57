"""Lost and gained answers in the learning benchmark's report (bench/learning/scoring.answer_changes, report): the
net capability delta nets them out, these count them."""

from __future__ import annotations

import pytest

from bench.learning.report import answers_vs_base, base_answer_spread, full_report
from bench.learning.scoring import answer_changes

pytestmark = pytest.mark.unit

QUESTIONS = ["What is the capital of Nepal?", "What is 3 + 16?", "What is 14 divided by 7?", "What is 6 + 7?"]


def _answers(correct: list[bool], kinds: bool = True) -> list[dict]:
    kind = {"What is the capital of Nepal?": "capital", "What is 3 + 16?": "addition",
            "What is 14 divided by 7?": "division", "What is 6 + 7?": "addition"}
    return [{"question": q, "reply": "…", "correct": c, **({"kind": kind[q]} if kinds else {})}
            for q, c in zip(QUESTIONS, correct)]


def test_lost_and_gained_are_counted_apart():
    """Two of three right answers lost, one gained: the net says -1, the user lost two facts."""
    changes = answer_changes(_answers([True, True, False, True]), _answers([False, False, True, True]))
    assert changes == {"right_before": 3, "lost": 2, "gained": 1, "lost_by_kind": {"addition": 1, "capital": 1},
                       "lost_questions": ["What is the capital of Nepal?", "What is 3 + 16?"]}


def test_kinds_come_from_the_lookup_for_results_written_without_them():
    before, after = _answers([True, True, False, False], kinds=False), _answers([False, True, False, False], False)
    assert answer_changes(before, after)["lost_by_kind"] == {"?": 1}
    assert answer_changes(before, after, {QUESTIONS[0]: "capital"})["lost_by_kind"] == {"capital": 1}


def test_answers_of_different_prompts_are_refused():
    with pytest.raises(ValueError, match="same split"):
        answer_changes(_answers([True] * 4), list(reversed(_answers([True] * 4))))


def _ev(correct: list[bool] | None) -> dict:
    capability = {"accuracy": sum(correct) / 4, "n": 4, "answers": _answers(correct)} if correct else \
        {"accuracy": 0.5, "n": 4}
    return {"compliance": {"max_words": 0.1}, "capability": capability, "perplexity": 10.0, "interactions": 0,
            "mean_words_open": 30.0}


def test_answers_vs_base_keeps_the_worst_evaluation():
    evals = [_ev([True, True, True, False]), _ev([False, False, True, False]), _ev([True, False, True, True])]
    got = answers_vs_base(evals)
    assert (got["lost"], got["gained"], got["lost_max"], got["right_before"]) == (1, 1, 2, 3)
    assert answers_vs_base([_ev([True] * 4), _ev(None)]) is None  # a result that kept no full answer list
    trimmed = _ev([True] * 4)
    trimmed["capability"]["answers"] = trimmed["capability"]["answers"][:2]  # noise.py keeps a sample only
    assert answers_vs_base([_ev([True] * 4), trimmed]) is None


def _run(seed: int, base: list[bool], after: list[bool]) -> dict:
    return {"variant": "default", "preference": "max_words", "control": False, "opposes": None, "seed": seed,
            "evals": [_ev(base), _ev(after)], "timings": {"total_s": 60.0}}


def test_the_floor_is_how_much_base_evaluations_differ():
    same = [_run(0, [True, True, False, False], [False] * 4), _run(1, [True, True, False, False], [True] * 4)]
    assert base_answer_spread(same) == {"runs": 2, "max_changed": 0}
    other = _run(2, [True, False, False, True], [True] * 4)
    assert base_answer_spread(same + [other]) == {"runs": 3, "max_changed": 2}
    assert base_answer_spread(same[:1]) is None


def test_the_report_shows_lost_answers(tmp_path):
    result = {"config": {"model": "m", "split": "dev"}, "runs": [_run(0, [True, True, True, False],
                                                                       [False, True, True, True])]}
    text = full_report(result, tmp_path)
    assert "-1/+1 of 3 (capital 1)" in text and "lost answers' floor: n/a" in text
