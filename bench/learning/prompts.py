"""Prompt sets of the learning benchmark, generated in code (templates × topics), deterministic from a seed.

Driven by `bench.learning.users` (training prompts, acknowledgements, unrelated follow-ups) and
`bench.learning.evaluate` (held-out prompts, checkable-answer prompts, the reference text for perplexity).

- open prompts: templates × topics. Topics are split into training and held-out topics, so a held-out prompt never
  shares a topic with a training prompt; the templates mix plain questions, list-inviting requests and playful ones
  (where emojis, bullets, capitals and long replies all occur naturally).
- yes/no questions: generated facts (sizes, parity, animals, fruit, places), split into training and held-out.
- checkable prompts: arithmetic with small numbers, country capitals, unit conversions; each with an answer checker.
  None of them is a training prompt.
`build_prompt_sets` asserts that held-out, checkable and training prompts are pairwise disjoint.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

OPEN_TEMPLATES = (
    "Tell me about {t}.",
    "Explain {t} to a ten-year-old.",
    "What are some interesting facts about {t}?",
    "Give me a few tips for learning about {t}.",
    "Why is {t} important?",
    "Write a cheerful social media post about {t}.",
    "Write a short, fun message to a friend about {t}.",
    "What are the main things to know about {t}?",
    "Describe {t} in an exciting way.",
    "How would you summarize {t}?",
)
TOPICS = (
    "photosynthesis", "black holes", "the water cycle", "volcanoes", "the Roman Empire", "machine learning", "coffee",
    "bicycles", "the moon", "honey bees", "recycling", "the internet", "chess", "earthquakes", "vaccines", "rainbows",
    "the ocean", "dinosaurs", "electricity", "gardening", "exercise", "sleep", "the French Revolution", "jazz music",
    "the pyramids of Egypt", "climate change", "solar panels", "the human heart", "octopuses", "baking bread",
    "the stock market", "airplanes", "snowflakes", "glaciers", "the printing press", "penguins", "green tea",
    "the Olympic Games", "volunteering", "meditation", "the planet Mars", "batteries", "ocean tides", "rain forests",
    "the alphabet", "smartphones", "friendship", "museums",
)
HELDOUT_TOPIC_FRACTION = 0.25

ACKNOWLEDGEMENTS = (  # never the contrastive baseline's reference follow-up ("Thanks, that's helpful."), on purpose
    "Thanks!", "Great, thank you.", "Perfect, that's what I needed.", "Got it, thanks.", "Cool, appreciate it!",
    "Nice, thank you so much.",
)
_UNRELATED_FIXED = (
    "By the way, what's a good name for a goldfish?", "Unrelated, but what day comes after Tuesday?",
    "Also, how do you spell 'necessary'?", "Random question: what colour do you get by mixing blue and yellow?",
    "Different topic: what's the opposite of 'ancient'?", "Quick one: how many legs does a spider have?",
)

_ANIMALS_BY_SIZE = ("an ant", "a mouse", "a cat", "a dog", "a horse", "an elephant", "a blue whale")
_FLYERS = {"penguins": False, "eagles": True, "bats": True, "ostriches": False, "sparrows": True, "dogs": False,
           "owls": True, "cows": False, "bees": True, "kiwis": False, "pigeons": True, "turtles": False}
_FRUIT = {"an apple": True, "a carrot": False, "a banana": True, "a potato": False, "a grape": True, "an onion": False,
          "a mango": True, "a lettuce": False, "a cherry": True, "a cucumber": False}
_MAMMALS = {"a dolphin": True, "a shark": False, "a bat": True, "a frog": False, "a whale": True, "a snake": False,
            "a cow": True, "a crocodile": False, "a horse": True, "a salmon": False}
CAPITALS = (
    ("France", ("Paris",)), ("Japan", ("Tokyo",)), ("Italy", ("Rome",)), ("Germany", ("Berlin",)),
    ("Spain", ("Madrid",)), ("Egypt", ("Cairo",)), ("Canada", ("Ottawa",)), ("Russia", ("Moscow",)),
    ("China", ("Beijing",)), ("the United Kingdom", ("London",)), ("Greece", ("Athens",)),
    ("Portugal", ("Lisbon",)), ("Ireland", ("Dublin",)), ("Norway", ("Oslo",)), ("Kenya", ("Nairobi",)),
    ("Peru", ("Lima",)), ("Austria", ("Vienna",)), ("Poland", ("Warsaw",)), ("Thailand", ("Bangkok",)),
    ("India", ("New Delhi", "Delhi")),
)
UNITS = (  # (asked unit, given unit, factor)
    ("centimeters", "meters", 100), ("minutes", "hours", 60), ("seconds", "minutes", 60), ("grams", "kilograms", 1000),
    ("days", "weeks", 7), ("millimeters", "centimeters", 10), ("months", "years", 12), ("hours", "days", 24),
)
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")

REFERENCE_TEXT = """\
The river begins as a thin stream high in the mountains, where snow melts slowly during the spring. As it flows \
downhill, small brooks join it from both sides, and by the time it reaches the valley it is wide enough for boats. \
Farmers along its banks have used the water for centuries to irrigate fields of wheat, barley and vegetables.

