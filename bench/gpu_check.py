"""One-shot GPU check of the core code paths at Qwen2.5-0.5B shape (`python bench/gpu_check.py`; `--tiny` on CPU).

Written for a bare GPU machine that has torch + transformers + peft but not ray, vllm or pydantic: it imports only
`hsd_ray.core.*` and `hsd_ray.engines.hf` (never `hsd_ray.config`) and builds a randomly initialised model of the
Qwen2.5-0.5B shape in bf16, so no weights need to be downloaded. It measures, in one run (< 4 min on an H100):

1. correctness: every function of `hsd_ray.core.losses` on the device (float32, and bf16 logits) against a float64 CPU
   reference on small random inputs, values and gradients (max normwise relative error);
2. scoring tokens/s: `HFEngine.score` (pack_sequences + reply_logits + log_softmax gather, the production path) on
   B x L tokens in one call, sampled-token log-probs only and with the teacher's top-20, and in calls cut by the
   teacher's default token budget (8192);
3. weight copy: `hsd_ray.core.policy.export_weights` (GPU -> CPU state dict) and `HFEngine.load_weights` (CPU -> GPU,
   validated copy_), plus raw pageable / pinned copies, in GB/s;
4. learner step tokens/s: `hsd_ray.core.train_step.learner_step` with the sampled-token loss, full fine-tune (fp32 master
   weights, AdamW, bf16 autocast) vs LoRA r=64 on all linear layers (bf16 base), warm-up excluded, median of 3.

The core imports `hsd_ray.config` only under `TYPE_CHECKING` (a test holds it to that), so it imports here without
pydantic; config objects are passed as `types.SimpleNamespace` (the code only reads attributes). Prints a table; writes JSON to
`$OUT/gpu_check.json` when OUT is set (or to --json). Ends by listing which of pydantic/yaml/ray/vllm/hsd_ray.config
ended up in sys.modules (pyyaml is imported by transformers itself, through huggingface_hub).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere: find hsd_ray

from bench.util import cuda_sync  # noqa: E402  (after the path: found when run as a file)

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=2048)
WATCHED = ("pydantic", "yaml", "ray", "vllm", "hsd_ray.config")


LOSS_CFG = types.SimpleNamespace(kind="sampled_token", ignore_first_k=0, center_advantages=True, importance_cap=0.0,
                                 kl_coef=0.0, top_k=20, divergence="reverse_kl", jsd_beta=0.5)


def timed(fn, device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        cuda_sync(device)
        t = time.perf_counter()
        fn()
        cuda_sync(device)
        out.append(time.perf_counter() - t)
    return out


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---- 1. correctness of the losses on the device -------------------------------------------------------------------
def check_losses(device: torch.device) -> dict[str, float]:
    """Max normwise relative error |dev - ref|_max / |ref|_max of each loss function (value and gradients)."""
    from hsd_ray.core import losses as L

    g = torch.Generator().manual_seed(0)
    B, T, V, K = 3, 9, 97, 6
    logits64 = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    teacher64 = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    mask[2, :] = False  # a row with no tokens
    targets[0, :2] = -100  # ignore index at padding
    t_logp64 = torch.log_softmax(teacher64, -1)
    topk_logp64, topk_ids = t_logp64.topk(K, dim=-1)
    tgt_logp64 = torch.randn(B, T, generator=g, dtype=torch.float64) - 2
    base_logp64 = torch.randn(B, T, generator=g, dtype=torch.float64) - 2
    ref_logp64 = torch.randn(B, T, generator=g, dtype=torch.float64) - 2
    weights64 = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    # the no-follow-up baseline's log-probs at the teacher's top-k ids (shifted_topk_loss): another context's numbers
    base_topk_logp64 = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3, -1).gather(
        -1, topk_ids)

    def cases(dtype, dev):
        """name -> list of tensors (values and grads) for inputs cast to dtype on dev."""
        x = lambda t: t.to(dev, dtype, copy=True)  # noqa: E731  (a fresh leaf, never the shared input)
        out: dict[str, list[torch.Tensor]] = {}
        lg = x(logits64).requires_grad_()
        lp = L.token_logprobs(lg, targets.to(dev))
        lp.sum().backward()
        out["token_logprobs"] = [lp, lg.grad]
        for center in (False, True):
            out[f"advantages(center={center})"] = [L.advantages(x(tgt_logp64), x(base_logp64), mask.to(dev),
                                                                center=center)]
        out["masked_sequence_mean"] = [L.masked_sequence_mean(x(tgt_logp64), mask.to(dev))]
        out["loss_mask(k=2)"] = [L.loss_mask(mask.to(dev), 2).to(torch.float64)]
        out["importance_weights"] = [L.importance_weights(x(tgt_logp64), x(base_logp64), 2.0)]
        s = x(tgt_logp64).requires_grad_()
        A = L.advantages(x(tgt_logp64), x(base_logp64), mask.to(dev), center=True)
        loss, _ = L.sampled_token_loss(s, A, mask.to(dev), x(weights64))
        loss.backward()
        out["sampled_token_loss"] = [loss, s.grad]
        out["bucket_logprobs"] = [L.bucket_logprobs(x(logits64), topk_ids.to(dev))]
        out["teacher_bucket_logprobs"] = [L.teacher_bucket_logprobs(x(topk_logp64))]
        for div in ("reverse_kl", "forward_kl", "jsd"):
            lg = x(logits64).requires_grad_()
            loss, _ = L.topk_divergence_loss(lg, topk_ids.to(dev), x(topk_logp64), mask.to(dev), divergence=div)
            loss.backward()
            out[f"topk_divergence_loss({div})"] = [loss, lg.grad]
            lg = x(logits64).requires_grad_()
            ex = L.exact_divergence(lg, x(teacher64), mask.to(dev), div)
            ex.backward()
            out[f"exact_divergence({div})"] = [ex, lg.grad]
        for scale in (1.0, 0.5):
            lg = x(logits64).requires_grad_()
            loss, _ = L.shifted_topk_loss(lg, topk_ids.to(dev), x(topk_logp64), x(base_topk_logp64), mask.to(dev),
                                          scale=scale, seq_weight_B=x(weights64[:, 0]))
            loss.backward()
            out[f"shifted_topk_loss(scale={scale})"] = [loss, lg.grad]
        s = x(tgt_logp64).requires_grad_()
        kl, _ = L.kl_penalty(s, x(ref_logp64), mask.to(dev))
        kl.backward()
        out["kl_penalty"] = [kl, s.grad]
        return out

    ref = cases(torch.float64, torch.device("cpu"))
    results: dict[str, float] = {}
    for name, tensors in cases(torch.float32, device).items():
        results[name] = max(_rel_err(a, b) for a, b in zip(tensors, ref[name]))
    # bf16 logits (what a bf16 model emits): compare against float64 of the same bf16-rounded numbers.
    lg16 = logits64.to(torch.bfloat16)
    dev_lp = L.token_logprobs(lg16.to(device), targets.to(device))
    results["token_logprobs(bf16 logits)"] = _rel_err(dev_lp, L.token_logprobs(lg16.double(), targets))
    dev_loss, _ = L.topk_divergence_loss(lg16.to(device), topk_ids.to(device), topk_logp64.float().to(device),
                                         mask.to(device))
    ref_loss, _ = L.topk_divergence_loss(lg16.double(), topk_ids, topk_logp64.float().double(), mask)
    results["topk_divergence_loss(bf16 logits)"] = _rel_err(dev_loss, ref_loss)
    return results


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / max(scale, 1e-30) if b.numel() else 0.0


# ---- model + engine -------------------------------------------------------------------------------------------------
def build_model(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, use_cache=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval()


def duck_engine(model, device: torch.device, token_budget: int):
    """An HFEngine around an in-memory model (HFEngine.__init__ loads from a folder; we have none)."""
    import threading

    from hsd_ray.core.weights import PolicyVersion
    from hsd_ray.engines.hf import HFEngine

    engine = HFEngine.__new__(HFEngine)
    engine.model, engine.device, engine.score_token_budget = model, device, token_budget
    engine._plain = model  # HFEngine.__init__'s attributes, set by hand: keep in step with it
    engine.tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
    engine._version, engine._lock, engine._lora_loaded = PolicyVersion(), threading.RLock(), False
    engine.model_dir = None
    return engine


def random_requests(n: int, prompt_len: int, target_len: int, vocab: int, seed: int = 0):
    from hsd_ray.core.engine_api import ScoreRequest

    g = torch.Generator().manual_seed(seed)
    return [ScoreRequest(torch.randint(2, vocab, (prompt_len,), generator=g).tolist(),
                         torch.randint(2, vocab, (target_len,), generator=g).tolist()) for _ in range(n)]


# ---- 2. scoring ---------------------------------------------------------------------------------------------------
def bench_scoring(engine, device, B: int, prompt_len: int, target_len: int, vocab: int, repeats: int) -> dict:
    """One call over all B rows (budget = B x L), with and without top-20; then the teacher's default budget."""
    requests = random_requests(B, prompt_len, target_len, vocab)
    tokens = B * (prompt_len + target_len)
    out = {"batch": B, "prompt_len": prompt_len, "target_len": target_len, "tokens": tokens,
           "token_budget": engine.score_token_budget}
    full_budget = engine.score_token_budget
    for key, top_k, budget in (("top0", 0, full_budget), ("top20", 20, full_budget), ("top0_budget8192", 0, 8192)):
        engine.score_token_budget = budget
        reset_peak(device)
        times = timed(lambda: engine.score(requests, top_k=top_k), device, repeats)
        med = statistics.median(times)
        out[key] = {"s": med, "tok_s": tokens / med, "peak_gib": peak_gib(device), "budget": budget}
    engine.score_token_budget = full_budget
    return out


