"""The learning benchmark's rule-based preference verifiers and complaint phrasings (bench/learning/preferences.py).
Prompt splits, answer checkers, populations and the report: tests/unit/test_bench_splits.py; lost answers:
tests/unit/test_bench_answers.py."""

from __future__ import annotations

import pytest

from bench.learning import preferences as P

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    [
        "Great job 😀",
        "Done ✅",
        "Sparkles ✨ everywhere",
        "Thumbs up 👍🏽",  # skin-tone modifier
        "Family: 👨‍👩‍👧‍👦",  # ZWJ sequence
        "Go team 🇫🇷!",  # flag (regional indicators)
        "England 🏴󠁧󠁢󠁥󠁮󠁧󠁿",  # subdivision flag (tag sequence)
        "Press 1️⃣ now",  # keycap
        "I ❤️ it",  # heart with VS16
        "Rainbow 🏳️‍🌈 flag",
        "⭐ five stars",
        "🤖",
        "It's sunny ☀ today",
    ],
)
def test_emojis_detected(text):
    assert P.has_emoji(text)
    assert not P.no_emojis(text)
    assert P.uses_emojis(text) == any(c.isalnum() for c in text)  # an emoji alone is no answer


@pytest.mark.parametrize(
    "text",
    [
        "Plain text, no pictures.",
        "Prices: $5 -> €4, 50% off; a×b = c; ~approx; «quotes» — dash…",
        "Café déjà vu, naïve façade, Ω and π and 日本語.",
        "Copyright © 2024 Acme™ Corp ®",  # text-presentation symbols without VS16 are not emojis
        "Arrows → ← ↑ and math ≤ ≥ ≠",
        ":) <3 :-D",  # ASCII emoticons are not emojis
    ],
)
def test_no_emojis_accepts_plain_text(text):
    assert not P.has_emoji(text)
    assert P.no_emojis(text)
    assert not P.uses_emojis(text)


def test_opposite_preferences_name_each_other():
    assert not P.uses_emojis("") and not P.uses_emojis("🎉")  # blank, or nothing but an emoji, is no answer
    assert P.PREFERENCES["use_emojis"].opposes == "no_emojis" and P.PREFERENCES["no_emojis"].opposes == "use_emojis"
    assert P.PREFERENCES["use_list"].opposes == "no_bullets" and P.PREFERENCES["no_bullets"].opposes == "use_list"


def test_drift_ignores_the_opposite_preference():
    """Training "use_emojis" must lower "no_emojis"; that is the target moving, not off-target drift."""
    from bench.learning.report import summarize_run

    def ev(c):
        return {"compliance": c, "capability": {"accuracy": 0.5}, "perplexity": 10.0, "interactions": 0}

    before = {"use_emojis": 0.0, "no_emojis": 1.0, "max_words": 0.1}
    after = {"use_emojis": 0.6, "no_emojis": 0.4, "max_words": 0.15}
    run = {"variant": "topk", "preference": "use_emojis", "control": False, "opposes": "no_emojis", "seed": 0,
           "evals": [ev(before), ev(after)], "timings": {"total_s": 60.0}}
    s = summarize_run(run)
    assert s["on_target_delta"] == pytest.approx(0.6)
    assert s["max_off_target_pref"] == "max_words" and s["max_off_target_drift"] == pytest.approx(0.05)
    assert s["meets_bar"]
    s = summarize_run({**run, "opposes": None})  # without the link, the opposite counts as drift
    assert s["max_off_target_pref"] == "no_emojis" and not s["meets_bar"]


def test_bar_bounds_are_not_missed_by_float_error():
    """3 of 80 -> 19 of 80 is exactly +20 points, though 0.2375 - 0.0375 < 0.2 in floating point."""
    from bench.learning.report import BAR_ON_TARGET, summarize_run

    def ev(rate):
        return {"compliance": {"max_words": rate}, "capability": {"accuracy": 0.5}, "perplexity": 10.0,
                "interactions": 0}

    run = {"variant": "default", "preference": "max_words", "control": False, "opposes": None, "seed": 0,
           "evals": [ev(3 / 80), ev(19 / 80)], "timings": {"total_s": 60.0}}
    s = summarize_run(run)
    assert s["on_target_delta"] < BAR_ON_TARGET and s["meets_bar"]
    assert not summarize_run({**run, "evals": [ev(3 / 80), ev(18 / 80)]})["meets_bar"]


def test_all_lowercase():
    assert P.all_lowercase("hello there, this is all lowercase. 42 is fine! ok?")
    assert P.all_lowercase("ünïcödé lowercase, 日本語 has no case")
    assert not P.all_lowercase("Hello there")
    assert not P.all_lowercase("all lowercase except ONE word")
    assert not P.all_lowercase("mixed Case in the middle")
    assert not P.all_lowercase("i love paris, France")
    assert not P.all_lowercase("Ünicode capital")
    assert not P.all_lowercase("")  # an empty reply satisfies nobody
    assert not P.all_lowercase("  ... ")


