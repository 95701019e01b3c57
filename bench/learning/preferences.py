"""Hidden user preferences of the learning benchmark: a rule-based verifier and natural complaints for each.

Driven by `bench.learning.users` (a simulated user complains when `verify(reply)` is False) and
`bench.learning.evaluate` (compliance = fraction of held-out replies with `verify(reply)` True). Verifiers are pure
functions of the reply text; no LLM judge. An empty (blank) reply satisfies no preference: a model that learned to say
nothing must not score as compliant.

Each preference names the prompt pool it is trained and measured on (`prompt_kind`): "open" questions for all of them
except `yes_no_only`, which only makes sense for yes/no questions ("yes_no").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

SIGN_OFF = "— Bot"

# ---- verifiers ------------------------------------------------------------------------------------------------------

# Code points that are emoji (pictographs, dingbats, regional-indicator flags, skin tones, keycaps, ...). Characters
# that are text by default (©, ®, ™, ↔, ...) only count when followed by the emoji presentation selector U+FE0F.
_EMOJI_RANGES = (
    (0x1F000, 0x1FAFF),  # mahjong .. symbols & pictographs ext-A (incl. flags 1F1E6-1F1FF, skin tones 1F3FB-1F3FF)
    (0x2600, 0x27BF),  # miscellaneous symbols + dingbats (☀ ✅ ✨ ❤ ✔ ...)
    (0x2B00, 0x2BFF),  # ⬅ ⬛ ⭐ ⭕ ...
    (0x231A, 0x231B), (0x2328, 0x2328), (0x23CF, 0x23CF), (0x23E9, 0x23FA),  # ⌚ ⌛ ⌨ ⏏ ⏩..⏺
    (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0), (0x25FB, 0x25FE),
    (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299),
    (0xE0020, 0xE007F),  # tag characters (subdivision flags such as England's)
)
_EMOJI_CLASS = "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in _EMOJI_RANGES)
_EMOJI_RE = re.compile(f"[{_EMOJI_CLASS}]|.\uFE0F|\u20E3|\u200D[{_EMOJI_CLASS}]", re.DOTALL)
_BULLET_RE = re.compile(r"^\s*(?:[-*+•◦‣▪●·]|\d{1,3}[.)])\s+", re.MULTILINE)
_SIGN_OFF_RE = re.compile(r"(?:-{1,2}|[–—])\s*bot[.!]?$", re.IGNORECASE)
_YES_NO = {"yes", "no"}
# Markdown bold: the delimiters hug the text (no space just inside them); `__` only outside a word (not snake__case)
_BOLD_RE = re.compile(r"\*\*(?!\s)([^*\n]+?)(?<!\s)\*\*|(?<!\w)__(?!\s)([^_\n]+?)(?<!\s)__(?!\w)")


def _blank(reply: str) -> bool:
    return not any(c.isalnum() for c in reply)


def has_emoji(text: str) -> bool:
    """True if `text` holds an emoji: a pictograph, flag, keycap, ZWJ sequence or anything with U+FE0F."""
    return _EMOJI_RE.search(text) is not None


def no_emojis(reply: str) -> bool:
    return not _blank(reply) and not has_emoji(reply)


def uses_emojis(reply: str) -> bool:
    return not _blank(reply) and has_emoji(reply)


def all_lowercase(reply: str) -> bool:
    """No uppercase letter anywhere (digits, punctuation and non-cased scripts are fine)."""
    return not _blank(reply) and not any(c.isupper() for c in reply)


def count_words(reply: str) -> int:
    """Whitespace-separated tokens that contain a letter or digit ("—" alone is not a word)."""
    return sum(1 for w in reply.split() if any(c.isalnum() for c in w))


def max_words(n: int) -> Callable[[str], bool]:
    def verify(reply: str) -> bool:
        return not _blank(reply) and count_words(reply) <= n

    verify.__name__ = f"max_words_{n}"
    return verify


def yes_no_only(reply: str) -> bool:
    """Exactly "yes" or "no", ignoring case, surrounding whitespace, punctuation and markdown emphasis."""
    core = unicodedata.normalize("NFKC", reply).strip().lower()
    core = core.strip(" \t\r\n.!?,;:*_\"'`()[]")
    return core in _YES_NO


def no_bullets(reply: str) -> bool:
    """No line starts with a bullet (-, *, +, •, ...) or a list number ("1." / "2)") followed by a space."""
    return not _blank(reply) and _BULLET_RE.search(reply) is None


def ends_with_sign_off(reply: str) -> bool:
    """The reply has content and ends with the sign-off "— Bot" (any dash or --, any case, an optional . or !)."""
    m = _SIGN_OFF_RE.search(reply.rstrip())
    return m is not None and not _blank(reply[: m.start()])


def uses_list(reply: str) -> bool:
    """At least two lines start with a bullet or a list number: the answer is laid out as a list."""
    return not _blank(reply) and len(_BULLET_RE.findall(reply)) >= 2


def uses_bold(reply: str) -> bool:
    """At least one markdown bold span (**term** or __term__) with a letter or digit in it."""
    return not _blank(reply) and any(not _blank(m.group(1) or m.group(2)) for m in _BOLD_RE.finditer(reply))


_LEAD_RE = re.compile(r"^[\s*_>#`\"'(\[]*")  # markdown emphasis, quote marks, a heading mark before the first word
_TLDR_RE = re.compile(r"tl\s*;?\s*dr\b", re.IGNORECASE)
USER_NAME = "Sam"
_NAME_RE = re.compile(rf"(?<![\w-]){USER_NAME}(?![\w-])")
# The model giving *itself* the user's name ("I'm Sam", "call me Sam"): what distilling the name taught on dev
# (bench/learning/README.md, "The teacher writes the reply"), a persona, not a reply to Sam.
_SELF_NAME_RE = re.compile(rf"(?i:\bI\s*['’]?\s*a?m|\bmy\s+name\s*(?:is|['’]s)|\bcall\s+me|\bthis\s+is)\s+"
                           rf"{USER_NAME}(?![\w-])")
_HEADING_RE = re.compile(r"^#{1,6}[ \t]+\S")


def _opens_with(pattern: re.Pattern, reply: str) -> bool:
    """The reply's first words match `pattern` and something follows them (not a bare "Hello!")."""
    lead = _LEAD_RE.sub("", reply, count=1)
    m = pattern.match(lead)
    return m is not None and not _blank(lead[m.end():])


