"""The version gate's pure parts (checker, KL, decision, feedback rates), the registry's candidate states, the
learner's rollback bookkeeping and the queue's accounting of rejected turns — as plain objects, no Ray."""

import math

import numpy as np
import pytest
from pathlib import Path
import torch

from hsd_ray.config import Config
from hsd_ray.core.version_gate import (CAPABILITY_CHECKS, RATE_KINDS, GateLimits, GateNumbers, VersionFeedback,
                                       RELEVANCE_QUERY, answer_margin, check_answer, fact_named_eventually,
                                       gate_cost, gate_reasons, lost_answers, is_degenerate, loop_rate, mean_kl,
                                       perplexity, rate_kind, relevance_change, relevance_requests, topk_kl,
                                       truncate_words)
from hsd_ray.core.weights import PolicyVersion, user_adapter_id
from hsd_ray.data import load_probes
from hsd_ray.loop.broadcast import PublishedWeights, VersionRegistry
from hsd_ray.loop.queue import TurnQueue, TurnRef
from hsd_ray.loop.rollback import RecentPrompts, Snapshot, SnapshotStore, VersionGuard, cpu_state

pytestmark = pytest.mark.unit

LIMITS = GateLimits(max_kl_accepted=0.25, max_kl_base=1.0, max_ppl_ratio=1.25, max_accuracy_drop=0.1,
                    max_length_change=0.5, max_loop_increase=0.25, max_relevance_drop=1.0)


def _numbers(**kw) -> GateNumbers:
    base = dict(kl_accepted=0.01, kl_base=0.1, ppl=10.0, ppl_base=10.0, accuracy=0.5, accuracy_base=0.5,
                length=40.0, length_accepted=40.0)
    return GateNumbers(**{**base, **kw})


# ---- checker -------------------------------------------------------------------------------------------------------


def test_checker_is_strict():
    assert check_answer("12", "12", "number") and check_answer("The answer is 12.", "12", "number")
    assert check_answer("1,000 or so", "1000", "number") and check_answer("7.0", "7", "number")
    # an opening equation is read for its result, like the learning benchmark's capability checker reads it
    assert check_answer("7 + 5 = 12", "12", "number") and check_answer("7 plus 5 is twelve.", "12", "number")
    assert not check_answer("7 + 5 = 22", "12", "number") and not check_answer("100 minus 1 is 101.", "99", "number")
    assert not check_answer("The sum of 7 and 5 is 12", "12", "number")  # the first number is what counts
    assert not check_answer("To find 7 plus 5, add them", "12", "number") and not check_answer("none", "12", "number")
    assert check_answer("Paris.", "Paris", "named") and check_answer("The capital is paris", "Paris", "named")
    assert not check_answer("I think it is London. Or maybe Paris.", "Paris", "named")  # not in the first sentence
    assert not check_answer("Parisian food is great", "Paris", "named")  # whole words only
    with pytest.raises(ValueError):
        check_answer("x", "y", "vibes")


def test_lost_answers_are_what_the_base_got_right_and_the_candidate_not():
    questions = ["q0", "q1", "q2", "q3"]
    lost = lost_answers(questions, [True, True, False, True], [True, False, False, False], ["a", "b", "c", "d" * 300])
    assert lost == [{"prompt": "q1", "reply": "b"}, {"prompt": "q3", "reply": "d" * 200}]  # q2: the base missed it too
    assert lost_answers(questions, [True] * 4, [False] * 4, list("abcd"), limit=2) == [
        {"prompt": "q0", "reply": "a"}, {"prompt": "q1", "reply": "b"}]
    n = _numbers(lost=lost)
    assert n.to_dict()["lost"] == lost and "lost 'q1' -> 'b'" in n.summary()  # kept in versions.json and the log
    assert "lost" not in _numbers().summary()


def test_shipped_probe_set_answers_pass_its_checker():
    probes = load_probes()
    assert len(probes["probes"]) == 16 and len(probes["checkable"]) == 40 and len(probes["reference_text"]) > 200
    assert all(check_answer(c["answer"], c["answer"], c["kind"]) for c in probes["checkable"])
    assert all(not check_answer("I am not sure.", c["answer"], c["kind"]) for c in probes["checkable"])
    assert all(not check_answer("I am not sure.", f["answer"], "named") for f in probes["facts"])


# ---- measures ------------------------------------------------------------------------------------------------------


def test_topk_kl_zero_for_equal_and_positive_for_different():
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    logp = np.log(np.array([[0.5, 0.3, 0.1], [0.7, 0.1, 0.1]]))
    assert np.allclose(topk_kl(ids, logp, ids, logp), 0.0, atol=1e-9)
    sharp = np.log(np.array([[0.98, 0.01, 0.005], [0.98, 0.01, 0.005]]))
    kl = topk_kl(ids, sharp, ids, logp)
    assert (kl > 0.1).all()
    other = np.array([[7, 8, 9], [7, 8, 9]])  # no overlap: q's mass on p's tokens is at most q's k-th log-prob
    assert (topk_kl(ids, sharp, other, logp) > kl).all()
    assert mean_kl([(ids, sharp)], [(ids, logp)]) == pytest.approx(float(kl.mean()))
    assert math.isnan(mean_kl([], []))
    assert perplexity([np.log(np.full(4, 0.25))]) == pytest.approx(4.0)