In the town at the bend of the river, the old stone bridge is the most famous building. It was built more than four \
hundred years ago, and it has survived floods, wars and the heavy traffic of modern trucks. Every summer the town \
holds a market on the bridge, where people sell bread, cheese, honey and handmade baskets.

Scientists who study the river measure its temperature, its speed and the amount of oxygen in the water. These \
numbers tell them whether fish can live there and how the river changes from one year to the next. In recent \
decades the water has become cleaner, because factories now treat their waste before releasing it.

Children who grow up near the river learn to swim in its shallow pools and to respect its strong currents. Many of \
them remember the sound of the water at night, the smell of wet stones after rain, and the light on the surface in \
the early morning. For them, the river is not only a source of water but also a part of home.
"""


@dataclass(frozen=True)
class CheckablePrompt:
    """A question with a known answer: `check(reply)` is True when the reply contains it."""

    question: str
    kind: str  # "arithmetic" | "capital" | "units"
    answers: tuple[str, ...]  # a number (as text) or accepted names

    def check(self, reply: str) -> bool:
        if self.kind == "capital":
            return any(re.search(rf"\b{re.escape(a)}\b", reply, re.IGNORECASE) for a in self.answers)
        return any(_same_number(n, a) for n in numbers_in(reply) for a in self.answers)


def numbers_in(text: str) -> list[float]:
    """Numbers written with digits ("2,000", "-3", "1.5") or as words up to twenty."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            pass
    words = re.findall(r"[a-z]+", text.lower())
    out += [float(_NUMBER_WORDS.index(w)) for w in words if w in _NUMBER_WORDS]
    return out


def _same_number(x: float, answer: str) -> bool:
    return abs(x - float(answer)) < 1e-9


@dataclass(frozen=True)
class PromptSets:
    train_open: tuple[str, ...]
    heldout_open: tuple[str, ...]
    train_yes_no: tuple[str, ...]
    heldout_yes_no: tuple[str, ...]
    capability: tuple[CheckablePrompt, ...]
    unrelated_followups: tuple[str, ...]
    train_topics: tuple[str, ...] = ()
    heldout_topics: tuple[str, ...] = ()
    acknowledgements: tuple[str, ...] = ACKNOWLEDGEMENTS
    reference_text: str = REFERENCE_TEXT

    def train(self, kind: str) -> tuple[str, ...]:
        return {"open": self.train_open, "yes_no": self.train_yes_no}[kind]

    def heldout(self, kind: str) -> tuple[str, ...]:
        return {"open": self.heldout_open, "yes_no": self.heldout_yes_no}[kind]


def yes_no_questions() -> list[str]:
    qs = [f"Is {a} bigger than {b}?" for a in _ANIMALS_BY_SIZE for b in _ANIMALS_BY_SIZE if a != b]
    qs += [f"Is {n} an even number?" for n in range(3, 40)]
    qs += [f"Can {animal} fly?" for animal in _FLYERS]
    qs += [f"Is {thing} a fruit?" for thing in _FRUIT]
    qs += [f"Is {thing} a mammal?" for thing in _MAMMALS]
    qs += [f"Is {cap[0]} in {country}?" for country, cap in CAPITALS[:10]]
    qs += [f"Is {CAPITALS[(i + 3) % 20][1][0]} in {country}?" for i, (country, _) in enumerate(CAPITALS[10:], 10)]
    return qs