def starts_with_tldr(reply: str) -> bool:
    """The first words are a "TL;DR" label ("TL;DR:", "**TLDR** -", "tl;dr") followed by content."""
    return _opens_with(_TLDR_RE, reply)


def uses_name(reply: str) -> bool:
    """The reply addresses the user by their name (USER_NAME, capitalised, as a word of its own: not "Samuel"), and
    never takes that name for itself ("I'm Sam", "my name is Sam", "call me Sam", "this is Sam")."""
    return (_NAME_RE.search(reply) is not None and not _blank(_NAME_RE.sub("", reply))
            and _SELF_NAME_RE.search(reply) is None)


_GREETING_RE = re.compile(r"(?i:hello|hi|hey|greetings|howdy|good\s+(?:morning|afternoon|evening|day))(?![\w-])")
_THANKS_RE = re.compile(r"(?i:thanks|thank\s+you)(?![\w-])")


def starts_with_greeting(reply: str) -> bool:
    """The reply opens with a greeting ("Hello!", "Hi there,", "Good morning —") and then answers."""
    return _opens_with(_GREETING_RE, reply)


def starts_with_thanks(reply: str) -> bool:
    """The reply opens by thanking the user ("Thanks for asking!", "Thank you for the question.") and then answers."""
    return _opens_with(_THANKS_RE, reply)


def starts_with_heading(reply: str) -> bool:
    """The reply opens with a markdown heading line ("# Title" .. "###### Title") and has content after it."""
    stripped = reply.lstrip()
    first, _, rest = stripped.partition("\n")
    return _HEADING_RE.match(first) is not None and not _blank(rest)


def ends_with_question(reply: str) -> bool:
    """The reply's last sentence is a question: it ends with "?" (closing quotes, emphasis or brackets allowed)."""
    return not _blank(reply) and reply.rstrip().rstrip("\"'*_)]»”’ ").endswith("?")


# ---- preferences ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preference:
    """A hidden preference: what the user wants, how to check it, and how the user complains when it is violated."""

    name: str
    description: str
    verify: Callable[[str], bool]
    complaints: tuple[str, ...]
    prompt_kind: str = "open"  # which prompt pool it is trained and measured on: "open" | "yes_no"
    about_length: bool = False  # satisfied by simply answering shorter (a generic drift would look like learning)
    opposes: str | None = None  # a preference this one contradicts: its change is not counted as off-target drift
    tags: tuple[str, ...] = field(default_factory=tuple)