def test_gate_reasons_each_threshold():
    assert gate_reasons(_numbers(), LIMITS) == []
    assert gate_reasons(_numbers(kl_accepted=0.3), LIMITS) == ["kl_accepted"]
    assert gate_reasons(_numbers(kl_base=1.5), LIMITS) == ["kl_base"]
    assert gate_reasons(_numbers(ppl=12.6), LIMITS) == ["perplexity"] and gate_reasons(_numbers(ppl=12.4), LIMITS) == []
    assert gate_reasons(_numbers(accuracy=0.4), LIMITS) == []  # exactly the allowed drop
    assert gate_reasons(_numbers(accuracy=0.375), LIMITS) == ["accuracy"]
    assert gate_reasons(_numbers(length=19.0), LIMITS) == ["length"] and gate_reasons(_numbers(length=61.0), LIMITS)
    assert gate_reasons(_numbers(accuracy=0.6), LIMITS) == []  # better than the base is fine
    assert gate_reasons(_numbers(kl_accepted=float("nan")), LIMITS) == ["invalid"]
    assert gate_reasons(_numbers(kl_accepted=3.0, ppl=30.0), LIMITS) == ["kl_accepted", "perplexity"]
    assert "KL(cand‖accepted) 0.0100" in _numbers().summary() and _numbers().to_dict()["ppl"] == 10.0
    assert gate_reasons(_numbers(loops=0.3125, loops_base=0.0625), LIMITS) == []  # 4 more of 16: the allowed rise
    assert gate_reasons(_numbers(loops=0.375, loops_base=0.0625), LIMITS) == ["loops"]
    # per-user adapters (CAPABILITY_CHECKS): style moves — distance from the base, length, step size — are theirs
    wild_style = _numbers(kl_accepted=3.0, kl_base=5.0, length=4.0)
    assert gate_reasons(wild_style, LIMITS) == ["kl_accepted", "kl_base", "length"]
    assert gate_reasons(wild_style, LIMITS, CAPABILITY_CHECKS) == []
    assert gate_reasons(_numbers(length=4.0, ppl=30.0, accuracy=0.2), LIMITS, CAPABILITY_CHECKS) == [
        "perplexity", "accuracy"]
    assert gate_reasons(_numbers(kl_accepted=float("nan")), LIMITS, CAPABILITY_CHECKS) == ["invalid"]
    with pytest.raises(ValueError, match="unknown gate checks"):
        gate_reasons(_numbers(), LIMITS, ("kl", "perplexity"))


def test_a_kl_not_measured_passes_only_where_it_is_not_a_check():
    """A per-user adapter's candidate skips the two KL scoring passes (gatekeeper.evaluate): None there is no
    reason; a KL the checks hold a candidate to and that was not measured is invalid, never a pass."""
    unmeasured = _numbers(kl_accepted=None, kl_base=None)
    assert gate_reasons(unmeasured, LIMITS, CAPABILITY_CHECKS) == []
    assert gate_reasons(_numbers(kl_accepted=None, ppl=30.0), LIMITS, CAPABILITY_CHECKS) == ["perplexity"]
    assert gate_reasons(unmeasured, LIMITS) == ["invalid"]
    assert gate_reasons(_numbers(kl_base=None), LIMITS, ("kl_base", "perplexity")) == ["invalid"]
    assert gate_reasons(_numbers(kl_base=None), LIMITS, ("kl_accepted", "perplexity")) == []
    assert "KL" not in unmeasured.summary() and unmeasured.to_dict()["kl_accepted"] is None
    assert "KL(cand‖base) 0.1000" in _numbers(kl_accepted=None).summary()
    assert "loops 0.38 (base 0.06)" in _numbers(loops=0.375, loops_base=0.0625).summary()


def test_facts_lost_is_a_count_against_the_base_that_net_accuracy_cannot_hide():
    """make run served a version with 6 of 12 plain capitals where the base had 10, its net accuracy on the bound:
    gains elsewhere (a shorter number format) may not buy back lost facts."""
    limits = GateLimits(**{**LIMITS.__dict__, "max_facts_lost": 2})
    traded = _numbers(accuracy=0.6, facts_lost=3, facts_base=19)  # better net accuracy, three facts gone
    assert gate_reasons(traded, LIMITS) == []  # unbounded by default in GateLimits
    assert gate_reasons(traded, limits) == ["facts"]
    assert gate_reasons(_numbers(facts_lost=2, facts_base=19), limits) == []  # at the bound passes
    assert gate_reasons(traded, limits, CAPABILITY_CHECKS) == ["facts"]  # a user's adapter may not lose them either
    assert "facts lost 3 of 19" in traded.summary() and traded.to_dict()["facts_lost"] == 3
    assert "facts lost" not in _numbers().summary()  # a probe set without facts says nothing about them


