"""Summaries of learning-benchmark results: per-run deltas, seeds aggregated, gain over the matched control, noise
floor marks and distillation efficiency. Pure functions of the result dict that `bench.learning.run` writes, plus
the noise-floor JSON (`python -m bench.learning.noise`) and the in-context ceiling JSON (`python -m
bench.learning.ceiling`) of the same model and split, read from the results folder when they exist.

    python -m bench.learning.report RESULT.json [RESULT.json ...] [--noise NOISE.json] [--ceiling CEILING.json]

- The TARGET metric of a run is the trained preference's compliance, except for `yes_no_only`: there it is
  `yes_no.good` (format AND correct answer), so a learned "No" to every question does not count as learning.
- A delta whose size is within the noise floor of its metric (`noise.py`) is marked "~".
- Distillation efficiency = learned gain (mean over seeds) / in-context ceiling gain (ceiling with the complaint in
  the run's hindsight template minus the no-instruction baseline); n/a when the ceiling gain is under 2 points.
- Lost answers: checkable prompts the base answered right and the trained model answers wrong (`answer_changes`),
  next to those gained. The net capability delta hides them; their noise floor is the number of answers that differ
  between the base evaluations of the reported runs (greedy: 0 so far, 30 runs on the test split).
- Good compliance (`python -m bench.learning.quality`: compliant replies that neither loop nor lose their question):
  read from the `quality-<name>.json` beside each result file when it exists; the version-gate comparison then also
  prints the good-compliance gain kept, with its interval.
"""

from __future__ import annotations

import argparse
import json
import functools
import random
import statistics
from collections import defaultdict
from pathlib import Path

from bench.learning.quality import good_delta, quality_path
from bench.learning.quality import run_label as quality_label
from bench.learning.scoring import answer_changes, metric_values

# The bar from the issue: a clear improvement on the trained preference, little drift elsewhere, capability kept.
BAR_ON_TARGET, BAR_DRIFT, BAR_CAPABILITY = 0.20, 0.10, 0.02
# The version gate's bar: what is served never falls more than 3 points of capability below the base, and a trained
# preference keeps at least 80% of the gain it reaches without the gate.
BAR_SERVED_DROP, BAR_GAIN_KEPT = 0.03, 0.80
# Rates are counts over a fixed sample size, and their differences carry float error (0.2375 - 0.0375 is
# 0.19999999999999998): bounds are compared with this much slack, far below one sample (1/80).
BAR_EPS = 1e-9


def _at_least(value: float, bound: float) -> bool:
    return value >= bound - BAR_EPS


def _at_most(value: float, bound: float) -> bool:
    return value <= bound + BAR_EPS
MIN_CEILING_GAIN = 0.02


def target_metric(preference: str) -> str:
    return "yes_no.good" if preference == "yes_no_only" else f"compliance.{preference}"


def run_label(run: dict) -> str:
    pop = run.get("population", "control" if run.get("control") else "feedback")
    return run["preference"] if pop == "feedback" else f"{run['preference']} {pop}"


