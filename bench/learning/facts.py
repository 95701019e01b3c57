"""Facts with known answers for the learning benchmark, and the strict answer checkers.

- `CAPITALS`: ~110 countries with one unambiguous capital (aliases without accents), their continent.
- yes/no fact FAMILIES (`YES_NO_FAMILIES`), each a list of (question, true answer). A family belongs to exactly one
  split (`FAMILY_SPLIT`): training questions (sizes, parity, flying, fruit, mammals) never share a template or a fact
  family with dev questions (continents, number comparisons, science) or test questions (primes, landmarks,
  history); every family is balanced yes/no.
- Checkers (used by `CheckablePrompt.check` in `prompts.py`):
  * numbers: `hsd_ray.core.answers.check_number` (shared with the version gate): the reply's FIRST number must
    equal the answer, or c when that number opens an equation "a op b = c". So "7 + 5 = 12" passes, "The sum of 7
    and 5 is 12" fails (first number 7), "12, no wait, 13" fails.
  * capitals: the first capital city of `CAPITALS` named in the reply must be the right one, and it must not follow a
    negation ("not Paris", "isn't Paris", "is not really Paris" fail). "Berlin? No, Paris" fails.
  * yes/no: `first_yes_no` is the reply's first standalone "yes"/"no"; correct when it equals the truth.
"""

from __future__ import annotations

import re
import unicodedata

