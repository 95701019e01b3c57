"""Data shipped with the package: the hand-labelled follow-up set (`followups.jsonl`, written by
scripts/make_followups.py), the trained feedback-gate weights (`feedback_gate.json`, written by
`python -m bench.feedback_gate`), the version gate's probe set (`probes.json`), the learner's retain prompts
(`retain.json`), their loaders, and `build_gate`, the feedback gate a config asks for. The gate itself is
`hsd_ray.core.feedback` (pure); this package is the layer above it that reads files."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from hsd_ray.config import FeedbackConfig
from hsd_ray.core.feedback import DEFAULT_KIND_WEIGHTS, make_gate

FOLLOWUPS = "followups.jsonl"
FEEDBACK_GATE = "feedback_gate.json"
PROBES = "probes.json"
RETAIN = "retain.json"


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


def load_probes(path: str | None = None) -> dict:
    """The version gate's probe set (fields: probes, reference_text, checkable = [{prompt, answer, kind}]): the shipped
    `probes.json`, or the JSON file at `path` (config `version_gate.probes_path`)."""
    if path is not None:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    else:
        d = json.loads(resources.files(__name__).joinpath(PROBES).read_text(encoding="utf-8"))
    missing = [k for k in ("probes", "reference_text", "checkable") if k not in d]
    if missing:
        raise ValueError(f"probe set {path or PROBES}: missing {missing}")
    return d


def load_retain_prompts(path: str | None = None) -> list[str]:
    """The learner's retain prompts (core/retain.py): the shipped `retain.json`, or the JSON file at `path` (config
    `loss.retain_path`), {"prompts": [...]} with at least one non-empty prompt."""
    source = Path(path) if path is not None else resources.files(__name__).joinpath(RETAIN)
    prompts = json.loads(source.read_text(encoding="utf-8")).get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"retain prompts {path or RETAIN}: 'prompts' must be a non-empty list of non-empty strings")
    return prompts


def build_gate(fcfg: FeedbackConfig):
    """The feedback gate `fcfg` asks for (learned weights: the shipped ones unless `weights_path` is set). The config's
    `kind_weights` is laid over the defaults: `{positive: 0}` changes only positive feedback (a partial table used to
    replace the whole one, so every kind it did not name weighed 1)."""
    weights = load_feedback_gate(fcfg.weights_path) if fcfg.gate in ("learned", "ensemble") else None
    return make_gate(fcfg.gate, weights, fcfg.threshold, {**DEFAULT_KIND_WEIGHTS, **fcfg.kind_weights})
