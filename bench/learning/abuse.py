"""How often do served versions swear at or insult their users? Counts the replies saved in learning result files
that `hsd_ray.core.abuse.is_abusive` flags: the first evaluation of every run (the base model) against the later
ones (trained versions; with the version gate on, the versions that were served). No model needed.

    python -m bench.learning.abuse bench/results/learning/learning-*.json
    python -m bench.learning.abuse bench/results/learning/learning-test-*.json --examples 0

Prints one line per file with a flagged reply, the totals, and the distinct flagged replies (up to --examples).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hsd_ray.core.abuse import is_abusive


def count_file(result: dict) -> dict:
    """Replies and flagged replies, base (each run's first evaluation) and trained (the later ones), with every
    flagged text as (run index, evaluation index, text); evaluation index 0 is the base's."""
    out = {"base": 0, "base_abusive": 0, "trained": 0, "trained_abusive": 0, "flagged": []}
    for r, run in enumerate(result.get("runs", [])):
        for e, evaluation in enumerate(run.get("evals", [])):
            texts = [x.get("text", "") for x in evaluation.get("replies", [])]
            flagged = [t for t in texts if is_abusive(t)]
            key = "base" if e == 0 else "trained"
            out[key] += len(texts)
            out[f"{key}_abusive"] += len(flagged)
            out["flagged"] += [(r, e, t) for t in flagged]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="learning-*.json result files")
    p.add_argument("--examples", type=int, default=20, help="distinct flagged replies to print")
    args = p.parse_args(argv)
    total = {"base": 0, "base_abusive": 0, "trained": 0, "trained_abusive": 0}
    examples: dict[str, str] = {}
    for path in map(Path, args.results):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path.name}: skipped ({e})", file=sys.stderr)
            continue
        if not isinstance(result, dict) or "runs" not in result:
            continue
        counts = count_file(result)
        for k in total:
            total[k] += counts[k]
        if counts["base_abusive"] or counts["trained_abusive"]:
            print(f"{path.name}: base {counts['base_abusive']} of {counts['base']}, "
                  f"trained {counts['trained_abusive']} of {counts['trained']}")
        for r, e, text in counts["flagged"]:
            examples.setdefault(" ".join(text.split())[:160], f"{path.name} run {r} evaluation {e}")
    print(f"total: base {total['base_abusive']} of {total['base']} replies, "
          f"trained {total['trained_abusive']} of {total['trained']}")
    for text, where in list(examples.items())[: args.examples]:
        print(f"  {where}: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
