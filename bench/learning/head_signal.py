"""Where a complaint's advantage sits in a served reply, and where each loss sends the first token's mass.
(`python -m bench.learning.head_signal [--preference use_list] [--prompts 24]`)

For the first N train-split open prompts: the base model's sampled reply (the serving temperature and top-p, one seed),
then the production scoring (`core.scoring.score_turns`, the default `plain` template and "Thanks, that's helpful."
baseline) once with one of the preference's complaints as the follow-up and once with "Thanks!". Prints
- the mean |A| (centred per reply, as the learner uses it) at each of the first 8 positions over the row's mean |A|,
  and the first token's mean centred A: is the signal concentrated, and does it push the opener down?
- for the first 4 replies, the student's first-token top-12 (what a push-down hands its mass to, in proportion),
  the teacher's top-6, and the 6 tokens whose log-prob the complaint raises most over the baseline at the teacher's
  top-k (where `loss.head_tokens` sends it: `losses.sampled_token_loss_shifted_head`).
Transformers on CPU, no training: about a minute on 2 cores. A reading of the base model, not a benchmark of the loop.
"""

from __future__ import annotations

import argparse
import random

import numpy as np


def _pieces(tok, ids) -> list[str]:
    return [tok.decode([int(i)]) for i in ids]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.learning.head_signal", description=__doc__.split("\n")[0])
    p.add_argument("--preference", default="use_list")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--seed", type=int, default=1, help="sampling seed of the base replies")
    args = p.parse_args(argv)

    import torch

    from bench.learning.preferences import get_preference
    from bench.learning.prompts import build_prompt_sets
    from hsd_ray.config import Config
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.core.turns import Turn
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.models import resolve_model

    cfg = Config.load(overrides=["loss.head_tokens=1"])  # scores the top-k and the baseline's log-probs at it
    engine = HFEngine(resolve_model("smollm2-135m-instruct"))
    tok, pref = engine.tokenizer, get_preference(args.preference)
    prompts = list(build_prompt_sets(0).train("open"))[: args.prompts]
    ids = [render_prompt(tok, [{"role": "user", "content": q}]) for q in prompts]
    gens = engine.generate(ids, SamplingParams(max_tokens=48, temperature=cfg.serve.temperature,
                                               top_p=cfg.serve.top_p, seed=args.seed))
    rng = random.Random(0)
    for kind, followup in (("complaint", None), ("thanks", "Thanks!")):
        turns = [Turn(context=[{"role": "user", "content": q}], reply=g.text,
                      followup=followup or rng.choice(pref.complaints), reply_token_ids=list(g.token_ids),
                      reply_finished=g.finished) for q, g in zip(prompts, gens)]
        score_turns(engine, turns, cfg.hindsight, cfg.loss)
        centred = []
        for t in turns:
            a = t.scores.teacher_logp_T - t.scores.baseline_logp_T
            centred.append(a - a.mean())
        profile = np.mean([np.abs(c[:8]) / np.abs(c).mean() for c in centred if len(c) >= 8], axis=0)
        print(f"{kind}: |A| at positions 0-7 over the row's mean |A|: {[round(float(x), 2) for x in profile]}; "
              f"first token's centred A {np.mean([c[0] for c in centred]):+.2f} (mean over {len(turns)} replies)")
        if kind != "complaint":
            continue
        for t, prompt_ids in list(zip(turns, ids))[:4]:
            with torch.no_grad():
                probs = torch.softmax(engine.model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].float(), -1)
            top = torch.topk(probs, 12)
            s = t.scores
            tid, tl, bl = s.teacher_topk_ids_T_K[0], s.teacher_topk_logp_T_K[0], s.baseline_topk_logp_T_K[0]
            raised = np.argsort(-(tl - bl))[:6]
            print(f"  {t.context[0]['content']!r} → {t.reply[:50]!r}")
            print("    student's first token:", [(w, round(float(v), 3)) for w, v in
                                                 zip(_pieces(tok, top.indices), top.values)])
            print("    teacher's first token:", [(w, round(float(np.exp(v)), 3)) for w, v in
                                                 zip(_pieces(tok, tid[:6]), tl[:6])])
            print("    raised most by the complaint (log teacher/baseline):",
                  [(w, round(float(tl[k] - bl[k]), 2)) for w, k in zip(_pieces(tok, tid[raised]), raised)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
