"""vLLM vs transformers engines, measured side by side in one run (`python -m bench.bench_engines`).

(a) Teacher scoring: the teacher + contrastive-baseline requests of the same synthetic turns, with the teacher's
    top-k (k=20, `loss.top_k`), scored by `VLLMEngine.score` (one prompt-logprob call) and `HFEngine.score`
    (token-budget batches). Tokens/s counts real (unpadded) prompt + reply tokens of every scored sequence; the max
    |Δ log-prob| between the engines is printed as a sanity check.
(b) Generation on the chat path: the turns' chat prompts (rendered exactly as the chat service renders them), greedy,
    max_tokens 64. Throughput: all prompts in one `generate` call (vLLM batches them; HF, since 7911c1a, runs greedy
    prompt lists as left-padded batches: results older than that commit show HF one prompt at a time).
    Latency: p50 over single-prompt calls (one user at a time).
(c) Weight reload: time to apply a full state dict and LoRA adapters (r=16, r=64) vs their size. vLLM: reload_weights
    (validation included) / adapter written + add_lora; HF: copy_ into the parameters / peft set_peft_model_state_dict.

Both engines live in this process with the same number of torch threads (printed); the engines are warmed up before
anything is timed. Synthetic turns come from small lists of prompts, replies and follow-ups below (seeded), some
multi-turn. Results print as a table and go to `bench/results/bench_engines-<device>.json`.
Default: SmolLM2-135M-Instruct, 32 turns, 12 generation prompts: ~3-4 min on 2 CPU cores (HF generation dominates).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a prime number is.",
    "Give me three tips for sleeping better.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Suggest a name for a small bakery.",
    "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish.",
    "How many legs does a spider have?",
]
_REPLIES = [
    "The capital of France is Paris.",
    "Waves fold on the shore,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5 and 7.",
    "1. Keep a regular schedule.\n2. Avoid screens an hour before bed.\n3. Keep your bedroom cool and dark.",
    "You can use slicing, my_list[::-1], or call my_list.reverse() to reverse it in place.",
    "The seasons are caused by the tilt of Earth's axis, which changes how directly sunlight hits each hemisphere "
    "over the year.",
    "Two young lovers from feuding families marry in secret. A chain of misunderstandings ends with both of them dead.",
    "Sunlight is scattered by the molecules of the air, and blue light is scattered much more than red light.",
    "How about 'Rise and Crumb'?",
    "Weather is what happens in the atmosphere over hours or days; climate is the average pattern over many years.",
    "Buenos días.",
    "A spider has eight legs.",
]
_FOLLOWUPS = [
    "Too long, please answer in one sentence.",
    "Thanks, that's helpful.",
    "No, that is wrong. Try again.",
    "Can you use bullet points instead?",
    "Please explain it like I am five.",
    "Great, now translate that into French.",
    "write it all in lowercase",
    "Can you give an example?",
]
TOP_K = 20
GEN_TOKENS = 64


def synthetic_turns(n: int, seed: int = 0) -> list:
    """n turns (x, y, o); every third one has an earlier exchange in its context."""
    from hsd_ray.core.turns import Turn

    rng = random.Random(seed)
    turns = []
    for i in range(n):
        j = rng.randrange(len(_PROMPTS))
        context = [{"role": "user", "content": _PROMPTS[j]}]
        if i % 3 == 2:
            k = rng.randrange(len(_PROMPTS))
            context = [
                {"role": "user", "content": _PROMPTS[k]},
                {"role": "assistant", "content": _REPLIES[k]},
                {"role": "user", "content": rng.choice(_FOLLOWUPS)},
                *context,
            ]
        turns.append(Turn(context=context, reply=_REPLIES[j], followup=rng.choice(_FOLLOWUPS)))
    return turns


def score_requests(tokenizer, turns) -> list:
    from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES
    from hsd_ray.core.hindsight import build_example
    from hsd_ray.core.engine_api import ScoreRequest

    reqs = []
    for turn in turns:
        ex = build_example(tokenizer, turn, template=HINDSIGHT_TEMPLATES["online"], max_context_tokens=1024,
                           max_reply_tokens=512, reference_followup="Thanks, that's helpful.")
        reqs += [ScoreRequest(ex.teacher_prompt_ids, ex.target_ids),
                 ScoreRequest(ex.baseline_prompt_ids, ex.target_ids)]
    return reqs


def timed(fn, repeats: int = 1):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def bench_scoring(engines: dict, requests: list, repeats: int) -> dict:
    import numpy as np

    tokens = sum(len(r.prompt_ids) + len(r.target_ids) for r in requests)
    targets = sum(len(r.target_ids) for r in requests)
    out, scores = {"requests": len(requests), "tokens": tokens, "target_tokens": targets}, {}
    for name, eng in engines.items():
        scores[name], sec = timed(lambda: eng.score(requests, top_k=TOP_K), repeats)
        out[name] = {"seconds": sec, "tokens_per_s": tokens / sec, "target_tokens_per_s": targets / sec}
    out["vllm_over_hf"] = out["vllm"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    out["max_abs_logp_diff"] = float(
        max(np.abs(a.logp_T - b.logp_T).max() for a, b in zip(scores["vllm"], scores["hf"]))
    )
    out["max_abs_topk_logp_diff"] = float(
        max(np.abs(a.topk_logp_T_K - b.topk_logp_T_K).max() for a, b in zip(scores["vllm"], scores["hf"]))
    )
    return out


def bench_generation(engines: dict, prompts: list, latency_prompts: int) -> dict:
    from hsd_ray.core.engine_api import SamplingParams

    params = SamplingParams(max_tokens=GEN_TOKENS, temperature=0.0)
    out: dict = {"prompts": len(prompts), "max_tokens": GEN_TOKENS}
    texts = {}
    for name, eng in engines.items():
        gens, sec = timed(lambda: eng.generate(prompts, params))
        n = sum(len(g.token_ids) for g in gens)
        lat = []
        for p in prompts[:latency_prompts]:
            t0 = time.perf_counter()
            one = eng.generate([p], params)
            lat.append((time.perf_counter() - t0, len(one[0].token_ids)))
        texts[name] = [g.text for g in gens]
        out[name] = {
            "batch_seconds": sec,
            "tokens": n,
            "tokens_per_s": n / sec,
            "p50_latency_s": statistics.median(s for s, _ in lat),
            "p50_tokens_per_reply": statistics.median(k for _, k in lat),
            "single_stream_tokens_per_s": sum(k for _, k in lat) / sum(s for s, _ in lat),
        }
    out["vllm_over_hf"] = out["vllm"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    out["same_greedy_text"] = sum(a == b for a, b in zip(texts["vllm"], texts["hf"]))
    return out


def lora_weight_set(model_dir, r: int, version: int):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet

    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    del model
    return WeightSet(PolicyVersion(BASE_ADAPTER, version), "lora", tensors, lora_config=cfg.to_dict())


def bench_reload(vllm_engine, hf_engine, model_dir, args) -> list[dict]:
    from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.engines.vllm import VLLMEngine

    rows = []
    state = {k: v.detach().clone() for k, v in hf_engine.model.state_dict().items()}
    full = [WeightSet(PolicyVersion(BASE_ADAPTER, 100 + i), "full", state) for i in range(args.reload_repeats + 1)]
    vllm_engine.load_weights(full[0])  # warm-up (first reload builds vLLM's layer-wise metadata)
    t_v = statistics.median(timed(lambda ws=ws: vllm_engine.load_weights(ws))[1] for ws in full[1:])
    t_h = statistics.median(timed(lambda ws=ws: hf_engine.load_weights(ws))[1] for ws in full[1:])
    rows.append({"kind": "full", "mb": full[0].num_bytes() / 2**20, "vllm_s": t_v, "hf_s": t_h})
    del full, state

    # LoRA needs a LoRA-enabled vLLM engine (adapter slots are reserved at start-up) and fresh HF engines (peft wraps
    # them on the first adapter): built here, after the throughput runs, so LoRA never slows those down.
    vllm_engine.close()
    gc.collect()
    lora_v = VLLMEngine(model_dir, enable_lora=True, max_lora_rank=max(args.lora_ranks),
                        kv_cache_bytes=args.kv_cache_mb * 2**20)
    version = 200
    for r in args.lora_ranks:
        lora_h = HFEngine(model_dir)  # a peft-wrapped HF engine keeps its first adapter's shapes
        sets = []
        for _ in range(args.reload_repeats + 1):
            version += 1
            sets.append(lora_weight_set(model_dir, r, version))
        lora_v.load_weights(sets[0])
        lora_h.load_weights(sets[0])
        t_v = statistics.median(timed(lambda ws=ws: lora_v.load_weights(ws))[1] for ws in sets[1:])
        t_h = statistics.median(timed(lambda ws=ws: lora_h.load_weights(ws))[1] for ws in sets[1:])
        rows.append({"kind": f"lora r={r}", "mb": sets[0].num_bytes() / 2**20, "vllm_s": t_v, "hf_s": t_h})
    lora_v.close()
    del lora_v, lora_h
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder (hsd_ray.models)")
    parser.add_argument("--turns", type=int, default=32, help="synthetic turns (2 score requests each)")
    parser.add_argument("--gen-prompts", type=int, default=12, help="chat prompts generated from (first N turns)")
    parser.add_argument("--latency-prompts", type=int, default=5, help="single-prompt calls for the p50 latency")
    parser.add_argument("--repeats", type=int, default=1, help="timed scoring repeats (median)")
    parser.add_argument("--reload-repeats", type=int, default=3, help="timed reloads per weight set (median)")
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--kv-cache-mb", type=int, default=256, help="vLLM KV cache on CPU (MiB)")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/bench_engines-<device>.json)")
    args = parser.parse_args(argv)

    import torch

    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.engines.vllm import VLLMEngine
    from hsd_ray.models import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = resolve_model(args.model)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    engines = {"vllm": None, "hf": None}
    t = time.perf_counter()
    engines["vllm"] = VLLMEngine(model_dir, kv_cache_bytes=args.kv_cache_mb * 2**20)
    start_v = time.perf_counter() - t
    t = time.perf_counter()
    engines["hf"] = HFEngine(model_dir, device=device)
    start_h = time.perf_counter() - t
    tok = engines["hf"].tokenizer

    turns = synthetic_turns(args.turns)
    requests = score_requests(tok, turns)
    prompts = [render_prompt(tok, t.context) for t in turns[: args.gen_prompts]]
    for eng in engines.values():  # warm-up: kernels / oneDNN handles for these shapes, tokenizer caches
        eng.score(requests[:4], top_k=TOP_K)
        eng.generate(prompts[:2], SamplingParams(max_tokens=8, temperature=0.0))

    result = {
        "model": args.model,
        "device": device,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "startup_s": {"vllm": start_v, "hf": start_h},
        "scoring": bench_scoring(engines, requests, args.repeats),
        "generation": bench_generation(engines, prompts, args.latency_prompts),
    }
    result["reload"] = bench_reload(engines["vllm"], engines["hf"], model_dir, args)
    result["loadavg_before_after"] = [load_before[0], os.getloadavg()[0]]
    result["total_s"] = time.perf_counter() - t0
    print_report(result)
    out = Path(args.out) if args.out else RESULTS / f"bench_engines-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")
    return result


def print_report(r: dict) -> None:
    s, g = r["scoring"], r["generation"]
    print(f"\n== bench_engines: {r['model']} on {r['device']} ({r['torch_threads']} torch threads), "
          f"engine start vLLM {r['startup_s']['vllm']:.1f}s / HF {r['startup_s']['hf']:.1f}s ==")
    print(f"\n(a) teacher scoring, top-{TOP_K}: {s['requests']} requests, {s['tokens']} tokens "
          f"({s['target_tokens']} reply tokens)")
    print(f"{'engine':<8}{'seconds':>10}{'tokens/s':>12}{'reply tok/s':>14}")
    for name in ("vllm", "hf"):
        e = s[name]
        print(f"{name:<8}{e['seconds']:>10.2f}{e['tokens_per_s']:>12.0f}{e['target_tokens_per_s']:>14.0f}")
    print(f"vLLM / HF = {s['vllm_over_hf']:.2f}x   max |Δ logp| = {s['max_abs_logp_diff']:.2e}, "
          f"max |Δ top-k logp| = {s['max_abs_topk_logp_diff']:.2e}")
    print(f"\n(b) generation, chat path, greedy, max_tokens {g['max_tokens']}: {g['prompts']} prompts")
    print(f"{'engine':<8}{'batch s':>10}{'tokens':>8}{'tokens/s':>10}{'p50 latency s':>15}{'p50 tokens':>12}"
          f"{'1-stream tok/s':>16}")
    for name in ("vllm", "hf"):
        e = g[name]
        print(f"{name:<8}{e['batch_seconds']:>10.2f}{e['tokens']:>8}{e['tokens_per_s']:>10.1f}"
              f"{e['p50_latency_s']:>15.2f}{e['p50_tokens_per_reply']:>12.0f}{e['single_stream_tokens_per_s']:>16.1f}")
    print(f"vLLM / HF (batch tokens/s) = {g['vllm_over_hf']:.2f}x   identical greedy replies: "
          f"{g['same_greedy_text']}/{g['prompts']}")
    print("\n(c) weight reload (median)")
    print(f"{'weight set':<12}{'MiB':>10}{'vLLM s':>10}{'HF s':>10}")
    for row in r["reload"]:
        print(f"{row['kind']:<12}{row['mb']:>10.1f}{row['vllm_s']:>10.3f}{row['hf_s']:>10.3f}")
    la = r["loadavg_before_after"]
    print(f"\nload average before/after: {la[0]:.2f}/{la[1]:.2f}; total {r['total_s']:.0f}s")


if __name__ == "__main__":
    main()
