"""Prompt sets of the learning benchmark, generated in code, deterministic from a seed, in THREE DISJOINT SPLITS:
`train` (what simulated users ask; trained on), `dev` (evaluations used to choose defaults and hyper-parameters) and
`test` (report only). `build_prompt_sets` asserts the disjointness (`check_disjoint`).

- open prompts: templates × topics; the topics are split three ways, so no evaluation prompt shares a topic with a
  training prompt or with the other evaluation split.
- yes/no questions: fact families with known answers (`facts.YES_NO_FAMILIES`), each family in exactly one split (no
  shared template or fact family, no mirror pairs across splits); every split and every evaluation selection is
  half "yes", half "no".
- checkable prompts (capability): addition, subtraction, multiplication, division, capitals, unit conversions, split
  by their underlying fact (3 + 5 and 5 + 3 are one fact; a country is one fact), at least 200 per evaluation split.
  The train split's checkable prompts are never evaluated: they are the "new questions" users ask as follow-ups.
Driven by `bench.learning.users` (training prompts, follow-up material) and `bench.learning.evaluate`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.learning.facts import CAPITALS, FAMILY_SPLIT, YES_NO_FAMILIES, check_capital, mirror_key
from hsd_ray.core.answers import check_number

SPLITS = ("train", "dev", "test")
EVAL_SPLITS = ("dev", "test")

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
N_EVAL_TOPICS = 10  # per evaluation split; the rest are training topics

ACKNOWLEDGEMENTS = (  # never the contrastive baseline's reference follow-up ("Thanks, that's helpful."), on purpose
    "Thanks!", "Great, thank you.", "Perfect, that's what I needed.", "Got it, thanks.", "Cool, appreciate it!",
    "Nice, thank you so much.",
)
THANKS_NEXT = ("Thanks! Next question: {q}", "Ok, thanks. Another one: {q}", "Got it. Next: {q}",
               "Alright, moving on. {q}")
CHITCHAT = (
    "By the way, I'm heading to the beach this weekend!", "Haha, my cat just walked across my keyboard.",
    "Long day at work today, I'm so tired.", "I just made myself a cup of tea.", "It's raining here again.",
    "My sister is visiting tomorrow, I'm excited.", "I should really go to bed soon.",
    "Random thought: I miss summer holidays.",
)
UNITS = (  # (asked unit, given unit, factor)
    ("centimeters", "meters", 100), ("minutes", "hours", 60), ("seconds", "minutes", 60), ("grams", "kilograms", 1000),
    ("days", "weeks", 7), ("millimeters", "centimeters", 10), ("months", "years", 12), ("hours", "days", 24),
    ("meters", "kilometers", 1000), ("inches", "feet", 12), ("feet", "yards", 3), ("milliliters", "liters", 1000),
    ("cents", "dollars", 100), ("years", "decades", 10), ("years", "centuries", 100),
)
CAPABILITY_KINDS = ("addition", "subtraction", "multiplication", "division", "capital", "units")

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
    """A question with a known answer; `check(reply)` is strict (see `facts`): the reply's first number (or the
    result of its opening equation) must be the answer; for capitals, the first capital named, not negated."""

    question: str
    kind: str  # one of CAPABILITY_KINDS
    answers: tuple[str, ...]  # a number as text, or (country,) for "capital"
    key: str = ""  # the underlying fact: prompts with the same key are in the same split

    def check(self, reply: str) -> bool:
        if self.kind == "capital":
            return check_capital(reply, self.answers[0])
        return any(check_number(reply, a) for a in self.answers)


@dataclass(frozen=True)
class YesNoQuestion:
    question: str
    answer: bool  # the true answer
    family: str


@dataclass(frozen=True)
class PromptSets:
    """Training prompts, follow-up material and, per evaluation split, the evaluated prompts."""

    train_open: tuple[str, ...]
    train_yes_no: tuple[YesNoQuestion, ...]
    train_capability: tuple[CheckablePrompt, ...]
    eval_open: dict = field(default_factory=dict)  # split → tuple[str]
    eval_yes_no: dict = field(default_factory=dict)  # split → tuple[YesNoQuestion]
    eval_capability: dict = field(default_factory=dict)  # split → tuple[CheckablePrompt]
    topics: dict = field(default_factory=dict)  # split → tuple[str]
    acknowledgements: tuple[str, ...] = ACKNOWLEDGEMENTS
    thanks_next: tuple[str, ...] = THANKS_NEXT
    chitchat: tuple[str, ...] = CHITCHAT
    reference_text: str = REFERENCE_TEXT

    def __hash__(self) -> int:
        return id(self)

    def train(self, kind: str) -> tuple[str, ...]:
        return {"open": self.train_open, "yes_no": tuple(q.question for q in self.train_yes_no)}[kind]

    def heldout(self, kind: str, split: str = "dev") -> tuple[str, ...]:
        """The evaluated prompts of `kind` ("open" | "yes_no") in `split`."""
        if kind == "open":
            return self.eval_open[split]
        return tuple(q.question for q in self.eval_yes_no[split])

    def capability(self, split: str = "dev") -> tuple[CheckablePrompt, ...]:
        return self.eval_capability[split]

    def yes_no_truth(self, split: str) -> dict[str, bool]:
        return {q.question: q.answer for q in self.eval_yes_no[split]}

    def new_topics(self, kind: str) -> tuple[str, ...]:
        """New questions a user may ask instead of reacting to a reply: training prompts of the same kind and the
        training split's checkable questions (never evaluated)."""
        return self.train(kind) + tuple(p.question for p in self.train_capability)