def test_a_fact_answered_after_context_is_late_not_lost_and_a_wrong_capital_stays_wrong():
    """Replies the per-user adapters gave on the dev split: context first is a style; a wrong capital, or a sentence
    about the capital without the right one, is an answer, whatever follows."""
    late = "Cuba is a sovereign state located in the Caribbean. Its capital and largest city is Havana."
    assert not check_answer(late, "Havana", "named") and fact_named_eventually(late, "Havana")
    assert fact_named_eventually("1. Cuba is an island\n2. Capital: Havana\n3. Sugar", "Havana")
    assert fact_named_eventually("The capital of Cuba is Havana.", "Havana")
    assert fact_named_eventually("Havana, Cuba's capital city, is lovely.", "Havana")
    assert not fact_named_eventually("The capital of Iraq is Mosul. Baghdad is its largest city.", "Baghdad")
    assert not fact_named_eventually("El Diablo, Cuba's capital. Havana!", "Havana")
    assert not fact_named_eventually("Cuba is a sovereign state located in the Caribbean, primarily in the", "Havana")
    assert not fact_named_eventually("Россlа, Россиль", "Moscow") and not fact_named_eventually("", "Moscow")
    assert not fact_named_eventually("Havanas are cigars.", "Havana")  # a whole word, as check_answer reads it
    assert fact_named_eventually("Cuba. Main city: Havana.", "havana")  # case-insensitive
    assert "(answered late 2)" in _numbers(facts_lost=1, facts_base=12, facts_late=2).summary()
    assert "answered late" not in _numbers(facts_lost=1, facts_base=12).summary()


def test_answer_margin_is_the_weakest_choice_up_to_the_token_that_answers():
    """The base's "El Uruguay, …" vs "The capital of Uruguay is Montevideo": a fact decided by 0.013 at its first
    token is noise to the facts bound, however sure the later tokens are."""
    def row(p1, p2):
        return [(1, math.log(p1)), (2, math.log(p2))]

    # "The" (0.50 over 0.49) · " capital" · " is" · " Montevideo" (right from here) · "." (after: not counted)
    tops = [row(0.50, 0.49), row(0.9, 0.05), row(0.8, 0.1), row(0.7, 0.2), row(0.34, 0.33)]
    right_at = [False, False, False, True, True]
    assert answer_margin(tops, right_at) == pytest.approx(0.01)
    assert answer_margin(tops[1:], right_at[1:]) == pytest.approx(0.5)  # the firm tokens up to the answer
    assert answer_margin(tops, [False] * 5) == 0.0  # never right: nothing the candidate can lose
    assert answer_margin(tops[3:], [True, True]) == pytest.approx(0.5)  # right at its first token


def test_config_min_fact_margin_defaults_and_bounds():
    assert Config().version_gate.min_fact_margin == 0.2
    assert Config.load(overrides=["version_gate.min_fact_margin=0"]).version_gate.min_fact_margin == 0.0
    with pytest.raises(Exception, match="min_fact_margin"):
        Config.load(overrides=["version_gate.min_fact_margin=1.5"])


def test_shipped_facts_are_plain_questions_no_benchmark_evaluation_asks():
    """The gate's facts are the benchmark's train-third capitals (prompt seed 0): a version gate that knew the dev or
    test capitals would make the benchmark's capitals-lost numbers look better than they are."""
    from bench.learning.facts import CAPITALS
    from bench.learning.prompts import EVAL_SPLITS, checkable_splits

    facts = load_probes()["facts"]
    assert len(facts) >= 30 and len({f["prompt"] for f in facts}) == len(facts)
    assert all(check_answer(f"The capital is {f['answer']}.", f["answer"], "named") for f in facts)
    assert not any("Answer" in f["prompt"] for f in facts)  # plain: no format instruction to lean on
    capital_of = {country: names[0] for country, names, _ in CAPITALS}
    asked = {p.answers[0] for s in EVAL_SPLITS for p in checkable_splits(0)[s] if p.kind == "capital"}  # any size
    answer_of = {f["prompt"].removeprefix("What is the capital of ").removesuffix("?"): f["answer"] for f in facts}
    assert set(answer_of) <= set(capital_of) and not set(answer_of) & asked
    assert all(capital_of[country] == answer for country, answer in answer_of.items())


