"""The version gate's cost, measured side by side in one run (`python -m bench.bench_gate`).

(a) Greedy generation of the gate's own prompt sets (hsd_ray/data/probes.json: the probe prompts at
    `version_gate.probe_max_tokens`, the checkable prompts at `check_max_tokens`) on the transformers engine: one
    prompt per generate call (how HFEngine ran greedy batches before) against one `generate` call for the whole set
    (HFEngine's left-padded greedy batches). Ratio of the two times, and how many replies are token-identical.
(b) The learner's optimizer step on a batch of `learner.batch_turns` synthetic scored turns (core.train_step, the
    same function the Ray Train learner calls), so the gate's time per version can be put against the learner's time
    per version at the default cadence (`broadcast.every_steps` steps per version). In a live loop the job reports
    the same ratio from its own timings (summary.json `version_gate_cost`). Its steps also make the candidates: the
    weights one version and four versions after the base, and one version at lr 1e-2 (a broken one).
(c) The gatekeeper itself (loop/gatekeeper.py, no Ray: `Gatekeeper(settings, registry=None)`): the seconds to
    measure the base model at start, and `evaluate()` of each candidate against the base, its greedy replies
    generated whole or started from the base's replies (core/drafted_greedy.py), alternating which goes first; how
    many replies the two give token-identical, and whether the gate's numbers agree. How much the drafts save depends
    on how far the candidate moved: one learner version from the accepted one is the live case.

Results print and go to `bench/results/bench_gate-<model>.json`. SmolLM2-135M-Instruct: ~5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
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
            "checkable": ([c["prompt"] for c in probes["checkable"]], gate_cfg.check_max_tokens)}
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


def learner_candidates(model_dir: str, cfg, versions: int = 4, broken_lr: float = 1e-2) -> tuple[dict, dict]:
    """The learner's step as the loop takes it: the config's loss (with its KL anchor), batch size and optimizer, on
    synthetic turns scored by the teacher code path (core.scoring) with replies of 16-64 tokens (serve.max_tokens).
    Returns its timing and the candidates it produced: the weights after one version (`broadcast.every_steps`
    steps), after `versions` versions, and after one version at `broken_lr` (what the gate must reject)."""
    from bench.bench_core import synthetic_turns
    from hsd_ray.core.batch import HindsightBatch
    from hsd_ray.core.policy import make_optimizer, resume_policy
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.core.train_step import learner_step
    from hsd_ray.engines.hf import HFEngine

    engine = HFEngine(model_dir)
    turns = synthetic_turns(engine.tokenizer, cfg.learner.batch_turns, 16, cfg.serve.max_tokens, seed=0)
    batch = HindsightBatch.collate(score_turns(engine, turns, cfg.hindsight, cfg.loss), engine.tokenizer.pad_token_id)
    model, lcfg, every = engine.model, cfg.learner, cfg.broadcast.every_steps
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    reference = resume_policy(model, None, kl_on=cfg.loss.kl_coef > 0, kind=cfg.loss.reference)

    def train(learner_cfg, steps: int) -> list[float]:
        optimizer, scheduler = make_optimizer(model, learner_cfg)
        return [_timed(lambda: learner_step(model, optimizer, batch, cfg.loss, grad_clip=learner_cfg.grad_clip,
                                            scheduler=scheduler, reference=reference))[1] for _ in range(steps)]

    def weights() -> dict:  # a tied lm_head once, as the learner sends it
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    candidates, times = {}, train(lcfg, every)
    candidates["one version"] = weights()
    times += train(lcfg, every * (versions - 1))  # (a new optimizer per call: Adam restarts, the lr schedule too)
    candidates[f"{versions} versions"] = weights()
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(base[k])
    train(lcfg.model_copy(update={"lr": broken_lr}), every)
    candidates[f"broken (lr {broken_lr:g})"] = weights()
    step_s = sum(times[1:]) / max(len(times) - 1, 1)  # the first step allocates the optimizer state: not timed
    timing = {"batch_turns": lcfg.batch_turns, "reply_tokens": batch.num_tokens, "step_s": round(step_s, 2),
              "every_steps": every, "per_version_s": round(step_s * every, 2)}
    return timing, candidates


def gatekeeper_cost(model_dir: str, cfg, candidates: dict, rounds: int = 2) -> dict:
    """The gatekeeper's base measurement, then `evaluate()` of each candidate against the base, with the greedy
    replies generated whole and started from the base's replies (core/drafted_greedy.py), in alternating order.
    Also: whether both ways give the same replies and numbers, and how much the drafts saved."""
    from hsd_ray.core.weights import PolicyVersion, WeightSet
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    settings = GatekeeperSettings(model_dir, cfg.engine, cfg.version_gate, enable_lora=False)
    gate, start_s = _timed(lambda: Gatekeeper(settings, None))
    out = {"base_measurement_s": round(start_s, 2), "candidates": {}}
    for v, (name, state) in enumerate(candidates.items(), start=1):
        gate.engine.load_weights(WeightSet(kind="full", tensors=state, version=PolicyVersion(version=v)))
        seconds, results = {"whole": [], "drafted": []}, {}
        for r in range(rounds):
            for mode in (("whole", "drafted") if r % 2 == 0 else ("drafted", "whole")):
                (numbers, replies), s = _timed(lambda: gate.evaluate(drafted=mode == "drafted"))
                seconds[mode].append(s)
                results[mode] = (numbers, replies, dict(gate.last_drafts) if mode == "drafted" else None)
        (n_whole, r_whole, _), (n_drafted, r_drafted, drafts) = results["whole"], results["drafted"]
        same = [sum(a.token_ids == b.token_ids for a, b in zip(x, y)) for x, y in zip(r_whole, r_drafted)]
        whole_s, drafted_s = (sum(seconds[m]) / rounds for m in ("whole", "drafted"))
        out["candidates"][name] = {
            "whole_s": round(whole_s, 2), "drafted_s": round(drafted_s, 2), "speedup": round(whole_s / drafted_s, 2),
            "token_identical": {"probe": f"{same[0]}/{len(r_whole[0])}", "checkable": f"{same[1]}/{len(r_whole[1])}"},
            "drafts": drafts, "numbers_whole": n_whole.to_dict(), "numbers_drafted": n_drafted.to_dict()}
    return out


def main(argv: list[str] | None = None) -> int:
    from hsd_ray.config import Config
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m bench.bench_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cluster/local.yaml", help="the loop config whose gate and learner are timed")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    cfg = Config.load(args.config)
    model_dir = str(resolve_model(cfg.model))
    engine = HFEngine(model_dir)
    result = {"model": cfg.model, "config": args.config, "torch_threads": torch.get_num_threads(),
              "env": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                      "loadavg_start": os.getloadavg()[0]}}
    result["generation"] = generation_ratio(engine, cfg.version_gate, cfg.version_gate.probes_path)
    del engine
    result["learner"], candidates = learner_candidates(model_dir, cfg)
    result["gatekeeper"] = gatekeeper_cost(model_dir, cfg, candidates)
    one, per_version = result["gatekeeper"]["candidates"]["one version"], result["learner"]["per_version_s"]
    result["gate_to_learner_ratio"] = {"drafted": round(one["drafted_s"] / per_version, 3),
                                       "whole": round(one["whole_s"] / per_version, 3)}
    result["env"]["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    out = Path(args.out) / f"bench_gate-{Path(cfg.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