# ---- yes/no ---------------------------------------------------------------------------------------------------------


def yes_no_split(split: str) -> list[YesNoQuestion]:
    return [YesNoQuestion(q, a, fam) for fam, qs in YES_NO_FAMILIES.items() if FAMILY_SPLIT[fam] == split
            for q, a in qs]


def balanced_selection(questions: list[YesNoQuestion], n: int, rng: random.Random) -> list[YesNoQuestion]:
    """`n` questions, alternately true and false, families taken in turn (round robin), deterministic from `rng`."""
    groups: dict[tuple[str, bool], list[YesNoQuestion]] = {}
    for q in questions:
        groups.setdefault((q.family, q.answer), []).append(q)
    for g in groups.values():
        rng.shuffle(g)
    families = sorted({q.family for q in questions})
    out: list[YesNoQuestion] = []
    i = 0
    while len(out) < n and any(groups.values()):
        truth = len(out) % 2 == 0
        for k in range(len(families)):
            g = groups.get((families[(i + k) % len(families)], truth))
            if g:
                out.append(g.pop())
                break
        else:
            raise ValueError(f"not enough {'yes' if truth else 'no'} questions for {n} balanced ones")
        i += 1
    if len(out) < n:
        raise ValueError(f"{n} yes/no questions requested, only {len(out)} available")
    return out


# ---- checkable prompts ----------------------------------------------------------------------------------------------


def all_checkable() -> list[CheckablePrompt]:
    """Every checkable prompt there is, with its fact key (split unit)."""
    out = []
    for a in range(2, 41):
        for b in range(a, 41):
            q = f"What is {a} + {b}?" if (a + b) % 2 else f"What is {b} plus {a}?"
            out.append(CheckablePrompt(q, "addition", (str(a + b),), f"add:{a},{b}"))
    for a in range(10, 61):
        for b in range(2, a - 1, 3):
            out.append(CheckablePrompt(f"What is {a} minus {b}?", "subtraction", (str(a - b),), f"sub:{a},{b}"))
    for a in range(2, 16):
        for b in range(a, 16):
            q = f"What is {a} times {b}?" if (a + b) % 2 else f"What is {b} times {a}?"
            out.append(CheckablePrompt(q, "multiplication", (str(a * b),), f"mul:{a},{b}"))
    for b in range(2, 13):
        for q in range(2, 13):
            out.append(CheckablePrompt(f"What is {b * q} divided by {b}?", "division", (str(q),), f"div:{b * q},{b}"))
    for country, _, _ in CAPITALS:
        out.append(CheckablePrompt(f"What is the capital of {country}?", "capital", (country,), f"capital:{country}"))
    for asked, given, factor in UNITS:
        for k in range(2, 10):
            out.append(CheckablePrompt(f"How many {asked} are in {k} {given}?", "units", (str(k * factor),),
                                       f"units:{asked},{given},{k}"))
    return out


