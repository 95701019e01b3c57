"""The per-user benchmark's report over seeds (bench/learning/personal_report.py): gains pooled per user, efficiency
against the ceiling, the cross-user shift read against the shifted preference's own noise floor, good compliance
from the quality file. No Ray, no model."""

from __future__ import annotations

import json

import pytest

from bench.learning import personal_report as R

pytestmark = pytest.mark.unit


def _row(seed, user, gain, floor, others, ceiling=0.4, unchanged=True):
    return {"seed": seed, "user": user, "gain": gain, "ceiling_gain": ceiling, "noise_floor": floor,
            "others_shift": others, "capability_base": 0.24, "capability_final": 0.24 + gain / 10,
            "shared_policy_unchanged": unchanged}


def test_over_seeds_pools_gains_and_reads_shifts_against_the_shifted_preferences_floor():
    rows = [_row(0, "short", 0.10, 0.05, {"emoji": 0.03}), _row(0, "emoji", 0.0, 0.02, {"short": -0.04}),
            _row(1, "short", 0.30, 0.05, {"emoji": -0.01}), _row(1, "emoji", 0.02, 0.02, {"short": 0.06})]
    by = {r["user"]: r for r in R.over_seeds(rows)}
    short, emoji = by["short"], by["emoji"]
    assert short["seeds"] == [0, 1] and short["gain_mean"] == pytest.approx(0.2)
    assert (short["gain_min"], short["gain_max"]) == (0.10, 0.30)
    assert short["efficiency"] == pytest.approx(0.5)  # mean gain / ceiling gain
    # the short user's adapter moved emoji by 3 points against emoji's 2-point floor: 1.5x, outside it
    assert short["worst_shift_pref"] == "emoji" and short["worst_shift"] == pytest.approx(0.03)
    assert short["shift_over_noise"] == pytest.approx(1.5)
    # the emoji adapter moved "short" by 6 points in seed 1 against short's 5-point floor
    assert emoji["worst_shift"] == pytest.approx(0.06) and emoji["shift_over_noise"] == pytest.approx(1.2)
    assert short["good_gain_mean"] is None and short["shared_policy_unchanged"]
    rows[3]["shared_policy_unchanged"] = False  # one run whose shared policy moved is enough to say so
    assert not {r["user"]: r for r in R.over_seeds(rows)}["emoji"]["shared_policy_unchanged"]
    rows[0]["ceiling_gain"] = None
    assert {r["user"]: r for r in R.over_seeds(rows)}["short"]["efficiency"] is None


def test_good_compliance_gains_from_the_quality_file_only_when_every_seed_has_one(tmp_path):
    quality = {"runs": [{"label": "max_words adapter s0", "evals": [{"good_compliance": 0.02},
                                                                    {"good_compliance": 0.12}]},
                        {"label": "max_words adapter s1", "evals": [{"good_compliance": 0.02},
                                                                    {"good_compliance": 0.32}]}]}
    good = R.good_gains(quality)
    assert good == {(0, "max_words"): pytest.approx(0.10), (1, "max_words"): pytest.approx(0.30)}
    rows = [_row(0, "max_words", 0.1, 0.05, {}), _row(1, "max_words", 0.3, 0.05, {})]
    assert R.over_seeds(rows, good)[0]["good_gain_mean"] == pytest.approx(0.2)
    del good[(1, "max_words")]
    assert R.over_seeds(rows, good)[0]["good_gain_mean"] is None  # no mean of a subset of the seeds
    text = R.format_rows(R.over_seeds(rows, good))
    assert "+20.0 [+10.0, +30.0]" in text and "n/a" in text
    # a quality file made from another result is not read
    result = {"benchmark": "personal", "ceiling": {}, "runs": []}
    (tmp_path / "personal-x.json").write_text(json.dumps(result))
    (tmp_path / "quality-personal-x.json").write_text(json.dumps({"source": "personal-y.json", **quality}))
    assert R.load(tmp_path / "personal-x.json") == ([], {})
    (tmp_path / "quality-personal-x.json").write_text(json.dumps({"source": "personal-x.json", **quality}))
    assert len(R.load(tmp_path / "personal-x.json")[1]) == 2


