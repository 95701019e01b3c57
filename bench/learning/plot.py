"""The PNG learning curve of a learning-benchmark result (compliance vs interactions per trained preference, one
colour per variant, controls dashed, mixed dotted; off-target drift; capability; perplexity). Mean over seeds with
the min..max band. Called by `bench.learning.run` at the end."""

from __future__ import annotations

import statistics
from collections import defaultdict

from bench.learning.report import run_label


def plot(result: dict, path) -> None:
    """Compliance vs interactions per trained preference (one colour per variant, control dashed), off-target
    drift, capability and perplexity; mean over seeds with the min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    trained = list(dict.fromkeys(r["preference"] for r in runs if r["preference"]))
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
        own = run["preference"]
        others = [p for p in ev[0]["compliance"] if p not in (own, run.get("opposes"))]
        return [statistics.fmean(e["compliance"][p] - ev[0]["compliance"][p] for p in others) for e in ev]

    for ax, (title, what, pref) in zip(axes[0], panels):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in runs:
            if what == "compliance" and r["preference"] != pref:
                continue
            groups[(r["variant"], run_label(r))].append(r)
        for (variant, label), rs in groups.items():
            xs = [e["interactions"] for e in rs[0]["evals"]]
            ys = [series(r, what, pref) for r in rs]
            n = min(len(y) for y in ys)
            xs, ys = xs[:n], [y[:n] for y in ys]
            mean = [statistics.fmean(col) for col in zip(*ys)]
            pref_name, _, pop = label.partition(" ")
            style = {"control": "--", "mixed": ":"}.get(pop, "-")
            marker = "" if pop == "control" else markers[trained.index(pref_name) % len(markers)]
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