# ---- 3. weight copies -----------------------------------------------------------------------------------------------
def bench_weights(engine, policy_mod, device) -> dict:
    """export_weights (GPU -> CPU), HFEngine.load_weights (CPU -> GPU, validated), raw pageable and pinned copies."""
    model = engine.model
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.state_dict().values()}
    out: dict = {"unique_gb": sum(unique.values()) / 1e9}
    # export_weights (tied lm_head once, pinned async copies) vs what it replaced (every state-dict entry, tied
    # alias included, copied to pageable memory one tensor at a time), side by side; the first export also pays for
    # pinned allocations, the later ones reuse torch's pinned-memory cache.
    cuda_sync(device)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        ws = policy_mod.export_weights(model, version=1, step=1)
        cuda_sync(device)
        times.append(time.perf_counter() - t)
        if len(times) < 3:
            del ws
    out["export_s"], out["export_first_s"] = min(times[1:]), times[0]
    out["export_gb"] = ws.num_bytes() / 1e9
    out["export_gb_s"] = out["export_gb"] / out["export_s"]
    old_times = []
    for _ in range(2):
        t = time.perf_counter()
        old = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        cuda_sync(device)
        old_times.append(time.perf_counter() - t)
        old_gb = sum(v.numel() * v.element_size() for v in old.values()) / 1e9
        del old
    out["export_pageable_s"], out["export_pageable_gb"] = min(old_times), old_gb
    out["export_speedup_vs_pageable"] = out["export_pageable_s"] / out["export_s"]
    t = time.perf_counter()
    engine.load_weights(ws)
    cuda_sync(device)
    out["load_s"] = time.perf_counter() - t
    out["load_gb_s"] = out["export_gb"] / out["load_s"]
    params = dict(model.state_dict())
    t = time.perf_counter()
    with torch.no_grad():
        for name, cpu_t in ws.tensors.items():
            params[name].copy_(cpu_t)
    cuda_sync(device)
    out["raw_h2d_pageable_gb_s"] = out["export_gb"] / (time.perf_counter() - t)
    if device.type == "cuda":
        pinned = {k: torch.empty_like(v, device="cpu").pin_memory() for k, v in ws.tensors.items()}
        cuda_sync(device)
        t = time.perf_counter()
        for k in pinned:
            pinned[k].copy_(params[k], non_blocking=True)
        cuda_sync(device)
        out["raw_d2h_pinned_gb_s"] = out["export_gb"] / (time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            for k in pinned:
                params[k].copy_(pinned[k], non_blocking=True)
        cuda_sync(device)
        out["raw_h2d_pinned_gb_s"] = out["export_gb"] / (time.perf_counter() - t)
        del pinned
    del ws
    return out


# ---- 4. learner steps -----------------------------------------------------------------------------------------------
def learner_batch(B: int, prompt_len: int, target_len: int, vocab: int, top_k: int = 0):
    from hsd_ray.core.batch import HindsightBatch, pack_sequences

    reqs = random_requests(B, prompt_len, target_len, vocab, seed=1)
    packed = pack_sequences([r.prompt_ids for r in reqs], [r.target_ids for r in reqs], pad_id=0)
    g = torch.Generator().manual_seed(2)
    teacher = -torch.rand(B, target_len, generator=g) * 5
    topk_ids = topk_logp = None
    if top_k:  # the teacher's top-k as vLLM returns it: distinct ids, log-probs sorted descending
        topk_ids = torch.stack([torch.randperm(vocab, generator=g)[:top_k] for _ in range(B * target_len)])
        topk_ids = topk_ids.view(B, target_len, top_k)
        topk_logp = torch.log_softmax(torch.randn(B, target_len, top_k + 1, generator=g), -1)[..., :top_k]
        topk_logp = topk_logp.sort(-1, descending=True).values
    return HindsightBatch(packed=packed, teacher_logp_B_T=teacher, baseline_logp_B_T=teacher + torch.randn(
        B, target_len, generator=g) * 0.3, topk_ids_B_T_K=topk_ids, topk_logp_B_T_K=topk_logp, served_logp_B_T=None,
        feedback_weight_B=torch.ones(B),
        turn_ids=[str(i) for i in range(B)], policy_versions=[None] * B, teacher_versions=[0] * B, replied_at=[0.0] * B)


def bench_learner(model, step_mod, device, batch, *, lr: float, steps: int, loss_cfg=None, reference=None) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    reset_peak(device)
    metrics = {}
    loss_cfg = loss_cfg or LOSS_CFG

    def one():
        metrics.update(step_mod.learner_step(model, optimizer, batch, loss_cfg, grad_clip=1.0, autocast_bf16=True,
                                             reference=reference))

    times = timed(one, device, steps, warmup=1)
    med = statistics.median(times)
    seq_tokens = int(batch.packed.attention_mask_B_L.sum())
    out = {"trainable_params": sum(p.numel() for p in params), "step_s": med, "step_s_all": times,
           "seq_tokens": seq_tokens, "reply_tokens": batch.num_tokens, "tok_s": seq_tokens / med,
           "reply_tok_s": batch.num_tokens / med, "peak_gib": peak_gib(device), "loss": metrics.get("loss"),
           "grad_norm": metrics.get("grad_norm")}
    del optimizer
    return out


def with_oom_retry(fn, B: int, device, what: str, log):
    """Run fn(B); on CUDA out-of-memory halve B (down to 1) and try again."""
    while True:
        try:
            return fn(B)
        except torch.OutOfMemoryError:
            if B == 1:
                raise
        reset_peak(device)  # outside the except block: the traceback no longer pins the failed step's tensors
        log(f"   {what}: out of memory at batch {B}, retrying with {B // 2}")
        B //= 2


# ---- driver ---------------------------------------------------------------------------------------------------------
def run(args, log) -> dict:
    device = torch.device("cpu" if args.tiny else args.device)
    shape = TINY if args.tiny else QWEN25_05B
    B_score, B_learn, P, T = (4, 4, 48, 16) if args.tiny else (args.score_batch, args.learn_batch, 768, 256)
    from hsd_ray.core import policy as policy_mod, train_step as step_mod

    import peft
    import transformers

    res: dict = {"env": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__, "device": str(device),
                         "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
                 "shape": shape, "tiny": args.tiny}
    t0 = time.perf_counter()

    log("1. losses on device vs float64 CPU reference")
    res["correctness"] = check_losses(device)
    worst = max(res["correctness"].values())
    log(f"   worst max rel err {worst:.2e} over {len(res['correctness'])} checks")

    log("2. scoring (HFEngine.score)")
    model = build_model(shape, device, torch.bfloat16)
    res["params"] = sum(p.numel() for p in model.parameters())
    res["attn_implementation"] = model.config._attn_implementation
    engine = duck_engine(model, device, token_budget=B_score * (P + T))
    res["scoring"] = with_oom_retry(
        lambda b: bench_scoring(engine, device, b, P, T, shape["vocab_size"], args.repeats), B_score, device,
        "scoring", log)
    log("3. weight copies")
    res["weights"] = bench_weights(engine, policy_mod, device)

    log("4a. learner step, LoRA r=64 (bf16 base)")
    lora_cfg = types.SimpleNamespace(r=64, alpha=128, dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lora_model = policy_mod.apply_lora(model, lora_cfg)
    res["learner_lora"] = with_oom_retry(
        lambda b: bench_learner(lora_model, step_mod, device, learner_batch(b, P, T, shape["vocab_size"]), lr=1e-5,
                                steps=args.repeats), B_learn, device, "LoRA step", log)
    cuda_sync(device)
    t = time.perf_counter()
    adapter = policy_mod.export_weights(lora_model, version=2, step=2)
    res["weights"]["lora_export_s"] = time.perf_counter() - t
    res["weights"]["lora_export_mb"] = adapter.num_bytes() / 1e6
    del engine, model, lora_model, adapter
    reset_peak(device)

    log("4b. learner step, full fine-tune (fp32 master weights, bf16 autocast)")
    model = build_model(shape, device, torch.float32).train()
    res["learner_full"] = with_oom_retry(
        lambda b: bench_learner(model, step_mod, device, learner_batch(b, P, T, shape["vocab_size"]), lr=1e-6,
                                steps=args.repeats), B_learn, device, "full step", log)
    log("4c. learner step, full fine-tune, top-20 reverse-KL loss + KL anchor 0.1 to the initial weights")
    topk_cfg = types.SimpleNamespace(**{**vars(LOSS_CFG), "kind": "topk", "kl_coef": 0.1})
    reference = policy_mod.ReferencePolicy(model, "initial")
    res["learner_full_topk_kl"] = with_oom_retry(
        lambda b: bench_learner(model, step_mod, device, learner_batch(b, P, T, shape["vocab_size"], top_k=20),
                                lr=1e-6, steps=args.repeats, loss_cfg=topk_cfg, reference=reference),
        B_learn, device, "full top-k step", log)
    del model, reference
    full, lora = res["learner_full"], res["learner_lora"]
    if full["seq_tokens"] == lora["seq_tokens"]:
        res["lora_speedup"] = full["step_s"] / lora["step_s"]
    res["wall_s"] = time.perf_counter() - t0
    return res


def format_results(r: dict) -> str:
    s, w, full, lora = r["scoring"], r["weights"], r["learner_full"], r["learner_lora"]
    gib = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [
        f"device {r['env']['gpu'] or r['env']['device']}  torch {r['env']['torch']}  transformers "
        f"{r['env']['transformers']}  peft {r['env']['peft']}  attention {r['attn_implementation']}",
        f"model: random Qwen2 {r['shape']['num_hidden_layers']}L h{r['shape']['hidden_size']} "
        f"V{r['shape']['vocab_size']} ({r['params'] / 1e6:.1f}M params), bf16",
        "",
        f"{'check':<36}{'max rel err':>12}",
        *[f"{k:<36}{v:>12.1e}{'' if v < 1e-4 else '  <-- above 1e-4'}" for k, v in r["correctness"].items()],
        "",
        f"scoring {s['batch']} x ({s['prompt_len']} prompt + {s['target_len']} reply) = {s['tokens']} tokens per call",
        f"  {'variant':<34}{'s/call':>9}{'tokens/s':>12}{'peak GiB':>10}",
        *[f"  {name:<34}{s[k]['s']:>9.3f}{s[k]['tok_s']:>12,.0f}{gib(s[k]['peak_gib']):>10}"
          for name, k in ((f"logprobs, budget {s['top0']['budget']}", "top0"),
                          (f"+ top-20, budget {s['top20']['budget']}", "top20"),
                          ("logprobs, budget 8192 (default)", "top0_budget8192"))],
        "",
        f"weights: {w['unique_gb']:.2f} GB unique, {w['export_gb']:.2f} GB exported (tied lm_head once)",
        f"  export_weights GPU->CPU      {w['export_s']:>7.2f} s  {w['export_gb_s']:>6.2f} GB/s  (first call "
        f"{w['export_first_s']:.2f} s)",
        f"  old export (pageable, per tensor, {w['export_pageable_gb']:.2f} GB) {w['export_pageable_s']:.2f} s: "
        f"new is {w['export_speedup_vs_pageable']:.1f}x faster",
        f"  HFEngine.load_weights CPU->GPU {w['load_s']:>5.2f} s  {w['load_gb_s']:>6.2f} GB/s (validation included)",
        f"  raw copy_ CPU->GPU pageable            {w['raw_h2d_pageable_gb_s']:>6.2f} GB/s",
    ]
    if "raw_d2h_pinned_gb_s" in w:
        lines.append(f"  raw pinned GPU->CPU / CPU->GPU           {w['raw_d2h_pinned_gb_s']:>6.2f} / "
                     f"{w['raw_h2d_pinned_gb_s']:.2f} GB/s")
    lines.append(f"  LoRA adapter export {w['lora_export_mb']:.1f} MB in {w['lora_export_s'] * 1e3:.0f} ms")
    lines += ["", f"learner step (sampled-token loss, AdamW, bf16 autocast), median of {len(full['step_s_all'])}",
              f"  {'mode':<22}{'batch tokens':>13}{'trainable':>14}{'step s':>9}{'tokens/s':>11}{'peak GiB':>10}"]
    rows = [("full fine-tune", full), ("LoRA r=64", lora)]
    if "learner_full_topk_kl" in r:
        rows.append(("full, top-20 + KL 0.1", r["learner_full_topk_kl"]))
    for name, m in rows:
        lines.append(f"  {name:<22}{m['seq_tokens']:>13,}{m['trainable_params']:>14,}{m['step_s']:>9.3f}"
                     f"{m['tok_s']:>11,.0f}{gib(m['peak_gib']):>10}")
    if "lora_speedup" in r:
        lines.append(f"  LoRA / full throughput: {r['lora_speedup']:.2f}x")
    topk = r.get("learner_full_topk_kl")
    if topk and topk["seq_tokens"] == full["seq_tokens"]:
        lines.append(f"  top-20 + KL / sampled-token throughput: {full['step_s'] / topk['step_s']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GPU check of hsd_ray's core paths at Qwen2.5-0.5B shape.")
    p.add_argument("--tiny", action="store_true", help="tiny shape on CPU (exercises the code path anywhere)")
    p.add_argument("--device", default="cuda", help="torch device (ignored with --tiny)")
    p.add_argument("--score-batch", type=int, default=32, help="scoring rows of 768 + 256 tokens")
    p.add_argument("--learn-batch", type=int, default=16, help="learner rows of 768 + 256 tokens (halved on OOM)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median), after one warm-up")
    p.add_argument("--json", default=None, help="write results here (default $OUT/gpu_check.json if OUT is set)")
    args = p.parse_args(argv)
    if not args.tiny and args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device visible (use --tiny to exercise the code on CPU)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    res = run(args, log)
    res["modules_loaded"] = {m: m in sys.modules for m in WATCHED}
    res["hsd_ray_modules"] = sorted(m for m in sys.modules if m.startswith("hsd_ray"))
    print(format_results(res))
    print(f"\nwall {res['wall_s']:.0f} s")
    loaded = res["modules_loaded"]
    print("modules in sys.modules: " + "  ".join(f"{m}={'yes' if v else 'no'}" for m, v in loaded.items()))
    print("hsd_ray modules: " + " ".join(res["hsd_ray_modules"]))
    path = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).write_text(json.dumps(res, indent=1) + "\n")
        print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
