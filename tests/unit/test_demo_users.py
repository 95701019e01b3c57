"""`make run`'s demo traffic (loop/users.py) must not train on what the version gate measures."""

from __future__ import annotations

import re

import pytest

from hsd_ray.data import load_probes
from hsd_ray.loop.users import QUESTIONS

pytestmark = pytest.mark.unit


def _core(prompt: str) -> str:
    """A probe prompt without its answer-format instruction, lowercased: "What is 6 times 7? Answer with a number."
    and "what is 6 times 7?" are the same question."""
    return re.sub(r"\s*answer (with a number|in one word)\.$", "", prompt.strip().lower())


def test_demo_questions_are_varied_and_disjoint_from_the_gate_probes():
    probes = load_probes()
    gated = {_core(p) for p in probes["probes"]}
    gated |= {_core(c["prompt"]) for c in probes["checkable"] + probes["facts"]}
    asked = [_core(q) for q in QUESTIONS]
    assert len(set(asked)) == len(asked) >= 30
    assert not set(asked) & gated
    assert not [q for q in asked if "capital of" in q]  # the facts check asks capitals: none is trained on
    assert _core("What is 6 times 7? Answer with a number.") == "what is 6 times 7?"
