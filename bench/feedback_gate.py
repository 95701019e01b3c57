"""Feedback gate: train, choose thresholds on dev, report on test (`python -m bench.feedback_gate [--no-write]`).

(a) Fits `LinearGate` (hashed n-grams + relational features, numpy logistic regression) on the *train* split of
    `hsd_ray/data/followups.jsonl`, picking the L2 strength by dev ROC AUC.
(b) Chooses on *dev*: the learned threshold (best dev F1 among thresholds with dev precision >= 0.9), the ensemble's
    rule weight and threshold (same rule), and the default gate (best dev F1 among gates with dev precision >= 0.9).
(c) Writes `hsd_ray/data/feedback_gate.json` (weights, thresholds, feature config, dev metrics) unless --no-write.
(d) Reports on *test* only: precision / recall / F1 / ROC AUC per gate (none, rules, learned, ensemble), the share of
    each kind that passes the gate, and per-category numbers (non-English, code, very short, very long, build-on).
    Printed as tables and written to `bench/results/feedback_gate.json`. CPU, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hsd_ray.core.feedback import (FEEDBACK_KINDS, GATE_KINDS, NOT_FEEDBACK_KINDS, EnsembleGate, LinearGate,
                                   make_gate)
from hsd_ray.core.feedback_fit import choose_threshold, prf, roc_auc, train_linear_gate
from hsd_ray.core.feedback_rules import has_code
from hsd_ray.data import load_feedback_gate, load_followups

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_OUT = ROOT / "hsd_ray" / "data" / "feedback_gate.json"
RESULTS_OUT = ROOT / "bench" / "results" / "feedback_gate.json"
MIN_PRECISION = 0.9
L2_GRID = (1e-4, 1e-3, 1e-2)
RULE_WEIGHT_GRID = (0.3, 0.5, 0.7)
CATEGORIES = ("non_english", "code", "very_short", "very_long", "build_on")


def row_categories(row: dict) -> list[str]:
    """Evaluation slices a row belongs to: non_english, code, very_short (<= 2 words), very_long (> 60 words),
    build_on (the hard negatives)."""
    f = row["followup"]
    n_words = len(f.split())
    cats = [("non_english", row["lang"] != "en"), ("code", "`" in f or has_code(f)), ("very_short", n_words <= 2),
            ("very_long", n_words > 60), ("build_on", row["kind"] == "build_on")]
    return [name for name, hit in cats if hit]


def _xy(rows: list[dict]) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    return [(r["prompt"], r["reply"], r["followup"]) for r in rows], np.array([r["label"] == "feedback" for r in rows])


def _scores(gate, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    decisions = [gate.decide(r["prompt"], r["reply"], r["followup"]) for r in rows]
    return np.array([d.score for d in decisions]), np.array([d.is_feedback for d in decisions])


def train(train_rows: list[dict], dev_rows: list[dict]) -> tuple[LinearGate, dict]:
    """Fit per L2 value, keep the best dev AUC, then set the threshold on dev. Returns the gate and dev notes."""
    x, y = _xy(train_rows)
    _, y_dev = _xy(dev_rows)
    best, notes = None, {"l2_grid": {}}
    for l2 in L2_GRID:
        gate = train_linear_gate(x, y.astype(int).tolist(), l2=l2)
        auc = roc_auc(_scores(gate, dev_rows)[0], y_dev)
        notes["l2_grid"][str(l2)] = round(auc, 4)
        if best is None or auc > best[1]:
            best = (gate, auc, l2)
    gate, auc, l2 = best
    t, m = choose_threshold(_scores(gate, dev_rows)[0], y_dev, MIN_PRECISION)
    gate.threshold = t
    notes.update(l2=l2, dev_auc=auc, threshold=t, dev_at_threshold=m)
    return gate, notes


def tune_ensemble(learned: LinearGate, dev_rows: list[dict]) -> dict:
    """Rule weight and threshold of the ensemble, both on dev (best F1 at precision >= MIN_PRECISION)."""
    _, y_dev = _xy(dev_rows)
    best = None
    for rw in RULE_WEIGHT_GRID:
        s, _ = _scores(EnsembleGate(learned, 0.5, rw), dev_rows)
        t, m = choose_threshold(s, y_dev, MIN_PRECISION)
        key = (m["met_precision"], m["f1"], roc_auc(s, y_dev))
        if best is None or key > best[0]:
            best = (key, {"rule_weight": rw, "threshold": t, "dev_auc": key[2], "dev_at_threshold": m})
    return best[1]


def evaluate(gate, rows: list[dict]) -> dict:
    """P/R/F1/AUC on rows, pass rate per kind, and P/R/accuracy per category."""
    s, pred = _scores(gate, rows)
    _, y = _xy(rows)
    out = dict(prf(pred, y), auc=roc_auc(s, y))
    out["pass_rate_by_kind"] = {k: float(np.mean([p for p, r in zip(pred, rows) if r["kind"] == k]))
                                for k in FEEDBACK_KINDS + NOT_FEEDBACK_KINDS if any(r["kind"] == k for r in rows)}
    cats = {}
    for c in CATEGORIES:
        idx = [i for i, r in enumerate(rows) if c in row_categories(r)]
        if idx:
            cats[c] = dict(prf(pred[idx], y[idx]), accuracy=float(np.mean(pred[idx] == y[idx])))
    out["by_category"] = cats
    return out


def choose_default(dev_metrics: dict[str, dict]) -> str:
    """Best dev F1 among gates whose dev precision >= MIN_PRECISION ("rules" if none qualifies)."""
    ok = {g: m for g, m in dev_metrics.items() if g != "none" and m["precision"] >= MIN_PRECISION}
    return max(ok, key=lambda g: (ok[g]["f1"], ok[g]["auc"])) if ok else "rules"


def print_report(dev: dict, test: dict, notes: dict, default: str, n: dict) -> None:
    print(f"rows: train {n['train']}  dev {n['dev']}  test {n['test']}")
    print(f"learned: L2 grid (dev AUC) {notes['learned']['l2_grid']} -> l2={notes['learned']['l2']}; threshold "
          f"{notes['learned']['threshold']:.3f} = best dev F1 with dev precision >= {MIN_PRECISION}")
    e = notes["ensemble"]
    print(f"ensemble: rule_weight {e['rule_weight']}, threshold {e['threshold']:.3f} (dev F1 "
          f"{e['dev_at_threshold']['f1']:.3f}, dev P {e['dev_at_threshold']['precision']:.3f})")
    print(f"default gate: {default!r} (best dev F1 among gates with dev precision >= {MIN_PRECISION})\n")
    for name, table in (("DEV (used for choices)", dev), ("TEST", test)):
        print(f"{name:24} {'P':>6} {'R':>6} {'F1':>6} {'AUC':>6}")
        for g, m in table.items():
            print(f"  {g:22} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['auc']:6.3f}")
        print()
    kinds = list(test["rules"]["pass_rate_by_kind"])
    print("TEST share passed as feedback, by kind (want 1 for feedback kinds, 0 for the rest)")
    print(f"  {'kind':20}" + "".join(f"{g:>10}" for g in test))
    for k in kinds:
        print(f"  {k:20}" + "".join(f"{test[g]['pass_rate_by_kind'][k]:10.2f}" for g in test))
    print("\nTEST by category: P / R / accuracy (n)")
    for c in CATEGORIES:
        cells = [f"{m['by_category'][c]['precision']:.2f}/{m['by_category'][c]['recall']:.2f}/"
                 f"{m['by_category'][c]['accuracy']:.2f}" for m in test.values() if c in m["by_category"]]
        nc = test["rules"]["by_category"].get(c, {}).get("n", 0)
        print(f"  {c:12} n={nc:<3}" + "".join(f"{x:>17}" for x in cells))


def on_benchmark_followups() -> None:
    """Diagnostic, never tuned on: how the shipped gates treat the learning benchmark's simulated follow-ups."""
    from bench.learning.preferences import PREFERENCES
    from bench.learning.prompts import ACKNOWLEDGEMENTS, CHITCHAT, THANKS_NEXT, build_prompt_sets

    sets = build_prompt_sets(0)
    new_questions = list(sets.train_open[:30]) + [q.question for q in sets.train_yes_no[:30]]
    pools = {"complaint (feedback)": sorted({c for p in PREFERENCES.values() for c in p.complaints}),
             "thanks (feedback)": list(ACKNOWLEDGEMENTS), "new question (not)": new_questions,
             "small talk (not)": list(CHITCHAT), "thanks, next question (not)": list(THANKS_NEXT)}
    weights = load_feedback_gate()
    prompt, reply = "Is a dolphin a mammal?", "Dolphins are marine animals that live in groups and breathe air."
    print(f"{'follow-ups of bench/learning':32}" + "".join(f"{g:>12}" for g in GATE_KINDS))
    for name, texts in pools.items():
        passed = [sum(make_gate(g, weights).decide(prompt, reply, t).is_feedback for t in texts) for g in GATE_KINDS]
        print(f"{name:32}" + "".join(f"{f'{n}/{len(texts)}':>12}" for n in passed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="evaluate only; write neither weights nor results")
    ap.add_argument("--on-benchmark", action="store_true",
                    help="only show how the shipped gates treat the learning benchmark's follow-ups (diagnostic)")
    args = ap.parse_args(argv)
    if args.on_benchmark:
        on_benchmark_followups()
        return 0
    rows = load_followups()
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "dev", "test")}
    learned, learned_notes = train(split["train"], split["dev"])
    ens = tune_ensemble(learned, split["dev"])
    learned.meta.update(ensemble={"rule_weight": ens["rule_weight"], "threshold": ens["threshold"]})
    weights = learned.to_dict()
    gates = {g: make_gate(g, weights) for g in GATE_KINDS}
    dev = {g: evaluate(gate, split["dev"]) for g, gate in gates.items()}
    default = choose_default(dev)
    test = {g: evaluate(gate, split["test"]) for g, gate in gates.items()}
    notes = {"learned": learned_notes, "ensemble": ens}
    print_report(dev, test, notes, default, {s: len(v) for s, v in split.items()})
    if not args.no_write:
        weights["meta"].update(default_gate=default, min_precision=MIN_PRECISION, trained_on="train split of "
                               "hsd_ray/data/followups.jsonl", n_train=len(split["train"]),
                               features={"word_ngrams": [1, 2], "char_ngrams": [2, 4], "relational": True},
                               dev={g: {k: m[k] for k in ("precision", "recall", "f1", "auc")} for g, m in dev.items()})
        weights["weights"] = {k: round(v, 6) for k, v in weights["weights"].items()}
        WEIGHTS_OUT.write_text(json.dumps(weights, sort_keys=True) + "\n")
        RESULTS_OUT.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_OUT.write_text(json.dumps({"default_gate": default, "notes": notes, "dev": dev, "test": test},
                                          indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {WEIGHTS_OUT.relative_to(ROOT)} and {RESULTS_OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