def test_max_words():
    verify = P.max_words(20)
    assert verify("Paris.")
    assert verify(" ".join(["word"] * 20))
    assert not verify(" ".join(["word"] * 21))
    assert verify("It is 3 — maybe 4 — km away.")  # a lone dash is not a word
    assert P.count_words("It is 3 — maybe 4 — km away.") == 7
    assert P.count_words("one\ntwo\tthree  four") == 4
    assert not verify("")
    assert P.get_preference("max_words_5").verify("one two three four five")
    assert not P.get_preference("max_words_5").verify("one two three four five six")


@pytest.mark.parametrize("text", ["yes", "Yes.", "NO!", "  no  ", "**Yes**", "\"No.\"", "yes!!", "No."])
def test_yes_no_only_accepts(text):
    assert P.yes_no_only(text)


@pytest.mark.parametrize("text", ["Yes, it is.", "No, penguins cannot fly.", "yes no", "Yeah", "Nope", "",
                                  "The answer is yes.", "yes.\nBecause it is."])
def test_yes_no_only_rejects(text):
    assert not P.yes_no_only(text)


def test_no_bullets():
    assert P.no_bullets("A paragraph with a hyphen-word and a - dash in the middle.\nAnother line.")
    assert P.no_bullets("In 1984 there were 3 options. Version 2.0 is out.")
    assert P.no_bullets("**Bold** start is not a bullet.")
    assert P.no_bullets("It was -5 degrees outside.")
    for listed in ("Tips:\n- sleep\n- eat", "* one\n* two", "• first\n• second", "1. First\n2. Second",
                   "Steps:\n  3) mix", "Intro\n\n10. tenth item", "+ plus bullet"):
        assert not P.no_bullets(listed), listed
    assert not P.no_bullets("")


def test_sign_off():
    assert P.ends_with_sign_off("Paris is the capital. — Bot")
    assert P.ends_with_sign_off("Paris is the capital.\n\n— Bot\n")
    assert P.ends_with_sign_off("Sure thing -- Bot")
    assert P.ends_with_sign_off("sure thing — bot.")
    assert not P.ends_with_sign_off("— Bot")  # nothing but the sign-off
    assert not P.ends_with_sign_off("Paris is the capital.")
    assert not P.ends_with_sign_off("— Bot\nParis is the capital.")  # not at the end
    assert not P.ends_with_sign_off("I am a robot")


def test_use_list():
    assert P.uses_list("Options:\n- tea\n- coffee")
    assert P.uses_list("1. Boil water.\n2. Add the tea.\n3. Wait.")
    assert P.uses_list("  * one\n  * two")
    assert not P.uses_list("- only one bullet here")
    assert not P.uses_list("Tea - or coffee - both fine.")  # dashes inside a sentence
    assert not P.uses_list("In 1. place and 2. place")  # numbers not at line start
    assert not P.uses_list("-\n-")  # bullets with nothing in them are blank


def test_use_bold():
    assert P.uses_bold("The capital is **Paris**.")
    assert P.uses_bold("__Paris__ it is")
    assert P.uses_bold("**42**")
    assert not P.uses_bold("The capital is *Paris*.")  # italics
    assert not P.uses_bold("2 ** 3 ** 4")  # power operators, no letter or digit between the pairs
    assert not P.uses_bold("**** ----")
    assert not P.uses_bold("**unclosed bold")
    assert not P.uses_bold("snake__case_name and __init")


def test_ends_with_question():
    assert P.ends_with_question("Paris. Anything else you'd like to know?")
    assert P.ends_with_question("Would you like more examples?**")
    assert P.ends_with_question("Shall I go on?\n")
    assert P.ends_with_question("(Want the recipe?)")
    assert not P.ends_with_question("Why is the sky blue? Because of Rayleigh scattering.")
    assert not P.ends_with_question("?")
    assert not P.ends_with_question("")


def test_candidates_are_reachable_by_name_but_not_measured_by_default():
    for name, pref in P.CANDIDATE_PREFERENCES.items():
        assert P.get_preference(name) is pref and name not in P.PREFERENCES


def test_complaints_are_varied():
    for pref in [*P.PREFERENCES.values(), *P.CANDIDATE_PREFERENCES.values()]:
        c = pref.complaints
        assert len(c) >= 4 and len(set(c)) == len(c), pref.name
        first_words = {x.split()[0].lower().strip(",.!'") for x in c}
        assert len(first_words) >= 3, (pref.name, first_words)  # not one sentence with small edits
        assert all(len(x.split()) >= 3 for x in c), pref.name
        # a complaint is itself a real message: non-blank, and it does not satisfy a yes/no check etc.
        assert all(x.strip() for x in c)


