"""Does the version gate see what users see? Per gated learning result: the served version's gate numbers (its
greedy replies to the 16 probe prompts: share that loops; the 40 checkable prompts: accuracy) beside what the
final evaluation's sampled replies show (share of the open replies that loop; capability on its 200 checkable
prompts), and over the files how closely each gate number follows its sampled counterpart (Pearson r).

    python -m bench.learning.gate_sight bench/results/learning/learning-test-*.json

Why: a served version's sampled replies can degenerate while its greedy probe replies pass the gate. Lists at 200
mixed interactions, seed 3, served v21 with loops 0.25 against the base's 0.06 (the bound is +0.25) and replies like
"SmolLM: SmolLM: SmolLM: …" (bench/learning/README.md, "Lists under mixed traffic at 200 interactions"). Users get
sampled replies (serve.temperature 0.7, top-p 0.9); the gate reads greedy ones, because they are deterministic.
Files without a gated, served version (gate off, or nothing served) are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from hsd_ray.core.version_gate import loop_rate


def _open_loops(evaluation: dict) -> float:
    return loop_rate([r["text"] for r in evaluation["replies"] if r["kind"] == "open"])


def served_row(result: dict) -> dict | None:
    """The version the final evaluation was served by, with its gate numbers and what its sampled replies show;
    None without one (gate off, no version accepted, or numbers from before the loop check)."""
    run = result["runs"][0]
    versions = (run.get("final_stats") or {}).get("versions") or []
    evals = run.get("evals") or []
    if not versions or len(evals) < 2:
        return None
    last = evals[-1]
    served = next((v for v in versions if v["version"] == last.get("published_version")
                   and v.get("state") != "rejected" and "loops" in (v.get("numbers") or {})), None)
    if served is None:
        return None
    n = served["numbers"]
    return {"version": served["version"], "gate_loops": n["loops"], "gate_loops_base": n["loops_base"],
            # the sampled check's (since 2026-12-06): its probe replies drawn at the serving temperature; None before
            "gate_sampled_loops": n["sampled_loops"] if n.get("sampled") else None,
            "sampled_loops": _open_loops(last), "sampled_loops_base": _open_loops(evals[0]),
            "gate_accuracy": n["accuracy"], "capability": last["capability"]["accuracy"],
            "capability_base": evals[0]["capability"]["accuracy"]}


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r; None for fewer than three pairs or a constant side."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="learning result JSON files")
    args = ap.parse_args(argv)
    rows = []
    for path in args.results:
        row = served_row(json.loads(path.read_text()))
        if row is not None:
            rows.append((path.name, row))
    if not rows:
        print("no gated result with a served version", file=sys.stderr)
        return 1
    print(f"{'result':60s} {'served':>6s}  {'greedy loops (base)':>19s}  {'sampled loops (base)':>20s}  "
          f"{'gate acc':>8s}  {'capability (base)':>17s}  {'gate sampled loops':>18s}")
    for name, r in rows:
        print(f"{name[:60]:60s} {'v' + str(r['version']):>6s}  {r['gate_loops']:>10.2f} ({r['gate_loops_base']:.2f})  "
              f"{r['sampled_loops']:>11.2f} ({r['sampled_loops_base']:.2f})  {r['gate_accuracy']:>8.3f}  "
              f"{r['capability']:>10.3f} ({r['capability_base']:.3f})  "
              + ("" if r["gate_sampled_loops"] is None else f"{r['gate_sampled_loops']:>18.3f}"))
    for label, x, y in (("greedy probe loops ~ sampled open-reply loops", "gate_loops", "sampled_loops"),
                        ("sampled probe loops ~ sampled open-reply loops", "gate_sampled_loops", "sampled_loops"),
                        ("gate accuracy (40 prompts) ~ capability (200)", "gate_accuracy", "capability")):
        pairs = [(row[x], row[y]) for _, row in rows if row[x] is not None]
        r = pearson([a for a, _ in pairs], [b for _, b in pairs])
        print(f"{label}: r = {'n/a' if r is None else f'{r:.2f}'} over {len(pairs)} served versions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
