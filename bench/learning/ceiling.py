"""The in-context ceiling: how often the model already complies when the preference is *stated* — by the complaint,
placed in the hindsight template exactly where the teacher sees it — versus when it is not.

Self-distillation from hindsight can only move the policy toward what the hindsight-conditioned teacher does, so a
preference the model does not follow even when told (ceiling ≈ baseline) cannot be learned by this method at this
scale, whatever the loss. Run this before spending hours on `python -m bench.learning`:

    python -m bench.learning.ceiling [--model smollm2-135m-instruct] [--samples 4] [--engine vllm|hf]

Prints, per preference: compliance with no instruction (the baseline), with the complaint in the online and offline
hindsight templates (what the teacher is conditioned on), and with the complaint as a plain instruction appended to
the prompt; writes bench/results/learning/ceiling-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.learning.preferences import PREFERENCES
from bench.learning.prompts import build_prompt_sets


def conditions(prompt: str, complaints: tuple[str, ...], k: int) -> dict[str, list[dict]]:
    """Messages for each condition; the complaint rotates with the sample index k."""
    from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES
    from hsd_ray.core.prompts import hindsight_messages

    user = [{"role": "user", "content": prompt}]
    complaint = complaints[k % len(complaints)]
    return {
        "baseline": user,
        "hindsight_online": hindsight_messages(user, complaint, HINDSIGHT_TEMPLATES["online"]),
        "hindsight_offline": hindsight_messages(user, complaint, HINDSIGHT_TEMPLATES["offline"]),
        "instruction": [{"role": "user", "content": f"{prompt}\n\n{complaint}"}],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.learning.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per held-out prompt and condition")
    p.add_argument("--heldout", type=int, default=10)
    p.add_argument("--heldout-yes-no", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--out", default="bench/results/learning")
    args = p.parse_args(argv)

    from hsd_ray.config import EngineConfig
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.engines.factory import make_engine
    from hsd_ray.models import resolve_model

    t0 = time.time()
    engine = make_engine(resolve_model(args.model), EngineConfig(kind=args.engine))
    prompts = build_prompt_sets(0, args.heldout, args.heldout_yes_no, 1)
    rows, samples_out = {}, {}
    for pref in PREFERENCES.values():
        batch, keys = [], []
        for j, prompt in enumerate(prompts.heldout(pref.prompt_kind)):
            for s in range(args.samples):
                for cond, messages in conditions(prompt, pref.complaints, j + s).items():
                    batch.append(render_prompt(engine.tokenizer, messages))
                    keys.append(cond)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=0)
        texts = [g.text for g in engine.generate(batch, params)]
        by_cond: dict[str, list[str]] = {}
        for cond, text in zip(keys, texts):
            by_cond.setdefault(cond, []).append(text)
        rows[pref.name] = {c: sum(map(pref.verify, t)) / len(t) for c, t in by_cond.items()}
        samples_out[pref.name] = {c: t[:3] for c, t in by_cond.items()}
    conds = list(next(iter(rows.values())))
    print(f"{'preference':<15}" + "".join(f"{c:>19}" for c in conds))
    for name, row in rows.items():
        print(f"{name:<15}" + "".join(f"{100 * row[c]:>18.0f}%" for c in conds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ceiling-{Path(args.model).name}.json"
    path.write_text(json.dumps({"config": vars(args), "compliance": rows, "samples": samples_out,
                                "n_per_cell": {p.name: len(prompts.heldout(p.prompt_kind)) * args.samples
                                               for p in PREFERENCES.values()},
                                "wall_s": time.time() - t0, "cpus": os.cpu_count()}, indent=1) + "\n")
    print(f"\n{path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