def test_relevance_check_reads_the_probe_after_each_reply_against_the_base_cut():
    """relevance = mean over probes of log p(probe | reply) − log p(probe | base reply cut to as many words)."""
    assert truncate_words("The sky is blue because of scattering.", 3) == "The sky is"
    assert relevance_change([-5.0, -3.0], [-4.0, -4.0]) == 0.0
    assert relevance_change([-6.0, -5.0], [-4.0, -4.0]) == -1.5 and relevance_change([], []) == 0.0

    def chars(text, add_special_tokens):  # a tokenizer of one id per character: the request is readable back
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}

    (req,) = relevance_requests(chars, [("Blue.", "Why is the sky blue?")])
    assert "".join(map(chr, req.prompt_ids)) == "Blue." + RELEVANCE_QUERY
    assert "".join(map(chr, req.target_ids)) == "Why is the sky blue?"
    # the decision: a drop of exactly the bound passes; the shared policy is held to it, user adapters are not
    assert gate_reasons(_numbers(relevance=-1.0), LIMITS) == [] and gate_reasons(_numbers(relevance=2.0), LIMITS) == []
    assert gate_reasons(_numbers(relevance=-1.01), LIMITS) == ["relevance"]
    assert gate_reasons(_numbers(relevance=-3.0), LIMITS, CAPABILITY_CHECKS) == []
    assert "relevance -1.50" in _numbers(relevance=-1.5).summary()
    # not measured (a user adapter's candidate skips its scoring pass): no reason, and the log line does not show it
    unmeasured = _numbers(relevance=None)
    assert gate_reasons(unmeasured, LIMITS) == [] and "relevance" not in unmeasured.summary()
    assert Config().version_gate.max_relevance_drop == 1.0


def test_gate_reasons_abusive_replies():
    """Zero tolerance by default (version_gate.max_abusive 0): one greedy reply that swears or insults beyond the
    base model's count holds a candidate back, shared or per-user; the base's own count is the floor."""
    limits = GateLimits(**{**LIMITS.__dict__, "max_abusive": Config().version_gate.max_abusive})
    assert limits.max_abusive == 0
    assert gate_reasons(_numbers(abusive=1), limits) == ["abusive"]
    assert gate_reasons(_numbers(abusive=1), limits, CAPABILITY_CHECKS) == ["abusive"]
    assert gate_reasons(_numbers(abusive=2, abusive_base=2), limits) == []
    assert gate_reasons(_numbers(abusive=3, abusive_base=2), limits) == ["abusive"]
    assert gate_reasons(_numbers(abusive=1), GateLimits(**{**limits.__dict__, "max_abusive": 1})) == []
    assert gate_reasons(_numbers(abusive=5), LIMITS) == []  # a GateLimits without the bound: not checked
    assert "abusive 1 (base 0)" in _numbers(abusive=1).summary() and "abusive" not in _numbers().summary()


def test_gate_reasons_user_prompt_loops():
    """A user adapter's loops on its user's own prompts count against the base's on the same prompts (default bound
    0.125: one more of 8); the shared policy's candidates come without user prompts and are never held to it."""
    assert LIMITS.max_user_loop_increase == 0.125
    assert gate_reasons(_numbers(user_prompts=8, user_loops=0.25, user_loops_base=0.125), LIMITS) == []
    assert gate_reasons(_numbers(user_prompts=8, user_loops=0.375, user_loops_base=0.125), LIMITS) == ["user_loops"]
    held = _numbers(user_prompts=8, user_loops=0.5, user_loops_base=0.0)
    assert gate_reasons(held, LIMITS, CAPABILITY_CHECKS) == ["user_loops"]
    assert gate_reasons(_numbers(user_prompts=0, user_loops=1.0), LIMITS) == []  # no user prompts: nothing to judge
    assert "user loops 0.50 (base 0.00, 8 of the user's prompts)" in held.summary()
    assert "user loops" not in _numbers().summary() and held.to_dict()["user_prompts"] == 8


def test_gate_reasons_sampled_replies():
    """The sampled checks (what users see at the serving temperature; opt-in) bound the shared policy's loops against
    the base's sampled replies (default 0.0625: 4 more of 64) and relevance against the base's sampled replies cut
    (default 1 nat); unmeasured (sampled 0, relevance None) is never a reason, and per-user adapters are not held
    to them under the capability checks."""
    g = Config().version_gate
    limits = GateLimits(**{**LIMITS.__dict__, "max_sampled_loop_increase": g.max_sampled_loop_increase,
                           "max_sampled_relevance_drop": g.max_sampled_relevance_drop})
    assert (limits.max_sampled_loop_increase, limits.max_sampled_relevance_drop) == (0.0625, 1.0)
    assert g.sampled_per_probe == 0  # off by default: measured on dev, it cost more than it caught
    assert gate_reasons(_numbers(sampled=64, sampled_loops=6 / 64, sampled_loops_base=2 / 64), limits) == []
    looping = _numbers(sampled=64, sampled_loops=7 / 64, sampled_loops_base=2 / 64)
    assert gate_reasons(looping, limits) == ["sampled_loops"]
    assert gate_reasons(looping, limits, CAPABILITY_CHECKS) == []
    assert gate_reasons(_numbers(sampled=0, sampled_loops=1.0), limits) == []
    assert gate_reasons(_numbers(sampled=64, sampled_relevance=-1.0), limits) == []
    assert gate_reasons(_numbers(sampled=64, sampled_relevance=-1.2), limits) == ["sampled_relevance"]
    assert gate_reasons(_numbers(sampled=64, sampled_relevance=-9.0, sampled_loops=1.0), LIMITS) == []  # unbounded
    assert "sampled loops 0.11 (base 0.03, 64) sampled relevance -0.50" in _numbers(
        sampled=64, sampled_loops=7 / 64, sampled_loops_base=2 / 64, sampled_relevance=-0.5).summary()
    assert "sampled" not in _numbers().summary()


