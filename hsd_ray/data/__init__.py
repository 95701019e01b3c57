"""Data shipped with the package: the hand-labelled follow-up set (`followups.jsonl`, written by
scripts/make_followups.py) and the trained feedback-gate weights (`feedback_gate.json`, written by
`python -m bench.feedback_gate`). Loaders only; the gate itself is `hsd_ray.core.feedback`."""

from __future__ import annotations

import json
from importlib import resources

FOLLOWUPS = "followups.jsonl"
FEEDBACK_GATE = "feedback_gate.json"


def load_followups() -> list[dict]:
    """All rows of the shipped follow-up set (fields: id, split, prompt, reply, followup, label, kind, lang)."""
    text = resources.files(__name__).joinpath(FOLLOWUPS).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_feedback_gate() -> dict:
    """The shipped LinearGate weights (`LinearGate.to_dict()` plus training metadata) for `make_gate`."""
    return json.loads(resources.files(__name__).joinpath(FEEDBACK_GATE).read_text(encoding="utf-8"))


def row_categories(row: dict) -> list[str]:
    """Evaluation slices a row belongs to: non_english, code, very_short (<= 2 words), very_long (> 60 words),
    build_on (the hard negatives)."""
    from hsd_ray.core.feedback_rules import has_code

    f = row["followup"]
    n_words = len(f.split())
    cats = [("non_english", row["lang"] != "en"), ("code", "`" in f or has_code(f)), ("very_short", n_words <= 2),
            ("very_long", n_words > 60), ("build_on", row["kind"] == "build_on")]
    return [name for name, hit in cats if hit]


def default_feedback_gate(kind_weights: dict[str, float] | None = None):
    """The gate chosen on the dev split by `bench/feedback_gate.py` (meta["default_gate"]), with the shipped weights."""
    from hsd_ray.core.feedback import make_gate

    weights = load_feedback_gate()
    return make_gate(weights["meta"].get("default_gate", "rules"), weights, kind_weights=kind_weights)
