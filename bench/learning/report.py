"""Summaries of a learning-benchmark result: per-run deltas, the printed table, the PNG learning curve.

Pure functions of the result dict that `bench.learning.run` writes (plus matplotlib for the figure). A run is one
(variant, trained preference or control, seed); its `evals` list holds one evaluation per checkpoint in interactions.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

# The bar from the issue: a clear improvement on the trained preference, little drift elsewhere, capability kept.
BAR_ON_TARGET, BAR_DRIFT, BAR_CAPABILITY = 0.20, 0.10, 0.02


def run_label(run: dict) -> str:
    return "control" if run["control"] else run["preference"]


def summarize_run(run: dict) -> dict:
    """Before → after numbers of one run (first vs last evaluation)."""
    evals = run["evals"]
    first, last = evals[0], evals[-1]
    c0, c1 = first["compliance"], last["compliance"]
    deltas = {p: c1[p] - c0[p] for p in c0}
    trained = None if run["control"] else run["preference"]
    opposite = run.get("opposes")  # training "use_emojis" must lower "no_emojis": that is the target, not drift
    off = {p: d for p, d in deltas.items() if p not in (trained, opposite)}
    drift_pref = max(off, key=lambda p: abs(off[p])) if off else None
    cap0, cap1 = first["capability"]["accuracy"], last["capability"]["accuracy"]
    ppl0, ppl1 = first["perplexity"], last["perplexity"]
    s = {
        "variant": run["variant"], "trained": run_label(run), "seed": run["seed"], "control": run["control"],
        "interactions": last["interactions"],
        "on_target_before": c0[trained] if trained else None,
        "on_target_after": c1[trained] if trained else None,
        "on_target_delta": deltas[trained] if trained else None,
        "on_target_peak": max(e["compliance"][trained] for e in evals) if trained else None,
        "max_off_target_drift": off[drift_pref] if drift_pref else 0.0,
        "max_off_target_pref": drift_pref,
        "compliance_delta": deltas,
        "capability_before": cap0, "capability_after": cap1, "capability_delta": cap1 - cap0,
        "perplexity_before": ppl0, "perplexity_after": ppl1, "perplexity_delta_pct": 100.0 * (ppl1 / ppl0 - 1.0),
        "mean_words_before": first.get("mean_words_open"), "mean_words_after": last.get("mean_words_open"),
        "minutes": run["timings"]["total_s"] / 60.0,
    }
    kept = abs(s["max_off_target_drift"]) <= BAR_DRIFT and s["capability_delta"] >= -BAR_CAPABILITY
    s["meets_bar"] = kept and (trained is None or s["on_target_delta"] >= BAR_ON_TARGET)
    return s


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:4.0f}%"


def _signed(x: float | None, scale: float = 100.0, unit: str = "") -> str:
    return "n/a" if x is None else f"{scale * x:+.0f}{unit}"


def format_table(summaries: list[dict]) -> str:
    head = (f"{'variant':<17} {'trained':<14} {'seed':>4}  {'on-target before→after':<24} "
            f"{'max off-target drift':<28} {'capability':<20} {'perplexity':<22} {'words':<10} {'min':>4}  bar")
    lines = [head, "-" * len(head)]
    for s in summaries:
        on = ("n/a" if s["on_target_delta"] is None else
              f"{_pct(s['on_target_before'])} → {_pct(s['on_target_after'])} ({_signed(s['on_target_delta'])})")
        drift = f"{_signed(s['max_off_target_drift'])} pts ({s['max_off_target_pref']})"
        cap = (f"{_pct(s['capability_before'])} → {_pct(s['capability_after'])} "
               f"({_signed(s['capability_delta'])})")
        ppl = f"{s['perplexity_before']:.2f} → {s['perplexity_after']:.2f} ({s['perplexity_delta_pct']:+.0f}%)"
        words = f"{s['mean_words_before']:.0f} → {s['mean_words_after']:.0f}"
        lines.append(f"{s['variant']:<17} {s['trained']:<14} {s['seed']:>4}  {on:<24} {drift:<28} {cap:<20} "
                     f"{ppl:<22} {words:<10} {s['minutes']:>4.0f}  {'yes' if s['meets_bar'] else 'no'}")
    return "\n".join(lines)


def aggregate(summaries: list[dict]) -> list[dict]:
    """Mean and spread (min..max) over seeds for each (variant, trained)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in summaries:
        groups[(s["variant"], s["trained"])].append(s)
    out = []
    for (variant, trained), ss in groups.items():
        row = {"variant": variant, "trained": trained, "seeds": [s["seed"] for s in ss]}
        for key in ("on_target_delta", "max_off_target_drift", "capability_delta", "perplexity_delta_pct"):
            vals = [s[key] for s in ss if s[key] is not None]
            row[key] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)} if vals else None
        out.append(row)
    return out