def summarize_run(run: dict) -> dict:
    """Before → after numbers of one run (first vs last evaluation)."""
    evals = run["evals"]
    m0, m1 = metric_values(evals[0]), metric_values(evals[-1])
    deltas = {k: m1[k] - m0[k] for k in m0 if k in m1}
    pref, target = run["preference"], target_metric(run["preference"])
    skip = {f"compliance.{pref}", f"compliance.{run.get('opposes')}"}  # the opposite moving is the target moving
    off = {k[len("compliance."):]: d for k, d in deltas.items() if k.startswith("compliance.") and k not in skip}
    drift_pref = max(off, key=lambda p: abs(off[p])) if off else None
    population = run.get("population", "control" if run.get("control") else "feedback")
    s = {
        "variant": run["variant"], "trained": pref, "population": population, "seed": run["seed"],
        "gate": run.get("gate"), "control": population == "control", "split": run.get("split", "dev"),
        "template": run.get("loop_config", {}).get("hindsight", {}).get("template"),
        "interactions": evals[-1]["interactions"], "target": target,
        "on_target_before": m0.get(target), "on_target_after": m1.get(target), "on_target_delta": deltas.get(target),
        "on_target_peak": max(metric_values(e).get(target, float("nan")) for e in evals),
        "max_off_target_drift": off[drift_pref] if drift_pref else 0.0, "max_off_target_pref": drift_pref,
        "metric_delta": deltas,
        "capability_before": m0["capability"], "capability_after": m1["capability"],
        "capability_delta": deltas["capability"],
        "perplexity_before": evals[0]["perplexity"], "perplexity_after": evals[-1]["perplexity"],
        "perplexity_delta_pct": 100.0 * (evals[-1]["perplexity"] / evals[0]["perplexity"] - 1.0),
        "mean_words_before": evals[0].get("mean_words_open"), "mean_words_after": evals[-1].get("mean_words_open"),
        "minutes": run["timings"]["total_s"] / 60.0,
        # what was *served* at each evaluation (the evaluator loads the served version): its lowest point
        "capability_min_delta": min(metric_values(e)["capability"] for e in evals) - m0["capability"],
        "version_gate": bool(run.get("loop_config", {}).get("version_gate", {}).get("enabled", False)),
        "versions_rejected": run.get("final_stats", {}).get("versions_rejected", 0),
        "versions_published": len(run.get("final_stats", {}).get("versions", [])),
        "answers": answers_vs_base(evals),
        "good_delta": good_delta(run.get("quality")),  # rows from `attach_quality`
    }
    for k in ("format", "correct", "said_yes"):
        if "yes_no" in evals[0] and "yes_no" in evals[-1]:
            s[f"yes_no_{k}_before"], s[f"yes_no_{k}_after"] = evals[0]["yes_no"][k], evals[-1]["yes_no"][k]
    kept = _at_most(abs(s["max_off_target_drift"]), BAR_DRIFT) and _at_least(s["capability_delta"], -BAR_CAPABILITY)
    if population == "control":  # a control must be flat, on its matched preference too
        s["meets_bar"] = kept and _at_most(abs(s["on_target_delta"] or 0.0), BAR_DRIFT)
    else:
        s["meets_bar"] = kept and _at_least(s["on_target_delta"] or 0.0, BAR_ON_TARGET)
    return s


@functools.cache
def _kind_of() -> dict[str, str]:
    """Question -> kind of every checkable prompt (results written before answers carried their kind)."""
    from bench.learning.prompts import all_checkable

    return {p.question: p.kind for p in all_checkable()}


def _answers(ev: dict) -> list[dict] | None:
    answers = ev.get("capability", {}).get("answers")
    return answers if answers and len(answers) == ev["capability"].get("n") else None  # not a trimmed sample


def answers_vs_base(evals: list[dict]) -> dict | None:
    """`answer_changes` of the last evaluation against the first (the base), with the most answers lost at any
    evaluation (what was served at its worst); None when the result kept no full answer lists."""
    first, every = _answers(evals[0]), [_answers(e) for e in evals[1:]]
    if first is None or not every or any(a is None for a in every):
        return None
    changes = [answer_changes(first, a, _kind_of()) for a in every]
    return {**changes[-1], "lost_max": max(c["lost"] for c in changes)}


def base_answer_spread(runs: list[dict]) -> dict | None:
    """The noise floor of lost answers: how many answers differ between the base evaluations (the first of each
    run) of the same prompts. None with fewer than two such runs."""
    firsts = [a for a in (_answers(r["evals"][0]) for r in runs if r.get("evals")) if a is not None]
    if firsts:
        questions = [x["question"] for x in firsts[0]]
        firsts = [a for a in firsts if [x["question"] for x in a] == questions]
    if len(firsts) < 2:
        return None
    changed = [sum(x["correct"] != y["correct"] for x, y in zip(firsts[0], a)) for a in firsts[1:]]
    return {"runs": len(firsts), "max_changed": max(changed)}


