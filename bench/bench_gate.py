"""The version gate's cost, measured side by side in one run (`python -m bench.bench_gate`).

(a) Greedy generation of the gate's own prompt sets (hsd_ray/data/probes.json: the probe prompts at
    `version_gate.probe_max_tokens`, the plain facts and checkable prompts at `check_max_tokens`) on the
    transformers engine: one prompt per generate call (how HFEngine ran greedy batches before) against one
    `generate` call for the whole set (HFEngine's left-padded greedy batches). Ratio of the two times, and how
    many replies are token-identical.
(b) The gatekeeper itself (loop/gatekeeper.py, no Ray: `Gatekeeper(settings, registry=None)`): the seconds to
    measure the base model at start, and `evaluate()` of a candidate (the base weights plus small Gaussian noise, a
    stand-in for one learner version: the cost does not depend on what the weights learned, only on reply lengths),
    and the shares of it the relevance check and the plain facts take (timed once more on their own; the facts as
    the answers batch with them against without them), and a per-user adapter's candidate (CAPABILITY_CHECKS,
    which skip the two KL scoring passes) against the same checks with those passes, alternating.
(c) One learner optimizer step on a batch of `learner.batch_turns` synthetic scored turns (core.train_step, the same
    function the Ray Train learner calls), so the gate's time per version can be put against the learner's time
    per version at the default cadence (`broadcast.every_steps` steps per version). In a live loop the job reports
    the same ratio from its own timings (summary.json `version_gate_cost`).

Results print and go to `bench/results/bench_gate-<model>[-<tag>].json`. SmolLM2-135M-Instruct: ~3 min on 2 CPU cores.
Config overrides follow the options (`engine.device=cuda engine.dtype=bfloat16`); `--random-weights` runs a machine that
has the model's config and tokenizer but not its weights (the GPU machine: results bench_gate-smollm2-h200-*.json);
`--batch-turns 4,32,128` adds the learner's step at those batch sizes and the cadence at which the gate would cost 0.25
of the learner.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def generation_ratio(engine, gate_cfg, probes_path: str | None) -> dict:
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.data import load_probes

    probes, tok = load_probes(probes_path), engine.tokenizer
    sets = {"probe": ([p for p in probes["probes"]], gate_cfg.probe_max_tokens),
            "facts+checkable": ([c["prompt"] for c in probes.get("facts", []) + probes["checkable"]],
                                gate_cfg.check_max_tokens)}  # one batch in the gatekeeper too
    out = {}
    for name, (texts, max_tokens) in sets.items():
        prompts = [render_prompt(tok, [{"role": "user", "content": t}]) for t in texts]
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        engine.generate(prompts[:2], params)  # warm-up
        alone, alone_s = _timed(lambda: [engine.generate([p], params)[0] for p in prompts])
        batched, batched_s = _timed(lambda: engine.generate(prompts, params))
        same = sum(a.token_ids == b.token_ids for a, b in zip(alone, batched))
        out[name] = {"prompts": len(prompts), "max_tokens": max_tokens, "one_by_one_s": round(alone_s, 2),
                     "batched_s": round(batched_s, 2), "speedup": round(alone_s / batched_s, 2),
                     "token_identical": same}
    return out


def gatekeeper_cost(model_dir: str, cfg) -> dict:
    from hsd_ray.core.weights import PolicyVersion, WeightSet
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    settings = GatekeeperSettings(model_dir, cfg.engine, cfg.version_gate, enable_lora=False)
    gate, start_s = _timed(lambda: Gatekeeper(settings, None))
    torch.manual_seed(0)
    state = {k: v.detach() + 1e-4 * torch.randn_like(v)
             for k, v in gate.engine.model.named_parameters()}  # a tied lm_head: once, as the learner sends it
    gate.engine.load_weights(WeightSet(kind="full", tensors=state, version=PolicyVersion(version=1)))
    (numbers, replies), eval_s = _timed(gate.evaluate)
    _, relevance_s = _timed(lambda: gate._relevance([r.text for r in replies]))  # already inside evaluate: its share
    facts_s = facts_cost(gate)
    adapter = adapter_candidate_cost(gate)
    return {"base_measurement_s": round(start_s, 2), "candidate_evaluate_s": round(eval_s, 2),
            "relevance_check_s": round(relevance_s, 2), "relevance_share": round(relevance_s / eval_s, 3),
            "facts_check_s": round(facts_s, 2), "facts_share": round(facts_s / eval_s, 3),
            "acceptance": acceptance_cost(gate, replies, eval_s), "adapter_candidate": adapter,
            "candidate": numbers.to_dict()}


def adapter_candidate_cost(gate, repeats: int = 2) -> dict:
    """A per-user adapter's candidate is judged on CAPABILITY_CHECKS, which hold no KL: `evaluate` skips the two KL
    scoring passes for it. Timed side by side on the loaded candidate, alternating: those checks against the same
    checks plus the two KLs (what it cost before), mean of `repeats` each."""
    from hsd_ray.core.version_gate import CAPABILITY_CHECKS

    with_kl = (*CAPABILITY_CHECKS, "kl_accepted", "kl_base")
    skip_s, kl_s = [], []
    for _ in range(repeats):
        kl_s.append(_timed(lambda: gate.evaluate(checks=with_kl))[1])
        skip_s.append(_timed(lambda: gate.evaluate(checks=CAPABILITY_CHECKS))[1])
    before, after = sum(kl_s) / repeats, sum(skip_s) / repeats
    return {"with_kl_passes_s": round(before, 2), "without_s": round(after, 2), "speedup": round(before / after, 3),
            "runs": {"with_kl_passes_s": [round(x, 2) for x in kl_s], "without_s": [round(x, 2) for x in skip_s]}}


def facts_cost(gate, repeats: int = 2) -> float:
    """What the plain facts add to a candidate: its greedy answers batch with them and without them (the checkable
    prompts only), best of `repeats` each, the difference."""
    asked = gate.asked
    with_facts = min(_timed(asked.ask)[1] for _ in range(repeats))
    every = asked.prompts, asked.answers
    asked.prompts, asked.answers = asked.prompts[asked.n_facts:], asked.answers[asked.n_facts:]
    try:
        without = min(_timed(asked.ask)[1] for _ in range(repeats))
    finally:
        asked.prompts, asked.answers = every
    return with_facts - without


def acceptance_cost(gate, replies, eval_s: float) -> dict:
    """An accepted candidate's reference (its probe replies' top-k): taken from the greedy generation (now) against
    the scoring pass over the same replies it used to cost, and what asking the generation for its top-k adds."""
    from hsd_ray.core.engine_api import ScoreRequest
    from hsd_ray.loop.gate_answers import greedy

    k, max_tokens = gate.settings.gate.top_k, gate.settings.gate.probe_max_tokens
    _, plain_s = _timed(lambda: greedy(gate.engine, gate.probe_prompts, max_tokens))
    _, with_topk_s = _timed(lambda: greedy(gate.engine, gate.probe_prompts, max_tokens, top_k=k))
    _, from_generation_s = _timed(lambda: gate._reference(1, replies))
    targets = [ScoreRequest(p, list(r.token_ids)) for p, r in zip(gate.probe_prompts, replies) if r.token_ids]
    _, scoring_pass_s = _timed(lambda: gate.engine.score(targets, top_k=k))
    before = eval_s - (with_topk_s - plain_s) + scoring_pass_s
    after = eval_s + from_generation_s
    return {"probe_generation_s": round(plain_s, 2), "probe_generation_with_topk_s": round(with_topk_s, 2),
            "reference_from_generation_s": round(from_generation_s, 3), "reference_scoring_pass_s":
            round(scoring_pass_s, 2), "accepted_candidate_before_s": round(before, 2),
            "accepted_candidate_after_s": round(after, 2), "speedup": round(before / after, 3)}


def learner_step_cost(model_dir: str, cfg, steps: int = 3, batch_turns: int | None = None) -> dict:
    """The learner's step as the loop takes it: the config's loss (with its KL anchor), batch size and optimizer, on
    synthetic turns scored by the teacher code path (core.scoring) with replies of 16-64 tokens (serve.max_tokens)."""
    from bench.bench_core import synthetic_turns
    from bench.util import cuda_sync
    from hsd_ray.core.batch import HindsightBatch
    from hsd_ray.core.policy import make_optimizer, resume_policy
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.core.train_step import learner_step
    from hsd_ray.engines.hf import HFEngine

    engine = HFEngine(model_dir, device=cfg.engine.device)  # the learner's fp32 master weights, on the gate's device
    n_turns = batch_turns or cfg.learner.batch_turns
    turns = synthetic_turns(engine.tokenizer, n_turns, 16, cfg.serve.max_tokens, seed=0)
    tok = engine.tokenizer
    batch = HindsightBatch.collate(score_turns(engine, turns, cfg.hindsight, cfg.loss),
                                   tok.pad_token_id, (tok.eos_token_id,))
    model, lcfg = engine.model, cfg.learner
    reference = resume_policy(model, None, kl_on=cfg.loss.kl_coef > 0, kind=cfg.loss.reference)
    optimizer, scheduler = make_optimizer(model, lcfg)

    def step():
        out = learner_step(model, optimizer, batch, cfg.loss, grad_clip=lcfg.grad_clip, scheduler=scheduler,
                           reference=reference, autocast_bf16=lcfg.autocast_bf16)
        cuda_sync(engine.device)
        return out

    step()  # warm-up: optimizer state allocation, first-call overheads
    step_s = sum(_timed(step)[1] for _ in range(steps)) / steps
    return {"batch_turns": n_turns, "reply_tokens": batch.num_tokens, "step_s": round(step_s, 4),
            "every_steps": cfg.broadcast.every_steps, "per_version_s": round(step_s * cfg.broadcast.every_steps, 4)}


def main(argv: list[str] | None = None) -> int:
    from bench.util import model_folder, write_result
    from hsd_ray.config import Config
    from hsd_ray.engines.hf import HFEngine

    p = argparse.ArgumentParser(prog="python -m bench.bench_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cluster/local.yaml", help="the loop config whose gate and learner are timed")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--random-weights", action="store_true", help="the model's config and tokenizer with random "
                   "weights (a machine without the weights); replies then run to max_tokens: an upper bound")
    p.add_argument("--batch-turns", default="", help="also time the learner's step at these batch sizes (comma "
                   "separated): the cadence (steps per version) at which the gate would cost 0.25 of the learner")
    p.add_argument("--tag", default="", help="suffix of the result file's name (e.g. the device)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. engine.device=cuda engine.dtype=bfloat16")
    args = p.parse_args(argv)
    cfg = Config.load(args.config, args.overrides)
    model_dir = model_folder(cfg.model, args.random_weights)
    engine = HFEngine(model_dir, device=cfg.engine.device, dtype=cfg.engine.dtype)
    result = {"model": cfg.model, "config": args.config, "overrides": args.overrides,
              "random_weights": args.random_weights, "device": _device_name(cfg.engine.device),
              "torch_threads": torch.get_num_threads(),
              "env": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                      "loadavg_start": os.getloadavg()[0]}}
    result["generation"] = generation_ratio(engine, cfg.version_gate, cfg.version_gate.probes_path)
    del engine
    result["gatekeeper"] = gatekeeper_cost(model_dir, cfg)
    result["learner"] = learner_step_cost(model_dir, cfg)
    result["gate_to_learner_ratio"] = round(result["gatekeeper"]["candidate_evaluate_s"]
                                            / result["learner"]["per_version_s"], 3)
    gate_s = result["gatekeeper"]["candidate_evaluate_s"]
    result["learner_by_batch"] = [dict(cost, steps_per_version_for_quarter=round(gate_s / (0.25 * cost["step_s"]), 1))
                                  for n in args.batch_turns.split(",") if n
                                  for cost in [learner_step_cost(model_dir, cfg, batch_turns=int(n))]]
    result["env"]["loadavg_end"] = os.getloadavg()[0]
    tag = f"-{args.tag}" if args.tag else ""
    write_result(result, Path(args.out) / f"bench_gate-{Path(cfg.model).name}{tag}.json")
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
