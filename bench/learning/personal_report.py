"""Per-user learning over seeds: the rows of several `bench.learning.personal` result files, each user's gain averaged.

    python -m bench.learning.personal_report bench/results/learning/personal-<name>-s{0,1,2}-test.json

One result file per seed is how the benchmark is run when a seed takes 20–25 minutes (a crash loses one seed, not
all). Per user it prints, over the seeds: the own-preference gain (mean [min, max]), the efficiency of the mean gain
against the in-context ceiling gain (the issue's bar: ≥ 0.5), how far this user's adapter moved the other users'
preferences (what it learned that they did not ask for) against that metric's noise floor, capability base → final,
and whether the shared policy stayed unchanged in every run (per_user: it must). Where `python -m
bench.learning.quality` has written `quality-personal-<name>.json` beside a result, the good-compliance gain
(compliant, not looping, on topic) too. Below the table, per seed, what the yes/no user's adapter answers (format,
correct, yes / no shares): a constant "Yes" passes half of a balanced set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from bench.learning.personal import summarize
from bench.learning.quality import good_delta, quality_path


def good_gains(quality: dict | None) -> dict[tuple[int, str], float]:
    """{(seed, user): last − first good compliance} from a personal result's quality JSON (its rows are labelled
    "<user> adapter s<seed>")."""
    out = {}
    for row in (quality or {}).get("runs", []):
        user, _, seed = row["label"].rpartition(" adapter s")
        gain = good_delta(row["evals"])
        if user and gain is not None:
            out[(int(seed), user)] = gain
    return out


def over_seeds(rows: list[dict], good: dict[tuple[int, str], float] | None = None) -> list[dict]:
    """`personal.summarize` rows of any number of seeds → one row per user. `efficiency` is the mean gain over the
    ceiling gain; `worst_shift` the |shift| of another user's preference that is largest against that preference's
    noise floor in its seed, over every seed, and `shift_over_noise` that ratio (≤ 1: within the floor); the floors
    are those of each preference on the base model (binomial, 2 s.e.). Good-compliance gain only when every seed of
    the user has one."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_user[r["user"]].append(r)
    # a row's noise floor is that of its own preference on the base: the floor of preference o in a seed
    floor = {(r["seed"], r["user"]): r["noise_floor"] for r in rows}
    out = []
    for user, rs in by_user.items():
        gains = [r["gain"] for r in rs]
        mean = statistics.fmean(gains)
        ceiling = rs[0]["ceiling_gain"]
        shifts = [(abs(v) / floor[(r["seed"], o)], abs(v), o) for r in rs for o, v in r["others_shift"].items()]
        worst = max(shifts, default=(0.0, 0.0, None))  # the largest against its own floor
        goods = [(good or {}).get((r["seed"], user)) for r in rs]
        out.append({
            "user": user, "seeds": [r["seed"] for r in rs], "gain_mean": mean, "gain_min": min(gains),
            "gain_max": max(gains), "ceiling_gain": ceiling, "efficiency": mean / ceiling if ceiling else None,
            "worst_shift": worst[1], "worst_shift_pref": worst[2], "shift_over_noise": worst[0],
            "capability_base": statistics.fmean(r["capability_base"] for r in rs),
            "capability_final": statistics.fmean(r["capability_final"] for r in rs),
            "shared_policy_unchanged": all(r["shared_policy_unchanged"] for r in rs),
            "good_gain_mean": statistics.fmean(goods) if goods and None not in goods else None,
        })
    return out


def load(path: Path) -> tuple[list[dict], dict]:
    """The summary rows of one result file and the good-compliance gains of its quality JSON (if beside)."""
    result = json.loads(path.read_text())
    if result.get("benchmark") != "personal":
        raise SystemExit(f"{path}: not a bench.learning.personal result")
    q = quality_path(path)
    quality = json.loads(q.read_text()) if q.exists() else None
    return summarize(result), good_gains(quality if quality and quality.get("source") == path.name else None)


def format_rows(rows: list[dict]) -> str:
    head = (f"{'user':<12} {'seeds':<7} {'own gain: mean [min, max]':<27} {'ceiling':>8} {'efficiency':>10} "
            f"{'good gain':>9}  {'drift on another preference (÷ floor)':<42} {'capability':<14} shared unchanged")
    lines = [head, "-" * len(head)]
    for r in rows:
        gain = f"{100 * r['gain_mean']:+.1f} [{100 * r['gain_min']:+.1f}, {100 * r['gain_max']:+.1f}]"
        ceiling = "n/a" if r["ceiling_gain"] is None else f"{100 * r['ceiling_gain']:+.1f}"
        eff = "n/a" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        good = "n/a" if r["good_gain_mean"] is None else f"{100 * r['good_gain_mean']:+.1f}"
        shift = f"{100 * r['worst_shift']:.1f} pts {r['worst_shift_pref']} ({r['shift_over_noise']:.2f})"
        cap = f"{100 * r['capability_base']:.1f} → {100 * r['capability_final']:.1f}%"
        lines.append(f"{r['user']:<12} {','.join(map(str, r['seeds'])):<7} {gain:<27} {ceiling:>8} {eff:>10} "
                     f"{good:>9}  {shift:<42} {cap:<14} {'yes' if r['shared_policy_unchanged'] else 'NO'}")
    return "\n".join(lines)


ONE_ANSWER = 0.9  # of the replies that say yes or no at all, the share of one answer from which it is "one answer"


def yes_no_lines(rows: list[dict]) -> list[str]:
    """Per seed, what a yes/no user's adapter answers on the held-out questions (half yes, half no): format, correct,
    and the shares whose first yes/no word is "yes" / "no". A constant answer is right on half of them, so its own
    gain (format and correct) can pass the bar without learning anything: seed 2 of the 2026-12-05 test run said
    "Yes" to 87.5%, correct 47.5%."""
    out = []
    for r in sorted((r for r in rows if r["user"] == "yes_no_only"), key=lambda r: r["seed"]):
        fmt, correct, yes, no = (r.get(f"yes_no_{k}_final") for k in ("format", "correct", "said_yes", "said_no"))
        if None in (fmt, correct, yes, no):
            continue
        one = " — one answer to nearly every question" if yes + no and max(yes, no) >= ONE_ANSWER * (yes + no) else ""
        out.append(f"yes/no adapter s{r['seed']}: format {100 * fmt:.0f}%, correct {100 * correct:.0f}%, "
                   f"first yes/no word: yes {100 * yes:.0f}%, no {100 * no:.0f}%{one}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning.personal_report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="personal-*.json result files (their seeds are pooled)")
    args = p.parse_args(argv)
    rows, good = [], {}
    for path in map(Path, args.results):
        r, g = load(path)
        rows += r
        good.update(g)
    seen = [(r["seed"], r["user"]) for r in rows]
    if len(seen) != len(set(seen)):
        raise SystemExit("the same seed and user in two files: pool different seeds only")
    print(format_rows(over_seeds(rows, good)))
    print("\n".join(yes_no_lines(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
