"""Is a compliant reply also a good one? Two automatic checks of the open replies a learning run saved.

A learned preference can be met by replies that are worse for the user (off-topic quips, loops): compliance alone
does not see it, and no larger judge model is available on this machine. So, for every evaluation of a result file:

- **loops**: the fraction of replies that repeat themselves (`is_degenerate`: a word 3-gram three times, a line of
  three or more words twice, or one emoji five times in a row). Pure, tested.
- **on-topic**: does the reply tell which question it answers? Under the *base* model, the pointwise mutual
  information of question and reply, PMI(q; r) = log p(q | r) − log p(q), read off as "the question this answers"
  after the reply. A reply counts as on-topic when its own question gains more from it than a question of another
  topic does (the same mismatched question for every evaluation of a prompt). Base replies set the level; a reply
  that has lost its question scores like the mismatched control.
- **abusive**: the share of replies that swear at or insult the user (`hsd_ray.core.abuse.is_abusive`, the version
  gate's own word list). Pure, tested.
- **good compliance**: the share of replies that meet the run's preference *and* neither loop, nor lose their
  question, nor abuse the user — what a user asking for "<= 20 words" wants is a short answer, not "Worried about
  the thing?" or "Dumbass, I'm glad you asked.". Open-prompt preferences only (yes/no has its own `good`: format and
  the right answer). Files written before 2026-12-05 counted good compliance without the abuse condition.

    python -m bench.learning.quality bench/results/learning/learning-test-maxwords-default-gate.json
    python -m bench.learning.quality bench/results/learning/ceiling-smollm2-135m-instruct-test-maxwords-replies.json

Prints, per run, first → last evaluation: compliance and good compliance %, loops %, on-topic %, mean PMI (nats; own
question and the mismatched one), the base replies' PMI when cut to the trained replies' lengths ("base cut"), mean
words; writes `quality-<name>.json` beside the result file. An in-context ceiling file (bench/learning/ceiling.py,
which keeps every open reply) gets one row per preference and condition, so a learned gain in good compliance can be
put against the ceiling's gain in it; a per-user file (bench/learning/personal.py) one row per user's adapter. Read
the samples too: these are proxies, not a judge.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.learning.preferences import get_preference
from hsd_ray.core.abuse import is_abusive
from hsd_ray.core.version_gate import RELEVANCE_QUERY as QUERY
from hsd_ray.core.version_gate import is_degenerate, relevance_requests, truncate_words

_WORD_RE = re.compile(r"[a-z0-9']+")
# Words that say nothing about a topic (for choosing a mismatched question of another topic)
_STOP = frozenset("""about above after again their there these those which while would could should being other
    every where what when why how with from into your yours them they this that have does tell explain write give
    describe some main things know short cheerful message friend facts interesting important ideas summarize way
    simple terms someone beginner exciting social media post tips learning""".split())


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def topic_words(question: str) -> set[str]:
    return {x for x in words(question) if len(x) >= 4 and x not in _STOP}


def mismatched(questions: list[str]) -> dict[str, str]:
    """For each distinct question, the next one (cyclically, in first-seen order) that shares no topic word with it."""
    order = list(dict.fromkeys(questions))
    out = {}
    for i, q in enumerate(order):
        for k in range(1, len(order)):
            other = order[(i + k) % len(order)]
            if not topic_words(q) & topic_words(other):
                out[q] = other
                break
    return out


def summarize(replies: list[dict], pmi_own: list[float], pmi_other: list[float],
              verify: Callable[[str], bool] | None = None) -> dict:
    """Per-evaluation numbers from its open replies and their PMIs with the own and the mismatched question; with a
    preference's `verify`, also its compliance and good compliance (compliant, not looping, on topic, not abusive)."""
    n = len(replies)
    loops = [is_degenerate(r["text"]) for r in replies]
    abusive = [is_abusive(r["text"]) for r in replies]
    on_topic = [a > b for a, b in zip(pmi_own, pmi_other)]
    out = {
        "n": n,
        "loops": sum(loops) / n,
        "abusive": sum(abusive) / n,
        "on_topic": sum(on_topic) / n,
        "pmi_own": sum(pmi_own) / n,
        "pmi_other": sum(pmi_other) / n,
        "mean_words": sum(len(words(r["text"])) for r in replies) / n,
    }
    if verify is not None:
        compliant = [verify(r["text"]) for r in replies]
        out["compliance"] = sum(compliant) / n
        out["good_compliance"] = sum(c and not lp and t and not ab
                                     for c, lp, t, ab in zip(compliant, loops, on_topic, abusive)) / n
    return out