def test_gate_reasons_relevance_on_users_prompts():
    """Relevance on the prompts a candidate came with (a shared candidate's traffic, version_gate.traffic_probes)
    is bounded by max_user_relevance_drop (default 1 nat); not measured (None) is never a reason, and per-user
    adapters are not held to it under the capability checks ("Yes." carries less of a question than a cut base
    reply)."""
    g = Config().version_gate
    limits = GateLimits(**{**LIMITS.__dict__, "max_user_relevance_drop": g.max_user_relevance_drop})
    assert limits.max_user_relevance_drop == 1.0 and "user_relevance" not in CAPABILITY_CHECKS
    assert gate_reasons(_numbers(user_prompts=8, user_relevance=-1.0), limits) == []
    assert gate_reasons(_numbers(user_prompts=8, user_relevance=-1.3), limits) == ["user_relevance"]
    assert gate_reasons(_numbers(user_prompts=8, user_relevance=-1.3), limits, CAPABILITY_CHECKS) == []
    assert gate_reasons(_numbers(user_prompts=8, user_relevance=None), limits) == []
    both = _numbers(user_prompts=8, user_loops=3 / 8, user_relevance=-2.0)
    assert gate_reasons(both, limits) == ["user_loops", "user_relevance"]
    assert "user relevance -2.00" in both.summary() and "user relevance" not in _numbers().summary()


def test_loop_detector_on_what_the_benchmark_served():
    looping = ["The Pyramids of Egypt: The Pyramids of Egypt: The pyramids of the Pharaohs. The pyramids of the "
               "Pharaohs. The Great Pyramid of Giza. The Great Pyramid of Giza.",
               "Boil an egg:  Boil an egg:  Boil an egg:  Boil an egg:",
               "1. Eat well\n2. Sleep well every night\n3. Sleep well every night"]
    fine = ["The internet is a magical world of endless possibilities. Everywhere you look, you see a digital map.",
            "1. Keep a regular schedule.\n2. Avoid screens before bed.\n3. Keep your bedroom cool.",
            "It's a dog's life: it's not a cat's."]
    assert [is_degenerate(t) for t in looping] == [True, True, True]
    assert [is_degenerate(t) for t in fine] == [False, False, False]
    assert loop_rate(looping + fine) == 0.5 and loop_rate([]) == 0.0


def test_a_run_of_one_emoji_is_a_loop_and_a_few_emojis_are_a_style():
    # what per-user "more emojis" adapters served in the dev runs, which the word n-grams did not see
    looping = ["Dear friends,\n\nBabies, you are the most adorable babies out there! 🐩🐩🐩🐩🐩🐩🐩🐩🐩🐩",
               "🌱🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍🌍", "🎉 🎉 🎉 🎉 🎉", "❤️❤️❤️❤️❤️"]
    fine = ["Happy birthday! 🎉🎉🎉 Have a great day 🎂", "🚀🚀🚀🚀 to the moon", "🌱🌿🌍🌽🌵🌳🌱🌸🌷",
            "| a | b |\n|-----|-----|", "Wow!!!!!!!!"]
    assert [is_degenerate(t) for t in looping] == [True] * 4
    assert [is_degenerate(t) for t in fine] == [False] * 5


def test_config_gate_on_by_default_in_every_shipped_config_and_can_be_turned_off():
    cfg = Config()
    assert cfg.version_gate.enabled and cfg.version_gate.max_kl_accepted < cfg.version_gate.max_kl_base
    assert not Config.load(overrides=["version_gate.enabled=false"]).version_gate.enabled
    root = Path(__file__).resolve().parents[2]
    for name in ("local.yaml", "gpu.yaml"):  # make run's config and the GPU one
        assert Config.load(root / "cluster" / name).version_gate.enabled, name


# ---- per-version feedback rates ------------------------------------------------------------------------------------


def test_rate_kind_and_per_version_rates_add_up():
    assert rate_kind(True, "complaint") == rate_kind(True, "correction") == rate_kind(True, "rephrase") == "complaint"
    assert rate_kind(True, "positive") == "positive"
    assert rate_kind(False, "new_topic") == rate_kind(None, None) == "none"
    fb = VersionFeedback()
    for v, k in [(1, "complaint"), (1, "none"), (1, "positive"), (1, "complaint"), (2, "none"), (None, "none")]:
        fb.add(v, k)
    rates = fb.rates()
    assert rates[1]["turns"] == 4 and rates[1]["complaint"] == 0.5 and rates[1]["positive"] == 0.25
    assert rates[2]["counts"] == {"complaint": 0, "positive": 0, "none": 1} and rates[-1]["turns"] == 1
    assert all(sum(r[k] for k in RATE_KINDS) == pytest.approx(1.0) for r in rates.values())


