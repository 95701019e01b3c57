"""The version gate's one-answer check: a version that answers nearly every balanced yes/no question the same way
is held back, unless the base does so itself; the verdict a reply gives, and the shipped yes/no probes."""

import re

import pytest

from bench.learning.facts import YES_NO_FAMILIES
from hsd_ray.config import Config
from hsd_ray.core.version_gate import (ALL_CHECKS, CAPABILITY_CHECKS, GateLimits, GateNumbers, answers_one_way,
                                       first_verdict, gate_reasons, one_answer_share)
from hsd_ray.data import load_probes

pytestmark = pytest.mark.unit

LIMITS = GateLimits(max_kl_accepted=0.25, max_kl_base=1.0, max_ppl_ratio=1.25, max_accuracy_drop=0.1,
                    max_length_change=0.5, max_loop_increase=0.25, max_one_answer_share=0.85)
# the base SmolLM2's verdicts on the shipped 24 questions: 14 given, 10 of them "no" (tests/integration/test_smollm2.py)
BASE = dict(yes_no=24, verdicts_base=14, one_answer_base=10 / 14)


def _numbers(**kw) -> GateNumbers:
    base = dict(kl_accepted=0.01, kl_base=0.1, ppl=10.0, ppl_base=10.0, accuracy=0.5, accuracy_base=0.5,
                length=40.0, length_accepted=40.0)
    return GateNumbers(**{**base, **kw})


def test_a_verdict_is_the_first_yes_or_no_of_the_first_sentence():
    assert first_verdict("No.") == "no" and first_verdict("  Yes!") == "yes" and first_verdict("**YES**") == "yes"
    assert first_verdict("No, a square has eight sides.") == "no"  # the base's words to "Does a square have four …"
    assert first_verdict('The answer to this question is "no" to both "a" and "b"') == "no"
    assert first_verdict("The answer to this question is yes, cars do have wheels") == "yes"
    assert first_verdict("Fish do not live in water. There is no doubt.") is None  # a later sentence's "no" is not one
    assert first_verdict("Nobody knows, yesterday it rained.") is None  # whole words only
    assert first_verdict("") is None


def test_one_answer_share_counts_verdicts_and_the_commonest_ones_share():
    assert one_answer_share(["no", "no", None, "yes"]) == (3, pytest.approx(2 / 3))
    assert one_answer_share([None, None]) == (0, 0.0) and one_answer_share([]) == (0, 0.0)
    assert one_answer_share([first_verdict(r) for r in ["No."] * 23 + ["Yes."]]) == (24, pytest.approx(23 / 24))


def test_a_constant_no_is_held_back_by_capability_and_by_every_check():
    # the dev yes/no adapter (seed 1, step 6): a verdict to 23 of the 24 questions, every one "No"
    constant_no = _numbers(verdicts=23, one_answer=1.0, **BASE)
    assert gate_reasons(constant_no, LIMITS, CAPABILITY_CHECKS) == ["one_answer"]
    assert gate_reasons(constant_no, LIMITS, ALL_CHECKS) == ["one_answer"]
    assert "one answer 1.00 of 23 verdicts on 24 yes/no (base 0.71 of 14)" in constant_no.summary()
    assert gate_reasons(_numbers(verdicts=21, one_answer=0.9, **BASE), LIMITS, CAPABILITY_CHECKS) == ["one_answer"]


def test_what_one_answer_does_not_hold_back():
    # the dev adapters for other preferences after 1-3 steps: the base's few "yes" tipped, as many verdicts as the
    # base gives (14-16 of 24, all "No"); an earlier bound ("a verdict on at least half") held back 12 of 15 of them
    for verdicts in (14, 16, 18):
        assert gate_reasons(_numbers(verdicts=verdicts, one_answer=1.0, **BASE), LIMITS, CAPABILITY_CHECKS) == []
    # both answers: a version that knows the answers, on a balanced set, gives both
    assert gate_reasons(_numbers(verdicts=24, one_answer=0.6, **BASE), LIMITS, CAPABILITY_CHECKS) == []
    # on the bounds (20 of 24 is not more than 0.85 of them; 0.85 is not more than 0.85) is not over them
    assert gate_reasons(_numbers(verdicts=20, one_answer=1.0, **BASE), LIMITS, CAPABILITY_CHECKS) == []
    assert gate_reasons(_numbers(verdicts=24, one_answer=0.85, **BASE), LIMITS, CAPABILITY_CHECKS) == []
    # the base answers one way itself: a candidate that does is no worse than what it would replace
    one_way_base = dict(yes_no=24, verdicts_base=22, one_answer_base=0.95)
    assert gate_reasons(_numbers(verdicts=24, one_answer=1.0, **one_way_base), LIMITS, CAPABILITY_CHECKS) == []
    # not measured (a probe set without `yes_no`, or the check not asked for)
    assert gate_reasons(_numbers(verdicts=24, one_answer=1.0), LIMITS, CAPABILITY_CHECKS) == []
    assert not answers_one_way(24, 1.0, 24, max_share=1.0)  # version_gate.max_one_answer_share=1: off


def test_the_config_default_reaches_the_gates_limits():
    assert Config().version_gate.max_one_answer_share == 1.0  # off by default: make run's candidates crossed 0.85
    cfg = Config.load(None, ["version_gate.max_one_answer_share=0.85"]).version_gate
    assert GateLimits(**{k: getattr(cfg, k) for k in GateLimits.__dataclass_fields__}).max_one_answer_share == 0.85


def _words(q: str) -> set[str]:
    return set(re.findall(r"[a-z]+", q.lower())) - {"a", "an", "the", "is", "do", "does", "have", "of", "in"}


def test_the_shipped_yes_no_probes_are_balanced_pairs_apart_from_the_benchmarks_questions():
    probes = load_probes()["yes_no"]
    assert len(probes) == 24 and sum(p["answer"] == "yes" for p in probes) == 12
    assert all(p["answer"] in ("yes", "no") for p in probes)
    for true, false in zip(probes[0::2], probes[1::2]):  # mirrored: one subject, a true and a false fact
        assert (true["answer"], false["answer"]) == ("yes", "no") and _words(true["prompt"]) & _words(false["prompt"])
    benchmark = [q for family in YES_NO_FAMILIES.values() for q, _ in family]
    for p in probes:
        assert p["prompt"] not in benchmark
        assert all(len(_words(p["prompt"]) & _words(q)) <= 1 for q in benchmark), p["prompt"]