def checkable_splits(seed: int) -> dict[str, list[CheckablePrompt]]:
    """Each kind's facts shuffled and cut in three equal parts; within a split, kinds interleaved round robin so that
    any prefix covers every kind."""
    rng = random.Random(f"capability-{seed}")
    by_kind: dict[str, list[CheckablePrompt]] = {k: [] for k in CAPABILITY_KINDS}
    for p in all_checkable():
        by_kind[p.kind].append(p)
    parts: dict[str, dict[str, list[CheckablePrompt]]] = {s: {} for s in SPLITS}
    for kind, items in by_kind.items():
        rng.shuffle(items)
        third = len(items) // 3
        for i, s in enumerate(SPLITS):
            parts[s][kind] = items[i * third:(i + 1) * third]
    out = {}
    for s in SPLITS:
        pools = [list(parts[s][k]) for k in CAPABILITY_KINDS]
        seq: list[CheckablePrompt] = []
        while any(pools):
            for pool in pools:
                if pool:
                    seq.append(pool.pop(0))
        out[s] = seq
    return out


# ---- all sets -------------------------------------------------------------------------------------------------------


def build_prompt_sets(seed: int = 0, n_open: int = 20, n_yes_no: int = 20, n_capability: int = 200) -> PromptSets:
    """All prompt sets, deterministic from `seed`; `n_*` prompts per evaluation split."""
    rng = random.Random(f"prompts-{seed}")
    topics = list(TOPICS)
    rng.shuffle(topics)
    split_topics = {"dev": topics[:N_EVAL_TOPICS], "test": topics[N_EVAL_TOPICS:2 * N_EVAL_TOPICS],
                    "train": topics[2 * N_EVAL_TOPICS:]}
    train_open = [tpl.format(t=t) for t in split_topics["train"] for tpl in OPEN_TEMPLATES]
    rng.shuffle(train_open)
    eval_open = {}
    for s in EVAL_SPLITS:
        templates = list(OPEN_TEMPLATES)
        rng.shuffle(templates)
        tt = split_topics[s]
        chosen = [templates[(i + i // len(tt)) % len(templates)].format(t=tt[i % len(tt)]) for i in range(n_open)]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"n_open={n_open} is more than the distinct {s} prompts available")
        eval_open[s] = tuple(chosen)
    train_yes_no = yes_no_split("train")
    rng.shuffle(train_yes_no)
    eval_yes_no = {s: tuple(balanced_selection(yes_no_split(s), n_yes_no, rng)) for s in EVAL_SPLITS}
    checkable = checkable_splits(seed)
    for s in EVAL_SPLITS:
        if n_capability > len(checkable[s]):
            raise ValueError(f"{n_capability} checkable prompts requested, the {s} split has {len(checkable[s])}")
    sets = PromptSets(tuple(train_open), tuple(train_yes_no), tuple(checkable["train"]), eval_open, eval_yes_no,
                      {s: tuple(checkable[s][:n_capability]) for s in EVAL_SPLITS},
                      {s: tuple(v) for s, v in split_topics.items()})
    check_disjoint(sets)
    return sets


def check_disjoint(sets: PromptSets) -> None:
    """Raise AssertionError if train, dev and test share a prompt, an open-prompt topic, a yes/no family or mirror
    pair, or a checkable fact."""
    def sets_of(split: str) -> dict[str, set]:
        if split == "train":
            yn, cap, open_ = sets.train_yes_no, sets.train_capability, sets.train_open
        else:
            yn, cap, open_ = sets.eval_yes_no[split], sets.eval_capability[split], sets.eval_open[split]
        return {"prompt": set(open_) | {q.question for q in yn} | {p.question for p in cap},
                "topic": set(sets.topics[split]), "family": {q.family for q in yn},
                "mirror": {mirror_key(q.question) for q in yn}, "fact": {p.key for p in cap}}

    by_split = {s: sets_of(s) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            for what in ("prompt", "topic", "family", "mirror", "fact"):
                shared = by_split[a][what] & by_split[b][what]
                if shared:
                    raise AssertionError(f"{a} and {b} share {what}s: {sorted(shared)[:3]}")
    for s in SPLITS:  # an open prompt's topic belongs to its own split
        prompts = set(sets.train_open if s == "train" else sets.eval_open[s])
        own = {tpl.format(t=t) for t in sets.topics[s] for tpl in OPEN_TEMPLATES}
        if prompts - own:
            raise AssertionError(f"{s} prompts not about a {s} topic: {sorted(prompts - own)[:3]}")