def _group_key(s: dict) -> tuple:
    return s["variant"], s["trained"], s["population"], s.get("gate"), s.get("version_gate", False)


def _stats(vals: list[float]) -> dict | None:
    vals = [v for v in vals if v is not None]
    return ({"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}
            if vals else None)


def ratio_interval(on: list[float], off: list[float], *, level: float = 0.95, draws: int = 10_000,
                   seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of mean(on) / mean(off), the seeds of each side resampled independently with
    replacement. Draws whose resampled mean(off) is not positive have no ratio and are left out; None when fewer
    than half the draws have one, or a side has no seed. With three seeds a side it is a rough guide to how far the
    seed scatter alone moves the ratio, not a calibrated interval (a bootstrap of few points is too narrow)."""
    if not on or not off:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        mean_off = statistics.fmean(rng.choices(off, k=len(off)))
        mean_on = statistics.fmean(rng.choices(on, k=len(on)))
        if mean_off > 0:
            ratios.append(mean_on / mean_off)
    if len(ratios) < draws / 2:
        return None
    ratios.sort()
    tail, last = (1 - level) / 2, len(ratios) - 1
    return ratios[round(tail * last)], ratios[round((1 - tail) * last)]


def aggregate(summaries: list[dict]) -> list[dict]:
    """Mean and spread (min..max) over seeds for each (variant, trained, population, gate)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in summaries:
        groups[_group_key(s)].append(s)
    out = []
    for (variant, trained, population, gate, version_gate), ss in groups.items():
        row = {"variant": variant, "trained": trained, "population": population, "gate": gate,
               "version_gate": version_gate,
               "target": ss[0]["target"], "template": ss[0].get("template"), "seeds": [s["seed"] for s in ss]}
        for key in ("on_target_delta", "max_off_target_drift", "capability_delta", "capability_min_delta",
                    "perplexity_delta_pct", "versions_rejected", "versions_published"):
            row[key] = _stats([s[key] for s in ss])
        row["yes_no_correct_delta"] = _stats([s["metric_delta"].get("yes_no.correct") for s in ss])
        row["answers_lost"] = _stats([s["answers"]["lost"] if s.get("answers") else None for s in ss])
        good = [s.get("good_delta") for s in ss]
        row["good_delta"] = _stats(good) if None not in good else None  # every seed, or none: no partial mean
        out.append(row)
    return out


def gain_over_control(summaries: list[dict]) -> list[dict]:
    """Target gain of each trained run minus that of its matched control (same variant, preference, seed, gate)."""
    def key(s: dict) -> tuple:
        return s["variant"], s["trained"], s["seed"], s.get("gate"), s.get("version_gate", False)

    controls = {key(s): s for s in summaries if s["control"]}
    out = []
    for s in summaries:
        c = controls.get(key(s))
        if s["control"] or c is None or s["on_target_delta"] is None or c["on_target_delta"] is None:
            continue
        out.append({"variant": s["variant"], "trained": s["trained"], "population": s["population"],
                    "seed": s["seed"], "gate": s.get("gate"), "trained_delta": s["on_target_delta"],
                    "control_delta": c["on_target_delta"], "gain": s["on_target_delta"] - c["on_target_delta"],
                    "capability_gain": s["capability_delta"] - c["capability_delta"]})
    return out


def _kept(on: dict | None, off: dict | None, control: bool) -> tuple:
    """(mean gain on, mean gain off, on / off, its bootstrap interval) of two `_stats`; the ratio (and interval) is
    None for a control, or when either side is missing or the gain off is not positive."""
    gain_on, gain_off = (x["mean"] if x else None for x in (on, off))
    if control or gain_on is None or not gain_off or gain_off <= 0:
        return gain_on, gain_off, None, None
    return gain_on, gain_off, gain_on / gain_off, ratio_interval(on["values"], off["values"])


def version_gate_comparison(rows: list[dict]) -> list[dict]:
    """Aggregated rows with the version gate on beside the same (variant, trained, population, gate) with it off: the
    gain kept (on / off, mean over seeds), the lowest served capability against the base in any run, rejections, and
    the issue's bar (every gated run within BAR_SERVED_DROP of the base; trained keep BAR_GAIN_KEPT of their gain).
    With quality rows on every run (`attach_quality`), the same for good compliance ("good_*"); the bar is read on
    compliance."""
    by_key = {(r["variant"], r["trained"], r["population"], r["gate"], r["version_gate"]): r for r in rows}
    out = []
    for (variant, trained, population, gate, on), r_on in by_key.items():
        r_off = by_key.get((variant, trained, population, gate, False))
        if not on or r_off is None:
            continue
        control = population == "control"
        gain_on, gain_off, kept, interval = _kept(r_on["on_target_delta"], r_off["on_target_delta"], control)
        good_on, good_off, good_kept, good_interval = _kept(r_on.get("good_delta"), r_off.get("good_delta"), control)
        lowest_on = r_on["capability_min_delta"]["min"]
        out.append({"variant": variant, "trained": trained, "population": population, "gate": gate,
                    "seeds_on": r_on["seeds"], "seeds_off": r_off["seeds"], "gain_on": gain_on, "gain_off": gain_off,
                    "gain_kept": kept, "gain_kept_interval": interval, "good_on": good_on, "good_off": good_off,
                    "good_kept": good_kept, "good_kept_interval": good_interval, "lowest_capability_on": lowest_on,
                    "lowest_capability_off": r_off["capability_min_delta"]["min"],
                    "rejected_on": r_on["versions_rejected"]["mean"] * len(r_on["seeds"]),
                    "published_on": r_on["versions_published"]["mean"] * len(r_on["seeds"]),
                    "meets_bar": _at_least(lowest_on, -BAR_SERVED_DROP)
                    and (control or _at_least(kept or 0.0, BAR_GAIN_KEPT))})
    return out


def _kept_cell(kept: float | None, interval: tuple | None) -> str:
    return ("—" if kept is None else f"{kept:.2f}") + (" [{:.2f}, {:.2f}]".format(*interval) if interval else "")


def format_version_gate(rows: list[dict]) -> str:
    """One line per comparison; the good-compliance columns read "n/a" / "—" where no quality file was beside."""
    head = (f"{'population':<10} {'feedback gate':<13} {'seeds on/off':<13} {'Δ target on/off':<17} {'kept':<18} "
            f"{'Δ good on/off':<15} {'good kept':<18} {'lowest served capability on/off':<32} "
            f"{'rejected/published (on)':<24} bar")
    lines = [head, "-" * len(head)]
    for r in rows:
        gains = "/".join("n/a" if g is None else f"{100 * g:+.0f}" for g in (r["gain_on"], r["gain_off"]))
        good = "/".join("n/a" if g is None else f"{100 * g:+.0f}" for g in (r.get("good_on"), r.get("good_off")))
        kept = _kept_cell(r["gain_kept"], r.get("gain_kept_interval"))
        good_kept = _kept_cell(r.get("good_kept"), r.get("good_kept_interval"))
        low = f"{100 * r['lowest_capability_on']:+.1f} / {100 * r['lowest_capability_off']:+.1f} pts"
        seeds = f"{','.join(map(str, r['seeds_on']))}/{','.join(map(str, r['seeds_off']))}"
        lines.append(f"{r['population']:<10} {str(r['gate']):<13} {seeds:<13} {gains:<17} {kept:<18} {good:<15} "
                     f"{good_kept:<18} {low:<32} {r['rejected_on']:.0f}/{r['published_on']:.0f}{'':<19} "
                     f"{'yes' if r['meets_bar'] else 'no'}")
    return "\n".join(lines)


# ---- noise floor and ceiling ----------------------------------------------------------------------------------------


def load_json(path) -> dict | None:
    p = Path(path) if path else None
    return json.loads(p.read_text()) if p and p.exists() else None


def noise_floor(noise: dict | None, metric: str) -> float | None:
    if not noise or metric not in noise.get("metrics", {}):
        return None
    return noise["metrics"][metric]["floor"]


def mark(delta: float | None, noise: dict | None, metric: str, scale: float = 100.0) -> str:
    """'+12' or '+3~' (within the noise floor of `metric`)."""
    if delta is None:
        return "n/a"
    floor = noise_floor(noise, metric)
    return f"{scale * delta:+.0f}" + ("~" if floor is not None and abs(delta) <= floor else "")


def ceiling_gain(ceiling: dict | None, preference: str, template: str | None) -> float | None:
    """Ceiling (complaint in the run's hindsight template) minus baseline, on the preference's target metric.
    `plain` appends the complaint as written, which is the ceiling's `instruction` condition (the same messages and
    seeds, identical replies), so files measured before `plain` was a named condition are read through it."""
    if not ceiling:
        return None
    row = ceiling.get("target", ceiling.get("compliance", {})).get(preference) or {}
    template = template or "online"
    conditions = [f"hindsight_{template}"] + (["instruction"] if template == "plain" else [])
    cond = next((c for c in conditions if c in row), None)
    return None if cond is None else row[cond] - row["baseline"]


def efficiency(gain: float | None, ceiling: dict | None, preference: str, template: str | None) -> str:
    cg = ceiling_gain(ceiling, preference, template)
    if gain is None or cg is None:
        return "n/a"
    if cg < MIN_CEILING_GAIN:
        return f"n/a (ceiling {100 * cg:+.0f})"
    return f"{gain / cg:.2f} ({100 * gain:+.0f}/{100 * cg:+.0f})"


# ---- tables ---------------------------------------------------------------------------------------------------------


def attach_quality(runs: list[dict], quality: dict) -> list[dict]:
    """The runs of one result file, each with its row of that file's quality JSON (`quality`: "runs" in the result's
    order, one row per run) as "quality". A row that names another run is an error, not a silent mismatch."""
    rows = quality.get("runs", [])
    if len(rows) != len(runs):
        raise ValueError(f"quality file {quality.get('source')!r} has {len(rows)} rows for {len(runs)} runs")
    for run, row in zip(runs, rows):
        if row["label"] != quality_label(run):
            raise ValueError(f"quality row {row['label']!r} is not run {quality_label(run)!r}")
    return [{**run, "quality": row["evals"]} for run, row in zip(runs, rows)]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _yes_no_cell(s: dict, noise: dict | None) -> str:
    if "yes_no_correct_before" not in s:
        return "—"
    return (f"fmt {_pct(s['yes_no_format_before'])}→{_pct(s['yes_no_format_after'])} "
            f"correct {_pct(s['yes_no_correct_before'])}→{_pct(s['yes_no_correct_after'])} "
            f"({mark(s['metric_delta'].get('yes_no.correct'), noise, 'yes_no.correct')}) "
            f"yes {_pct(s['yes_no_said_yes_before'])}→{_pct(s['yes_no_said_yes_after'])}")


def format_table(summaries: list[dict], noise: dict | None = None, ceiling: dict | None = None) -> str:
    head = (f"{'variant':<17} {'trained':<13} {'population':<10} {'seed':>4}  {'target before→after':<22} "
            f"{'efficiency':<18} {'yes/no (format, correct, said yes)':<52} {'max off-target drift':<26} "
            f"{'capability':<18} {'answers lost/gained':<26} {'ppl':<6} {'words':<9} {'min':>4}  bar")
    lines = [head, "-" * len(head)]
    for s in summaries:
        on = (f"{_pct(s['on_target_before'])} → {_pct(s['on_target_after'])} "
              f"({mark(s['on_target_delta'], noise, s['target'])})")
        eff = "—" if s["control"] else efficiency(s["on_target_delta"], ceiling, s["trained"], s.get("template"))
        pref = s["max_off_target_pref"]
        drift = f"{mark(s['max_off_target_drift'], noise, f'compliance.{pref}')} pts ({pref})"
        cap = (f"{_pct(s['capability_before'])} → {_pct(s['capability_after'])} "
               f"({mark(s['capability_delta'], noise, 'capability')})")
        words = f"{s['mean_words_before']:.0f} → {s['mean_words_after']:.0f}"
        lines.append(f"{s['variant']:<17} {s['trained']:<13} {s['population']:<10} {s['seed']:>4}  {on:<22} "
                     f"{eff:<18} {_yes_no_cell(s, noise):<52} {drift:<26} {cap:<18} {_answers_cell(s):<26} "
                     f"{s['perplexity_delta_pct']:+.0f}%{'':<2} {words:<9} {s['minutes']:>4.0f}  "
                     f"{'yes' if s['meets_bar'] else 'no'}")
    return "\n".join(lines)


def _answers_cell(s: dict) -> str:
    """"-7/+16 of 42 (capital 4)": lost and gained against the base's right answers, the kind most lost."""
    a = s.get("answers")
    if a is None:
        return "n/a"
    most = max(a["lost_by_kind"].items(), key=lambda kv: kv[1], default=None)
    return f"-{a['lost']}/+{a['gained']} of {a['right_before']}" + (f" ({most[0]} {most[1]})" if most else "")


def _cell(v: dict | None, noise: dict | None, metric: str | None, scale: float = 100.0, unit: str = "") -> str:
    if v is None:
        return "n/a"
    m = mark(v["mean"], noise, metric, scale) if metric else f"{scale * v['mean']:+.0f}"
    return f"{m}{unit} [{scale * v['min']:+.0f}, {scale * v['max']:+.0f}]"


def format_aggregate(rows: list[dict], noise: dict | None = None, ceiling: dict | None = None) -> str:
    head = (f"{'variant':<17} {'trained':<13} {'population':<10} {'seeds':<6} {'Δ target':<18} {'efficiency':<18} "
            f"{'Δ yes/no correct':<18} {'max drift':<18} {'Δ capability':<18} {'answers lost':<14} Δ ppl")
    lines = [head, "-" * len(head)]
    for r in rows:
        gain = r["on_target_delta"]["mean"] if r["on_target_delta"] else None
        eff = "—" if r["population"] == "control" else efficiency(gain, ceiling, r["trained"], r.get("template"))
        population = r["population"] + ("+vg" if r.get("version_gate") else "")  # +vg: the version gate was on
        lines.append(f"{r['variant']:<17} {r['trained']:<13} {population:<10} "
                     f"{','.join(map(str, r['seeds'])):<6} {_cell(r['on_target_delta'], noise, r['target']):<18} "
                     f"{eff:<18} {_cell(r['yes_no_correct_delta'], noise, 'yes_no.correct'):<18} "
                     f"{_cell(r['max_off_target_drift'], noise, None):<18} "
                     f"{_cell(r['capability_delta'], noise, 'capability'):<18} "
                     f"{_count_cell(r.get('answers_lost')):<14} "
                     f"{_cell(r['perplexity_delta_pct'], None, None, 1.0, '%')}")
    return "\n".join(lines)


def _count_cell(v: dict | None) -> str:
    return "n/a" if v is None else f"{v['mean']:.1f} [{v['min']:.0f}, {v['max']:.0f}]"


def format_gain(rows: list[dict], noise: dict | None = None) -> str:
    head = f"{'variant':<17} {'trained':<13} {'population':<10} {'seed':>4}  {'Δ trained':>10} {'Δ control':>10} " \
           f"{'gain':>8} {'capability gain':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        target = target_metric(r["trained"])
        lines.append(f"{r['variant']:<17} {r['trained']:<13} {r['population']:<10} {r['seed']:>4}  "
                     f"{mark(r['trained_delta'], noise, target):>10} {mark(r['control_delta'], noise, target):>10} "
                     f"{mark(r['gain'], noise, target):>8} {mark(r['capability_gain'], noise, 'capability'):>16}")
    return "\n".join(lines)


def default_paths(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """The noise-floor and ceiling JSONs of the result's model and split in `out_dir`."""
    model, split = Path(result["config"]["model"]).name, result["config"].get("split", "dev")
    return out_dir / f"noise-{model}-{split}.json", out_dir / f"ceiling-{model}-{split}.json"


def full_report(result: dict, out_dir: Path, noise_path=None, ceiling_path=None) -> str:
    """Per-run table, seeds aggregated, gain over the matched control; with the noise floor and the ceiling."""
    dn, dc = default_paths(result, Path(out_dir))
    noise, ceiling = load_json(noise_path or dn), load_json(ceiling_path or dc)
    summaries = [summarize_run(r) for r in result["runs"] if r.get("evals")]
    split = result["config"].get("split", "dev")
    parts = [f"split: {split}" + ("  (dev: for choosing settings — report test numbers)" if split == "dev" else ""),
             f"noise floor: {noise_path or dn if noise else 'MISSING (python -m bench.learning.noise)'}; "
             f"'~' = within it",
             f"ceiling: {ceiling_path or dc if ceiling else 'MISSING (python -m bench.learning.ceiling)'}",
             _spread_line(base_answer_spread(result["runs"])),
             "", format_table(summaries, noise, ceiling)]
    if summaries:
        parts += ["", "over seeds: mean [min, max] (+vg: version gate on)",
                  format_aggregate(aggregate(summaries), noise, ceiling)]
    gains = gain_over_control(summaries)
    if gains:
        parts += ["", "gain over the matched control (target metric)", format_gain(gains, noise)]
    gated = version_gate_comparison(aggregate(summaries)) if summaries else []
    if gated:
        parts += ["", "version gate on vs off (capability: lowest served evaluation minus the base, any run; kept: "
                      "gain on / off, [95% bootstrap over seeds])",
                  format_version_gate(gated)]
    return "\n".join(parts)


def _spread_line(spread: dict | None) -> str:
    if spread is None:
        return "lost answers' floor: n/a (fewer than two runs with full answer lists)"
    return (f"lost answers' floor: at most {spread['max_changed']} answers differ between the base evaluations of "
            f"{spread['runs']} runs")


def load_with_quality(path: Path) -> dict:
    """A result file, its runs carrying their quality rows when the quality JSON beside it was made from it."""
    result = json.loads(path.read_text())
    quality = load_json(quality_path(path))
    if quality is None or quality.get("source") != path.name:
        return result
    return {**result, "runs": attach_quality(result["runs"], quality), "quality_file": quality_path(path).name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="learning-*.json result files (runs are merged)")
    p.add_argument("--noise", default=None, help="noise-floor JSON (default: noise-<model>-<split>.json beside)")
    p.add_argument("--ceiling", default=None, help="ceiling JSON (default: ceiling-<model>-<split>.json beside)")
    args = p.parse_args(argv)
    results = [load_with_quality(Path(f)) for f in args.results]
    splits = {r["config"].get("split", "dev") for r in results}
    if len(splits) > 1:
        raise SystemExit(f"results from different splits {sorted(splits)}: report them separately")
    merged = {**results[0], "runs": [run for r in results for run in r["runs"]]}
    with_quality = sum(bool(r.get("quality_file")) for r in results)
    print(f"quality files (good compliance): {with_quality} of {len(results)} results")
    print(full_report(merged, Path(args.results[0]).parent, args.noise, args.ceiling))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
