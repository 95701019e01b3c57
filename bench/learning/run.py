"""The learning benchmark's driver: for each (variant, trained preference, seed, user population) bring the online
loop up on a local Ray, let simulated users chat with it over HTTP, and evaluate on the chosen split (`--split dev`
to choose settings, `--split test` to report) before training and every K interactions. Called by
`python -m bench.learning` (see __init__ for the CLI). Populations (`users.py`): `feedback` (complaints when the
preference is violated), `control` (matched: same users, questions and interaction count, follow-ups never about the
reply), `mixed` (complaints, thanks and new topics mixed; what a feedback gate must sort out).

Per run: `ray.init(address="local")` (unless Ray is already initialised, e.g. by a test fixture: then that Ray is
used and left running), `running_loop(cfg)` (Serve chat + capture + queue + teacher + a Ray Train learner with
`job.max_steps` large), users and evaluations, then `loop.stop_learner()`; the loop and Ray are torn down on exit.
The result JSON is rewritten after every run (a crash keeps the finished runs); the PNG and the summary tables are
produced at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.learning import report
from bench.learning.preferences import PREFERENCES, Preference, parse_preferences
from bench.learning.prompts import EVAL_SPLITS, PromptSets, build_prompt_sets
from bench.learning.users import POPULATIONS
from bench.util import free_port

REPO = Path(__file__).resolve().parents[2]

# The hindsight objectives compared (METHOD.md): overrides of the loop Config.
VARIANTS: dict[str, dict] = {
    "paper": {"loss.kind": "sampled_token", "loss.baseline": "student", "loss.center_advantages": True,
              "hindsight.template": "online"},
    "contrastive": {"loss.kind": "sampled_token", "loss.baseline": "reference_followup",
                    "loss.center_advantages": True, "hindsight.template": "online"},
    # the top-k loss ignores the baseline pass; "student" makes that pass the cheap one
    "topk": {"loss.kind": "topk", "loss.baseline": "student", "hindsight.template": "online"},
    # the top-k loss on the follow-up's shift (teacher / baseline), so the baseline pass is the reference follow-up's
    "shifted_topk": {"loss.kind": "shifted_topk", "loss.baseline": "reference_followup",
                     "hindsight.template": "online"},
    "offline_template": {"loss.kind": "sampled_token", "loss.baseline": "reference_followup",
                         "loss.center_advantages": True, "hindsight.template": "offline"},
    # the authors' online template with today's loss: the system's default until 2026-12-05 (then `plain`)
    "online": {"hindsight.template": "online"},
    # whatever hsd_ray/config.py's defaults are today (loss, template, KL): the row README reports
    "default": {},
}
# The loop as the benchmark runs it: full fine-tune, 4 turns per step, every step published, a KL anchor to the
# initial weights (without it capability fell 11-17 points in 60 interactions; README), vLLM for the replica and the
# teacher (3-18x faster than transformers on CPU: a run takes about 7 min instead of 13).
BENCH_LOOP: dict = {
    "engine.kind": "vllm", "loss.kl_coef": 0.1, "serve.replicas": 1, "learner.batch_turns": 4, "learner.lr": 1e-5,
    "learner.lora.enabled": False, "learner.cpus_per_worker": 1, "learner.checkpoint_every_steps": 1_000_000,
    "broadcast.every_steps": 1, "broadcast.keep_versions": 1, "broadcast.poll_seconds": 0.5,
    "teacher.idle_sleep_s": 0.1, "job.max_steps": 1_000_000,
}


def make_config(args, variant: str, seed: int, output_dir: str):
    from hsd_ray.config import Config

    values = {**BENCH_LOOP, **VARIANTS[variant], "model": args.model, "seed": seed, "serve.port": free_port(),
              "serve.max_tokens": args.max_tokens, "job.output_dir": output_dir}
    overrides = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items()]
    return Config.load(overrides=overrides + list(args.overrides))


@contextmanager
def ray_runtime(args):
    """A fresh local Ray for one run, or the already-initialised one (left running). If the run fails, the raylet's
    log lines about killed workers (e.g. the memory monitor) are attached to the exception."""
    import ray

    from hsd_ray.loop.runtime import local_ray

    if ray.is_initialized():
        yield
        return
    with local_ray(num_cpus=max(8, os.cpu_count() or 1), object_store_bytes=args.object_store_mb * 2**20,
                   log_to_driver=args.verbose, quiet=True) as temp:
        try:
            yield
        except Exception as e:
            kills = _worker_kill_lines(temp)
            if kills:
                e.add_note("raylet: " + "\nraylet: ".join(kills))
            raise


def _worker_kill_lines(temp: str, limit: int = 5) -> list[str]:
    """Lines of the raylet log that say why a worker was killed (memory monitor, OOM, ...)."""
    lines = []
    for log_file in Path(temp).glob("session_*/logs/raylet.out"):
        for line in log_file.read_text(errors="replace").splitlines():
            low = line.lower()
            if ("kill" in low and ("memory" in low or "worker" in low)) or "oom" in low:
                lines.append(line.strip()[:300])
    return lines[-limit:]


def run_label(variant: str, preference: str, population: str, seed: int, gate: str | None = None) -> str:
    return f"{variant}/{preference}/{population}" + (f"/gate={gate}" if gate else "") + f"/seed {seed}"


def _checkpoint(loop, learner, client, users, evaluator, cfg, run: dict, timings: dict, t_start: float, name: str,
                log) -> None:
    """Drain (everything sent is captured, trained and published), wait until the replicas serve it, evaluate."""
    from bench.learning.evaluate import wait_for_drain, wait_until_serving

    t0 = time.time()
    wait_for_drain(loop, cfg.learner.batch_turns, users.stats.followups, learner)
    fingerprint = wait_until_serving(loop, client, cfg.serve.replicas)
    t1 = time.time()
    ev = evaluator.evaluate(loop, fingerprint)
    timings["drain_s"] += t1 - t0
    timings["eval_s"] += time.time() - t1
    s = loop.stats()
    ev.update(interactions=users.stats.interactions, followups=users.stats.followups,
              complaints=users.stats.complaints, captured=s["capture"]["captured"],
              trained=s["queue"]["trained"], step=s["learner"].get("step", 0),
              published_version=s["published_version"], elapsed_s=time.time() - t_start,
              learner={k: v for k, v in s["learner"].items() if isinstance(v, (int, float))})
    run["evals"].append(ev)
    c = " ".join(f"{k} {100 * v:.0f}%" for k, v in ev["compliance"].items())
    if "yes_no" in ev:
        c += f" (yes/no correct {100 * ev['yes_no']['correct']:.0f}%)"
    log(f"{name} @ {ev['interactions']} interactions ({ev['trained']} turns trained, {fingerprint}): {c} | "
        f"capability {100 * ev['capability']['accuracy']:.0f}% | ppl {ev['perplexity']:.2f} | "
        f"words {ev['mean_words_open']:.0f} | eval {time.time() - t1:.0f}s")


def run_one(args, variant: str, preference: Preference, seed: int, population: str, prompts: PromptSets,
            measured: list[Preference], log) -> dict:
    """One (variant, preference, seed, population): users + evaluations on a live loop. Returns the run record."""
    from openai import OpenAI

    from bench.learning.evaluate import Evaluator
    from bench.learning.users import SimulatedUsers
    from hsd_ray.loop.job import running_loop
    from hsd_ray.models import resolve_model

    t_start = time.time()
    out_dir = tempfile.mkdtemp(prefix="hsdlb-run-", dir="/tmp")  # learner checkpoints: large, thrown away
    cfg = make_config(args, variant, seed, out_dir)
    name = run_label(variant, preference.name, population, seed, args.gate)
    run: dict = {"variant": variant, "preference": preference.name, "population": population,
                 "control": population == "control", "opposes": preference.opposes, "seed": seed, "gate": args.gate,
                 "split": args.split, "loop_config": json.loads(cfg.model_dump_json()),
                 "evals": [], "loadavg_start": os.getloadavg()[0]}
    timings = {"startup_s": 0.0, "users_s": 0.0, "drain_s": 0.0, "eval_s": 0.0, "teardown_s": 0.0}
    try:
        with ray_runtime(args), running_loop(cfg, learner=False) as loop:
            learner = None
            try:
                client = OpenAI(base_url=loop.base_url, api_key="bench", max_retries=2, timeout=600)
                learner = loop.start_learner()
                users = SimulatedUsers(client, preference, prompts, seed=seed, n_users=args.users,
                                       population=population, max_tokens=args.max_tokens,
                                       temperature=cfg.serve.temperature, top_p=cfg.serve.top_p,
                                       followup_max_tokens=args.followup_max_tokens,
                                       turns_per_conversation=args.turns_per_conversation, p_ack=args.p_ack)
                evaluator = Evaluator(client, prompts, measured, model_dir=str(resolve_model(args.model)),
                                      split=args.split, samples=args.samples, max_tokens=args.max_tokens,
                                      temperature=cfg.serve.temperature, top_p=cfg.serve.top_p,
                                      capability_max_tokens=args.capability_max_tokens,
                                      concurrency=cfg.serve.replicas, via=args.eval_via, engine_kind=args.eval_engine,
                                      lora_rank=cfg.engine.max_lora_rank if cfg.learner.lora.enabled else None)
                timings["startup_s"] = time.time() - t_start

                def checkpoint() -> None:
                    _checkpoint(loop, learner, client, users, evaluator, cfg, run, timings, t_start, name, log)

                checkpoint()
                while users.stats.interactions < args.interactions:
                    t0 = time.time()
                    users.run(min(args.eval_every, args.interactions - users.stats.interactions))
                    timings["users_s"] += time.time() - t0
                    checkpoint()
                run["users"] = users.stats.to_dict()
            finally:
                t0 = time.time()
                loop.stop_learner()
                run["final_stats"] = loop.stats()
                timings["teardown_s"] = time.time() - t0
            if learner is not None and learner.error is not None:
                raise RuntimeError(f"learner failed: {learner.error!r}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        timings["total_s"] = time.time() - t_start
        run["timings"] = timings
        run["loadavg_end"] = os.getloadavg()[0]
    return run


def run_benchmark(args, log=print) -> dict:
    """Every planned run in order; writes `<out>/learning-<name>.json` (after each run) and `.png`."""
    import ray
    import torch

    prompts = build_prompt_sets(args.prompt_seed, args.heldout, args.heldout_yes_no, args.capability)
    trained = parse_preferences(args.preferences)
    measured = list(PREFERENCES.values()) + [p for p in trained if p.name not in PREFERENCES]
    plan = [(v, p, s, pop) for s in args.seeds for v in args.variants for p in trained for pop in args.population]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"learning-{args.name}.json", out / f"learning-{args.name}.png"
    result: dict = {
        "benchmark": "learning",
        "config": {**{k: v for k, v in vars(args).items() if k != "overrides"}, "overrides": list(args.overrides)},
        "command": args.command,
        "env": {"ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "preferences": {p.name: {"description": p.description, "prompt_kind": p.prompt_kind,
                                 "about_length": p.about_length, "complaints": list(p.complaints)} for p in measured},
        "prompts": {"split": args.split, "heldout_open": list(prompts.heldout("open", args.split)),
                    "heldout_yes_no": [[q.question, q.answer] for q in prompts.eval_yes_no[args.split]],
                    "capability": [p.question for p in prompts.capability(args.split)],
                    "train_open": len(prompts.train_open), "train_yes_no": len(prompts.train_yes_no)},
        "runs": [], "errors": [], "summary": [],
    }
    previous = _previous_runs(json_path, result["config"], result) if args.resume else {}
    started = time.time()
    for i, (variant, pref, seed, population) in enumerate(plan):
        label = run_label(variant, pref.name, population, seed, args.gate)
        key = (variant, pref.name, seed, population)
        if key in previous:
            log(f"== run {i + 1}/{len(plan)}: {label}: kept from {json_path} (--resume)")
            result["runs"].append(previous[key])
        for attempt in range(args.retries + 1 if key not in previous else 0):
            log(f"== run {i + 1}/{len(plan)}: {label}" + (f", retry {attempt}" if attempt else "")
                + f" ({(time.time() - started) / 60:.1f} min so far)")
            try:
                result["runs"].append(run_one(args, variant, pref, seed, population, prompts, measured, log))
                break
            except Exception as e:  # noqa: BLE001 - report it, retry or go on with the other runs
                import traceback

                traceback.print_exc()
                final = attempt == args.retries
                result["errors"].append({"run": label, "attempt": attempt, "retried": not final,
                                         "error": f"{type(e).__name__}: {e}"})
                log(f"!! {label} failed{'' if final else ' (will retry)'}: {type(e).__name__}: {str(e)[:500]}")
        result["summary"] = [report.summarize_run(r) for r in result["runs"] if r["evals"]]
        result["aggregate"] = report.aggregate(result["summary"])
        result["gain_over_control"] = report.gain_over_control(result["summary"])
        result["wall_s"] = time.time() - started
        _write_json(json_path, result)
    if result["runs"]:
        from bench.learning.plot import plot

        plot(result, png_path)
    result["paths"] = {"json": str(json_path), "png": str(png_path) if result["runs"] else None}
    return result


_RESUME_KEYS = ("model", "interactions", "eval_every", "heldout", "heldout_yes_no", "capability", "samples", "eval_via",
                "max_tokens", "capability_max_tokens", "users", "turns_per_conversation", "p_ack",
                "followup_max_tokens", "prompt_seed", "split", "gate", "overrides")


def _previous_runs(path: Path, config: dict, result: dict) -> dict:
    """Finished runs of an earlier result file with the same settings, by (variant, preference, seed); its errors
    are kept in `result["previous_errors"]`."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if any(old["config"].get(k) != config.get(k) for k in _RESUME_KEYS):
        raise SystemExit(f"--resume: {path} was made with other settings; use another --name")
    result["previous_errors"] = old.get("previous_errors", []) + [
        {**e, "command": old.get("command")} for e in old.get("errors", [])]
    return {(r["variant"], r["preference"], r["seed"], r.get("population", "feedback")): r
            for r in old["runs"] if r.get("evals")}