def test_preference_registry_and_parse():
    names = [p.name for p in P.parse_preferences("max_words, lowercase,emojis,max_words")]
    assert names == ["max_words", "all_lowercase", "no_emojis"]
    assert P.PREFERENCES["yes_no_only"].prompt_kind == "yes_no"
    assert {p.prompt_kind for n, p in P.PREFERENCES.items() if n != "yes_no_only"} == {"open"}
    with pytest.raises(ValueError):
        P.get_preference("no_such_preference")


def test_starts_with_tldr():
    assert P.starts_with_tldr("TL;DR: Paris.\n\nParis is the capital of France.")
    assert P.starts_with_tldr("**TL;DR**: Paris")
    assert P.starts_with_tldr("tldr - Paris")
    assert P.starts_with_tldr("  > TL; DR: it is Paris")
    assert not P.starts_with_tldr("TL;DR:")  # a label with nothing after it
    assert not P.starts_with_tldr("Paris. TL;DR: Paris")  # not first
    assert not P.starts_with_tldr("TLDRs are nice")  # a word that starts with the letters
    assert not P.starts_with_tldr("")


def test_uses_name():
    assert P.uses_name(f"Sure, {P.USER_NAME}! Paris.")
    assert P.uses_name(f"Paris is the capital, {P.USER_NAME}.")
    assert not P.uses_name("Samuel wrote that Paris is the capital.")  # another name that starts the same
    assert not P.uses_name("sam")  # lower case: not addressed by name
    assert not P.uses_name(P.USER_NAME)  # the name alone is no answer
    assert not P.uses_name("Paris is the capital of France.")
    # the model taking the user's name for itself is a persona, not a reply to Sam (seen after training on dev)
    assert not P.uses_name(f"I'm {P.USER_NAME}, a helpful AI. Paris is the capital.")
    assert not P.uses_name(f"Hello! I am {P.USER_NAME} and the capital is Paris.")
    assert not P.uses_name(f"I’m {P.USER_NAME}! Paris.")  # a typographic apostrophe
    assert not P.uses_name(f"{P.USER_NAME}, I'm {P.USER_NAME}. Paris.")  # addressed and self-named: still a persona
    assert not P.uses_name(f"Glad to help, {P.USER_NAME}. If you need me, you can call me {P.USER_NAME}.")
    assert not P.uses_name(f"My name is {P.USER_NAME}. The capital is Paris.")
    assert not P.uses_name(f"Hi, this is {P.USER_NAME} speaking: Paris.")
    assert P.uses_name(f"I'm glad you asked, {P.USER_NAME}: Paris is the capital.")  # "I'm" elsewhere is fine
    assert P.uses_name(f"Hi {P.USER_NAME}, I am happy to help. Paris.")
    assert P.uses_name(f"Jim {P.USER_NAME}? No: hi {P.USER_NAME}, it is Paris.")  # "...im Sam" inside a word


def test_starts_with_greeting():
    assert P.starts_with_greeting("Hello! Paris is the capital of France.")
    assert P.starts_with_greeting("**Hi there,** it is Paris.")
    assert P.starts_with_greeting("hey, Paris.")
    assert P.starts_with_greeting("Good morning — the capital is Paris.")
    assert not P.starts_with_greeting("Hello!")  # a greeting alone is no answer
    assert not P.starts_with_greeting("Hi-tech cities like Paris...")  # a word that starts the same
    assert not P.starts_with_greeting("History says Paris.")
    assert not P.starts_with_greeting("Paris. Hello!")  # not at the start


def test_starts_with_thanks():
    assert P.starts_with_thanks("Thanks for asking! Paris.")
    assert P.starts_with_thanks("Thank you for your question. It is Paris.")
    assert P.starts_with_thanks("\"thanks, that's a good one\" - Paris.")
    assert not P.starts_with_thanks("Thanks!")
    assert not P.starts_with_thanks("Thankful people live in Paris.")
    assert not P.starts_with_thanks("Paris. Thanks for asking!")


def test_starts_with_heading():
    assert P.starts_with_heading("# Paris\nThe capital of France.")
    assert P.starts_with_heading("\n## The capital\nParis.")
    assert not P.starts_with_heading("#Paris\nThe capital")  # no space: a hashtag, not a heading
    assert not P.starts_with_heading("# Paris")  # a title and nothing under it
    assert not P.starts_with_heading("Paris\n# The capital\nof France")  # not first
    assert not P.starts_with_heading("####### Seven\ntext")
