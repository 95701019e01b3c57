"""The in-context ceiling: how often the model already does what the user wants when the preference is *stated* — by
the complaint, placed in the hindsight template exactly where the teacher sees it — versus when it is not.

Self-distillation from hindsight can only move the policy toward what the hindsight-conditioned teacher does, so a
preference the model does not follow even when told (ceiling ≈ baseline) cannot be learned by this method at this
scale, whatever the loss. `report.py` divides a run's learned gain by this ceiling gain (distillation efficiency).

    python -m bench.learning.ceiling --split test [--model smollm2-135m-instruct] [--samples 4] [--engine vllm|hf]

On the evaluation split's prompts, with the benchmark's sizes and sampling: conditions `baseline` (no instruction),
`hindsight_online` / `hindsight_offline` (the complaint in the online / offline hindsight template) and
`instruction` (the complaint appended to the prompt). Seeding is the evaluator's: each (preference kind, condition)
is one batch in the evaluator's order (prompt j, sample s), request i drawn with seed + i where the yes/no batch starts
at the number of open requests — so the baseline condition reproduces a run's first evaluation. Per preference it
reports compliance (the verifier) and the TARGET metric (compliance; for `yes_no_only`: format AND correct answer),
plus yes/no correctness per condition; writes bench/results/learning/ceiling-<model>-<split>.json, with every open
reply (`replies`, for `python -m bench.learning.quality`: how many compliant replies are also good ones).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.learning.preferences import PREFERENCES, parse_preferences
from bench.learning.prompts import EVAL_SPLITS, build_prompt_sets
from bench.learning.scoring import yes_no_metrics

# A candidate wording measured beside the named templates (choose on dev, then name the winner in core/prompts.py).
# `plain` was one (the follow-up appended as it is, the same text as the `instruction` condition) until it won on dev.
CANDIDATE_TEMPLATES: dict[str, str] = {
    "note": "\n\n(Note from me, read before answering: {followup})",
}


def condition_names(templates: list[str]) -> tuple[str, ...]:
    return ("baseline", *(f"hindsight_{t}" for t in templates), "instruction")


def conditions(prompt: str, complaints: tuple[str, ...], k: int,
               templates: tuple[str, ...] = ("online", "offline")) -> dict[str, list[dict]]:
    """Messages for each condition; the complaint rotates with k (prompt index + sample). `templates` are template
    names of core/prompts.py or CANDIDATE_TEMPLATES."""
    from hsd_ray.core.prompts import hindsight_messages, template_text

    user = [{"role": "user", "content": prompt}]
    complaint = complaints[k % len(complaints)]
    out = {"baseline": user}
    out.update({f"hindsight_{t}": hindsight_messages(user, complaint, CANDIDATE_TEMPLATES.get(t) or template_text(t))
                for t in templates})
    out["instruction"] = [{"role": "user", "content": f"{prompt}\n\n{complaint}"}]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.learning.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test")
    p.add_argument("--preferences", default=",".join(PREFERENCES), help="preferences to measure (default: all)")
    p.add_argument("--templates", default="online,offline",
                   help="hindsight templates measured (names in hsd_ray.core.prompts.HINDSIGHT_TEMPLATES)")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per evaluated prompt and condition")
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--heldout-yes-no", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0 = the benchmark evaluator's)")
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/learning")
    p.add_argument("--name", default="", help="suffix of the result file, so a side measurement (candidate "
                   "preferences) does not replace ceiling-<model>-<split>.json, which the report reads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    templates = tuple(t for t in args.templates.split(",") if t)
    conds = condition_names(list(templates))
    from hsd_ray.config import EngineConfig
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.engines.factory import make_engine
    from hsd_ray.models import resolve_model

    t0 = time.time()
    engine = make_engine(resolve_model(args.model), EngineConfig(kind=args.engine))
    prompts = build_prompt_sets(args.prompt_seed, args.heldout, args.heldout_yes_no, 1)
    truth = prompts.yes_no_truth(args.split)
    prefs = parse_preferences(args.preferences)
    kinds_used = {p.prompt_kind for p in PREFERENCES.values()}
    offset = {"open": 0, "yes_no": len(prompts.heldout("open", args.split)) * args.samples if "open" in kinds_used
              else 0}
    cache: dict[tuple, list[str]] = {}

    def replies(pref, cond: str) -> tuple[list[str], list[str]]:
        """(questions, replies) of one (preference, condition) batch. A batch is generated once per distinct set of
        prompts: the baseline is shared per prompt kind, and `hindsight_plain` is the `instruction` condition."""
        evaluated = prompts.heldout(pref.prompt_kind, args.split)
        qs = [(j, s, q) for j, q in enumerate(evaluated) for s in range(args.samples)]
        batch = [render_prompt(engine.tokenizer, conditions(q, pref.complaints, j + s, templates)[cond])
                 for j, s, q in qs]
        key = (pref.prompt_kind, tuple(map(tuple, batch)))  # the seed depends on the prompt kind only
        if key not in cache:
            params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                    seed=args.seed + offset[pref.prompt_kind])
            cache[key] = [g.text for g in engine.generate(batch, params)]
        return [q for _, _, q in qs], cache[key]

    rows, target, yes_no, samples_out, kept = {}, {}, {}, {}, {}
    for pref in prefs:
        rows[pref.name], target[pref.name], samples_out[pref.name] = {}, {}, {}
        if pref.prompt_kind == "open":  # every open reply: bench/learning/quality.py reads good compliance off them
            kept[pref.name] = {}
        for cond in conds:
            qs, texts = replies(pref, cond)
            rows[pref.name][cond] = sum(map(pref.verify, texts)) / len(texts)
            target[pref.name][cond] = rows[pref.name][cond]
            if pref.prompt_kind == "yes_no":
                yes_no[cond] = yes_no_metrics(qs, texts, truth)
                target[pref.name][cond] = yes_no[cond]["good"]
            samples_out[pref.name][cond] = texts[:3]
            if pref.name in kept:
                kept[pref.name][cond] = [{"prompt": q, "sample": i % args.samples, "text": t}
                                         for i, (q, t) in enumerate(zip(qs, texts))]
    print(f"{'preference':<15}" + "".join(f"{c:>19}" for c in conds) + "   (target metric)")
    for name, row in target.items():
        print(f"{name:<15}" + "".join(f"{100 * row[c]:>18.0f}%" for c in conds))
    for cond, m in yes_no.items():
        print(f"yes/no {cond:<18} format {100 * m['format']:.0f}%  correct {100 * m['correct']:.0f}%  "
              f"good {100 * m['good']:.0f}%  said yes {100 * m['said_yes']:.0f}%")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ceiling-{Path(args.model).name}-{args.split}{'-' + args.name if args.name else ''}.json"
    path.write_text(json.dumps({
        "config": vars(args), "compliance": rows, "target": target, "yes_no": yes_no, "samples": samples_out,
        "replies": kept,
        "seeding": "per (prompt kind, condition) batch in evaluator order; request i drawn with seed + offset + i",
        "n_per_cell": {p.name: len(prompts.heldout(p.prompt_kind, args.split)) * args.samples for p in prefs},
        "wall_s": time.time() - t0, "cpus": os.cpu_count()}, indent=1) + "\n")
    print(f"\n{path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
