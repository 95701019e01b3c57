"""The learning benchmark's prompt splits, strict answer checkers, yes/no correctness, user populations (matched
control, mixed traffic), noise floor and report (bench/learning: facts, prompts, scoring, users, noise, report,
run's CLI). No Ray, no model."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.learning import facts as F
from bench.learning.preferences import PREFERENCES
from bench.learning.prompts import (EVAL_SPLITS, SPLITS, CheckablePrompt, build_prompt_sets, check_disjoint,
                                    checkable_splits, yes_no_split)
from hsd_ray.core import answers

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def sets():
    return build_prompt_sets(0)


# ---- splits ---------------------------------------------------------------------------------------------------------


def test_prompt_sets_deterministic(sets):
    assert build_prompt_sets(0) == sets
    assert build_prompt_sets(1).train_open != sets.train_open


def test_three_splits_disjoint(sets):
    check_disjoint(sets)
    train = set(sets.train_open) | {q.question for q in sets.train_yes_no} | {p.question for p in
                                                                               sets.train_capability}
    dev = set(sets.heldout("open", "dev")) | set(sets.heldout("yes_no", "dev")) | {p.question for p in
                                                                                    sets.capability("dev")}
    test = set(sets.heldout("open", "test")) | set(sets.heldout("yes_no", "test")) | {p.question for p in
                                                                                       sets.capability("test")}
    assert not train & dev and not train & test and not dev & test
    assert not set(sets.topics["train"]) & set(sets.topics["dev"])
    assert not set(sets.topics["dev"]) & set(sets.topics["test"])
    for s in EVAL_SPLITS:  # each open prompt is about one of its own split's topics
        assert all(any(t in q for t in sets.topics[s]) for q in sets.heldout("open", s))


def test_yes_no_families_and_mirror_pairs_disjoint(sets):
    fams = {s: {q.family for q in yes_no_split(s)} for s in SPLITS}
    assert fams["train"] >= {"size", "parity"} and not fams["train"] & fams["dev"]
    assert not fams["train"] & fams["test"] and not fams["dev"] & fams["test"]
    assert {q.family for q in sets.train_yes_no} == fams["train"]
    for s in EVAL_SPLITS:
        assert {q.family for q in sets.eval_yes_no[s]} <= fams[s]
    keys = {s: {F.mirror_key(q.question) for q in yes_no_split(s)} for s in SPLITS}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    assert F.mirror_key("Is a cat bigger than a dog?") == F.mirror_key("Is a dog smaller than a cat?")
    # the templates differ: no evaluation question uses a training family's template
    assert not any(t in q.question for t in ("bigger than", "even number", " fly?", "a fruit?", "a mammal?")
                   for s in EVAL_SPLITS for q in yes_no_split(s))


def test_check_disjoint_catches_leaks(sets):
    bad = dataclasses.replace(sets, train_open=sets.train_open + (sets.heldout("open", "test")[0],))
    with pytest.raises(AssertionError):
        check_disjoint(bad)
    leak = dataclasses.replace(sets, train_yes_no=sets.train_yes_no + (sets.eval_yes_no["dev"][0],))
    with pytest.raises(AssertionError):
        check_disjoint(leak)
    cap = dataclasses.replace(sets, train_capability=sets.train_capability + (sets.capability("test")[0],))
    with pytest.raises(AssertionError):
        check_disjoint(cap)


@pytest.mark.parametrize("split", SPLITS)
def test_yes_no_truth_balanced(split, sets):
    qs = yes_no_split(split)
    assert 0.4 <= sum(q.answer for q in qs) / len(qs) <= 0.6
    for fam in {q.family for q in qs}:
        f = [q.answer for q in qs if q.family == fam]
        assert 0.4 <= sum(f) / len(f) <= 0.6, fam
    if split != "train":
        sel = sets.eval_yes_no[split]
        assert len(sel) == 20 and sum(q.answer for q in sel) == 10
        assert len({q.family for q in sel}) >= 3


def test_yes_no_known_answers():
    truth = dict(q for qs in F.YES_NO_FAMILIES.values() for q in qs)
    assert truth["Is 7 a prime number?"] and not truth["Is 9 a prime number?"]
    assert truth["Is France in Europe?"] and not truth["Is the Moon a planet?"]
    assert truth["Is a horse bigger than a dog?"] and not truth["Is an ant bigger than a cat?"]
    assert len(truth) == sum(len(v) for v in F.YES_NO_FAMILIES.values())  # no duplicate questions


def test_capability_splits_large_and_disjoint(sets):
    c = checkable_splits(0)
    for s in EVAL_SPLITS:
        items = sets.capability(s)
        assert len(items) >= 200 and len({p.question for p in items}) == len(items)
        assert set(Counter(p.kind for p in items)) == {"addition", "subtraction", "multiplication", "division",
                                                       "capital", "units"}
    keys = {s: {p.key for p in c[s]} for s in SPLITS}
    assert not keys["train"] & keys["dev"] and not keys["dev"] & keys["test"] and not keys["train"] & keys["test"]
    assert len(F.CAPITALS) >= 100 and len({c for c, _, _ in F.CAPITALS}) == len(F.CAPITALS)
    capital_of = {country: names for country, names, _ in F.CAPITALS}
    for p in c["dev"] + c["test"]:  # every prompt accepts its own answer and rejects a wrong one
        right = capital_of[p.answers[0]][0] if p.kind == "capital" else p.answers[0]
        assert p.check(f"The answer is {right}."), p
        assert not p.check("I do not know."), p


# ---- strict checkers ------------------------------------------------------------------------------------------------


def test_capital_checker_strict():
    cap = CheckablePrompt("What is the capital of France?", "capital", ("France",))
    assert cap.check("The capital is Paris.") and cap.check("paris") and cap.check("Paris, of course!")
    assert not cap.check("not Paris") and not cap.check("It isn't Paris.") and not cap.check("It is not really Paris")
    assert not cap.check("Berlin? No, Paris")  # the first capital named is Berlin
    assert not cap.check("Lyon") and not cap.check("")
    india = CheckablePrompt("What is the capital of India?", "capital", ("India",))
    assert india.check("New Delhi is the capital.") and india.check("Delhi")
    assert not india.check("Mumbai, not New Delhi")
    brazil = CheckablePrompt("What is the capital of Brazil?", "capital", ("Brazil",))
    assert brazil.check("Brasília") and brazil.check("Brasilia")
    mexico = CheckablePrompt("What is the capital of Mexico?", "capital", ("Mexico",))
    assert mexico.check("The capital of Mexico is Mexico City.")


def test_number_checker_first_number_or_equation_result():
    add = CheckablePrompt("What is 12 + 3?", "addition", ("15",))
    assert add.check("12 + 3 = 15")  # equation: its result counts
    assert add.check("12 plus 3 equals 15.") and add.check("Twelve plus three is fifteen.")
    assert add.check("15") and add.check("The answer is fifteen.") and add.check("It's 15, easy.")
    assert not add.check("The sum of 12 and 3 is 15.")  # first number 12, not an equation
    assert not add.check("12 + 3 = 16. Sorry, 15.") and not add.check("16, no wait, 15")
    assert not add.check("It is 12 plus 3.") and not add.check("")
    units = CheckablePrompt("How many grams are in 2 kilograms?", "units", ("2000",))
    assert units.check("2,000 grams") and units.check("two thousand") and units.check("2000 g")
    assert not units.check("There are 2 kilograms = 2000 grams.")  # first number 2 opens no "a op b = c"
    assert not units.check("200 grams") and not units.check("20000")
    assert answers.numbers_in("-3, 1.5 and 2,000 and twenty-one") == [-3.0, 1.5, 2000.0, 21.0]
    assert answers.answer_number("7 × 8 = 56") == 56 and answers.answer_number("56 divided by 8 is 7") == 7


def test_yes_no_correctness_metrics():
    from bench.learning.scoring import yes_no_metrics

    qs = ["Is 7 a prime number?", "Is 9 a prime number?", "Is 7 a prime number?", "Is 9 a prime number?"]
    truth = {"Is 7 a prime number?": True, "Is 9 a prime number?": False}
    m = yes_no_metrics(qs, ["No", "No.", "Yes, it is.", "no"], truth)
    assert m["format"] == pytest.approx(0.75) and m["correct"] == pytest.approx(0.75)
    assert m["good"] == pytest.approx(0.5)  # compliant but wrong ("No" to 7) is not good
    assert m["said_no"] == pytest.approx(0.75) and m["said_yes"] == pytest.approx(0.25)
    assert m["correct_when_truth"] == {"yes": 0.5, "no": 1.0}
    always_no = yes_no_metrics(qs, ["No"] * 4, truth)
    assert always_no["format"] == 1.0 and always_no["good"] == pytest.approx(0.5)
    assert F.first_yes_no("Nope. Well, yes.") == "yes" and F.first_yes_no("I know") is None


# ---- populations ----------------------------------------------------------------------------------------------------


class _FakeClient:
    """An OpenAI-like client whose replies come from `reply_fn(messages)`; records the requests."""

    def __init__(self, reply_fn):
        self.requests = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self._reply = reply_fn

    def _create(self, **kw):
        self.requests.append(kw)
        msg = SimpleNamespace(content=self._reply(kw["messages"]))
        return SimpleNamespace(choices=[SimpleNamespace(message=msg, finish_reason="stop")],
                               system_fingerprint="hsd-base-v0")


def _users(population, reply="Yes.", seed=0, pref="max_words", **kw):
    from bench.learning.users import SimulatedUsers

    client = _FakeClient(lambda messages: reply if isinstance(reply, str) else reply(messages))
    return SimulatedUsers(client, PREFERENCES[pref], build_prompt_sets(0), seed=seed, population=population,
                          **kw), client


def test_mixed_population_on_violations_is_a_third_each():
    users, _ = _users("mixed", reply=" ".join(["word"] * 40))  # always violates "<= 20 words"
    stats = users.run(600)
    kinds = Counter(r["followup_kind"] for r in stats.log)
    assert set(kinds) == {"complaint", "ack", "new_question"}
    for k in kinds:
        assert 0.27 <= kinds[k] / 600 <= 0.40, kinds
    assert stats.followups == 600 and stats.violations == 600


def test_mixed_population_when_satisfied_thanks_or_new_topic():
    users, _ = _users("mixed", reply="Short answer.")
    stats = users.run(400)
    kinds = Counter(r["followup_kind"] for r in stats.log)
    assert set(kinds) == {"ack", "new_question"} and 0.4 <= kinds["ack"] / 400 <= 0.6
    topics = set(users.prompts.new_topics("open"))
    assert all(r["followup"] in topics for r in stats.log if r["followup_kind"] == "new_question")


def test_feedback_population_complains_only_on_violations():
    users, _ = _users("feedback", reply=lambda m: "Short." if len(m[0]["content"]) % 2 else " ".join(["w"] * 30))
    stats = users.run(200)
    for r in stats.log:
        assert (r["followup_kind"] == "complaint") == (not r["ok"])
        if r["followup_kind"] == "complaint":
            assert r["followup"] in PREFERENCES["max_words"].complaints
    assert stats.complaints == stats.violations > 0


def test_control_population_never_about_the_reply():
    users, _ = _users("control", reply=" ".join(["word"] * 40))
    stats = users.run(300)
    kinds = Counter(r["followup_kind"] for r in stats.log)
    assert set(kinds) == {"new_question", "thanks_next", "chitchat"}  # a follow-up where feedback would complain
    assert all(0.25 <= v / 300 <= 0.42 for v in kinds.values())
    complaints = set(PREFERENCES["max_words"].complaints) | set(users.prompts.acknowledgements)
    assert not any(r["followup"] in complaints for r in stats.log)
    assert stats.complaints == 0 and stats.acknowledgements == 0


@pytest.mark.parametrize("pref", ["max_words", "yes_no_only"])
def test_matched_control_same_questions_seeds_and_followup_count(pref):
    """Same seed → the control asks the trained run's questions in the same order, with the same request seeds for
    the read replies, and follows up exactly as often (given the same replies)."""
    def reply(messages):
        return "Yes." if len(messages[-1]["content"]) % 3 else " ".join(["word"] * 30)

    runs = {pop: _users(pop, reply=reply, seed=3, pref=pref) for pop in ("feedback", "control", "mixed")}
    logs = {pop: u.run(80).log for pop, (u, _) in runs.items()}
    q = {pop: [r["question"] for r in log] for pop, log in logs.items()}
    assert q["feedback"] == q["control"] == q["mixed"]
    assert set(q["feedback"]) <= set(runs["feedback"][0].prompts.train(PREFERENCES[pref].prompt_kind))
    sent = {pop: sum(r["followup"] is not None for r in log) for pop, log in logs.items()}
    assert sent["feedback"] == sent["control"]
    read_seeds = {pop: [r["seed"] for r in c.requests if r["max_tokens"] > 1] for pop, (_, c) in runs.items()}
    assert read_seeds["feedback"] == read_seeds["control"] == read_seeds["mixed"]
    other, _ = _users("feedback", reply=reply, seed=4, pref=pref)
    assert [r["question"] for r in other.run(80).log] != q["feedback"]


def test_population_validated():
    with pytest.raises(ValueError):
        _users("nobody")


# ---- noise floor, report, CLI ---------------------------------------------------------------------------------------


def _ev(compliance, capability, interactions=0, yes_no=None):
    ev = {"compliance": compliance, "compliance_n": {k: 80 for k in compliance}, "perplexity": 10.0,
          "capability": {"accuracy": capability, "n": 200}, "interactions": interactions, "mean_words_open": 30.0}
    if yes_no:
        ev["yes_no"] = {"n": 80, "format": yes_no[0], "correct": yes_no[1], "good": yes_no[2], "said_yes": yes_no[3]}
    return ev


def test_noise_floor():
    from bench.learning.noise import floors

    evals = [_ev({"max_words": v}, 0.5, yes_no=(0.0, 0.5, 0.0, 0.4)) for v in (0.10, 0.20, 0.15)]
    m = floors(evals)
    assert m["compliance.max_words"]["spread"] == pytest.approx(0.10)
    assert m["compliance.max_words"]["std"] == pytest.approx(0.05)
    assert m["compliance.max_words"]["floor"] >= m["compliance.max_words"]["spread"]
    p = (0.5 * 200 + 1) / 202
    assert m["capability"]["spread"] == 0 and m["capability"]["floor"] == pytest.approx(2 * (p * (1 - p) / 200) ** 0.5)
    assert set(m) >= {"yes_no.correct", "yes_no.good", "yes_no.said_yes"}


def _run(pref, population, seed, before, after, template="offline"):
    return {"variant": "offline_template", "preference": pref, "population": population, "seed": seed,
            "control": population == "control", "opposes": None, "gate": None, "split": "test",
            "loop_config": {"hindsight": {"template": template}}, "timings": {"total_s": 300.0},
            "evals": [before, after]}


def test_report_target_noise_efficiency_and_control_gain(tmp_path):
    import json

    from bench.learning import report

    yes_no_before, yes_no_after = (0.0, 0.5, 0.0, 0.5), (0.9, 0.5, 0.45, 0.0)  # learned "No"
    b = _ev({"yes_no_only": 0.0, "max_words": 0.1}, 0.5, 0, yes_no_before)
    a = _ev({"yes_no_only": 0.9, "max_words": 0.12}, 0.49, 60, yes_no_after)
    c = _ev({"yes_no_only": 0.05, "max_words": 0.3}, 0.45, 60, (0.05, 0.5, 0.05, 0.5))
    runs = [_run("yes_no_only", "feedback", 0, b, a), _run("yes_no_only", "control", 0, b, c)]
    s = report.summarize_run(runs[0])
    assert s["target"] == "yes_no.good" and s["on_target_delta"] == pytest.approx(0.45)  # not the format's +90
    assert s["yes_no_said_yes_after"] == 0.0
    gains = report.gain_over_control([report.summarize_run(r) for r in runs])
    assert len(gains) == 1 and gains[0]["gain"] == pytest.approx(0.40)
    ceiling = {"target": {"yes_no_only": {"baseline": 0.0, "hindsight_offline": 0.9, "hindsight_online": 0.5}}}
    assert report.efficiency(0.45, ceiling, "yes_no_only", "offline").startswith("0.50")
    assert report.efficiency(0.45, ceiling, "yes_no_only", "online").startswith("0.90")
    noise = {"metrics": {"compliance.max_words": {"floor": 0.05}, "capability": {"floor": 0.07}}}
    assert report.mark(0.02, noise, "compliance.max_words") == "+2~"
    assert report.mark(0.20, noise, "compliance.max_words") == "+20" and report.mark(0.2, None, "x") == "+20"
    (tmp_path / "noise-m-test.json").write_text(json.dumps(noise))
    (tmp_path / "ceiling-m-test.json").write_text(json.dumps(ceiling))
    result = {"config": {"model": "m", "split": "test"}, "runs": runs}
    text = report.full_report(result, tmp_path)
    assert "noise-m-test.json" in text and "ceiling-m-test.json" in text and "gain over the matched control" in text
    assert "0.50" in text and "-1~" in text  # capability -1 is within the 7-point floor


def test_version_gate_comparison_lowest_served_capability_and_gain_kept():
    from bench.learning import report

    def run(seed, gate_on, caps, target_after, rejected=0):
        evals = [_ev({"max_words": 0.1}, c, 30 * i) for i, c in enumerate(caps)]
        evals[-1]["compliance"]["max_words"] = target_after
        r = _run("max_words", "feedback", seed, evals[0], evals[-1])
        r["evals"] = evals
        r["loop_config"]["version_gate"] = {"enabled": gate_on}
        r["final_stats"] = {"versions_rejected": rejected, "versions": [{}] * 10}
        return r

    runs = [run(0, False, (0.50, 0.40, 0.49), 0.50), run(1, False, (0.50, 0.50, 0.50), 0.30),  # off: +30 mean
            run(0, True, (0.50, 0.48, 0.49), 0.40, rejected=2), run(1, True, (0.50, 0.50, 0.51), 0.30, rejected=1)]
    rows = report.aggregate([report.summarize_run(r) for r in runs])
    assert {r["version_gate"] for r in rows} == {True, False}  # on and off aggregate apart
    [cmp] = report.version_gate_comparison(rows)
    assert cmp["gain_on"] == pytest.approx(0.25) and cmp["gain_off"] == pytest.approx(0.30)
    assert cmp["gain_kept"] == pytest.approx(0.25 / 0.30)  # >= 0.80
    # the seeds' gains: on +30 / +20, off +40 / +20; resampled, the ratio spans the extremes 20/40 .. 30/20
    lo, hi = cmp["gain_kept_interval"]
    assert 0.5 - 1e-9 <= lo < cmp["gain_kept"] < hi <= 1.5 + 1e-9
    assert cmp["lowest_capability_on"] == pytest.approx(-0.02)  # the mid-run dip, not the final value
    assert cmp["lowest_capability_off"] == pytest.approx(-0.10)
    assert cmp["rejected_on"] == 3 and cmp["published_on"] == 20 and cmp["meets_bar"]
    runs[2]["evals"][1]["capability"]["accuracy"] = 0.46  # a served dip of 4 points fails the bar
    [cmp] = report.version_gate_comparison(report.aggregate([report.summarize_run(r) for r in runs]))
    assert not cmp["meets_bar"]
    assert "version gate on vs off" in report.full_report({"config": {"model": "m", "split": "test"}, "runs": runs},
                                                            Path("/nonexistent"))


def test_report_reads_good_compliance_from_the_quality_file_beside(tmp_path):
    import json

    from bench.learning import report

    def run(seed, gate_on, after):
        r = _run("max_words", "feedback", seed, _ev({"max_words": 0.1}, 0.5), _ev({"max_words": after}, 0.5, 60))
        r["loop_config"]["version_gate"] = {"enabled": gate_on}
        return r

    def quality(runs, goods):  # bench.learning.quality's rows: one per run, first and last evaluation
        return {"runs": [{"label": report.quality_label(r), "evals": [{"good_compliance": 0.05},
                                                                      {"good_compliance": g}]}
                         for r, g in zip(runs, goods)]}

    on, off = [run(0, True, 0.3), run(1, True, 0.3)], [run(0, False, 0.5), run(1, False, 0.5)]
    for name, runs, goods in (("learning-on.json", on, (0.25, 0.15)), ("learning-off.json", off, (0.45, 0.25))):
        (tmp_path / name).write_text(json.dumps({"config": {"model": "m", "split": "test"}, "runs": runs}))
        (tmp_path / report.quality_path(tmp_path / name).name).write_text(
            json.dumps({"source": name, **quality(runs, goods)}))
    loaded = [report.load_with_quality(tmp_path / n) for n in ("learning-on.json", "learning-off.json")]
    assert loaded[0]["quality_file"] == "quality-on.json"
    [cmp] = report.version_gate_comparison(report.aggregate(
        [report.summarize_run(r) for result in loaded for r in result["runs"]]))
    assert cmp["gain_kept"] == pytest.approx(0.2 / 0.4)  # compliance: +20 against +40
    assert cmp["good_on"] == pytest.approx(0.15) and cmp["good_off"] == pytest.approx(0.30)
    assert cmp["good_kept"] == pytest.approx(0.5)
    lo, hi = cmp["good_kept_interval"]  # on +20 / +10, off +40 / +20: from 10/40 to 20/20
    assert 0.25 - 1e-9 <= lo < 0.5 < hi <= 1.0 + 1e-9
    assert "0.50 [" in report.format_version_gate([cmp])
    # a quality file made from another result is not read; one whose rows name other runs is an error
    (tmp_path / "quality-on.json").write_text(json.dumps({"source": "learning-other.json", **quality(on, (0, 0))}))
    assert "quality_file" not in report.load_with_quality(tmp_path / "learning-on.json")
    with pytest.raises(ValueError, match="is not run"):
        report.attach_quality(on, quality(list(reversed(on)), (0.2, 0.2)))
    with pytest.raises(ValueError, match="rows for"):
        report.attach_quality(on, quality(on[:1], (0.2,)))
    # without quality rows on every seed there is no good-compliance ratio
    rows = report.aggregate([report.summarize_run(r) for r in on + off])
    [cmp] = report.version_gate_comparison(rows)
    assert cmp["good_kept"] is None and "—" in report.format_version_gate([cmp])


def test_ratio_interval_bootstrap_over_seeds():
    from bench.learning.report import ratio_interval

    assert ratio_interval([0.2, 0.2, 0.2], [0.4, 0.4, 0.4]) == (0.5, 0.5)  # no scatter: the ratio itself
    assert ratio_interval([], [0.4]) is None and ratio_interval([0.2], []) is None
    assert ratio_interval([0.2], [0.0, -0.1]) is None  # mean(off) is never positive: no ratio
    lo, hi = ratio_interval([0.19, 0.21, 0.26], [0.11, 0.35, 0.62])  # issue 11's three test seeds, gate on / off
    assert 0.3 < lo < 0.61 < hi < 2.0  # the point estimate 0.61 sits inside a wide interval
    assert ratio_interval([0.19, 0.21, 0.26], [0.11, 0.35, 0.62]) == (lo, hi)  # seeded: the same interval again
    wide, narrow = ratio_interval([0.1, 0.3], [0.2, 0.4], level=0.95), ratio_interval([0.1, 0.3], [0.2, 0.4], level=0.5)
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


def test_cli_split_population_gate():
    from bench.learning.run import parse_args

    a = parse_args([])
    assert a.split == "dev" and a.population == ["feedback"] and a.gate is None and a.seeds == [0]
    assert a.capability >= 200 and a.capability_max_tokens == 24 and a.overrides == []
    a = parse_args(["--split", "test", "--population", "feedback,control,mixed", "--gate", "ensemble",
                    "--seeds", "0,1,2", "loss.kl_coef=0"])
    assert a.population == ["feedback", "control", "mixed"] and a.seeds == [0, 1, 2]
    assert a.overrides == ["loss.kl_coef=0", 'feedback.gate="ensemble"']
    assert "gate_ensemble" in a.name and a.name.endswith("-test")
    assert parse_args(["--control"]).population == ["feedback", "control"]
    with pytest.raises(SystemExit):
        parse_args(["--population", "robots"])
    with pytest.raises(SystemExit):
        parse_args(["--split", "train"])


def test_eval_requests_use_the_split(sets):
    from bench.learning.scoring import eval_requests

    reqs = eval_requests(sets, "test", list(PREFERENCES.values()), 2)
    assert [r[0] for r in reqs] == ["open"] * 40 + ["yes_no"] * 40
    assert {r[3] for r in reqs} == set(sets.heldout("open", "test")) | set(sets.heldout("yes_no", "test"))
