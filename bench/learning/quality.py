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

    python -m bench.learning.quality bench/results/learning/learning-test-maxwords-default-gate.json

Prints, per run, first → last evaluation: loops %, on-topic %, mean PMI (nats; own question and the mismatched one),
the base replies' PMI when cut to the trained replies' lengths ("base cut"), mean words; writes
`quality-<name>.json` beside the result file. Read the samples too: these are proxies, not a judge.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

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


def summarize(replies: list[dict], pmi_own: list[float], pmi_other: list[float]) -> dict:
    """Per-evaluation numbers from its open replies and their PMIs with the own and the mismatched question."""
    n = len(replies)
    return {
        "n": n,
        "loops": sum(is_degenerate(r["text"]) for r in replies) / n,
        "on_topic": sum(a > b for a, b in zip(pmi_own, pmi_other)) / n,
        "pmi_own": sum(pmi_own) / n,
        "pmi_other": sum(pmi_other) / n,
        "mean_words": sum(len(words(r["text"])) for r in replies) / n,
    }


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


def quality_of_run(run: dict, scorer: RelevanceScorer) -> list[dict]:
    """Every evaluation of a run → its quality numbers (open replies only). Later evaluations also get
    `pmi_base_same_length`: the first (base) evaluation's reply to the same (prompt, sample), cut to this reply's
    word count: shorter replies carry less about their question, so this is the PMI to compare with."""
    out, base = [], {}
    for ev in run["evals"]:
        replies = [r for r in ev["replies"] if r["kind"] == "open"]
        other = mismatched([r["prompt"] for r in replies])
        kept = [r for r in replies if r["prompt"] in other]
        own = scorer.pmi([(r["text"], r["prompt"]) for r in kept])
        control = scorer.pmi([(r["text"], other[r["prompt"]]) for r in kept])
        row = {"interactions": ev.get("interactions", 0), **summarize(kept, own, control)}
        if not base:
            base = {(r["prompt"], r["sample"]): r["text"] for r in kept}
        else:
            cut = [(truncate_words(base[(r["prompt"], r["sample"])], len(r["text"].split())), r["prompt"]) for r in kept]
            row["pmi_base_same_length"] = sum(scorer.pmi(cut)) / len(cut)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="learning-*.json result files")
    p.add_argument("--model", default=None, help="base model (default: the result file's)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    args = p.parse_args(argv)
    t0 = time.time()
    scorer = None
    for path in map(Path, args.results):
        result = json.loads(path.read_text())
        model = args.model or result["config"].get("model", "smollm2-135m-instruct")
        scorer = scorer or RelevanceScorer(model, args.engine)
        rows = []
        print(f"{path.name} (base model {model})")
        print(f"  {'run':<34} {'loops':>13} {'on-topic':>13} {'PMI own (other)':>26} {'base cut':>9} {'words':>11}")
        for run in result["runs"]:
            q = quality_of_run(run, scorer)
            label = f"{run['preference']} {run['population']} s{run['seed']}"
            rows.append({"label": label, "evals": q})
            a, b = q[0], q[-1]
            print(f"  {label:<34} {100 * a['loops']:>5.0f}% → {100 * b['loops']:>3.0f}% "
                  f"{100 * a['on_topic']:>5.0f}% → {100 * b['on_topic']:>3.0f}% "
                  f"{a['pmi_own']:>5.1f} ({a['pmi_other']:>5.1f}) → {b['pmi_own']:>5.1f} ({b['pmi_other']:>5.1f}) "
                  f"{b.get('pmi_base_same_length', float('nan')):>9.1f} {a['mean_words']:>4.0f} → {b['mean_words']:>3.0f}")
        out = path.with_name("quality-" + path.name.removeprefix("learning-"))  # never the input file
        out.write_text(json.dumps({"source": path.name, "model": model, "query": QUERY, "runs": rows,
                                   "wall_s": time.time() - t0}, indent=1) + "\n")
        print(f"  → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
