"""bench.learning.gate_sight: which version the final evaluation was served by, and what its gate numbers and its
sampled replies say, read from a learning result."""

import pytest

from bench.learning.gate_sight import pearson, served_row

pytestmark = pytest.mark.unit

LOOP = "the cat sat the cat sat the cat sat"


def _eval(version: int, texts: list[str], capability: float) -> dict:
    return {"published_version": version, "capability": {"accuracy": capability},
            "replies": [{"kind": "open", "text": t} for t in texts] + [{"kind": "yes_no", "text": LOOP}]}


def _result(versions: list[dict], served: int) -> dict:
    evals = [_eval(-1, ["Fine.", "Also fine."], 0.2), _eval(served, [LOOP, "Fine.", LOOP, "Ok."], 0.3)]
    return {"runs": [{"final_stats": {"versions": versions}, "evals": evals}]}


def test_the_served_version_is_the_accepted_one_the_last_evaluation_names():
    numbers = {"loops": 0.25, "loops_base": 0.0625, "accuracy": 0.45}
    versions = [{"version": 3, "state": "accepted", "numbers": {**numbers, "loops": 0.0}},
                {"version": 4, "state": "rejected", "numbers": numbers},
                {"version": 5, "state": "accepted", "numbers": numbers}]
    row = served_row(_result(versions, 5))
    assert row == {"version": 5, "gate_loops": 0.25, "gate_loops_base": 0.0625, "gate_sampled_loops": None,
                   "sampled_loops": 0.5, "sampled_loops_base": 0.0, "gate_accuracy": 0.45, "capability": 0.3,
                   "capability_base": 0.2}  # gated before the sampled check: no sampled gate number
    sampled = {**numbers, "sampled": 64, "sampled_loops": 0.125}
    row = served_row(_result([{"version": 5, "state": "accepted", "numbers": sampled}], 5))
    assert row["gate_sampled_loops"] == 0.125
    assert served_row(_result(versions, 3))["gate_loops"] == 0.0  # an earlier accepted version served at the end
    assert served_row(_result(versions, 4)) is None  # a rejected version is never the served one
    assert served_row(_result([], 5)) is None  # gate off: no decisions, nothing to compare
    assert served_row(_result([{"version": 5, "state": "accepted", "numbers": {"accuracy": 0.5}}], 5)) is None


def test_pearson_is_exact_and_undefined_where_it_should_be():
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert pearson([1.0, 2.0], [1.0, 2.0]) is None and pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