def format_aggregate(rows: list[dict]) -> str:
    def cell(r, key, scale=100.0, unit=" pts"):
        v = r[key]
        if v is None:
            return "n/a"
        return f"{scale * v['mean']:+.0f}{unit} [{scale * v['min']:+.0f}, {scale * v['max']:+.0f}]"

    head = (f"{'variant':<17} {'trained':<14} {'seeds':<8} {'Δ on-target':<22} {'max drift':<22} "
            f"{'Δ capability':<22} Δ ppl")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<17} {r['trained']:<14} {','.join(map(str, r['seeds'])):<8} "
                     f"{cell(r, 'on_target_delta'):<22} {cell(r, 'max_off_target_drift'):<22} "
                     f"{cell(r, 'capability_delta'):<22} {cell(r, 'perplexity_delta_pct', 1.0, '%')}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Compliance vs interactions per trained preference (one colour per variant, control dashed), off-target
    drift, capability and perplexity; mean over seeds with the min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    trained = list(dict.fromkeys(r["preference"] for r in runs if not r["control"]))
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    colours = {v: plt.get_cmap("tab10")(i) for i, v in enumerate(variants)}
    panels = [(f"compliance: {p}", "compliance", p) for p in trained]
    panels += [("off-target drift (mean Δ, untrained)", "drift", None), ("capability accuracy", "capability", None),
               ("reference perplexity", "perplexity", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    markers = "osD^vP*X"

    def series(run: dict, what: str, pref: str | None) -> list[float]:
        ev = run["evals"]
        if what == "compliance":
            return [e["compliance"][pref] for e in ev]
        if what == "capability":
            return [e["capability"]["accuracy"] for e in ev]
        if what == "perplexity":
            return [e["perplexity"] for e in ev]
        own = None if run["control"] else run["preference"]
        others = [p for p in ev[0]["compliance"] if p not in (own, run.get("opposes"))]
        return [statistics.fmean(e["compliance"][p] - ev[0]["compliance"][p] for p in others) for e in ev]

    for ax, (title, what, pref) in zip(axes[0], panels):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in runs:
            if what == "compliance" and not r["control"] and r["preference"] != pref:
                continue
            groups[(r["variant"], run_label(r))].append(r)
        for (variant, label), rs in groups.items():
            xs = [e["interactions"] for e in rs[0]["evals"]]
            ys = [series(r, what, pref) for r in rs]
            n = min(len(y) for y in ys)
            xs, ys = xs[:n], [y[:n] for y in ys]
            mean = [statistics.fmean(col) for col in zip(*ys)]
            style = "--" if label == "control" else "-"
            marker = "" if label == "control" else markers[trained.index(label) % len(markers)]
            ax.plot(xs, mean, style, marker=marker, color=colours[variant], label=f"{variant} · {label}")
            if len(ys) > 1:
                ax.fill_between(xs, [min(c) for c in zip(*ys)], [max(c) for c in zip(*ys)], color=colours[variant],
                                alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("interactions")
        if what in ("compliance", "capability"):
            ax.set_ylim(-0.03, 1.03)
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    cfg = result["config"]
    fig.suptitle(f"learning benchmark · {cfg['model']} · seeds {cfg['seeds']} · {cfg['interactions']} interactions",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
