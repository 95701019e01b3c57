"""Data shipped with the package: the hand-labelled follow-up set (`followups.jsonl`, written by
scripts/make_followups.py) and the trained feedback-gate weights (`feedback_gate.json`, written by
`python -m bench.feedback_gate`). Loaders only (bottom layer, like config); the gate itself is `hsd_ray.core.feedback`."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

FOLLOWUPS = "followups.jsonl"
FEEDBACK_GATE = "feedback_gate.json"


def load_followups() -> list[dict]:
    """All rows of the shipped follow-up set (fields: id, split, prompt, reply, followup, label, kind, lang)."""
    text = resources.files(__name__).joinpath(FOLLOWUPS).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_feedback_gate(path: str | None = None) -> dict:
    """LinearGate weights (`LinearGate.to_dict()` plus training metadata) for `core.feedback.make_gate`: the shipped
    ones, or the JSON file at `path` (e.g. a gate retrained on your own labels by `python -m bench.feedback_gate`)."""
    if path is not None:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    return json.loads(resources.files(__name__).joinpath(FEEDBACK_GATE).read_text(encoding="utf-8"))