def _write_json(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _csv(kind):
    return lambda text: [kind(x.strip()) for x in text.split(",") if x.strip()]


GATES = ("none", "rules", "learned", "ensemble")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    p.add_argument("--preferences", default="max_words", help=f"trained preferences: {', '.join(PREFERENCES)}")
    p.add_argument("--variants", type=_csv(str), default=["default"],
                   help=f"of {', '.join(VARIANTS)} (default: default = the loop config defaults)")
    p.add_argument("--seeds", type=_csv(int), default=[0], help="default one seed (smoke); report with 0,1,2")
    p.add_argument("--population", type=_csv(str), default=["feedback"],
                   help=f"user populations, comma-separated, of {', '.join(POPULATIONS)} (users.py)")
    p.add_argument("--control", action="store_true", help="same as adding 'control' to --population")
    p.add_argument("--split", choices=EVAL_SPLITS, default="dev",
                   help="evaluation prompts: dev (choose settings on it) or test (report only)")
    p.add_argument("--gate", choices=GATES, default=None,
                   help="adds the loop override feedback.gate=<value> (default: no override)")
    p.add_argument("--interactions", type=int, default=60, help="user interactions (replies read) per run")
    p.add_argument("--eval-every", type=int, default=20, help="evaluate every K interactions (and before)")
    p.add_argument("--heldout", type=int, default=20, help="evaluated open prompts (of the split)")
    p.add_argument("--heldout-yes-no", type=int, default=20, help="evaluated yes/no questions (balanced yes/no)")
    p.add_argument("--capability", type=int, default=200, help="checkable-answer prompts (of the split)")
    p.add_argument("--capability-max-tokens", type=int, default=24, help="max_tokens of a checkable-prompt reply")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per evaluated prompt")
    p.add_argument("--eval-via", choices=("engine", "http"), default="engine",
                   help="evaluate on an in-process engine that loads the published version (fast), or over HTTP")
    p.add_argument("--eval-engine", choices=("vllm", "hf"), default="vllm", help="the engine of --eval-via engine")
    p.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every read reply and eval reply")
    p.add_argument("--users", type=int, default=4, help="simulated users (take turns)")
    p.add_argument("--turns-per-conversation", type=int, default=1, help="replies a user reads per conversation")
    p.add_argument("--p-ack", type=float, default=0.5, help="P(acknowledgement) after a satisfying reply")
    p.add_argument("--followup-max-tokens", type=int, default=1, help="max_tokens of a follow-up nobody reads")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt sets (same across runs)")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--out", default="bench/results/learning")
    p.add_argument("--name", default=None, help="result file stem (default from model, preferences, variants, seeds)")
    p.add_argument("--retries", type=int, default=1, help="re-run a failed run this many times")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of an existing result file")
    p.add_argument("--verbose", action="store_true", help="show Ray worker logs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n\n")[0],
                                epilog="Extra section.field=value arguments override the loop Config.")
    _add_arguments(p)
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if "=" not in r or r.startswith("-")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)} (loop overrides are section.field=value)")
    args.overrides = rest + ([f"feedback.gate={json.dumps(args.gate)}"] if args.gate else [])
    if args.control and "control" not in args.population:
        args.population.append("control")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    bad_pop = [x for x in args.population if x not in POPULATIONS]
    if bad_pop or not args.population:
        p.error(f"unknown population(s) {bad_pop}; choose from {', '.join(POPULATIONS)}")
    try:
        parse_preferences(args.preferences)
    except ValueError as e:
        p.error(str(e))
    if args.interactions < 0 or args.eval_every < 1 or args.heldout < 1 or args.heldout_yes_no < 1:
        p.error("--interactions >= 0, --eval-every >= 1, --heldout >= 1 and --heldout-yes-no >= 1")
    if args.name is None:
        model = Path(args.model).name
        prefs = "+".join(p.name for p in parse_preferences(args.preferences))
        args.name = (f"{model}-{prefs}-{'+'.join(args.variants)}-{'+'.join(args.population)}"
                     + (f"-gate_{args.gate}" if args.gate else "") + f"-s{'+'.join(map(str, args.seeds))}"
                     + f"-{args.split}")
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    args.command = f"{exe} -m bench.learning {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip()
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("ray", "ray.serve", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    result = run_benchmark(args, log)
    print()
    print(report.full_report(result, Path(args.out)))
    for err in result["errors"]:
        print(f"!! {err['run']} FAILED (attempt {err['attempt']}{', retried' if err['retried'] else ''}): "
              f"{err['error'][:1000]}")
    print(f"\nresults: {result['paths']['json']}" + (f"  curve: {result['paths']['png']}" if result["paths"]["png"]
                                                     else ""))
    print(f"command: cd {REPO} && {args.command}")
    return 1 if any(not e["retried"] for e in result["errors"]) else 0