def test_a_yes_no_users_own_gain_is_format_and_correct_not_format_alone():
    from bench.learning.personal import own_metric, summarize

    def ev(fmt, good, short):
        return {"compliance": {"yes_no_only": fmt, "max_words": short}, "compliance_n": {"max_words": 80},
                "yes_no": {"n": 80, "format": fmt, "good": good}, "capability": {"accuracy": 0.24}, "replies": []}

    base, learned = ev(0.0, 0.0, 0.04), ev(0.8, 0.4, 0.16)  # "Yes." to 88% of questions: right half the time
    assert own_metric(learned, "yes_no_only") == 0.4 and own_metric(learned, "max_words") == 0.16
    result = {"ceiling": {"yes_no_only": 0.2}, "runs": [{"seed": 0, "adapters": {"yes_no_only": "a"},
                                                         "evals": [{"targets": {"base": base, "yes_no_only": base}},
                                                                   {"targets": {"base": base,
                                                                                "yes_no_only": learned}}]}]}
    [row] = summarize(result)
    assert row["gain"] == pytest.approx(0.4) and row["efficiency"] == pytest.approx(2.0)  # not the format's 0.8 / 4.0


def test_yes_no_lines_say_when_an_adapter_gives_one_answer_to_everything():
    def row(seed, fmt, correct, yes, no):
        return {"seed": seed, "user": "yes_no_only", "yes_no_format_final": fmt, "yes_no_correct_final": correct,
                "yes_no_said_yes_final": yes, "yes_no_said_no_final": no}

    lines = R.yes_no_lines([row(2, 0.8, 0.475, 0.875, 0.05), row(0, 0.0, 0.31, 0.42, 0.3),
                            {"seed": 1, "user": "max_words"}])
    # seed 0 never uses the format, and its first yes/no words are mixed
    assert lines[0] == "yes/no adapter s0: format 0%, correct 31%, first yes/no word: yes 42%, no 30%"
    assert lines[1] == ("yes/no adapter s2: format 80%, correct 48%, first yes/no word: yes 88%, no 5% — one answer "
                        "to nearly every question") and len(lines) == 2  # 0.875 of 0.925 is over 0.9
    assert R.yes_no_lines([row(0, 0.0, 0.0, 0.0, 0.0)])[0].endswith("yes 0%, no 0%")  # says neither: not "one"
    assert R.yes_no_lines([{"seed": 0, "user": "yes_no_only"}]) == []  # results from before these fields


def test_ceiling_gains_follow_the_runs_template_and_the_first_file_that_measured_it(tmp_path):
    from bench.learning.personal import ceiling_gains

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"target": {
        "short": {"baseline": 0.05, "hindsight_online": 0.35, "hindsight_plain": 0.50, "instruction": 0.50}}}))
    # an older file: `plain` was not a named condition yet, only its identical `instruction` cell
    second.write_text(json.dumps({"target": {
        "short": {"baseline": 0.0, "hindsight_online": 0.9, "instruction": 0.9},
        "lists": {"baseline": 0.0125, "hindsight_online": 0.25, "instruction": 0.4625}}}))
    paths = [tmp_path / "missing.json", first, second]
    assert ceiling_gains(paths, ["short", "lists", "emoji"], "plain") == pytest.approx({"short": 0.45, "lists": 0.45})
    assert ceiling_gains(paths, ["short", "lists"], "online") == pytest.approx({"short": 0.30, "lists": 0.2375})
    # only `plain` reads the instruction cell: another template without its own cell has no ceiling
    assert ceiling_gains([second], ["lists"], "offline") == {}