def _max_words_pref(n: int) -> Preference:
    return Preference(
        name="max_words" if n == 20 else f"max_words_{n}",
        description=f"replies of at most {n} words",
        verify=max_words(n),
        complaints=(
            f"That's way too long. Please keep answers under {n} words.",
            "Too wordy! I just need a short answer.",
            "Can you say that in one short sentence? I don't have time to read all that.",
            f"Please be brief next time, no more than {n} words.",
            "Shorter, please. Just give me the gist.",
            "Ugh, what a wall of text. Keep it to a sentence or two.",
        ),
        about_length=True,
    )


PREFERENCES: dict[str, Preference] = {
    p.name: p
    for p in (
        Preference(
            "no_emojis",
            "no emojis anywhere in the reply",
            no_emojis,
            (
                "Please don't use emojis, they look unprofessional.",
                "No emojis please. Plain text only.",
                "Can you stop adding those little pictures? I find emojis distracting.",
                "Drop the emojis next time, just write normal text.",
                "I said no emoji. Words only, thanks.",
            ),
            opposes="use_emojis",
        ),
        Preference(
            # The non-length preference SmolLM2-135M follows in context (`python -m bench.learning.ceiling`: 0% →
            # 35% with the complaint in the online hindsight template); all_lowercase and sign_off stay near 0%.
            "use_emojis",
            "at least one emoji in the reply",
            uses_emojis,
            (
                "Add some emojis please, it makes it more fun!",
                "Where are the emojis? I love emojis in replies.",
                "Please use emojis in your answers \U0001F60A",
                "Too dry. Throw in a few emojis next time!",
                "Could you sprinkle some emojis in? Plain text feels so boring.",
            ),
            opposes="no_emojis",
        ),
        Preference(
            "all_lowercase",
            "everything in lowercase letters",
            all_lowercase,
            (
                "please write everything in lowercase, no capital letters at all.",
                "Could you answer in all lowercase? Capitals feel like shouting to me.",
                "no uppercase please. lowercase only, every single letter.",
                "I prefer replies with no capital letters, even at the start of sentences.",
                "lowercase only from now on, ok?",
            ),
        ),
        _max_words_pref(20),
        Preference(
            "yes_no_only",
            "answers a yes/no question with exactly 'yes' or 'no'",
            yes_no_only,
            (
                "Just answer yes or no.",
                "I only need a YES or a NO, nothing else.",
                "One word please: yes or no. No explanation.",
                "Skip the explanation, simply tell me yes or no.",
                "Please reply with only 'yes' or 'no' to questions like this.",
            ),
            prompt_kind="yes_no",
            about_length=True,
        ),
        Preference(
            "no_bullets",
            "no bullet points or numbered lists",
            no_bullets,
            (
                "Please don't use bullet points. Write it as normal sentences.",
                "No lists please, I want a paragraph.",
                "Stop formatting everything as a numbered list. Just write prose.",
                "Can you answer without bullets or numbering? Plain sentences are easier for me.",
                "I hate bullet lists. Flowing text next time, please.",
            ),
            opposes="use_list",
        ),
        Preference(
            "sign_off",
            f"ends with the sign-off '{SIGN_OFF}'",
            ends_with_sign_off,
            (
                f"Please always end your replies with '{SIGN_OFF}'.",
                f"You forgot to sign off. Finish every message with {SIGN_OFF}",
                f"Sign your answers with '{SIGN_OFF}' at the very end, please.",
                f"End with your signature, '{SIGN_OFF}', like we agreed.",
                f"Where's the sign-off? The last thing you write should be '{SIGN_OFF}'.",
            ),
        ),
        # Promoted from the candidates on 2026-12-05: +45 points in context with the `plain` template (dev).
        Preference(
            "use_list",
            "the answer laid out as a bulleted or numbered list",
            uses_list,
            (
                "Can you put that in a list? Bullet points are much easier for me to scan.",
                "Please answer with bullet points, not a paragraph.",
                "Break it down into a numbered list next time, please.",
                "A list would be clearer. Use bullets for the main points.",
                "I like answers as lists: one point per line with a dash in front.",
            ),
            opposes="no_bullets",
        ),
    )
}

