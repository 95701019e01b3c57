"""Would a relevance check on the version gate's own greedy probe replies see what users saw? (exploratory)

The learning runs that learned "≤ 20 words" drifted into a casual persona in their *sampled* replies (what users get
at the serving temperature); the version gate accepted those versions. Before adding a relevance check to the gate,
this measures what such a check would see: for the base model and each given weight set (a registry's
`served_weights.pt`, copied while a learning run was going), the gatekeeper (loop/gatekeeper.py, transformers
engine, no Ray) generates its greedy replies to the shipped probe prompts (hsd_ray/data/probes.json), and
bench.learning.quality's scorer reads them back: PMI(question; reply) under the base model, against the base
model's reply to the same probe cut to the same number of words (shorter replies carry less about their question),
and the same read by the candidate itself (what a gatekeeper holding only the candidate could compute). Also the
share of probe replies that loop and the gate's checkable accuracy.

    python -m bench.probe_relevance /tmp/keep/run-v*.pt --out bench/results/probe_relevance-<name>.json

The weight sets were kept by copying `<output_dir>/served_weights.pt` of the running benchmark whenever it changed
(the benchmark deletes its output directory at the end): bench/learning/README.md, "Mixed traffic at 150
interactions, test split".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.learning.quality import RelevanceScorer, mismatched, truncate_words


def measure(name: str, gate, replies: list[str], base_replies: list[str], probes: list[str],
            base_reader: RelevanceScorer) -> dict:
    """One weight set's numbers from its greedy probe replies (the gate's engine holds that weight set)."""
    from hsd_ray.core.version_gate import is_degenerate

    cut = [truncate_words(b, len(r.split())) for r, b in zip(replies, base_replies)]
    own_pairs, cut_pairs = list(zip(replies, probes)), list(zip(cut, probes))
    self_reader = RelevanceScorer(engine=gate.engine)  # a fresh prior cache: new weights
    n = len(replies)
    own, base_cut = base_reader.pmi(own_pairs), base_reader.pmi(cut_pairs)
    own_self, cut_self = self_reader.pmi(own_pairs), self_reader.pmi(cut_pairs)
    other = mismatched(probes)
    kept = [i for i, q in enumerate(probes) if q in other]  # probes with a question of another topic
    on_topic = [own[i] > b for i, b in zip(kept, base_reader.pmi([(replies[i], other[probes[i]]) for i in kept]))]
    row = {"name": name, "pmi": sum(own) / n, "pmi_base_cut": sum(base_cut) / n,
           "relevance_change": (sum(own) - sum(base_cut)) / n,
           "relevance_change_self_read": (sum(own_self) - sum(cut_self)) / n,
           "on_topic": sum(on_topic) / len(on_topic), "loops": sum(map(is_degenerate, replies)) / n,
           "words": sum(len(r.split()) for r in replies) / n, "accuracy": gate._accuracy(), "replies": replies}
    print(f"{name:<28} PMI {row['pmi']:5.2f} (base cut {row['pmi_base_cut']:5.2f}, change "
          f"{row['relevance_change']:+5.2f}; read by itself {row['relevance_change_self_read']:+5.2f}) "
          f"on-topic {row['on_topic']:.2f} loops {row['loops']:.2f} words {row['words']:4.1f} "
          f"accuracy {row['accuracy']:.3f}", flush=True)
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

    def greedy() -> list[str]:
        return [r.text for r in gate._greedy(gate.probe_prompts, gate_cfg.probe_max_tokens)]

    base = greedy()
    rows = [measure("base", gate, base, base, probes, base_reader)]
    for path in args.weights:
        weights = next(iter(torch.load(path, weights_only=False).values()))
        gate.engine.load_weights(weights)
        rows.append(measure(f"{Path(path).stem[:20]} v{weights.version.version}", gate, greedy(), base, probes,
                            base_reader))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "weights": args.weights, "rows": rows,
                                              "wall_s": time.time() - t0}, indent=1) + "\n")
        print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
