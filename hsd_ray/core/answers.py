"""How an answer is read from a reply: the number a reply answers with. Shared by the version gate's checkable
accuracy (core/version_gate.py) and the learning benchmark's capability checker (bench/learning/facts.py), so
that the gate holds candidates to the same reading the benchmark reports.

The answer is the reply's FIRST number (digits, "2,000", "-3", "1.5", or words such as "twenty-one", "one hundred"),
except when that first number opens an equation "a op b = c" (op: + - × * x / ÷ plus minus times "multiplied by"
"divided by"; =: "=", "equals", "is", "is equal to", "makes"): then c. So "7 + 5 = 12" answers 12, "The sum of 7 and
5 is 12" answers 7, and "12, no wait, 13" answers 12. A later correct number never counts: strict, not "the answer
anywhere". Pure: `re` only.
"""

from __future__ import annotations

import re

_UNITS_W = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen").split()
_TENS_W = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_WORD_VALUES = {**{w: i for i, w in enumerate(_UNITS_W)}, **_TENS_W}
_NUM_WORD = "|".join(sorted([*_WORD_VALUES, "hundred", "thousand"], key=len, reverse=True))
_TOKEN_RE = re.compile(rf"(?<![\w.])-?\d[\d,]*(?:\.\d+)?"
                       rf"|\b(?:{_NUM_WORD})(?:(?:[\s-]+(?:and[\s-]+)?)(?:{_NUM_WORD}))*\b", re.IGNORECASE)
_OP_RE = re.compile(r"^\s*(?:[+\-−–*×x/÷]|plus|minus|times|multiplied\s+by|divided\s+by)\s*$", re.IGNORECASE)
_EQ_RE = re.compile(r"^\s*(?:=|equals|is equal to|is|makes)\s*$", re.IGNORECASE)


def _word_number(text: str) -> float | None:
    total, current = 0, 0
    for w in re.findall(r"[a-z]+", text.lower()):
        if w == "and":
            continue
        if w in _WORD_VALUES:
            current += _WORD_VALUES[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w == "thousand":
            total, current = total + max(current, 1) * 1000, 0
        else:
            return None
    return float(total + current)


def numbers_with_spans(text: str) -> list[tuple[float, int, int]]:
    """Every number in `text` in order: (value, start, end); digits ("2,000", "-3", "1.5") or words ("twenty-one")."""
    out = []
    for m in _TOKEN_RE.finditer(text):
        s = m.group()
        if s[0].isdigit() or s[0] == "-":
            try:
                out.append((float(s.rstrip(",").replace(",", "")), m.start(), m.end()))
            except ValueError:
                continue
        else:
            value = _word_number(s)
            if value is not None:
                out.append((value, m.start(), m.end()))
    return out


def numbers_in(text: str) -> list[float]:
    return [v for v, _, _ in numbers_with_spans(text)]


def answer_number(reply: str) -> float | None:
    """The number a reply answers with: its first number, or c when the first number opens "a op b = c"."""
    nums = numbers_with_spans(reply)
    if not nums:
        return None
    if len(nums) >= 3:
        (_, _, e0), (_, s1, e1), (v2, s2, _) = nums[:3]
        if _OP_RE.match(reply[e0:s1]) and _EQ_RE.match(reply[e1:s2]):
            return v2
    return nums[0][0]


def check_number(reply: str, answer: str) -> bool:
    """The reply answers with `answer` (a number as text), read by `answer_number`."""
    value = answer_number(reply)
    return value is not None and abs(value - float(answer)) < 1e-9
