"""Would a relevance check on the version gate's own greedy probe replies see what users saw? (exploratory)

The learning runs that learned "≤ 20 words" drifted into a casual persona in their *sampled* replies (what users get
at the serving temperature); the version gate accepted those versions. Before adding a relevance check to the gate,
this measures what such a check would see: for the base model and each given weight set (a registry's
`served_weights.pt`, copied while a learning run was going), the gatekeeper (loop/gatekeeper.py, transformers
engine, no Ray) generates its greedy replies to the shipped probe prompts (hsd_ray/data/probes.json), and
bench.learning.quality's scorer reads them back: PMI(question; reply) under the base model, against the base
model's reply to the same probe cut to the same number of words (shorter replies carry less about their question),
and the gate's own numbers for the weight set against the base (`Gatekeeper.evaluate`: KLs, perplexity, strict
accuracy, length, loops, and its relevance check — the same PMI difference read by the candidate itself, since the
gate holds one model) with the reasons the gate would give, and a lenient "answered" rate on the checkable prompts (the
answer anywhere in the greedy reply).

    python -m bench.probe_relevance /tmp/keep/run-v*.pt --out bench/results/probe_relevance-<name>.json

The weight sets were kept by copying `<output_dir>/served_weights.pt` of the running benchmark whenever it changed
(the benchmark deletes its output directory at the end): bench/learning/README.md, "Mixed traffic at 150
interactions, test split".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from bench.learning.quality import RelevanceScorer, mismatched
from hsd_ray.core.version_gate import truncate_words


def answered(gate) -> tuple[float, list[str]]:
    """Lenient accuracy of the loaded weights on the gate's checkable prompts: the answer appears *anywhere* in the
    greedy reply (the gate's strict checker reads the number the reply answers with, `answers.check_number`, and
    the first sentence), and the replies. Tells "the answer comes later" ("The product of 5 and 6 is 30") from "no
    answer at all" ("Aw, what a question")."""
    from hsd_ray.core.answers import numbers_in

    replies = [r.text for r in gate.asked.ask()[1]]  # the gate's own greedy replies to its checkable prompts

    def found(text: str, answer: str, kind: str) -> bool:
        if kind == "number":
            return float(answer) in numbers_in(text)
        return answer.lower() in re.findall(r"[a-z0-9]+", text.lower())

    right = [found(r, a, k) for r, (_, a, k) in zip(replies, gate.checkable)]
    return sum(right) / max(len(right), 1), replies


def measure(name: str, gate, replies: list[str], base_replies: list[str], probes: list[str],
            base_reader: RelevanceScorer, numbers) -> dict:
    """One weight set's numbers from its greedy probe replies (the gate's engine holds that weight set) and the
    gate's own `numbers` for it (evaluated against the base as the accepted version)."""
    from hsd_ray.core.version_gate import gate_reasons

    cut = [truncate_words(b, len(r.split())) for r, b in zip(replies, base_replies)]
    own_pairs, cut_pairs = list(zip(replies, probes)), list(zip(cut, probes))
    n = len(replies)
    own, base_cut = base_reader.pmi(own_pairs), base_reader.pmi(cut_pairs)
    other = mismatched(probes)
    kept = [i for i, q in enumerate(probes) if q in other]  # probes with a question of another topic
    on_topic = [own[i] > b for i, b in zip(kept, base_reader.pmi([(replies[i], other[probes[i]]) for i in kept]))]
    row = {"name": name, "pmi": sum(own) / n, "pmi_base_cut": sum(base_cut) / n,
           "relevance_change": (sum(own) - sum(base_cut)) / n,
           "relevance_change_self_read": numbers.relevance,  # the gate's check, read by the loaded weights
           "on_topic": sum(on_topic) / len(on_topic), "loops": numbers.loops,
           "words": sum(len(r.split()) for r in replies) / n, "accuracy": numbers.accuracy,
           "gate": numbers.to_dict(), "gate_reasons_vs_base": gate_reasons(numbers, gate.limits), "replies": replies}
    row["answered"], row["checkable_replies"] = answered(gate)
    print(f"{name:<28} PMI {row['pmi']:5.2f} (base cut {row['pmi_base_cut']:5.2f}, change "
          f"{row['relevance_change']:+5.2f}; read by itself {row['relevance_change_self_read']:+5.2f}) "
          f"on-topic {row['on_topic']:.2f} loops {row['loops']:.2f} words {row['words']:4.1f} "
          f"accuracy {row['accuracy']:.3f} answered {row['answered']:.3f} KL(base) {numbers.kl_base:.3f} "
          f"ppl {numbers.ppl:.3g} gate vs base: {','.join(row['gate_reasons_vs_base']) or 'pass'}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="*", help="served_weights.pt files (dict adapter -> WeightSet), in order")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=None, help="JSON result file")
    args = p.parse_args(argv)

    import torch

    from hsd_ray.config import Config, EngineConfig
    from hsd_ray.data import load_probes
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings
    from hsd_ray.models import resolve_model

    t0, gate_cfg = time.time(), Config().version_gate
    gate = Gatekeeper(GatekeeperSettings(str(resolve_model(args.model)), EngineConfig(kind="hf"), gate_cfg,
                                         enable_lora=False), None)
    probes, base_reader = load_probes(gate_cfg.probes_path)["probes"], RelevanceScorer(args.model, "hf")

    def evaluated() -> tuple:
        """The gate's numbers for the loaded weights (against the base as the accepted version) and the texts of
        its greedy probe replies."""
        numbers, replies = gate.evaluate(gate.base)
        return numbers, [r.text for r in replies]

    numbers, base = evaluated()
    rows = [measure("base", gate, base, base, probes, base_reader, numbers)]
    for path in args.weights:
        weights = next(iter(torch.load(path, weights_only=False).values()))
        gate.engine.load_weights(weights)
        numbers, replies = evaluated()
        rows.append(measure(f"{Path(path).stem[:20]} v{weights.version.version}", gate, replies, base, probes,
                            base_reader, numbers))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "weights": args.weights, "rows": rows,
                                              "wall_s": time.time() - t0}, indent=1) + "\n")
        print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