# (country, capital names (first = canonical), continent). Countries whose capital has the country's own name
# (Singapore, Kuwait City, ...) and disputed or split capitals are left out.
CAPITALS: tuple[tuple[str, tuple[str, ...], str], ...] = tuple(
    (c, tuple(n.split("|")), k) for c, n, k in (
        ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
        ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("the United Kingdom", "London", "Europe"),
        ("Ireland", "Dublin", "Europe"), ("the Netherlands", "Amsterdam", "Europe"), ("Belgium", "Brussels", "Europe"),
        ("Austria", "Vienna", "Europe"), ("Poland", "Warsaw", "Europe"), ("the Czech Republic", "Prague", "Europe"),
        ("Hungary", "Budapest", "Europe"), ("Greece", "Athens", "Europe"), ("Sweden", "Stockholm", "Europe"),
        ("Norway", "Oslo", "Europe"), ("Denmark", "Copenhagen", "Europe"), ("Finland", "Helsinki", "Europe"),
        ("Iceland", "Reykjavik", "Europe"), ("Russia", "Moscow", "Europe/Asia"), ("Ukraine", "Kyiv|Kiev", "Europe"),
        ("Romania", "Bucharest", "Europe"), ("Bulgaria", "Sofia", "Europe"), ("Serbia", "Belgrade", "Europe"),
        ("Croatia", "Zagreb", "Europe"), ("Slovakia", "Bratislava", "Europe"), ("Slovenia", "Ljubljana", "Europe"),
        ("Estonia", "Tallinn", "Europe"), ("Latvia", "Riga", "Europe"), ("Lithuania", "Vilnius", "Europe"),
        ("Belarus", "Minsk", "Europe"), ("Albania", "Tirana", "Europe"), ("Switzerland", "Bern|Berne", "Europe"),
        ("Turkey", "Ankara", "Europe/Asia"), ("Malta", "Valletta", "Europe"), ("Moldova", "Chisinau", "Europe"),
        ("Japan", "Tokyo", "Asia"), ("China", "Beijing|Peking", "Asia"), ("India", "New Delhi|Delhi", "Asia"),
        ("South Korea", "Seoul", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
        ("Indonesia", "Jakarta", "Asia"), ("the Philippines", "Manila", "Asia"), ("Malaysia", "Kuala Lumpur", "Asia"),
        ("Pakistan", "Islamabad", "Asia"), ("Bangladesh", "Dhaka", "Asia"), ("Nepal", "Kathmandu", "Asia"),
        ("Afghanistan", "Kabul", "Asia"), ("Iran", "Tehran", "Asia"), ("Iraq", "Baghdad", "Asia"),
        ("Saudi Arabia", "Riyadh", "Asia"), ("Syria", "Damascus", "Asia"), ("Jordan", "Amman", "Asia"),
        ("Lebanon", "Beirut", "Asia"), ("Qatar", "Doha", "Asia"), ("the United Arab Emirates", "Abu Dhabi", "Asia"),
        ("Oman", "Muscat", "Asia"), ("Mongolia", "Ulaanbaatar|Ulan Bator", "Asia"),
        ("North Korea", "Pyongyang", "Asia"), ("Cambodia", "Phnom Penh", "Asia"), ("Laos", "Vientiane", "Asia"),
        ("Uzbekistan", "Tashkent", "Asia"), ("Armenia", "Yerevan", "Europe/Asia"),
        ("Azerbaijan", "Baku", "Europe/Asia"), ("Bhutan", "Thimphu", "Asia"), ("Egypt", "Cairo", "Africa/Asia"),
        ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"), ("Ethiopia", "Addis Ababa", "Africa"),
        ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"), ("Algeria", "Algiers", "Africa"),
        ("Tunisia", "Tunis", "Africa"), ("Libya", "Tripoli", "Africa"), ("Sudan", "Khartoum", "Africa"),
        ("Senegal", "Dakar", "Africa"), ("Uganda", "Kampala", "Africa"), ("Zimbabwe", "Harare", "Africa"),
        ("Zambia", "Lusaka", "Africa"), ("Angola", "Luanda", "Africa"), ("Mali", "Bamako", "Africa"),
        ("Rwanda", "Kigali", "Africa"), ("Madagascar", "Antananarivo", "Africa"), ("Somalia", "Mogadishu", "Africa"),
        ("Mozambique", "Maputo", "Africa"), ("Namibia", "Windhoek", "Africa"), ("Botswana", "Gaborone", "Africa"),
        ("Cameroon", "Yaounde", "Africa"), ("the United States", "Washington", "North America"),
        ("Canada", "Ottawa", "North America"), ("Mexico", "Mexico City", "North America"),
        ("Cuba", "Havana", "North America"), ("Jamaica", "Kingston", "North America"),
        ("Haiti", "Port-au-Prince", "North America"), ("the Dominican Republic", "Santo Domingo", "North America"),
        ("Costa Rica", "San Jose", "North America"), ("Nicaragua", "Managua", "North America"),
        ("Honduras", "Tegucigalpa", "North America"), ("El Salvador", "San Salvador", "North America"),
        ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
        ("Chile", "Santiago", "South America"), ("Peru", "Lima", "South America"),
        ("Colombia", "Bogota", "South America"), ("Venezuela", "Caracas", "South America"),
        ("Ecuador", "Quito", "South America"), ("Uruguay", "Montevideo", "South America"),
        ("Paraguay", "Asuncion", "South America"), ("Australia", "Canberra", "Oceania"),
        ("New Zealand", "Wellington", "Oceania"), ("Fiji", "Suva", "Oceania"),
        ("Papua New Guinea", "Port Moresby", "Oceania"),
    )
)

# ---- yes/no fact families -------------------------------------------------------------------------------------------

_ANIMALS_BY_SIZE = ("an ant", "a mouse", "a cat", "a dog", "a horse", "an elephant", "a blue whale")
_FLYERS = {"penguins": False, "eagles": True, "bats": True, "ostriches": False, "sparrows": True, "dogs": False,
           "owls": True, "cows": False, "bees": True, "kiwis": False, "pigeons": True, "turtles": False}
_FRUIT = {"an apple": True, "a carrot": False, "a banana": True, "a potato": False, "a grape": True, "an onion": False,
          "a mango": True, "a lettuce": False, "a cherry": True, "a cucumber": False}
_MAMMALS = {"a dolphin": True, "a shark": False, "a bat": True, "a frog": False, "a whale": True, "a snake": False,
            "a cow": True, "a crocodile": False, "a horse": True, "a salmon": False}
_CONTINENT_COUNTRIES = ("France", "Germany", "Italy", "Spain", "Poland", "Sweden", "Norway", "Japan", "China", "India",
                        "Thailand", "Vietnam", "Indonesia", "Kenya", "Nigeria", "Ghana", "Morocco", "Ethiopia",
                        "Brazil", "Argentina", "Peru", "Chile", "Colombia", "Canada", "Mexico", "Australia",
                        "New Zealand")
_CONTINENTS = ("Europe", "Asia", "Africa", "South America", "North America", "Oceania")
_SCIENCE = (
    ("Is the Sun a star?", True), ("Does water freeze at 0 degrees Celsius?", True),
    ("Do plants release oxygen during photosynthesis?", True), ("Is Jupiter the largest planet in the solar system?",
                                                                 True),
    ("Is diamond made of carbon?", True), ("Is Mars known as the Red Planet?", True), ("Is gold a metal?", True),
    ("Do magnets attract iron?", True), ("Is oxygen a gas at room temperature?", True),
    ("Does the Earth orbit the Sun?", True), ("Is water made of hydrogen and oxygen?", True),
    ("Do bees make honey?", True),
    ("Is the Moon a planet?", False), ("Does water boil at 50 degrees Celsius at sea level?", False),
    ("Is the Sun a planet?", False), ("Is iron a gas at room temperature?", False),
    ("Is Pluto the largest planet in the solar system?", False), ("Do humans have three lungs?", False),
    ("Is the Earth flat?", False), ("Does light travel slower than sound?", False),
    ("Is glass a metal?", False), ("Does the Moon make its own light?", False),
    ("Does the Sun orbit the Moon?", False), ("Is ice hotter than boiling water?", False),
)
_LANDMARKS = (("the Eiffel Tower", "France"), ("the Colosseum", "Italy"),
              ("the Statue of Liberty", "the United States"),
              ("the Taj Mahal", "India"), ("Big Ben", "the United Kingdom"), ("the Great Pyramid of Giza", "Egypt"),
              ("the Sydney Opera House", "Australia"), ("Machu Picchu", "Peru"), ("the Acropolis", "Greece"),
              ("the Kremlin", "Russia"), ("Mount Fuji", "Japan"), ("the Brandenburg Gate", "Germany"))
_HISTORY = (
    ("Did World War II end in 1945?", True), ("Was Abraham Lincoln a president of the United States?", True),
    ("Did humans first land on the Moon in 1969?", True), ("Was the Great Wall built in China?", True),
    ("Did Shakespeare write Hamlet?", True), ("Was Albert Einstein a physicist?", True),
    ("Did the Titanic sink in 1912?", True), ("Was Mozart a composer?", True),
    ("Did Columbus sail across the Atlantic Ocean?", True), ("Did the Berlin Wall fall in 1989?", True),
    ("Did Leonardo da Vinci paint the Mona Lisa?", True), ("Were the pyramids of Giza built in ancient Egypt?", True),
    ("Did World War I start in 1950?", False), ("Was Napoleon an emperor of China?", False),
    ("Did humans land on Mars in 1969?", False), ("Did Shakespeare write the Harry Potter books?", False),
    ("Was Mozart a famous painter?", False), ("Did the Titanic sink in the Pacific Ocean?", False),
    ("Was Albert Einstein a professional football player?", False), ("Was the Mona Lisa painted by Picasso?", False),
    ("Did the Berlin Wall fall in 1889?", False), ("Was George Washington the first president of France?", False),
    ("Was the telephone invented in the year 2000?", False), ("Did Julius Caesar use a smartphone?", False),
)


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def _continent_questions() -> list[tuple[str, bool]]:
    where = {c: k for c, _, k in CAPITALS}
    out = []
    for i, country in enumerate(_CONTINENT_COUNTRIES):
        right = where[country]
        wrong = [k for k in _CONTINENTS if k != right][i % (len(_CONTINENTS) - 1)]
        out += [(f"Is {country} in {right}?", True), (f"Is {country} in {wrong}?", False)]
    return out


def _comparison_questions() -> list[tuple[str, bool]]:
    """"Is a greater than b?" for 24 unordered pairs, each asked once (never also as "Is b greater than a?")."""
    out = []
    for i in range(24):
        a, b = 11 + (i * 7) % 80, 14 + (i * 13) % 83
        if a == b:
            b += 1
        big, small = max(a, b), min(a, b)
        out.append((f"Is {big} greater than {small}?", True) if i % 2 == 0 else
                   (f"Is {small} greater than {big}?", False))
    return out


def _prime_questions() -> list[tuple[str, bool]]:
    primes = [n for n in range(2, 60) if _is_prime(n)][:15]
    composites = [4, 10] + [n for n in range(9, 60, 2) if not _is_prime(n)][:13]  # mostly odd: parity won't tell
    return [(f"Is {n} a prime number?", _is_prime(n)) for n in sorted(primes + composites)]


def _landmark_questions() -> list[tuple[str, bool]]:
    out = []
    for i, (place, country) in enumerate(_LANDMARKS):
        other = _LANDMARKS[(i + 5) % len(_LANDMARKS)][1]
        out += [(f"Is {place} in {country}?", True), (f"Is {place} in {other}?", False)]
    return out


YES_NO_FAMILIES: dict[str, list[tuple[str, bool]]] = {
    # training
    "size": [(f"Is {a} bigger than {b}?", i > j) for i, a in enumerate(_ANIMALS_BY_SIZE)
             for j, b in enumerate(_ANIMALS_BY_SIZE) if i != j],
    "parity": [(f"Is {n} an even number?", n % 2 == 0) for n in range(3, 43)],
    "flying": [(f"Can {a} fly?", t) for a, t in _FLYERS.items()],
    "fruit": [(f"Is {x} a fruit?", t) for x, t in _FRUIT.items()],
    "mammal": [(f"Is {x} a mammal?", t) for x, t in _MAMMALS.items()],
    # dev
    "continent": _continent_questions(),
    "comparison": _comparison_questions(),
    "science": list(_SCIENCE),
    # test
    "prime": _prime_questions(),
    "landmark": _landmark_questions(),
    "history": list(_HISTORY),
}
FAMILY_SPLIT = {"size": "train", "parity": "train", "flying": "train", "fruit": "train", "mammal": "train",
                "continent": "dev", "comparison": "dev", "science": "dev",
                "prime": "test", "landmark": "test", "history": "test"}

_RELATION_RE = re.compile(r"^Is (.+?) (bigger|smaller|greater|larger|less|more) than (.+?)\?$")


def mirror_key(question: str) -> str:
    """The same key for a question and its mirror image ("Is a cat bigger than a dog?" / "Is a dog bigger than a
    cat?" / "Is a dog smaller than a cat?"); otherwise the question itself."""
    m = _RELATION_RE.match(question)
    if not m:
        return question
    return "compare:" + "|".join(sorted((m.group(1).lower(), m.group(3).lower())))


# ---- checkers -------------------------------------------------------------------------------------------------------

_NEGATION_RE = re.compile(r"\b(?:not|never|nor|isn't|isnt|wasn't|aren't|ain't|cannot|can't)\W+(?:\w+\W+)?$",
                          re.IGNORECASE)


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


_CAPITAL_OF = {name.lower(): country for country, names, _ in CAPITALS for name in names}
_CAPITAL_RE = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in sorted(_CAPITAL_OF, key=len, reverse=True))
                         + r")(?!\w)", re.IGNORECASE)


def first_capital(reply: str) -> tuple[str | None, bool]:
    """(country whose capital is named first in the reply, whether a negation comes right before it)."""
    text = _ascii(reply)
    m = _CAPITAL_RE.search(text)
    if m is None:
        return None, False
    return _CAPITAL_OF[m.group().lower()], _NEGATION_RE.search(text[: m.start()]) is not None


def check_capital(reply: str, country: str) -> bool:
    named, negated = first_capital(reply)
    return named == country and not negated


_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def first_yes_no(reply: str) -> str | None:
    """The first standalone "yes" or "no" of the reply, lowercased; None if there is none."""
    m = _YES_NO_RE.search(reply)
    return m.group(1).lower() if m else None
