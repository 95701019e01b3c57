"""The learning benchmark's reply-quality checks (bench/learning/quality.py): the pure parts, exactly."""

from __future__ import annotations

import pytest

from bench.learning import quality as Q

pytestmark = pytest.mark.unit


def test_loops_are_degenerate():
    assert Q.is_degenerate("It's all about giving, right? It's all about taking, right? It's all about the")
    assert Q.is_degenerate("1. Recycling is a waste of resources.\n2. Recycling is a waste of resources.")
    assert Q.is_degenerate("the end the end the end the end")  # "the end the" three times


def test_ordinary_replies_are_not_degenerate():
    assert not Q.is_degenerate("The moon orbits Earth about once a month.")
    assert not Q.is_degenerate("Bees make honey. Bees also pollinate flowers. Bees live in hives.")  # 'bees' x3, no 3-gram
    assert not Q.is_degenerate("- ok\n- ok")  # short lines repeat legitimately
    assert not Q.is_degenerate("")


def test_mismatched_question_shares_no_topic_word():
    qs = ["Tell me about volunteering.", "Why is volunteering important?", "How would you summarize the moon?",
          "Write a cheerful social media post about the moon.", "What are some facts about honey bees?"]
    other = Q.mismatched(qs + qs)  # repeated samples of the same prompts
    assert set(other) == set(qs)
    assert other["Tell me about volunteering."] == "How would you summarize the moon?"
    assert other["How would you summarize the moon?"] == "What are some facts about honey bees?"
    for q, o in other.items():
        assert not Q.topic_words(q) & Q.topic_words(o), (q, o)


def test_a_question_with_no_other_topic_has_no_control():
    assert Q.mismatched(["Tell me about the moon.", "Why does the moon shine?"]) == {}


def test_summarize():
    replies = [{"text": "a b c a b c a b c"}, {"text": "Paris is the capital."}]
    s = Q.summarize(replies, pmi_own=[5.0, 1.0], pmi_other=[1.0, 2.0])
    assert s == {"n": 2, "loops": 0.5, "abusive": 0.0, "on_topic": 0.5, "pmi_own": 3.0, "pmi_other": 1.5,
                 "mean_words": 6.5}


def test_good_compliance_is_compliant_and_neither_looping_nor_off_topic_nor_abusive():
    replies = [{"text": "Paris is the capital."},  # compliant, on topic: good
               {"text": "Worried about the thing?"},  # compliant, off topic (own PMI below the control's)
               {"text": "a b c a b c a b c"},  # compliant, on topic, loops
               {"text": " ".join(["word"] * 25)},  # on topic, too long
               {"text": "Dumbass, Paris is the capital."}]  # compliant, on topic, abusive
    s = Q.summarize(replies, pmi_own=[5.0, 0.5, 4.0, 6.0, 5.0], pmi_other=[1.0] * 5,
                    verify=lambda text: len(text.split()) <= 20)
    assert s["compliance"] == 0.8 and s["good_compliance"] == 0.2 and s["abusive"] == 0.2
    assert "compliance" not in Q.summarize(replies, [1.0] * 5, [0.0] * 5)  # no preference: not measured


def test_open_verify_is_the_preference_verifier_for_open_prompts_only():
    assert Q.open_verify("max_words")("Short.") and not Q.open_verify("max_words")(" ".join(["w"] * 21))
    assert Q.open_verify("yes_no_only") is None  # yes/no has its own good: format and the right answer
    assert Q.open_verify(None) is None


def test_truncate_words():
    assert Q.truncate_words("The moon  orbits\nEarth.", 2) == "The moon"
    assert Q.truncate_words("The moon  orbits\nEarth.", 3) == "The moon  orbits"
    assert Q.truncate_words("Bees:\n\n- make honey", 9) == "Bees:\n\n- make honey"  # shorter: unchanged
    assert Q.truncate_words("x y", 0) == ""


class _TopicScorer:
    """PMI stand-in: a reply is about a question when they share a topic word (what the base model's PMI reads)."""

    def pmi(self, pairs):
        return [1.0 if Q.topic_words(q) & set(Q.words(r)) else 0.0 for r, q in pairs]


def test_personal_rows_read_each_users_adapter_on_its_own_preference():
    def target(texts):
        return {"replies": [{"kind": "open", "prompt": q, "sample": 0, "text": t} for q, t in texts]
                + [{"kind": "yes_no", "prompt": "Is ice cold?", "sample": 0, "text": "Yes."}]}

    qs = ["Tell me about the moon.", "What are some facts about honey bees?"]
    long = "The moon orbits the Earth " + "and it is a very interesting thing to look at " * 3
    base = target([(qs[0], long), (qs[1], "Bees " + "make honey and live in hives " * 4)])
    learned = target([(qs[0], "The moon orbits Earth."), (qs[1], "Worried about the thing?")])
    result = {"benchmark": "personal", "runs": [{"seed": 0, "evals": [
        {"interactions_per_user": 0, "targets": {"base": base, "max_words": base, "yes_no_only": base}},
        {"interactions_per_user": 45, "targets": {"base": base, "max_words": learned, "yes_no_only": learned}}]}]}
    (row,) = Q.quality_of_personal(result, _TopicScorer())  # yes/no has its own good; the base is no user
    assert row["label"] == "max_words adapter s0" and [e["interactions"] for e in row["evals"]] == [0, 45]
    first, last = row["evals"]
    assert (first["compliance"], last["compliance"]) == (0.0, 1.0)
    assert last["good_compliance"] == 0.5  # "Worried about the thing?" is short and about nothing it was asked
