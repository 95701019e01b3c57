"""Per-user learning benchmark (personalization.mode=per_user): simulated users with DIFFERENT hidden preferences talk
to ONE running system; each user's turns train that user's own adapter.

    python -m bench.learning.personal --users max_words,use_emojis,yes_no_only --interactions 60 --split dev

One simulated user per preference (`bench.learning.users`, population `feedback`: a complaint when the reply violates
the preference, thanks or a new question otherwise), taking turns, over HTTP with their own user id, so the replica
answers each with their adapter. Before training and every `--eval-every` interactions per user the loop is drained
and every user's served adapter version is evaluated on an in-process vLLM engine that loads exactly those versions
(multi-LoRA, the same engine kind that serves), on the split's held-out prompts with fixed sampling seeds:
- compliance with every user's preference, per adapter: the user's OWN preference (the gain), and the others'
  (what one user's adapter learned that another user did not ask for);
- yes/no correctness beside the yes/no format, and strict capability (greedy, checkable prompts), per adapter;
- the shared policy itself, at the start, the end and whenever a new shared version is served: in per_user mode it
  must not move at all; with `personalization.mode=both` it is trained too, and adapters sit on its served version.

Reported per user: own gain = final − base compliance (for yes/no the format AND the right answer, `own_metric`), the
in-context ceiling gain of that preference on the same split under the run's hindsight template (the first of
`--ceiling` files that has it; default ceiling-<model>-<split>-<template>.json, then ceiling-<model>-<split>.json),
distillation efficiency = gain ÷ ceiling gain (the bar: ≥ 0.5), and the noise floor of that
compliance (binomial 2 s.e. at the evaluation's n).
JSON and PNG under bench/results/learning/personal-<name>.*
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.learning.preferences import Preference, parse_preferences
from bench.learning.prompts import EVAL_SPLITS, build_prompt_sets
from bench.learning.report import ceiling_gain
from bench.learning.run import BENCH_LOOP, REPO, _write_json, ray_runtime
from bench.learning.scoring import eval_requests, score_capability, score_compliance
from bench.util import free_port

# The loop as this benchmark runs it: the learning benchmark's loop, with per-user adapters.
PERSONAL_LOOP: dict = {**BENCH_LOOP, "personalization.mode": "per_user", "engine.max_lora_rank": 8}
_ENGINE = {}  # one evaluation engine per process (vLLM does not free memory in-process)


def make_config(args, seed: int, output_dir: str, n_users: int):
    from hsd_ray.config import Config

    values = {**PERSONAL_LOOP, "model": args.model, "seed": seed, "serve.port": free_port(),
              "serve.max_tokens": args.max_tokens, "job.output_dir": output_dir,
              "learner.batch_turns": args.turns_per_step * n_users, "personalization.max_resident": n_users,
              "personalization.lr": args.lr}
    overrides = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items()]
    return Config.load(overrides=overrides + list(args.overrides))


def drain(loop, followups: int, batch_turns: int, learner, timeout: float = 900.0) -> None:
    """Every follow-up captured, and nothing left that the learner can train (a batch needs `batch_turns`)."""
    import ray

    deadline = time.time() + timeout

    def idle() -> bool:
        if not learner.running:
            raise RuntimeError(f"the learner stopped during the benchmark: {learner.error!r}")
        if ray.get(loop.ledger.stats.remote())["captured"] < followups:
            return False
        q = loop.queue.stats()
        if q["pending"] + q["leased"] + q["training"] or q["scored"] >= batch_turns:
            return False
        # and the version gate has decided every adapter's candidate (the served versions are the final ones)
        return ray.get(loop.registry.handle.next_candidate.remote()) is None

    while time.time() < deadline:
        if idle() and (time.sleep(1.5) or idle()):
            return
        time.sleep(0.5)
    raise TimeoutError("the loop did not drain")


class AdapterEvaluator:
    """Each user's published adapter (and the shared policy) evaluated on one in-process vLLM multi-LoRA engine."""

    def __init__(self, args, prompts, preferences: list[Preference], adapters: dict[str, str], lora_rank: int):
        from hsd_ray.engines.vllm import VLLMEngine
        from hsd_ray.models import resolve_model

        self.args, self.prompts, self.preferences, self.adapters = args, prompts, preferences, adapters
        key = (args.model, len(adapters), lora_rank)
        if key not in _ENGINE:
            _ENGINE[key] = VLLMEngine(resolve_model(args.model), enable_lora=True, max_lora_rank=lora_rank,
                                      max_loras=len(adapters))
        self.engine = _ENGINE[key]
        for adapter in list(self.engine.user_adapters):
            self.engine.evict_adapter(adapter)  # a new run starts from the shared policy
        self._base, self._first = None, True

    def evaluate(self, loop, final: bool = False) -> dict:
        """Every user's served adapter version, on the served shared version. The shared policy is evaluated at the
        first and the `final` evaluation and whenever a new shared version is served (mode `both`); in per_user mode
        it never moves and its first result stands in between. A user without an adapter yet is answered by the
        shared policy with the same seeds: its result is the shared policy's, not generated again."""
        import ray

        moved = self._follow_shared(loop)
        if self._base is None or final or moved:
            self._base = self._one(None)
        out = {"base": {**self._base, "evaluated": final or self._first or moved,
                        "shared_version": self.engine.version.version}}
        self._first = False
        for user, adapter in self.adapters.items():
            published = loop.registry.latest(adapter)
            have = self.engine.user_adapters.get(adapter)
            if published is not None and (have is None or have.version < published.version.version):
                self.engine.load_weights(ray.get(published.ref))
            out[user] = self._one(adapter) if adapter in self.engine.user_adapters else out["base"]
        return out

    def _follow_shared(self, loop) -> bool:
        """Load the served shared version when it is not the one the engine holds (under the resident adapters, as
        the replicas do); True when it changed. A new run on an engine an earlier seed moved starts from the base."""
        import ray

        served = loop.registry.latest()
        held = self.engine.version.version
        if served is not None and served.version.version != held:
            self.engine.load_weights(ray.get(served.ref))
            return True
        if served is None and held != 0:
            self.engine.load_weights(_base_weights(self.args.model))
            return True
        return False

    def _one(self, adapter: str | None) -> dict:
        from hsd_ray.core.weights import BASE_ADAPTER

        a, split = self.args, self.args.split
        target = adapter or BASE_ADAPTER
        requests = eval_requests(self.prompts, split, self.preferences, a.samples)
        replies = self._generate([r[3] for r in requests], a.temperature, a.max_tokens, a.sampling_seed, target)
        ev = score_compliance(requests, replies, self.preferences, self.prompts.yes_no_truth(split))
        items = list(self.prompts.capability(split))
        caps = self._generate([p.question for p in items], 0.0, a.capability_max_tokens, 0, target)
        ev["capability"] = score_capability(items, caps)
        ev["capability"].pop("fingerprints")
        ev["fingerprint"] = replies[0]["fingerprint"]
        return ev

    def _generate(self, prompts: list[str], temperature: float, max_tokens: int, seed: int, adapter: str) -> list:
        from hsd_ray.core.engine_api import SamplingParams
        from hsd_ray.core.prompts import render_prompt

        ids = [render_prompt(self.engine.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=self.args.top_p, seed=seed,
                                adapter_id=adapter)
        return [{"text": g.text, "finish_reason": g.finish_reason, "fingerprint": g.version.fingerprint()}
                for g in self.engine.generate(ids, params)]


def _base_weights(model: str):
    """The model's own weights as shared version 0, read with the project's loader, as the gatekeeper reads them."""
    from hsd_ray.core.policy import export_weights
    from hsd_ray.models import load_model_and_tokenizer, resolve_model

    return export_weights(load_model_and_tokenizer(resolve_model(model))[0], 0, 0)


def run_one(args, seed: int, preferences: list[Preference], prompts, log) -> dict:
    """One seed: the loop up, the users chatting in turns, evaluations; returns the run record."""
    from openai import OpenAI

    from bench.learning.users import SimulatedUsers
    from hsd_ray.core.weights import user_adapter_id
    from hsd_ray.loop.job import running_loop

    t_start = time.time()
    out_dir = tempfile.mkdtemp(prefix="hsdlb-personal-", dir="/tmp")
    cfg = make_config(args, seed, out_dir, len(preferences))
    run: dict = {"seed": seed, "loop_config": json.loads(cfg.model_dump_json()), "evals": []}
    try:
        with ray_runtime(args), running_loop(cfg, learner=False) as loop:
            client = OpenAI(base_url=loop.base_url, api_key="bench", max_retries=2, timeout=600)
            learner = loop.start_learner()
            users = {p.name: SimulatedUsers(client, p, prompts, seed=seed, n_users=1, population="feedback",
                                            max_tokens=args.max_tokens, temperature=cfg.serve.temperature,
                                            top_p=cfg.serve.top_p, followup_max_tokens=1, p_ack=args.p_ack,
                                            user_prefix=f"pu-{p.name}") for p in preferences}
            adapters = {name: user_adapter_id(u.user_id(0)) for name, u in users.items()}
            run["adapters"] = adapters
            evaluator = AdapterEvaluator(args, prompts, preferences, adapters, cfg.engine.max_lora_rank)
            done = 0
            try:
                while True:
                    drain(loop, sum(u.stats.followups for u in users.values()), cfg.learner.batch_turns, learner)
                    t0 = time.time()
                    ev = {"interactions_per_user": done, "targets": evaluator.evaluate(loop, done >= args.interactions),
                          "eval_s": 0.0,
                          "trained": loop.queue.stats()["trained"]}
                    ev["eval_s"] = time.time() - t0
                    run["evals"].append(ev)
                    log(f"seed {seed} @ {done}/user: " + " | ".join(
                        f"{u}: own {100 * own_metric(ev['targets'][u], u):.0f}% "
                        f"(base {100 * own_metric(ev['targets']['base'], u):.0f}%), cap "
                        f"{100 * ev['targets'][u]['capability']['accuracy']:.0f}%" for u in users)
                        + f" | eval {ev['eval_s']:.0f}s")
                    if done >= args.interactions:
                        break
                    step = min(args.eval_every, args.interactions - done)
                    for _ in range(step):
                        for u in users.values():
                            u.run(1)
                    done += step
                run["users"] = {name: {k: v for k, v in u.stats.to_dict().items() if k != "log"}
                                | {"log": u.stats.log} for name, u in users.items()}
                # each adapter's versions with the version gate's decision and numbers
                run["adapter_versions"] = {name: loop.registry.versions(a) for name, a in adapters.items()}
            finally:
                loop.stop_learner()
                run["final_stats"] = loop.stats()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        run["wall_s"] = time.time() - t_start
    return run


def own_metric(evaluation: dict, user: str) -> float:
    """What a user's own gain is measured on: their preference's compliance, except for yes/no, where it is
    `yes_no.good` (the format AND the right answer), as in the learning benchmark and the in-context ceiling it is
    divided by. Until 2026-12-05 the format alone was used here, so an adapter answering "Yes." to every question
    (correct at chance) read as 3.4x its ceiling."""
    if user == "yes_no_only":
        return evaluation["yes_no"]["good"]
    return evaluation["compliance"][user]


def own_metric_n(evaluation: dict, user: str) -> int:
    """How many replies `own_metric` is a share of (the yes/no questions for yes/no, else the preference's prompts)."""
    return evaluation["yes_no"]["n"] if user == "yes_no_only" else evaluation["compliance_n"][user]


def summarize(result: dict) -> list[dict]:
    """Per (seed, user): base → final own compliance, gain, ceiling gain, efficiency, cross-user drift."""
    ceiling = result.get("ceiling") or {}
    rows = []
    for run in result["runs"]:
        first, last = run["evals"][0]["targets"], run["evals"][-1]["targets"]
        for user in run["adapters"]:
            base, final = own_metric(first["base"], user), own_metric(last[user], user)
            n = own_metric_n(last[user], user)
            ceil = ceiling.get(user)
            others = {o: last[user]["compliance"][o] - last["base"]["compliance"][o] for o in run["adapters"]
                      if o != user}
            rows.append({
                "seed": run["seed"], "user": user, "base": base, "final": final, "gain": final - base,
                "ceiling_gain": ceil, "efficiency": (final - base) / ceil if ceil else None,
                "noise_floor": 2 * math.sqrt(max(base * (1 - base), 0.25 / n) / n),
                "others_shift": others,
                "capability_base": first["base"]["capability"]["accuracy"],
                "capability_final": last[user]["capability"]["accuracy"],
                **{f"yes_no_{k}_final": last[user].get("yes_no", {}).get(k)
                   for k in ("correct", "format", "said_yes", "said_no")},
                # per_user: must be True; mode both: the shared policy is trained too, its final version is here
                "shared_policy_unchanged": first["base"]["replies"] == last["base"]["replies"],
                "shared_version_final": last["base"].get("shared_version", 0),
                "shared_own_final": own_metric(last["base"], user),
                "capability_shared_final": last["base"]["capability"]["accuracy"],
            })
    return rows


def ceiling_gains(paths: list[Path], users: list[str], template: str) -> dict[str, float]:
    """In-context ceiling gain per preference under the run's hindsight template (`report.ceiling_gain`), from the
    first of `paths` that measured that preference under it."""
    gains: dict[str, float] = {}
    for path in paths:
        if not path.exists():
            continue
        ceiling = json.loads(path.read_text())
        for user in users:
            gain = ceiling_gain(ceiling, user, template)
            if user not in gains and gain is not None:
                gains[user] = gain
    return gains


def default_ceiling_paths(model: str, split: str, template: str) -> list[Path]:
    folder = REPO / "bench/results/learning"
    stem = f"ceiling-{Path(model).name}-{split}"
    return [folder / f"{stem}-{template}.json", folder / f"{stem}.json"]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = list(result["runs"][0]["adapters"])
    fig, axes = plt.subplots(1, len(users) + 1, figsize=(4.2 * (len(users) + 1), 3.6), squeeze=False)
    for run in result["runs"]:
        xs = [e["interactions_per_user"] for e in run["evals"]]
        for ax, user in zip(axes[0], users):
            for target, style in ((user, "-o"), ("base", ":")):
                ax.plot(xs, [own_metric(e["targets"][target], user) for e in run["evals"]], style,
                        label=f"{'own adapter' if target == user else 'shared policy'} s{run['seed']}")
            for other in users:
                if other != user:
                    ax.plot(xs, [own_metric(e["targets"][other], user) for e in run["evals"]], "--", alpha=0.5,
                            label=f"{other}'s adapter s{run['seed']}")
            ceil = result.get("ceiling", {}).get(user)
            if ceil is not None:
                base = own_metric(run["evals"][0]["targets"]["base"], user)
                ax.axhline(base + ceil, color="grey", lw=0.8, ls="-.", label="in-context ceiling")
            ax.set_title(f"user wanting {user}", fontsize=9)
            ax.set_xlabel("interactions of each user")
        cap = axes[0][-1]
        for user in users:
            cap.plot(xs, [e["targets"][user]["capability"]["accuracy"] for e in run["evals"]], "-o", label=user)
        cap.set_title("capability (strict), per adapter", fontsize=9)
    for ax in axes[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.learning.personal", description=__doc__.split("\n\n")[0],
                                epilog="Extra section.field=value arguments override the loop Config.")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--users", default="max_words,use_emojis,yes_no_only", help="one simulated user per preference")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0])
    p.add_argument("--split", choices=EVAL_SPLITS, default="dev")
    p.add_argument("--interactions", type=int, default=60, help="interactions of EACH user")
    p.add_argument("--eval-every", type=int, default=20, help="evaluate every K interactions of each user")
    p.add_argument("--turns-per-step", type=int, default=2, help="a learner batch holds this many turns per user")
    p.add_argument("--lr", type=float, default=1e-4, help="personalization.lr")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--heldout-yes-no", type=int, default=20)
    p.add_argument("--capability", type=int, default=200)
    p.add_argument("--capability-max-tokens", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--sampling-seed", type=int, default=0)
    p.add_argument("--p-ack", type=float, default=0.5)
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--ceiling", action="append", default=[], metavar="CEILING.json",
                   help="in-context ceiling result(s), the first that measured a preference wins (default: "
                        "ceiling-<model>-<split>-<template>.json, then ceiling-<model>-<split>.json)")
    p.add_argument("--out", default="bench/results/learning")
    p.add_argument("--name", default=None)
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if "=" not in r or r.startswith("-")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    args.overrides = rest
    try:
        parse_preferences(args.users)
    except ValueError as e:
        p.error(str(e))
    if args.name is None:
        seeds = "+".join(map(str, args.seeds))
        args.name = f"{Path(args.model).name}-{args.users.replace(',', '+')}-s{seeds}-{args.split}"
    args.command = f"python -m bench.learning.personal {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    return args


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    import ray
    import torch

    from hsd_ray.config import Config

    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    preferences = parse_preferences(args.users)
    prompts = build_prompt_sets(args.prompt_seed, args.heldout, args.heldout_yes_no, args.capability)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"personal-{args.name}.json", out / f"personal-{args.name}.png"
    result = {"benchmark": "personal", "command": args.command,
              "config": {k: v for k, v in vars(args).items() if k != "command"},
              "env": {"ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version(),
                      "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")},
              "runs": []}
    template = Config.load(overrides=list(args.overrides)).hindsight.template
    ceiling_paths = [Path(c) for c in args.ceiling] or default_ceiling_paths(args.model, args.split, template)
    result["ceiling"] = ceiling_gains(ceiling_paths, [p.name for p in preferences], template)
    result["ceiling_source"] = {"template": template, "files": [str(c) for c in ceiling_paths if c.exists()]}
    for seed in args.seeds:
        log(f"== seed {seed}: users {args.users}")
        result["runs"].append(run_one(args, seed, preferences, prompts, log))
        result["summary"] = summarize(result)
        _write_json(json_path, result)
    plot(result, png_path)
    for row in result["summary"]:
        eff = "n/a" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
        ceil = "n/a" if row["ceiling_gain"] is None else f"{100 * row['ceiling_gain']:+.1f}"
        print(f"seed {row['seed']} {row['user']:>12}: own {100 * row['base']:.0f}% -> {100 * row['final']:.0f}% "
              f"(gain {100 * row['gain']:+.1f}, noise ±{100 * row['noise_floor']:.1f}, ceiling gain {ceil}, "
              f"efficiency {eff}) | capability {100 * row['capability_base']:.0f}% -> "
              f"{100 * row['capability_final']:.0f}% | shared policy v{row['shared_version_final']}: own "
              f"{100 * row['shared_own_final']:.0f}%, capability {100 * row['capability_shared_final']:.0f}%")
    print(f"\nresults: {json_path}  curves: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