def test_queue_counts_receptions_per_version_once_and_rejected_turns_keep_the_sum():
    q = TurnQueue(capacity=100, scored_capacity=100, lease_timeout_s=60)
    q.put([TurnRef(f"t{i}", "u", None) for i in range(6)])
    lease = q.lease(6)
    receptions = [(1, "complaint"), (1, "none"), (2, "positive"), (2, "complaint"), (2, "complaint"), (2, "none")]
    assert q.complete(lease.lease_id, lease.turns[:4], not_feedback=["t4", "t5"], receptions=receptions)
    assert not q.complete(lease.lease_id, lease.turns[:4], receptions=receptions)  # a late completion counts nothing
    s = q.stats()
    per_version = s["feedback_by_version"]
    assert per_version[1]["turns"] == 2 and per_version[2]["turns"] == 4  # = the turns each version produced
    assert sum(r["turns"] for r in per_version.values()) == s["captured"]
    q.ack_trained([t.turn_id for t in q.take_scored(4)])
    assert q.reject_trained(3) == 3
    s = q.stats()
    assert s["trained"] == 1 and s["dropped"]["rejected"] == 3
    assert s["captured"] == s["trained"] + s["dropped_total"] + s["pending"] + s["leased"] + s["scored"] + s["training"]
    assert q.reject_trained(5) == 1  # never more than were trained


# ---- registry: candidates, decisions, monotonic numbers ------------------------------------------------------------


def _pub(v: int, adapter_id: str = "base") -> PublishedWeights:
    return PublishedWeights(PolicyVersion(adapter_id=adapter_id, version=v, step=v), f"ref{v}")


def test_registry_serves_only_accepted_versions():
    r = VersionRegistry(keep_versions=2, gated=True)
    assert r.publish(_pub(1)) and r.latest_version() == -1 and r.latest() is None
    assert r.candidate().version.version == 1 and r.decision(1) == "candidate"
    assert r.accept(1, {"kl_accepted": 0.0}) and r.latest_version() == 1 and r.candidate() is None
    assert r.publish(_pub(2)) and r.reject(2, "kl_accepted", {"kl_accepted": 3.0})
    assert r.latest_version() == 1 and r.decision(2) == "rejected" and r.highest_version() == 2
    assert not r.publish(_pub(2)) and not r.publish(_pub(1))  # a number is never reused
    assert r.publish(_pub(3)) and r.publish(_pub(4)) and r.decision(3) == "superseded"
    assert not r.accept(3) and r.accept(4)
    states = {v["version"]: (v["state"], v["current"]) for v in r.versions()}
    assert states == {1: ("accepted", False), 2: ("rejected", False), 3: ("superseded", False), 4: ("accepted", True)}
    assert r.versions()[1]["numbers"] == {"kl_accepted": 3.0} and r.versions()[1]["reason"] == "kl_accepted"


def test_registry_ungated_behaves_as_before():
    r = VersionRegistry(keep_versions=2)
    assert r.publish(_pub(1)) and r.latest_version() == 1 and r.candidate() is None and r.decision(1) == "accepted"
    assert not r.publish(_pub(1)) and r.publish(_pub(3)) and r.latest().ref == "ref3"


# ---- learner rollback bookkeeping ----------------------------------------------------------------------------------


def test_version_guard_decisions():
    g = VersionGuard(Snapshot(0, {"w": 0}, 0))
    g.on_publish(Snapshot(1, {"w": 1}, 4))
    assert g.on_decision("candidate") is None and g.pending is not None
    assert g.on_decision("accepted") is None and g.accepted.version == 1 and g.pending is None
    g.on_publish(Snapshot(2, {"w": 2}, 8))
    target = g.on_decision("rejected")
    assert target is g.accepted and target.version == 1 and g.pending is None and g.rejected_versions == [2]
    assert g.on_decision("rejected") is None  # nothing pending


def test_recent_prompts_keep_the_latest_distinct_contexts():
    """What a candidate goes to the gate with: the latest N distinct prompts trained on (each turn's context),
    oldest first; a prompt seen again moves to the end; none kept (None) without room or turns."""
    from types import SimpleNamespace

    def turns(*questions):
        return [SimpleNamespace(context=[{"role": "user", "content": q}]) for q in questions]

    recent = RecentPrompts(3)
    assert recent.latest() is None
    recent.add(turns("a", "b", "a", "c"))
    assert [m[0]["content"] for m in recent.latest()] == ["b", "a", "c"]
    recent.add(turns("d", "b"))
    assert [m[0]["content"] for m in recent.latest()] == ["c", "d", "b"]
    off = RecentPrompts(0)
    off.add(turns("a"))
    assert off.latest() is None
    follow_up = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                 {"role": "assistant", "content": "A."}, {"role": "user", "content": "No, use a list."}]
    openings = RecentPrompts(3, openings=True)
    openings.add([SimpleNamespace(context=follow_up), *turns("a")])
    assert openings.latest() == [follow_up[:2], [{"role": "user", "content": "a"}]]