class RelevanceScorer:
    """PMI(question; reply) under the base model: sum of log p(question tokens | reply + QUERY) minus the same with an
    empty reply. Scores through the project's engine interface (`Engine.score`)."""

    def __init__(self, model: str, engine_kind: str = "hf"):
        from hsd_ray.config import EngineConfig
        from hsd_ray.engines.factory import make_engine
        from hsd_ray.models import resolve_model

        self.engine = make_engine(resolve_model(model), EngineConfig(kind=engine_kind))
        self._prior: dict[str, float] = {}

    def logps(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(s.logp_T.sum()) for s in self.engine.score(relevance_requests(self.engine.tokenizer, pairs))]

    def pmi(self, pairs: list[tuple[str, str]]) -> list[float]:
        """PMI of each (reply, question) pair, in nats."""
        new = sorted({q for _, q in pairs if q not in self._prior})
        for q, lp in zip(new, self.logps([("", q) for q in new])):
            self._prior[q] = lp
        return [lp - self._prior[q] for (_, q), lp in zip(pairs, self.logps(pairs))]


def quality_path(result_path: Path) -> Path:
    """Where a result file's quality JSON goes: beside it, "learning-" dropped, never the input file itself."""
    return result_path.with_name("quality-" + result_path.name.removeprefix("learning-"))


def run_label(run: dict) -> str:
    """The label of a learning run's row in the quality JSON (`bench.learning.report` matches rows to runs by it)."""
    return f"{run['preference']} {run['population']} s{run['seed']}"


def good_delta(evals: list[dict] | None) -> float | None:
    """Last minus first evaluation's good compliance of one row's evals; None without it (yes/no, an old file)."""
    if not evals or "good_compliance" not in evals[0] or "good_compliance" not in evals[-1]:
        return None
    return evals[-1]["good_compliance"] - evals[0]["good_compliance"]


def open_verify(preference: str | None) -> Callable[[str], bool] | None:
    """The verifier of an open-prompt preference (None for a yes/no one, or none)."""
    if not preference:
        return None
    pref = get_preference(preference)
    return pref.verify if pref.prompt_kind == "open" else None