# Candidates: defined and verifiable, but not in the measured matrix of every run until an in-context ceiling shows
# that the model can follow them (`python -m bench.learning.ceiling --preferences use_list,use_bold,ask_back
# --name candidates`; `use_list` has since been promoted).
CANDIDATE_PREFERENCES: dict[str, Preference] = {
    p.name: p
    for p in (
        Preference(
            "use_bold",
            "the key term or answer in **bold**",
            uses_bold,
            (
                "Please put the key answer in bold so I can spot it.",
                "Use **bold** for the most important words, please.",
                "Highlight the main point in bold next time.",
                "I skim a lot. Could you bold the key terms?",
                "Make the actual answer bold, with two asterisks around it.",
            ),
        ),
        Preference(
            "ask_back",
            "ends with a question back to the user",
            ends_with_question,
            (
                "End with a question for me, so I can tell you what I need next.",
                "Please finish your replies by asking me a follow-up question.",
                "Ask me something at the end to check I understood.",
                "I like it when you close with a question back to me.",
                "Finish with a question, please, so the conversation keeps going.",
            ),
        ),
        # Added 2026-12-03: copy something the complaint names to the start of the reply or anywhere in it — what a
        # 135M model does most readily in context — and none about length (`--name candidates2` on dev).
        Preference(
            "tldr_first",
            "the reply opens with a one-line 'TL;DR:' summary",
            starts_with_tldr,
            (
                "Start with a TL;DR please, I only read the first line.",
                "Give me a TL;DR at the top next time.",
                "Where's the TL;DR? Put a one-line summary first, labelled TL;DR.",
                "Please begin every answer with 'TL;DR:' and the gist in one line.",
                "I skim. Open with a TL;DR line, then the details.",
            ),
        ),
        Preference(
            "use_name",
            f"the reply addresses the user by their name, {USER_NAME}",
            uses_name,
            (
                f"You can call me {USER_NAME}, by the way. Please use my name.",
                f"My name is {USER_NAME}. I like it when you address me by name.",
                f"It's {USER_NAME} here! Say my name when you answer, it feels more personal.",
                f"Please address me as {USER_NAME} in your replies.",
                f"Hey, I'm {USER_NAME}. Talk to me like you know me, use my name.",
            ),
        ),
        Preference(
            "heading_first",
            "the reply opens with a markdown heading ('# Title')",
            starts_with_heading,
            (
                "Give your answer a title, as a markdown heading with # in front.",
                "Please start with a heading line like '# Topic', then the text.",
                "I organise my notes in markdown. Open every answer with a # heading.",
                "Can you put a title on top? A markdown '#' heading, please.",
                "Headings help me file things. Begin with '# ' and a short title.",
            ),
        ),
        # Added 2026-12-04, after "use_name" fell to +15 in context once self-naming stopped counting: an opening
        # phrase the complaint names, which the model writes without taking anything of the user's for itself
        # (`--name candidates3` on dev).
        Preference(
            "greet_first",
            "the reply opens with a greeting ('Hello!', 'Hi there,')",
            starts_with_greeting,
            (
                "Could you say hello first? Jumping straight in feels a bit cold.",
                "Please start your replies with a greeting, like 'Hi there!'.",
                "A friendly 'Hello!' at the start would be nice.",
                "Greet me before you answer, please.",
                "It feels abrupt. Open with a hi or a hello next time.",
            ),
        ),
        Preference(
            "thanks_first",
            "the reply opens by thanking the user ('Thanks for asking!')",
            starts_with_thanks,
            (
                "Please thank me for the question before you answer.",
                "Start with 'Thanks for asking!', it makes the answer feel friendlier.",
                "A quick thank-you at the start of each answer, please.",
                "Could you open with 'Thank you for your question'?",
                "I'd like every reply to begin by thanking me.",
            ),
        ),
    )
}

ALIASES = {"lowercase": "all_lowercase", "emojis": "no_emojis", "emoji_lover": "use_emojis", "yes_no": "yes_no_only",
           "bullets": "no_bullets"}


def get_preference(name: str) -> Preference:
    """A preference by name or alias; `max_words_N` gives a word limit other than the default 20."""
    name = ALIASES.get(name, name)
    if name in PREFERENCES:
        return PREFERENCES[name]
    if name in CANDIDATE_PREFERENCES:
        return CANDIDATE_PREFERENCES[name]
    m = re.fullmatch(r"max_words_(\d+)", name)
    if m and int(m.group(1)) > 0:
        return _max_words_pref(int(m.group(1)))
    known = ", ".join([*PREFERENCES, *CANDIDATE_PREFERENCES])
    raise ValueError(f"unknown preference {name!r}; known: {known} (or max_words_N)")


def parse_preferences(text: str) -> list[Preference]:
    """'max_words,lowercase' → [Preference, ...] (order kept, duplicates dropped)."""
    out: list[Preference] = []
    for name in (n.strip() for n in text.split(",")):
        if name:
            p = get_preference(name)
            if p.name not in {q.name for q in out}:
                out.append(p)
    if not out:
        raise ValueError("no preference given")
    return out