def test_cpu_state_is_a_deep_copy_optimizer_included():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    snap = cpu_state({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1})
    before = snap["model"]["weight"].clone(), snap["optimizer"]["state"][0]["exp_avg"].clone()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    assert torch.equal(snap["model"]["weight"], before[0])
    assert torch.equal(snap["optimizer"]["state"][0]["exp_avg"], before[1])
    model.load_state_dict(snap["model"])
    opt.load_state_dict(cpu_state(snap["optimizer"]))
    assert torch.equal(model.weight, before[0])



@pytest.mark.parametrize("where", ["disk", "memory"])
def test_snapshot_store_round_trips_and_keeps_only_the_live_snapshots(tmp_path, where):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    store = SnapshotStore(str(tmp_path / "rank0") if where == "disk" else None)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    snaps = [Snapshot(v, store.save(state, f"v{v}"), 4 * v) for v in range(3)]
    before = model.weight.detach().clone()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # moves the live weights and Adam state: no snapshot may move with them
    back = store.load(snaps[1].state)
    assert torch.equal(back["model"]["weight"], before) and back["step"] == 1
    model.load_state_dict(back["model"])
    opt.load_state_dict(back["optimizer"])
    assert torch.equal(model.weight, before)
    store.keep_only(snaps[0], None, snaps[2])
    if where == "disk":
        assert sorted(f.name for f in (tmp_path / "rank0").glob("*.pt")) == ["v0.pt", "v2.pt"]
        assert SnapshotStore(str(tmp_path / "rank0")) and not list((tmp_path / "rank0").glob("*.pt"))  # restart


# ---- registry rollback and the admin API ---------------------------------------------------------------------------


def test_registry_rollback_serves_an_earlier_accepted_version_and_tells_the_learner():
    r = VersionRegistry(keep_versions=2, gated=True)
    for v in (1, 2):
        r.publish(_pub(v))
        r.accept(v)
    r.publish(_pub(3))  # undecided candidate
    assert not r.rollback(7)["ok"] and r.latest_version() == 2
    assert r.rollback(1) == {"ok": True, "version": 1}
    assert r.latest_version() == 1 and r.latest().ref == "ref1" and r.decision(3) == "superseded"
    assert r.learner_news(None) == {"decision": None, "rollback": 1}
    assert r.learner_news(None)["rollback"] is None  # taken once
    ann = user_adapter_id("ann")  # a user's adapter: the per-user learner takes every user's rollback in one call
    for v in (1, 2):
        r.publish(_pub(v, ann))
        r.accept(v, adapter_id=ann)
    assert r.rollback(1, ann)["ok"] and r.latest_version(ann) == 1 and r.latest_version() == 1
    assert r.take_user_rollbacks() == {ann: 1} and r.take_user_rollbacks() == {}
    assert [v["version"] for v in r.versions() if v["current"]] == [1]
    r.publish(_pub(4))
    r.accept(4)
    assert r.latest_version() == 4  # a newly accepted version is served again


class _FakeBackend:
    def __init__(self):
        self.paused, self.rolled_back = False, []

    async def versions(self, adapter_id="base"):
        return [{"version": 1, "state": "accepted", "current": True, "numbers": {"kl_accepted": 0.01},
                 "adapter": adapter_id}]

    async def rollback(self, version, adapter_id="base"):
        self.rolled_back.append((adapter_id, version))
        return {"ok": version == 1, "version": version, "error": "not held"}

    async def set_paused(self, paused):
        self.paused = paused
        return paused

    async def learner(self):
        return {"paused": self.paused, "progress": {"step": 3}}


@pytest.fixture
def admin_client(monkeypatch):
    from fastapi.testclient import TestClient

    from hsd_ray.loop.admin import admin_api, configure

    backend = _FakeBackend()
    configure("s3cret", backend)
    with TestClient(admin_api) as client:
        yield client, backend
    configure(None, None)


