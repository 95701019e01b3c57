"""Core throughput, measured side by side in one run (`python -m bench.bench_core`; `make bench`).

(a) Hindsight scoring: the teacher + baseline requests of the same synthetic turns scored by `HFEngine.score` in
    token-budget batches (what a teacher actor does) vs one request per call; tokens/s and the ratio.
(b) One learner step (`hsd_ray.core.train_step.learner_step` on the batch `score_turns` produced from the first
    `--step-turns` turns, 4 = the config's learner.batch_turns): full fine-tune vs LoRA (r=16) on the same batch;
    stepped alternately; warm-up step excluded, median of the timed steps; tokens/s and the ratio.

Turns are synthetic (seeded): prompts and replies of 20-200 tokens drawn from the model's own tokenisation of an
English word list, so lengths are exact and the run needs no data set. Tokens/s counts real (unpadded) tokens:
prompt + reply of every sequence forwarded. Results print as a table and are written to
`bench/results/bench_core-<device>.json`. Default: SmolLM2-135M-Instruct, 16 turns, CPU (< 4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.util import cuda_sync

RESULTS = Path(__file__).resolve().parent / "results"
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out many "
    "then them these so some her would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come made may part over new "
    "sound take only little work know place year live me back give most very after thing our just name good sentence "
    "man think say great where help through much before line right too mean old any same tell boy follow came want "
    "show also around form three small set put end does another well large must big even such because turn here why "
    "ask went men read need land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should America world"
).split()
_FOLLOWUPS = [
    "Too long, please answer in one sentence.", "Thanks, that's helpful.", "No, that is wrong. Try again.",
    "Can you use bullet points instead?", "Please do not use emojis.", "What is 27*4?", "write it all in lowercase",
    "Great, now translate that into French.",
]


def synthetic_turns(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list:
    """n turns with prompt and reply lengths uniform in [lo, hi] tokens (reply as exact sampled-token ids)."""
    from hsd_ray.core.turns import Turn

    rng = random.Random(seed)
    turns = []
    for _ in range(n):
        text = " ".join(rng.choice(_WORDS) for _ in range(2 * hi))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        p_len, r_len = rng.randint(lo, hi), rng.randint(lo, hi)
        prompt = tokenizer.decode(ids[:p_len]).strip().capitalize() + "?"
        reply_ids = ids[p_len : p_len + r_len] if len(ids) >= p_len + r_len else ids[:r_len]
        turns.append(Turn(context=[{"role": "user", "content": prompt}], reply=tokenizer.decode(reply_ids),
                          followup=rng.choice(_FOLLOWUPS), reply_token_ids=list(reply_ids), reply_finished=True))
    return turns


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_scoring(engine, turns, hcfg, lcfg, device: str, repeats: int) -> dict:
    """Teacher + baseline requests of `turns`: batched by token budget vs one request per call (same requests)."""
    from hsd_ray.core.hindsight import build_example
    from hsd_ray.core.prompts import template_text
    from hsd_ray.core.engine_api import ScoreRequest
    from hsd_ray.engines.base import chunk_by_budget

    ref = hcfg.reference_followup if lcfg.baseline == "reference_followup" else None
    examples = [build_example(engine.tokenizer, t, template=template_text(hcfg.template), reference_followup=ref,
                              max_context_tokens=hcfg.max_context_tokens, max_reply_tokens=hcfg.max_reply_tokens)
                for t in turns]
    requests = [ScoreRequest(e.teacher_prompt_ids, e.target_ids) for e in examples]
    requests += [ScoreRequest(e.baseline_prompt_ids, e.target_ids) for e in examples]
    lengths = [len(r.prompt_ids) + len(r.target_ids) for r in requests]
    groups = chunk_by_budget(lengths, engine.score_token_budget)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    tokens = sum(lengths)

    engine.score(requests[:2])  # warm-up (allocator, kernels)
    timings: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):  # modes alternate, so load from other processes hits both alike; best of `repeats`
        for mode in timings:
            cuda_sync(device)
            start = time.perf_counter()
            if mode == "batched":
                batched = engine.score(requests)
            else:
                single = [engine.score([r])[0] for r in requests]
            cuda_sync(device)
            timings[mode].append(time.perf_counter() - start)
            log(f"scoring {mode}: {timings[mode][-1]:.1f} s")
    best = {mode: min(ts) for mode, ts in timings.items()}
    max_diff = max(float(abs(a.logp_T - b.logp_T).max()) for a, b in zip(batched, single))
    return {
        "requests": len(requests),
        "tokens": tokens,
        "padded_tokens_batched": padded,
        "batches": len(groups),
        "token_budget": engine.score_token_budget,
        "batched_s": best["batched"],
        "one_at_a_time_s": best["one_at_a_time"],
        "all_s": timings,
        "batched_tok_s": tokens / best["batched"],
        "one_at_a_time_tok_s": tokens / best["one_at_a_time"],
        "speedup_batched": best["one_at_a_time"] / best["batched"],
        "max_abs_logp_diff": max_diff,  # batched (padded) vs unpadded scores of the same tokens
    }


def make_learner(model_dir, lcfg, *, lora: bool, lora_r: int, device: str):
    """A fresh policy from disk (optionally LoRA-wrapped) with its optimizer and, when the loss has a KL anchor, its
    reference policy, as the learner builds them."""
    from hsd_ray.config import LearnerConfig, LoraConfig
    from hsd_ray.core.policy import apply_lora, make_optimizer, resume_policy
    from hsd_ray.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(model_dir, "float32", device)
    cfg = LearnerConfig(lr=1e-4 if lora else 1e-5, warmup_steps=0,
                        lora=LoraConfig(enabled=lora, r=lora_r, alpha=2 * lora_r))
    if lora:
        model = apply_lora(model, cfg.lora)
    reference = resume_policy(model, None, kl_on=lcfg.kl_coef > 0, kind=lcfg.reference)
    optimizer, scheduler = make_optimizer(model, cfg)
    return model, optimizer, scheduler, cfg, reference


def bench_learner(model_dir, batch, lcfg, *, lora_r: int, device: str, steps: int) -> dict:
    """Full fine-tune and LoRA policies stepped alternately on `batch` (one warm-up step each, then `steps` timed
    steps each), so a burst of load from other processes hits both alike; median step time per mode."""
    from hsd_ray.core.train_step import learner_step

    learners = {mode: make_learner(model_dir, lcfg, lora=mode == "lora", lora_r=lora_r, device=device)
                for mode in ("full", "lora")}
    times: dict[str, list[float]] = {mode: [] for mode in learners}
    metrics: dict[str, dict] = {}
    for i in range(steps + 1):
        for mode, (model, optimizer, scheduler, cfg, reference) in learners.items():
            cuda_sync(device)
            start = time.perf_counter()
            metrics[mode] = learner_step(model, optimizer, batch, lcfg, grad_clip=cfg.grad_clip, scheduler=scheduler,
                                         reference=reference)
            cuda_sync(device)
            elapsed = time.perf_counter() - start
            log(f"learner {mode} step {i}{' (warm-up)' if i == 0 else ''}: {elapsed:.1f} s")
            if i > 0:  # step 0 is the warm-up (optimizer state allocation, first-call overheads)
                times[mode].append(elapsed)
    seq_tokens = int(batch.packed.attention_mask_B_L.sum())
    out = {}
    for mode, (model, *_rest) in learners.items():
        median = statistics.median(times[mode])
        out[mode] = {
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "step_s_median": median,
            "step_s_all": times[mode],
            "seq_tokens": seq_tokens,
            "reply_tokens": batch.num_tokens,
            "padded_tokens": int(batch.packed.input_ids_B_L.numel()),
            "tok_s": seq_tokens / median,
            "reply_tok_s": batch.num_tokens / median,
            "last_loss": metrics[mode]["loss"],
        }
    return out


def run(args) -> dict:
    from hsd_ray.config import HindsightConfig, LossConfig
    from hsd_ray.core.batch import HindsightBatch
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.models import resolve_model

    torch.manual_seed(0)
    model_dir = resolve_model(args.model)
    engine = HFEngine(model_dir, device=args.device, score_token_budget=args.token_budget)
    hcfg, lcfg = HindsightConfig(), LossConfig(kind="sampled_token", baseline="student")
    turns = synthetic_turns(engine.tokenizer, args.turns, args.min_tokens, args.max_tokens, seed=0)
    scoring = bench_scoring(engine, turns, hcfg, lcfg, args.device, args.score_repeats)

    step_turns = turns[: args.step_turns]  # the first turns: lengths drawn like the rest
    tok = engine.tokenizer
    batch = HindsightBatch.collate(score_turns(engine, step_turns, hcfg, lcfg), tok.pad_token_id, (tok.eos_token_id,))
    del engine
    learner = bench_learner(model_dir, batch, lcfg, lora_r=args.lora_r, device=args.device, steps=args.steps)
    full, lora = learner["full"], learner["lora"]
    return {
        "config": vars(args),
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "scoring": scoring,
        "learner": {"full": full, "lora": lora, "speedup_lora": full["step_s_median"] / lora["step_s_median"]},
    }


def format_results(r: dict) -> str:
    s, full, lora = r["scoring"], r["learner"]["full"], r["learner"]["lora"]
    c = r["config"]
    lines = [
        f"model {c['model']}  device {c['device']}  threads {r['env']['threads']}  turns {c['turns']} "
        f"(prompt/reply {c['min_tokens']}-{c['max_tokens']} tokens)",
        "",
        f"(a) hindsight scoring: {s['requests']} requests (teacher + baseline), {s['tokens']} tokens, "
        f"best of {c['score_repeats']} alternating rounds",
        f"    {'mode':<16}{'seconds':>9}{'tokens/s':>11}",
        f"    {'batched':<16}{s['batched_s']:>9.2f}{s['batched_tok_s']:>11.0f}   "
        f"({s['batches']} calls, budget {s['token_budget']}, {s['padded_tokens_batched']} padded tokens)",
        f"    {'one-at-a-time':<16}{s['one_at_a_time_s']:>9.2f}{s['one_at_a_time_tok_s']:>11.0f}",
        f"    batched / one-at-a-time throughput: {s['speedup_batched']:.2f}x   "
        f"(max |Δ logp| batched vs single: {s['max_abs_logp_diff']:.1e})",
        "",
        f"(b) learner step on {min(c['step_turns'], c['turns'])} turns: {full['seq_tokens']} tokens "
        f"({full['reply_tokens']} reply tokens trained, {full['padded_tokens']} padded), median of {c['steps']} "
        "after 1 warm-up, modes alternating",
        f"    {'mode':<16}{'trainable':>12}{'step s':>9}{'tokens/s':>11}{'reply tok/s':>13}",
    ]
    for name, m in (("full fine-tune", full), (f"LoRA r={c['lora_r']}", lora)):
        lines.append(f"    {name:<16}{m['trainable_params']:>12,}{m['step_s_median']:>9.2f}{m['tok_s']:>11.0f}"
                     f"{m['reply_tok_s']:>13.0f}")
    lines.append(f"    LoRA / full throughput: {r['learner']['speedup_lora']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.bench_core", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--turns", type=int, default=16, help="synthetic turns (scored and stepped on)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--token-budget", type=int, default=8192, help="padded tokens per batched scoring call")
    p.add_argument("--min-tokens", type=int, default=20, help="shortest prompt / reply (tokens)")
    p.add_argument("--max-tokens", type=int, default=200, help="longest prompt / reply (tokens)")
    p.add_argument("--step-turns", type=int, default=4, help="turns in the learner batch (learner.batch_turns default)")
    p.add_argument("--steps", type=int, default=3, help="timed learner steps per mode (after one warm-up)")
    p.add_argument("--score-repeats", type=int, default=2, help="scoring rounds, modes alternating; best kept")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible")
    if args.turns < 1 or args.step_turns < 1 or args.steps < 1 or args.score_repeats < 1:
        p.error("--turns, --step-turns, --steps and --score-repeats must be >= 1")
    if not 1 <= args.min_tokens <= args.max_tokens:
        p.error("need 1 <= --min-tokens <= --max-tokens")

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    results = run(args)
    results["wall_s"] = time.perf_counter() - start
    results["env"]["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # other processes on the machine skew timings
    print(format_results(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_core-{args.device}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    load = results["env"]["loadavg_1min"]
    print(f"\nwall {results['wall_s']:.0f} s; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after "
          f"({os.cpu_count()} CPUs); results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