def capability_prompts(seed: int, n: int) -> list[CheckablePrompt]:
    """`n` checkable prompts, kinds interleaved (arithmetic, capital, units, ...), deterministic from `seed`."""
    rng = random.Random(f"capability-{seed}")
    arithmetic = []
    for _ in range(max(n, 1)):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        op = rng.choice(("+", "times", "minus"))
        if op == "+":
            arithmetic.append(CheckablePrompt(f"What is {a} + {b}?", "arithmetic", (str(a + b),)))
        elif op == "times":
            arithmetic.append(CheckablePrompt(f"What is {a} times {b}?", "arithmetic", (str(a * b),)))
        else:
            hi, lo = max(a, b) + 5, min(a, b)
            arithmetic.append(CheckablePrompt(f"What is {hi} minus {lo}?", "arithmetic", (str(hi - lo),)))
    capitals = [CheckablePrompt(f"What is the capital of {c}?", "capital", names) for c, names in CAPITALS]
    rng.shuffle(capitals)
    units = []
    for asked, given, factor in UNITS:
        k = rng.randint(2, 9)
        units.append(CheckablePrompt(f"How many {asked} are in {k} {given}?", "units", (str(k * factor),)))
    rng.shuffle(units)
    pools, out, seen = [arithmetic, capitals, units], [], set()
    i = 0
    while len(out) < n and any(pools):
        pool = pools[i % 3]
        i += 1
        while pool:
            p = pool.pop(0)
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
                break
    return out


def unrelated_followups(seed: int, n: int = 24) -> tuple[str, ...]:
    """Follow-ups that have nothing to do with the reply (the control users' only messages): "What is 27*4?" style."""
    rng = random.Random(f"unrelated-{seed}")
    out = list(_UNRELATED_FIXED)
    while len(out) < n:
        out.append(f"What is {rng.randint(11, 49)}*{rng.randint(2, 9)}?")
    return tuple(out)


def build_prompt_sets(seed: int = 0, n_heldout_open: int = 10, n_heldout_yes_no: int = 6,
                      n_capability: int = 18) -> PromptSets:
    """All prompt sets, deterministic from `seed`; held-out and checkable prompts never appear in training."""
    rng = random.Random(f"prompts-{seed}")
    topics = list(TOPICS)
    rng.shuffle(topics)
    n_topics_out = max(1, round(len(topics) * HELDOUT_TOPIC_FRACTION))
    heldout_topics, train_topics = topics[:n_topics_out], topics[n_topics_out:]
    train_open = [tpl.format(t=t) for t in train_topics for tpl in OPEN_TEMPLATES]
    rng.shuffle(train_open)
    templates = list(OPEN_TEMPLATES)
    rng.shuffle(templates)
    heldout_open = [templates[i % len(templates)].format(t=heldout_topics[i % len(heldout_topics)])
                    for i in range(n_heldout_open)]
    if len(set(heldout_open)) != len(heldout_open):
        raise ValueError(f"n_heldout_open={n_heldout_open} is more than the distinct held-out prompts available")
    yes_no = yes_no_questions()
    rng.shuffle(yes_no)
    n_yn_out = max(n_heldout_yes_no, len(yes_no) // 4)
    heldout_yes_no, train_yes_no = yes_no[:n_heldout_yes_no], yes_no[n_yn_out:]
    capability = capability_prompts(seed, n_capability)
    sets = PromptSets(tuple(train_open), tuple(heldout_open), tuple(train_yes_no), tuple(heldout_yes_no),
                      tuple(capability), unrelated_followups(seed), tuple(train_topics), tuple(heldout_topics))
    check_disjoint(sets)
    return sets


def check_disjoint(sets: PromptSets) -> None:
    """Raise if any held-out or checkable prompt is also a training prompt (or held-out topics leak into training)."""
    train = set(sets.train_open) | set(sets.train_yes_no)
    evaluated = set(sets.heldout_open) | set(sets.heldout_yes_no) | {p.question for p in sets.capability}
    leaked = train & evaluated
    if leaked:
        raise AssertionError(f"held-out prompts used for training: {sorted(leaked)[:3]}")
    shared = set(sets.train_topics) & set(sets.heldout_topics)
    if shared:
        raise AssertionError(f"held-out topics used for training: {sorted(shared)[:3]}")