def test_admin_api_needs_the_key(admin_client):
    client, backend = admin_client
    for method, path in [("get", "/versions"), ("post", "/rollback"), ("post", "/pause"), ("post", "/resume"),
                         ("get", "/learner"), ("get", "/users/ann/versions"), ("post", "/users/ann/rollback")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = getattr(client, method)(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["message"]
    assert backend.rolled_back == [] and not backend.paused


def test_admin_api_with_the_key(admin_client):
    client, backend = admin_client
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/versions", headers=auth).json()["data"][0]["current"]
    assert client.post("/pause", headers=auth).json() == {"paused": True} and backend.paused
    assert client.get("/learner", headers=auth).json()["paused"]
    assert client.post("/resume", headers=auth).json() == {"paused": False} and not backend.paused
    assert client.post("/rollback", json={"version": 1}, headers=auth).json()["ok"]
    bad = client.post("/rollback", json={"version": 5}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "version_not_available"
    assert client.post("/rollback", json={}, headers=auth).json()["error"]["param"] == "version"
    ann = user_adapter_id("ann")  # a user's adapter: the same routes under /users/<user>
    assert client.get("/users/ann/versions", headers=auth).json()["data"][0]["adapter"] == ann
    assert client.post("/users/ann/rollback", json={"version": 1}, headers=auth).json() == {
        "user": "ann", "adapter": ann, "ok": True, "version": 1, "error": "not held"}
    assert client.post("/users/ann/rollback", json={"version": 5}, headers=auth).status_code == 400
    assert backend.rolled_back == [("base", 1), ("base", 5), (ann, 1), (ann, 5)]


def test_admin_api_without_a_configured_key_is_disabled(monkeypatch):
    from hsd_ray.loop.admin import ADMIN_KEY_ENV, check_key, resolve_admin_key
    from hsd_ray.loop.openai_api import APIError

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    assert resolve_admin_key(None) is None
    with pytest.raises(APIError) as e:
        check_key(None, "Bearer anything")
    assert e.value.status_code == 401 and e.value.code == "admin_disabled"
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-env")
    assert resolve_admin_key(None) == "from-env" and resolve_admin_key("cfg") == "cfg"


def test_registry_history_survives_a_restart(tmp_path):
    path = tmp_path / "run" / "versions.json"
    r = VersionRegistry(gated=True, history_path=str(path))
    r.publish(_pub(1))
    r.accept(1, {"kl_accepted": 0.01})
    r.publish(_pub(2))
    r.reject(2, "perplexity", {"ppl": 99.0})
    r.publish(_pub(3))  # undecided when the job stops
    again = VersionRegistry(gated=True, history_path=str(path))
    states = {v["version"]: (v["state"], v["reason"], v["numbers"]) for v in again.versions()}
    assert states == {1: ("accepted", None, {"kl_accepted": 0.01}), 2: ("rejected", "perplexity", {"ppl": 99.0}),
                      3: ("superseded", None, None)}
    assert again.highest_version() == 3 and not again.publish(_pub(3)) and again.publish(_pub(4))  # never reused
    assert again.latest_version() == -1  # weights are not kept: nothing is served until a candidate is accepted
    path.write_text("{not json")
    assert VersionRegistry(gated=True, history_path=str(path)).versions() == []  # unreadable: a new history


def test_summary_line_shows_rejections_and_per_version_rates():
    from hsd_ray.loop.job import _summary_line

    fb = VersionFeedback()
    for v, k in [(0, "complaint"), (0, "none"), (1, "positive"), (1, "none")]:
        fb.add(v, k)
    s = {"queue": {"pending": 0, "scored": 0, "dropped_total": 0, "trained": 4},
         "capture": {"recorded": 5, "captured": 4, "unmatched": 0, "expired": 0},
         "learner": {"step": 2, "loss": 0.5}, "published_version": 1, "versions_rejected": 1,
         "feedback_by_version": fb.rates()}
    line = _summary_line(s, 0.1, 10.0)
    assert "rejected 1" in line
    assert "feedback v0 n2 complaint 0.50 thanks 0.00 none 0.50; v1 n2 complaint 0.00 thanks 0.50 none 0.50" in line
    assert "user adapters" not in line  # global mode: no per-user adapter has versions
    s["user_adapters"] = {"adapters": 2, "accepted": 5, "rejected": 1, "candidate": 1, "superseded": 0}
    line = _summary_line(s, 0.1, 10.0)
    assert "rejected 1 | user adapters 2: versions 5 accepted 1 rejected 1 pending | loss 0.5000" in line


def test_registry_counts_user_adapter_versions_by_state():
    from hsd_ray.core.weights import user_adapter_id

    reg = VersionRegistry(gated=True, gate_users=True)
    assert reg.user_version_counts() == {"adapters": 0, "accepted": 0, "rejected": 0, "candidate": 0, "superseded": 0}
    alice, bob = user_adapter_id("alice"), user_adapter_id("bob")
    assert reg.publish(_pub(1, alice)) and reg.accept(1, adapter_id=alice)
    assert reg.publish(_pub(2, alice)) and reg.publish(_pub(1, bob)) and reg.reject(1, "perplexity", adapter_id=bob)
    assert reg.publish(_pub(3))  # the shared policy's versions are not counted
    assert reg.user_version_counts() == {"adapters": 2, "accepted": 1, "rejected": 1, "candidate": 1, "superseded": 0}


def test_gate_cost_is_gate_seconds_per_version_over_learner_seconds_per_version():
    versions = [{"version": 1, "numbers": {"seconds": 10.0}}, {"version": 2, "numbers": None},
                {"version": 3, "numbers": {"seconds": 20.0}}, {"version": 4}]
    # 60 s over 12 steps = 5 s a step; a version every 4 steps = 20 s; the gate's 15 s a version = 0.75
    assert gate_cost(versions, train_s=60.0, steps=12, every_steps=4) == {
        "versions_evaluated": 2, "gate_s_per_version": 15.0, "learner_s_per_version": 20.0, "ratio": 0.75}
    assert gate_cost(versions[1:2], 60.0, 12, 4) is None  # nothing evaluated yet
    assert gate_cost(versions, 0.0, 0, 4) is None  # nothing trained yet