def with_control(replies: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The replies whose prompt has a mismatched question (the others' on-topic reading has no control), and those
    questions."""
    other = mismatched([r["prompt"] for r in replies])
    kept = [r for r in replies if r["prompt"] in other]
    if not kept:
        raise ValueError("no open prompt has a question of another topic to compare with: on-topic cannot be read")
    return kept, other


def quality_of_replies(replies: list[dict], scorer: RelevanceScorer, verify=None,
                       control: tuple[list[dict], dict[str, str]] | None = None) -> dict:
    """One set of open replies ({"prompt", "text"}) → summarize() of those `with_control` keeps (`control`: its
    result, when the caller already has it)."""
    kept, other = control or with_control(replies)
    own = scorer.pmi([(r["text"], r["prompt"]) for r in kept])
    mismatched_pmi = scorer.pmi([(r["text"], other[r["prompt"]]) for r in kept])
    return summarize(kept, own, mismatched_pmi, verify)


def quality_of_run(run: dict, scorer: RelevanceScorer) -> list[dict]:
    """Every evaluation of a run → its quality numbers (open replies only). Later evaluations also get
    `pmi_base_same_length`: the first (base) evaluation's reply to the same (prompt, sample), cut to this reply's
    word count: shorter replies carry less about their question, so this is the PMI to compare with."""
    out, base, verify = [], {}, open_verify(run.get("preference"))
    for ev in run["evals"]:
        replies = [r for r in ev["replies"] if r["kind"] == "open"]
        control = with_control(replies)
        kept = control[0]
        row = {"interactions": ev.get("interactions", 0), **quality_of_replies(replies, scorer, verify, control)}
        if not base:
            base = {(r["prompt"], r["sample"]): r["text"] for r in kept}
        else:
            cut = [(truncate_words(base[(r["prompt"], r["sample"])], len(r["text"].split())), r["prompt"]) for r in kept]
            row["pmi_base_same_length"] = sum(scorer.pmi(cut)) / len(cut)
        out.append(row)
    return out


def quality_of_ceiling(result: dict, scorer: RelevanceScorer) -> list[dict]:
    """An in-context ceiling file (every open reply kept) → one row per open-prompt preference and condition."""
    rows = []
    for name, by_condition in result.get("replies", {}).items():
        verify = open_verify(name)
        for cond, replies in by_condition.items():
            if verify is not None:
                rows.append({"label": f"{name} {cond}", "evals": [quality_of_replies(replies, scorer, verify)]})
    return rows


def quality_of_personal(result: dict, scorer: RelevanceScorer) -> list[dict]:
    """A per-user benchmark file (bench/learning/personal.py) → one row per seed and open-prompt user: that user's
    adapter (first evaluation: the base) on its own preference, at every evaluation."""
    rows = []
    for run in result["runs"]:
        for user in run["evals"][0]["targets"]:
            verify = open_verify(user) if user != "base" else None
            if verify is None:
                continue
            evals = [{"interactions": ev["interactions_per_user"],
                      **quality_of_replies([r for r in ev["targets"][user]["replies"] if r["kind"] == "open"], scorer,
                                           verify)} for ev in run["evals"]]
            rows.append({"label": f"{user} adapter s{run['seed']}", "evals": evals})
    return rows


def _line(label: str, a: dict, b: dict) -> str:
    """First → last of one run (a ceiling row: the same evaluation twice, printed once)."""
    def pct(key: str) -> str:
        if key not in a:
            return f"{'—':>14}"
        return f"{100 * b[key]:>13.0f}%" if a is b else f"{100 * a[key]:>5.0f}% → {100 * b[key]:>3.0f}%"
    pmi = (f"{b['pmi_own']:>5.1f} ({b['pmi_other']:>5.1f})" if a is b else
           f"{a['pmi_own']:>5.1f} ({a['pmi_other']:>5.1f}) → {b['pmi_own']:>5.1f} ({b['pmi_other']:>5.1f})")
    return (f"  {label:<34} {pct('compliance')} {pct('good_compliance')} {pct('loops')} {pct('abusive')} "
            f"{pct('on_topic')} "
            f"{pmi:>26} {b.get('pmi_base_same_length', float('nan')):>9.1f} "
            + (f"{b['mean_words']:>11.0f}" if a is b else f"{a['mean_words']:>4.0f} → {b['mean_words']:>4.0f}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="learning-*.json / personal-*.json results or ceiling-*.json "
                   "in-context ceilings")
    p.add_argument("--model", default=None, help="base model (default: the result file's)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    args = p.parse_args(argv)
    t0 = time.time()
    scorer = None
    for path in map(Path, args.results):
        result = json.loads(path.read_text())
        model = args.model or result["config"].get("model", "smollm2-135m-instruct")
        scorer = scorer or RelevanceScorer(model, args.engine)
        print(f"{path.name} (base model {model})")
        print(f"  {'run':<34} {'compliant':>14} {'good':>14} {'loops':>14} {'abusive':>14} {'on-topic':>14} "
              f"{'PMI own (other)':>26} {'base cut':>9} {'words':>11}")
        if result.get("benchmark") == "personal":
            rows = quality_of_personal(result, scorer)
        elif "runs" in result:
            rows = [{"label": run_label(run), "evals": quality_of_run(run, scorer)} for run in result["runs"]]
        else:
            rows = quality_of_ceiling(result, scorer)
            if not rows:
                print("  (no open replies kept: a ceiling file written before ceiling.py kept them)")
        for row in rows:
            print(_line(row["label"], row["evals"][0], row["evals"][-1]))
        out = quality_path(path)
        out.write_text(json.dumps({"source": path.name, "model": model, "query": QUERY, "runs": rows,
                                   "wall_s": time.time() - t0}, indent=1) + "\n")
        print(f"  → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
