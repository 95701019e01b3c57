"""The online loop on Ray, measured side by side in one run (`python -m bench.bench_loop`).

1. Pipeline throughput (turns/s), the same N turns through each stage alone and through the whole loop:
   (a) capture + queue: a ReplyLedger actor and a TurnQueue actor; N served replies recorded (untimed), then N
       follow-ups `observe`d, fired the way a replica fires them, until the queue has counted all N;
   (b) teacher scoring: a real TeacherWorker actor (`start_teacher`, same CPUs => same torch threads as in the loop)
       on its own queue, `score_turns` with the HF engine; from `queue.put` of the N turns until all N are scored;
   (c) learner step: `learner_step` on HindsightBatch.collate(batch_turns turns), in an actor with the learner's
       CPU reservation (same torch threads as the Ray Train worker), N / batch_turns steps;
   (d) whole loop: `start_loop` (Serve + capture + teacher) + `LearnerThread` (Ray Train). After a warm-up of one
       batch through the whole loop, N replies are generated over HTTP (openai client; not timed), then the clock
       runs from sending the N follow-ups (max_tokens=1, so the follow-ups' own replies cost ~nothing) until the
       queue's `trained` count has grown by N. Also reported: when the learner's last step was published and when
       the serving replica applied it (GET /health).
   Stages (b) and (c) get one warm-up batch, like the loop. Whole / slowest stage is reported (1.0 = perfect
   pipelining; the stages run concurrently in the loop).
2. Chat latency with capture on vs off: two Serve apps of one replica each (capture.enabled true / false; the ledger
   actor exists), the same conversations sent to both, interleaved (alternating order), sequentially, greedy
   (temperature 0: the same tokens are generated on both), after a warm-up; client-side p50 / p99.
3. Weight broadcast: learner `export_weights` + `broadcast.publish` (VersionRegistry actor) + a WeightFollower's
   `poll()` (fetch from the object store + `engine.load_weights`) in a follower actor, vs a raw in-process copy of the
   same tensors (`dst.copy_(src)` per tensor, timed first); full weights and LoRA r=16. One warm-up round, median of the
   rest.

Everything runs on one local Ray started here (address="local", logical CPUs over-declared like the tests; every
actor's torch threads follow its CPU reservation, as in the real loop). Results print as a table and are written to
`bench/results/bench_loop-<model>.json` (`--only X` writes `bench_loop-<model>-X.json`). Default: SmolLM2-135M-Instruct
on CPU, 16 turns, max_tokens 32, batch_turns 4: 5-6.5 min on 2 cores (more when other jobs load the machine). Extra
`section.field=value` arguments override the loop Config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from bench.util import free_port, percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("pipeline", "latency", "broadcast")
RAW_REPEATS = 11  # raw in-process copies (cheap; many, because microsecond copies are easily preempted)

_QUESTIONS = [
    "What is the capital of France?", "Give me one tip for sleeping better.", "Explain what a prime number is.",
    "How do I boil an egg?", "What does a CPU do?", "Name three primary colours.", "Why is the sky blue?",
    "What is photosynthesis?", "How many days are in a leap year?", "Suggest a name for a pet cat.",
    "What is the boiling point of water?", "Write a haiku about rain.", "What is 12 times 7?",
    "How do plants drink water?", "What is the largest ocean?", "Give me a synonym for happy.",
    "What is gravity?", "How do I make a cup of tea?", "What is a noun?", "Why do we have seasons?",
    "What is the speed of light?", "Recommend a book for a long trip.", "What is a black hole?",
    "How do vaccines work?", "What is the tallest mountain?", "Explain recursion simply.",
    "What language is spoken in Brazil?", "How do bees make honey?", "What is an atom?",
    "Tell me a fun fact about octopuses.", "What is inflation?", "How does a rainbow form?",
]
_FOLLOWUPS = [
    "Too long, please answer in one sentence.", "No, that is wrong. Try again.", "Thanks, that's helpful.",
    "Can you use bullet points instead?", "Please be more specific.", "write it all in lowercase",
    "Great, now say it in French.", "That doesn't answer my question.",
]


# ---- small helpers ---------------------------------------------------------------------------------------------------


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _spilled() -> str | None:
    """Ray's object spilling summary line (spilling to disk slows every object-store transfer)."""
    error = None
    for _ in range(3):  # the state query can time out on a loaded machine
        try:
            import ray
            from ray._private.internal_api import memory_summary

            # our own cluster by address: other Ray instances may run on the machine
            text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
            lines = [ln.strip() for ln in text.splitlines() if "Spilled" in ln or "spilled" in ln]
            return "; ".join(lines) if lines else "no spilling"
        except Exception as e:  # noqa: BLE001 - diagnostics only
            error = e
            time.sleep(1.0)
    return f"unavailable ({type(error).__name__})"


_RAY_TEMP: list[str] = []  # the local Ray's temp dir (worker stdout lands there: log_to_driver is off)


def _worker_log_lines(marker: str) -> list[str]:
    """Lines containing `marker` from the workers' stdout files (e.g. the learner's publish times)."""
    lines: list[str] = []
    # resolve(): each file once, though both session_<id> and the session_latest link match the glob
    files = {f.resolve() for root in _RAY_TEMP for f in Path(root).glob("session_*/logs/*.out")}
    for f in sorted(files):
        try:
            lines += [ln.strip() for ln in f.read_text(errors="replace").splitlines() if marker in ln]
        except OSError:
            pass
    return lines


def _quiet_serve() -> None:
    """Serve (re)configures its driver-side logger when it starts; keep the benchmark's output to its own lines."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def _health(base_url: str) -> dict:
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    with urllib.request.urlopen(root + "/health", timeout=10) as r:
        return json.loads(r.read())


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)


def _chat(client, cfg, messages, user, **kw):
    return client.chat.completions.create(model=cfg.serve.model_name, messages=messages, user=user, **kw)


def make_config(args, output_dir: str):
    from hsd_ray.config import Config

    overrides = {
        "model": args.model,
        "engine.kind": "hf",
        "serve.port": free_port(),
        "serve.replicas": 1,
        "serve.max_tokens": args.max_tokens,
        "learner.batch_turns": args.batch_turns,
        "job.output_dir": output_dir,
    }
    given = [f"{k}={v}" for k, v in overrides.items()] + list(args.overrides)
    return Config.load(overrides=given)


# ---- actors used by the stage measures (classes wrapped with ray.remote at use) --------------------------------------


class LearnerProbe:
    """Stage (c): the learner's model + optimizer in a process with the learner's CPU reservation."""

    def __init__(self, cfg_dict: dict):
        import torch

        from hsd_ray.config import Config
        from hsd_ray.core.policy import apply_lora, make_optimizer
        from hsd_ray.models import load_model_and_tokenizer
        from hsd_ray.models import resolve_model

        self.cfg = Config.model_validate(cfg_dict)
        torch.manual_seed(self.cfg.seed)
        self.model, self.tokenizer = load_model_and_tokenizer(resolve_model(self.cfg.model), "float32", "cpu")
        if self.cfg.learner.lora.enabled:
            self.model = apply_lora(self.model, self.cfg.learner.lora)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.cfg.learner)

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def steps(self, batches: list[list]) -> dict:
        """Warm-up step on batches[0], then one timed step per batch (collate + learner_step, as the learner does)."""
        from hsd_ray.core.batch import HindsightBatch
        from hsd_ray.core.train_step import learner_step

        def one(turns):
            batch = HindsightBatch.collate(turns, self.tokenizer.pad_token_id)
            m = learner_step(self.model, self.optimizer, batch, self.cfg.loss, grad_clip=self.cfg.learner.grad_clip,
                             scheduler=self.scheduler, autocast_bf16=self.cfg.learner.autocast_bf16)
            return batch, m

        t0 = time.perf_counter()
        one(batches[0])
        warm = time.perf_counter() - t0
        times, tokens, seq_tokens, losses = [], 0, 0, []
        for turns in batches:
            t0 = time.perf_counter()
            batch, m = one(turns)
            times.append(time.perf_counter() - t0)
            tokens += batch.num_tokens
            seq_tokens += int(batch.packed.attention_mask_B_L.sum())
            losses.append(m["loss"])
        return {"warmup_s": warm, "step_s": times, "reply_tokens": tokens, "seq_tokens": seq_tokens, "loss": losses}


class FollowerProbe:
    """Part 3: a serving-side engine that follows the registry (CPU reservation of a chat replica)."""

    def __init__(self, model_dir: str, registry):
        from hsd_ray.engines.hf import HFEngine
        from hsd_ray.loop.broadcast import WeightFollower

        self.registry = registry
        self.engine = HFEngine(model_dir)
        self.follower = WeightFollower(self.engine, registry, role="bench")

    def poll(self) -> dict:
        t0 = time.perf_counter()
        applied = self.follower.poll()
        return {"applied": applied, "s": time.perf_counter() - t0, "version": self.engine.version.version,
                "error": self.follower.last_error}

    def breakdown(self) -> dict:
        """The latest version fetched (ray.get) and loaded (engine.load_weights) separately."""
        import ray

        t0 = time.perf_counter()
        _, (ref,) = ray.get(self.registry.latest.remote("base"))
        t1 = time.perf_counter()
        weights = ray.get(ref)
        t2 = time.perf_counter()
        self.engine.load_weights(weights)
        t3 = time.perf_counter()
        return {"lookup_s": t1 - t0, "fetch_s": t2 - t1, "load_s": t3 - t2}

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()


# ---- 1. pipeline -----------------------------------------------------------------------------------------------------


def _conversations(n: int, offset: int, tag: str) -> list[dict]:
    return [
        {"user": f"{tag}-{i}", "seed": offset + i, "followup": _FOLLOWUPS[(offset + i) % len(_FOLLOWUPS)],
         "question": _QUESTIONS[(offset + i) % len(_QUESTIONS)] + ("" if i < len(_QUESTIONS) else f" ({i})")}
        for i in range(n)
    ]


def _first(client, cfg, conv: dict) -> None:
    r = _chat(client, cfg, [{"role": "user", "content": conv["question"]}], conv["user"], seed=conv["seed"],
              logprobs=True)
    choice = r.choices[0]
    conv["reply"] = choice.message.content
    conv["finished"] = choice.finish_reason == "stop"
    conv["completion_tokens"] = r.usage.completion_tokens
    conv["logprobs"] = [t.logprob for t in (choice.logprobs.content if choice.logprobs else [])]
    conv["fingerprint"] = r.system_fingerprint


def _followup_messages(conv: dict) -> list[dict]:
    return [{"role": "user", "content": conv["question"]}, {"role": "assistant", "content": conv["reply"]},
            {"role": "user", "content": conv["followup"]}]


def _followup(client, cfg, conv: dict) -> None:
    _chat(client, cfg, _followup_messages(conv), conv["user"], seed=conv["seed"], max_tokens=1)


def bench_whole_loop(cfg, n: int, log) -> tuple[dict, list[dict]]:
    import ray

    from hsd_ray.loop.job import LearnerThread, _teardown, start_loop

    bt = cfg.learner.batch_turns
    warm_steps, steps = 1, n // bt
    total_steps = warm_steps + steps
    cfg = cfg.model_copy(update={"job": cfg.job.model_copy(update={"max_steps": total_steps})})
    out: dict = {"turns": n, "batch_turns": bt, "warmup_turns": bt, "max_steps": total_steps}
    t_begin = time.perf_counter()
    loop = start_loop(cfg)
    _quiet_serve()
    learner = None
    try:
        out["start_loop_s"] = time.perf_counter() - t_begin
        log(f"  loop up in {out['start_loop_s']:.1f}s ({loop.base_url}); starting the Ray Train learner")
        client = _client(loop.base_url)
        learner = LearnerThread(cfg)
        learner.start()

        def stats():
            if learner.error is not None:
                raise RuntimeError(f"learner failed: {learner.error!r}")
            return loop.stats()

        # Warm-up: one batch through the whole loop (engine kernels, Train start, first publish + weight loads).
        t0 = time.perf_counter()
        warm = _conversations(bt, 100, "warm")
        for c in warm:
            _first(client, cfg, c)
        for c in warm:
            _followup(client, cfg, c)
        _wait(lambda: stats()["queue"]["trained"] >= bt, 900, "the warm-up batch to be trained", 0.2)
        _wait(lambda: _health(loop.base_url)["policy_version"] >= warm_steps, 300, "the replica to load v1", 0.2)
        _wait(lambda: ray.get(loop.teachers[0].stats.remote())["version"] >= warm_steps, 300, "the teacher to load v1",
              0.2)
        out["warmup_s"] = time.perf_counter() - t0
        log(f"  warm-up batch trained and v{warm_steps} applied by replica and teacher in {out['warmup_s']:.1f}s")

        # The N replies (generation: not part of the pipeline measure).
        convs = _conversations(n, 0, "pipe")
        t0 = time.perf_counter()
        for c in convs:
            _first(client, cfg, c)
        out["replies_s"] = time.perf_counter() - t0
        s = stats()
        base_trained, base_captured = s["queue"]["trained"], s["capture"]["captured"]
        log(f"  {n} replies generated in {out['replies_s']:.1f}s "
            f"({sum(c['completion_tokens'] for c in convs)} tokens); sending the follow-ups")

        # Timed: follow-ups in → trained count +N (and: published, applied by the replica).
        events: dict[str, float] = {}
        timeline: list[tuple[float, int, int, int, int]] = []
        t0 = time.perf_counter()
        for c in convs:
            _followup(client, cfg, c)
        events["followups_sent"] = time.perf_counter() - t0
        last = (-1, -1, -1)
        deadline = time.perf_counter() + 1200
        while True:
            s = stats()
            q, now = s["queue"], time.perf_counter() - t0
            captured = s["capture"]["captured"] - base_captured
            scored = q["scored"] + q["training"] + q["trained"] - base_trained
            trained = q["trained"] - base_trained
            if "captured" not in events and captured >= n:
                events["captured"] = now
            if "scored" not in events and scored >= n:
                events["scored"] = now
            key = (trained, s["learner"].get("step", 0), s["published_version"])
            if key != last:
                timeline.append((round(now, 2), captured, scored, *key))
                last = key
            if trained >= n:
                events["trained"] = now
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"pipeline: only {trained}/{n} turns trained after 1200 s: {s}")
            time.sleep(0.05)
        _wait(lambda: loop.stats()["published_version"] >= total_steps, 300, "the last step's weights to be published")
        events["published"] = time.perf_counter() - t0
        _wait(lambda: _health(loop.base_url)["policy_version"] >= total_steps, 300, "the replica to apply them")
        events["applied_by_replica"] = time.perf_counter() - t0
        s = loop.stats()
        out.update(
            events_s=events,
            timeline=[dict(zip(("t_s", "captured", "scored", "trained", "step", "published_version"), e))
                      for e in timeline],
            seconds=events["trained"],
            turns_per_s=n / events["trained"],
            turns_per_s_to_applied=n / events["applied_by_replica"],
            teacher=ray.get(loop.teachers[0].stats.remote()),
            learner_progress=s["learner"],
            capture=s["capture"],
            queue=s["queue"],
            replica_capture=_health(loop.base_url)["capture"],
            spilled=_spilled(),
        )
        log(f"  {n} turns trained {events['trained']:.1f}s after the first follow-up "
            f"({out['turns_per_s']:.3f} turns/s); replica on v{total_steps} at {events['applied_by_replica']:.1f}s")
        t0 = time.perf_counter()
        learner.join(timeout=600)  # final publish, weights and checkpoint (not measured)
        out["learner_stop_s"] = time.perf_counter() - t0
        if learner.is_alive() or learner.error is not None:
            raise RuntimeError(f"learner did not stop cleanly: alive={learner.is_alive()} error={learner.error!r}")
    finally:
        if learner is not None and learner.is_alive():
            loop.control.request_stop.remote()
            learner.join(timeout=300)
        _teardown(loop)
    return out, convs


def bench_capture(cfg, convs: list[dict], tokenizer, rounds: int) -> tuple[dict, list]:
    """(a) ledger.observe → queue.put for the N conversations; returns the Turn objects the ledger emitted."""
    import ray

    from hsd_ray.loop.capture import ReplyLedger, ServedReply
    from hsd_ray.loop.queue import TurnQueue

    n = len(convs)
    queue = ray.remote(TurnQueue).options(num_cpus=0).remote(
        max(cfg.queue.capacity, n * (rounds + 1)), cfg.queue.scored_capacity, cfg.queue.lease_timeout_s)
    ledger = ray.remote(ReplyLedger).options(num_cpus=0).remote(
        queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages)
    times = []
    try:
        for r in range(rounds + 1):  # round 0 = warm-up
            users = [f"cap{r}-{c['user']}" for c in convs]
            served = [
                ServedReply(user_id=u, adapter_id="base", context=[{"role": "user", "content": c["question"]}],
                            reply=c["reply"], token_ids=tokenizer(c["reply"], add_special_tokens=False)["input_ids"],
                            logprobs=c["logprobs"], finished=c["finished"], policy_version=0, replied_at=time.time())
                for u, c in zip(users, convs)
            ]
            ray.get([ledger.record.remote(s) for s in served])
            before = ray.get(queue.stats.remote())["captured"]
            t0 = time.perf_counter()
            refs = [ledger.observe.remote(u, _followup_messages(c), time.time()) for u, c in zip(users, convs)]
            results = ray.get(refs)
            _wait(lambda: ray.get(queue.stats.remote())["captured"] >= before + n, 60, "captured turns", 0.001)
            dt = time.perf_counter() - t0
            if results.count("captured") != n:
                raise RuntimeError(f"capture matched only {results.count('captured')}/{n}: {results}")
            if r > 0:
                times.append(dt)
        _, items = ray.get(queue.lease.remote(n))  # round 0's turns, exactly as the ledger built them
        turns = ray.get([box[0] for _, box in items])
    finally:
        ray.kill(ledger)
        ray.kill(queue)
    best = min(times)
    token_len_match = sum(len(t.reply_token_ids) == c["completion_tokens"] for t, c in zip(turns, convs))
    return {"turns": n, "rounds": rounds, "seconds_all": times, "seconds": best, "turns_per_s": n / best,
            "reply_token_count_matches_served": f"{token_len_match}/{n}"}, turns


def bench_teacher(cfg, turns: list) -> tuple[dict, list]:
    """(b) a real TeacherWorker (same options as the loop's) scoring the N turns from its own queue."""
    import ray

    from hsd_ray.loop.job import start_teacher
    from hsd_ray.loop.queue import TurnQueue

    n, bt = len(turns), cfg.learner.batch_turns
    queue = ray.remote(TurnQueue).options(num_cpus=0).remote(cfg.queue.capacity, max(cfg.queue.scored_capacity, 2 * n),
                                                             cfg.queue.lease_timeout_s)
    t0 = time.perf_counter()
    teacher = start_teacher(cfg, cfg.model_dump(), queue, None, 900)
    try:
        warm = [dataclasses.replace(t, turn_id=uuid.uuid4().hex) for t in turns[:bt]]
        ray.get(queue.put.remote([(t.turn_id, t.user_id, [ray.put(t)]) for t in warm]))
        _wait(lambda: ray.get(queue.stats.remote())["scored"] >= len(warm), 600, "the teacher's warm-up batch", 0.05)
        startup = time.perf_counter() - t0
        items = [(t.turn_id, t.user_id, [ray.put(t)]) for t in turns]  # put as capture does, before the clock
        t0 = time.perf_counter()
        ray.get(queue.put.remote(items))
        _wait(lambda: ray.get(queue.stats.remote())["scored"] >= len(warm) + n, 600, "the teacher to score", 0.01)
        dt = time.perf_counter() - t0
        stats = ray.get(teacher.stats.remote())
        scored = ray.get(queue.take_scored.remote(len(warm) + n))
        ids = {t.turn_id for t in turns}
        scored_turns = [t for t in ray.get([box[0] for _, box in scored]) if t.turn_id in ids]
        order = {t.turn_id: i for i, t in enumerate(turns)}
        scored_turns.sort(key=lambda t: order[t.turn_id])
    finally:
        ray.kill(teacher)
        ray.kill(queue)
    tokens = sum(t.scores.teacher_prompt_tokens + t.scores.baseline_prompt_tokens + 2 * len(t.scores.target_ids_T)
                 for t in scored_turns)
    return {"turns": n, "seconds": dt, "turns_per_s": n / dt, "scored_tokens": tokens, "tokens_per_s": tokens / dt,
            "startup_and_warmup_s": startup, "teacher_stats": stats, "max_batch_turns": cfg.teacher.max_batch_turns,
            "cpus": cfg.teacher.cpus_per_worker}, scored_turns


def bench_learner_stage(cfg, scored_turns: list) -> dict:
    """(c) learner_step on batches of batch_turns of the scored turns, in an actor with the learner's CPUs."""
    import ray

    bt = cfg.learner.batch_turns
    batches = [scored_turns[i : i + bt] for i in range(0, len(scored_turns), bt)]
    probe = ray.remote(LearnerProbe).options(num_cpus=cfg.learner.cpus_per_worker).remote(cfg.model_dump())
    try:
        threads = ray.get(probe.threads.remote())
        r = ray.get(probe.steps.remote(batches))
    finally:
        ray.kill(probe)
    total = sum(r["step_s"])
    return {"turns": len(scored_turns), "steps": len(batches), "seconds": total,
            "turns_per_s": len(scored_turns) / total,
            "step_s_median": statistics.median(r["step_s"]), "torch_threads": threads,
            "mode": f"LoRA r={cfg.learner.lora.r}" if cfg.learner.lora.enabled else "full fine-tune", **r}


def bench_pipeline(cfg, args, log) -> dict:
    from transformers import AutoTokenizer

    from hsd_ray.models import resolve_model

    n = args.turns
    res: dict = {}
    log("[1d] whole loop (start_loop + LearnerThread), follow-ups over HTTP")
    res["whole"], convs = bench_whole_loop(cfg, n, log)
    res["whole"]["learner_log"] = _worker_log_lines("[learner]")
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(cfg.model)))
    log("[1a] capture + queue alone")
    res["capture"], turns = bench_capture(cfg, convs, tokenizer, args.capture_rounds)
    log(f"     {res['capture']['turns_per_s']:.0f} turns/s")
    log("[1b] teacher scoring alone (TeacherWorker actor)")
    res["teacher"], scored = bench_teacher(cfg, turns)
    log(f"     {res['teacher']['turns_per_s']:.2f} turns/s")
    log("[1c] learner step alone")
    res["learner"] = bench_learner_stage(cfg, scored)
    log(f"     {res['learner']['turns_per_s']:.2f} turns/s")
    stages = {k: res[k]["turns_per_s"] for k in ("capture", "teacher", "learner")}
    slowest = min(stages, key=stages.get)
    res["slowest_stage"] = slowest
    res["whole_over_slowest"] = res["whole"]["turns_per_s"] / stages[slowest]
    res["conversations"] = [{k: c[k] for k in ("question", "followup", "reply", "completion_tokens")} for c in convs]
    return res


# ---- 2. latency ------------------------------------------------------------------------------------------------------


def bench_latency(cfg, args, log) -> dict:
    import ray
    from ray import serve

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger
    from hsd_ray.loop.queue import TurnQueue
    from hsd_ray.loop.serve import _http_port, build_app

    queue = ray.remote(TurnQueue).options(num_cpus=0).remote(cfg.queue.capacity, cfg.queue.scored_capacity,
                                                             cfg.queue.lease_timeout_s)

    def make_ledger():
        return ray.remote(ReplyLedger).options(name=LEDGER_ACTOR_NAME, namespace=NAMESPACE, num_cpus=0).remote(
            queue, cfg.capture.reply_ttl_s, cfg.hindsight.max_context_messages)

    ledger = None
    for _ in range(50):  # the loop's ledger (killed by _teardown) may still hold the name for a moment
        try:
            ledger = make_ledger()
            ray.get(ledger.stats.remote())
            break
        except ValueError:
            time.sleep(0.2)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    _quiet_serve()
    port = _http_port(cfg.serve.port)
    modes = {"on": True, "off": False}
    urls = {}
    try:
        for mode, enabled in modes.items():
            c = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"enabled": enabled})})
            serve.run(build_app(c), name=f"bench-capture-{mode}", route_prefix=f"/{mode}")
            urls[mode] = f"http://127.0.0.1:{port}/{mode}/v1"
        clients = {m: _client(u) for m, u in urls.items()}
        n_conv = args.latency_requests // 2
        lat: dict[str, dict[str, list[float]]] = {m: {"first": [], "followup": []} for m in modes}

        def conversation(mode: str, i: int, tag: str, record: bool) -> None:
            client, user = clients[mode], f"lat-{tag}-{mode}-{i}"
            q = _QUESTIONS[(i + 7) % len(_QUESTIONS)]
            t0 = time.perf_counter()
            r = _chat(client, cfg, [{"role": "user", "content": q}], user, temperature=0, seed=i)
            t1 = time.perf_counter()
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": r.choices[0].message.content},
                    {"role": "user", "content": _FOLLOWUPS[i % len(_FOLLOWUPS)]}]
            _chat(client, cfg, msgs, user, temperature=0, seed=i)
            t2 = time.perf_counter()
            if record:
                lat[mode]["first"].append(t1 - t0)
                lat[mode]["followup"].append(t2 - t1)

        for i in range(args.latency_warmup):
            for mode in modes:
                conversation(mode, i, "warm", False)
        t0 = time.perf_counter()
        for i in range(n_conv):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for mode in order:
                conversation(mode, i, "run", True)
        wall = time.perf_counter() - t0
        health = {m: _health(u) for m, u in urls.items()}
        ledger_stats = ray.get(ledger.stats.remote())
        out: dict = {"requests_per_mode": 2 * n_conv, "conversations_per_mode": n_conv,
                     "warmup_conversations_per_mode": args.latency_warmup, "replicas_per_mode": cfg.serve.replicas,
                     "max_tokens": cfg.serve.max_tokens, "temperature": 0, "wall_s": wall,
                     "ledger": ledger_stats, "replica_capture": {m: h["capture"] for m, h in health.items()}}
        for mode in modes:
            all_ = lat[mode]["first"] + lat[mode]["followup"]
            out[mode] = {"p50_s": percentile(all_, 50), "p99_s": percentile(all_, 99), "mean_s": statistics.mean(all_),
                         "followup_p50_s": percentile(lat[mode]["followup"], 50),
                         "followup_p99_s": percentile(lat[mode]["followup"], 99),
                         "first_p50_s": percentile(lat[mode]["first"], 50), "samples_s": lat[mode]}
        out["ratio_p50"] = out["on"]["p50_s"] / out["off"]["p50_s"]
        out["ratio_p99"] = out["on"]["p99_s"] / out["off"]["p99_s"]
        out["ratio_followup_p50"] = out["on"]["followup_p50_s"] / out["off"]["followup_p50_s"]
        expected = n_conv + args.latency_warmup
        if ledger_stats["captured"] != expected:
            out["capture_problem"] = f"ledger captured {ledger_stats['captured']} follow-ups, expected {expected}"
        return out
    finally:
        for mode in urls:
            serve.delete(f"bench-capture-{mode}")
        if ledger is not None:
            ray.kill(ledger)
        ray.kill(queue)


# ---- 3. broadcast ----------------------------------------------------------------------------------------------------


def _raw_copy(src: dict, repeats: int) -> list[float]:
    import torch

    dst = {k: torch.empty_like(v) for k, v in src.items()}
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # first = warm-up (page faults of the fresh destination)
            t0 = time.perf_counter()
            for k, v in src.items():
                dst[k].copy_(v)
            times.append(time.perf_counter() - t0)
    return times[1:]


def bench_broadcast(cfg, args, log) -> dict:
    import ray
    import torch

    from hsd_ray.config import LoraConfig
    from hsd_ray.core.policy import apply_lora, export_weights, unwrap
    from hsd_ray.models import load_model_and_tokenizer
    from hsd_ray.loop.broadcast import VersionRegistry, publish
    from hsd_ray.models import resolve_model

    model_dir = resolve_model(cfg.model)
    registry = ray.remote(VersionRegistry).options(num_cpus=0).remote(cfg.broadcast.keep_versions)
    follower = ray.remote(FollowerProbe).options(num_cpus=cfg.serve.cpus_per_replica).remote(str(model_dir), registry)
    model, _ = load_model_and_tokenizer(model_dir, "float32", "cpu")
    version = 0
    out: dict = {"follower_torch_threads": ray.get(follower.threads.remote()), "driver_torch_threads":
                 torch.get_num_threads(), "keep_versions": cfg.broadcast.keep_versions}
    try:
        for kind in ("full", "lora"):
            if kind == "lora":
                model = apply_lora(model, LoraConfig(enabled=True, r=args.lora_r, alpha=2 * args.lora_r))
                src = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
            else:
                src = dict(model.state_dict())
            # The raw baseline first, while nothing else runs (no publish, no object spilling in the background).
            raw = _raw_copy({k: v.detach() for k, v in src.items()}, RAW_REPEATS)
            raw_med = statistics.median(raw)
            rounds = []
            for i in range(args.broadcast_repeats + 1):  # round 0 = warm-up (LoRA: the follower wraps its model)
                with torch.no_grad():  # a learner step changed the weights (keeps every round a real update)
                    for p in src.values():
                        p.add_(1e-6)
                version += 1
                t0 = time.perf_counter()
                ws = export_weights(model, version, version)
                t1 = time.perf_counter()
                publish_s = publish(registry, ws)
                t2 = time.perf_counter()
                p = ray.get(follower.poll.remote())
                t3 = time.perf_counter()
                if not p["applied"] or p["version"] != version:
                    raise RuntimeError(f"follower did not apply v{version} ({kind}): {p}")
                nbytes, ntensors = ws.num_bytes(), len(ws.tensors)
                del ws
                rounds.append({"export_s": t1 - t0, "publish_s": publish_s, "publish_wall_s": t2 - t1,
                               "poll_s": p["s"], "poll_wall_s": t3 - t2, "total_s": t3 - t0})
            timed = rounds[1:]
            med = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
            breakdown = ray.get(follower.breakdown.remote())
            ws = export_weights(model, version, version)
            t0 = time.perf_counter()
            ref = ray.put(ws)  # the driver's share of publish (the registry re-puts its own copy)
            breakdown["driver_put_s"] = time.perf_counter() - t0
            del ref, ws
            out[kind] = {"bytes": nbytes, "tensors": ntensors, "rounds": rounds, "median": med,
                         "follower_breakdown": breakdown, "raw_copy_s": raw, "raw_copy_median_s": raw_med,
                         "min_total_s": min(r["total_s"] for r in timed), "ratio": med["total_s"] / raw_med,
                         "ratio_best": min(r["total_s"] for r in timed) / min(raw),
                         "broadcast_GBps": nbytes / med["total_s"] / 1e9,
                         "raw_GBps": nbytes / raw_med / 1e9}
            log(f"  {kind}: {nbytes / 2**20:.1f} MiB, broadcast {med['total_s']:.3f}s vs raw copy {raw_med:.4f}s")
        out["spilled"] = _spilled()
    finally:
        ray.kill(follower)
        ray.kill(registry)
        del model
    return out


# ---- report ----------------------------------------------------------------------------------------------------------


def _fmt_s(x: float) -> str:
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def format_results(r: dict) -> str:
    c = r["config"]
    L = [f"bench_loop  model {c['model']}  turns {c['turns']}  max_tokens {c['max_tokens']}  batch_turns "
         f"{c['batch_turns']}  engine hf/cpu  ({r['env']['cpus']} CPUs, Ray {r['env']['ray']}, "
         f"torch {r['env']['torch']})"]
    p = r.get("pipeline")
    if p:
        w, a, b, l_ = p["whole"], p["capture"], p["teacher"], p["learner"]
        ev = w["events_s"]
        L += ["", f"1. pipeline throughput, the same {c['turns']} turns (warm-up batch excluded everywhere)",
              f"   {'stage':<44}{'turns':>6}{'seconds':>10}{'turns/s':>10}   notes",
              f"   {'(a) capture+queue (observe -> queue.put)':<44}{a['turns']:>6}{a['seconds']:>10.3f}"
              f"{a['turns_per_s']:>10.1f}   ledger+queue actors, best of {a['rounds']}",
              f"   {'(b) teacher scoring (TeacherWorker)':<44}{b['turns']:>6}{b['seconds']:>10.2f}"
              f"{b['turns_per_s']:>10.2f}   {b['tokens_per_s']:.0f} scored tok/s, {b['cpus']} CPU -> 1 torch thread, "
              f"batches <= {b['max_batch_turns']}",
              f"   {'(c) learner step (learner_step)':<44}{l_['turns']:>6}{l_['seconds']:>10.2f}"
              f"{l_['turns_per_s']:>10.2f}   {l_['mode']}, {l_['steps']} steps x {c['batch_turns']} turns, "
              f"median {l_['step_s_median']:.2f} s/step, {l_['torch_threads']} torch thread(s)",
              f"   {'(d) whole loop: follow-ups -> trained':<44}{w['turns']:>6}{w['seconds']:>10.2f}"
              f"{w['turns_per_s']:>10.2f}   follow-ups sent in {ev['followups_sent']:.2f} s; all captured "
              f"{ev.get('captured', float('nan')):.2f} s, all scored {ev.get('scored', float('nan')):.2f} s",
              f"   {'    ... -> last step published':<44}{'':>6}{ev['published']:>10.2f}"
              f"{w['turns'] / ev['published']:>10.2f}",
              f"   {'    ... -> applied by the serving replica':<44}{'':>6}{ev['applied_by_replica']:>10.2f}"
              f"{w['turns_per_s_to_applied']:>10.2f}",
              f"   in the loop: teacher scored {w['teacher']['turns']} turns (incl. warm-up) in "
              f"{w['teacher']['batches']} "
              f"batches (alone: {b['teacher_stats']['batches']}); learner log: "
              + (" | ".join(ln.split("[learner] ")[-1] for ln in w.get("learner_log", [])) or "n/a"),
              f"   whole / slowest stage ({p['slowest_stage']}): {p['whole_over_slowest']:.2f}x "
              f"(1.00 = the loop runs as fast as its slowest stage alone)",
              "   timeline of (d): t_s captured scored trained step published_version",
              "     " + "  ".join(f"[{e['t_s']:.1f} {e['captured']} {e['scored']} {e['trained']} {e['step']} "
                                   f"v{e['published_version']}]" for e in w["timeline"]),
              f"   loop setup (not timed): start_loop {w['start_loop_s']:.1f} s, warm-up batch {w['warmup_s']:.1f} s, "
              f"{w['turns']} replies {w['replies_s']:.1f} s, "
              f"learner stop {w.get('learner_stop_s', float('nan')):.1f} s;"
              f" object store: {w['spilled']}"]
    lat = r.get("latency")
    if lat:
        on, off = lat["on"], lat["off"]
        L += ["", f"2. chat latency, capture on vs off: {lat['requests_per_mode']} sequential requests per mode "
              f"({lat['conversations_per_mode']} conversations of question + follow-up), {lat['replicas_per_mode']} "
              f"replica each, interleaved, greedy, max_tokens {lat['max_tokens']}, after "
              f"{lat['warmup_conversations_per_mode']} warm-up conversations",
              f"   {'':<24}{'capture on':>12}{'capture off':>13}{'on/off':>9}",
              f"   {'p50 (all requests)':<24}{_fmt_s(on['p50_s']):>12}{_fmt_s(off['p50_s']):>13}"
              f"{lat['ratio_p50']:>8.3f}x",
              f"   {'p99 (all requests)':<24}{_fmt_s(on['p99_s']):>12}{_fmt_s(off['p99_s']):>13}"
              f"{lat['ratio_p99']:>8.3f}x",
              f"   {'p50 (follow-ups only)':<24}{_fmt_s(on['followup_p50_s']):>12}{_fmt_s(off['followup_p50_s']):>13}"
              f"{lat['ratio_followup_p50']:>8.3f}x",
              f"   {'mean (all requests)':<24}{_fmt_s(on['mean_s']):>12}{_fmt_s(off['mean_s']):>13}"
              f"{on['mean_s'] / off['mean_s']:>8.3f}x",
              f"   ledger: recorded {lat['ledger']['recorded']}, captured {lat['ledger']['captured']}, unmatched "
              f"{lat['ledger']['unmatched']}; capture errors on replica: {lat['replica_capture']['on']['errors']}"
              + (f"   !! {lat['capture_problem']}" if "capture_problem" in lat else "")]
    bc = r.get("broadcast")
    if bc:
        L += ["", f"3. weight broadcast: export_weights + publish (VersionRegistry) + WeightFollower.poll (fetch + "
              f"load_weights, follower actor, {bc['follower_torch_threads']} torch thread) vs raw in-process "
              f"dst.copy_(src) (measured first, median of {RAW_REPEATS}); broadcast: median of "
              f"{c['broadcast_repeats']} after 1 "
              "warm-up; ratio = broadcast / raw",
              f"   {'weights':<14}{'MiB':>9}{'tensors':>8}{'export':>10}{'publish':>10}{'poll':>10}{'total':>10}"
              f"{'raw copy':>11}{'ratio':>9}"]
        for kind, name in (("full", "full"), ("lora", f"LoRA r={c['lora_r']}")):
            m = bc[kind]
            med = m["median"]
            L.append(f"   {name:<14}{m['bytes'] / 2**20:>9.1f}{m['tensors']:>8}{_fmt_s(med['export_s']):>10}"
                     f"{_fmt_s(med['publish_s']):>10}{_fmt_s(med['poll_wall_s']):>10}{_fmt_s(med['total_s']):>10}"
                     f"{_fmt_s(m['raw_copy_median_s']):>11}{m['ratio']:>8.1f}x")
        for kind in ("full", "lora"):
            b = bc[kind]["follower_breakdown"]
            L.append(f"   {kind}: publish = driver ray.put {_fmt_s(b['driver_put_s'])} + registry re-put; follower: "
                     f"registry lookup {_fmt_s(b['lookup_s'])}, object-store fetch "
                     f"{_fmt_s(b['fetch_s'])}, engine.load_weights {_fmt_s(b['load_s'])}; best total "
                     f"{_fmt_s(bc[kind]['min_total_s'])} vs best raw {_fmt_s(min(bc[kind]['raw_copy_s']))} "
                     f"({bc[kind]['ratio_best']:.1f}x); "
                     f"{bc[kind]['broadcast_GBps']:.2f} GB/s end to end vs {bc[kind]['raw_GBps']:.2f} GB/s raw")
        L.append(f"   object store: {bc['spilled']}")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="bench.bench_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="smollm2-135m-instruct | tiny-random | a folder")
    p.add_argument("--turns", type=int, default=16, help="turns through the pipeline (multiple of --batch-turns)")
    p.add_argument("--only", choices=PARTS, help="run one part only")
    p.add_argument("--max-tokens", type=int, default=32, help="reply length (serve.max_tokens)")
    p.add_argument("--batch-turns", type=int, default=4, help="learner.batch_turns")
    p.add_argument("--capture-rounds", type=int, default=3, help="timed rounds of (a) (best kept)")
    p.add_argument("--latency-requests", type=int, default=30, help="requests per capture mode (even)")
    p.add_argument("--latency-warmup", type=int, default=2, help="warm-up conversations per mode")
    p.add_argument("--broadcast-repeats", type=int, default=3, help="timed broadcast rounds per kind")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the broadcast measure")
    p.add_argument("overrides", nargs="*", help="extra Config overrides, section.field=value")
    args = p.parse_args(argv)
    if args.turns < args.batch_turns or args.turns % args.batch_turns:
        p.error("--turns must be a positive multiple of --batch-turns")
    if args.latency_requests < 2 or args.latency_requests % 2:
        p.error("--latency-requests must be even (question + follow-up)")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [x for x in [os.environ.get("PYTHONPATH")] if x])
    import ray
    import torch
    from transformers.utils import logging as hf_logging

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.models import resolve_model

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("ray", "ray.serve", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start, load_before = time.perf_counter(), os.getloadavg()[0]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    resolve_model(args.model)  # build once here, not in three actors at the same time
    out_dir = tempfile.mkdtemp(prefix="hsd-bench-loop-", dir="/tmp")
    cfg = make_config(args, out_dir)
    temp = tempfile.mkdtemp(prefix="hsdbl-", dir="/tmp")  # short path: Ray's unix sockets have a length limit
    _RAY_TEMP.append(temp)
    ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1), include_dashboard=False,
             object_store_memory=cfg.ray.object_store_bytes, namespace=NAMESPACE, _temp_dir=temp,
             log_to_driver=False, logging_level=logging.WARNING)
    results: dict = {
        "config": {**{k: v for k, v in vars(args).items() if k != "overrides"}, "overrides": args.overrides,
                   "loop_config": json.loads(cfg.model_dump_json())},
        "env": {"ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "cpus": os.cpu_count(), "object_store_bytes": cfg.ray.object_store_bytes,
                "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "errors": {},
    }
    parts = [args.only] if args.only else list(PARTS)
    funcs = {"pipeline": bench_pipeline, "latency": bench_latency, "broadcast": bench_broadcast}
    try:
        for part in parts:
            log(f"== {part} ==  (1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
            results.setdefault("loadavg_at_start", {})[part] = os.getloadavg()[0]
            t0 = time.perf_counter()
            try:
                results[part] = funcs[part](cfg, args, log)
            except Exception as e:  # noqa: BLE001 - report it and go on with the other parts
                import traceback

                results["errors"][part] = f"{type(e).__name__}: {e}"
                log(f"!! {part} failed: {type(e).__name__}: {str(e)[:400]} (full text in the JSON)")
                traceback.print_tb(e.__traceback__)
            results.setdefault("part_wall_s", {})[part] = time.perf_counter() - t0
            log(f"== {part} done in {time.perf_counter() - t0:.0f}s")
    finally:
        from hsd_ray.loop.job import disconnect

        disconnect()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - start
    results["env"]["loadavg_1min"] = [load_before, os.getloadavg()[0]]

    print()
    print(format_results(results))
    for part, err in results["errors"].items():
        print(f"!! {part} FAILED: {err[:400]}{' …' if len(err) > 400 else ''}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    out = RESULTS / (f"bench_loop-{name}.json" if not args.only else f"bench_loop-{name}-{args.only}.json")
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    load = results["env"]["loadavg_1min"]
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    print(f"\nwall {results['wall_s']:.0f} s; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after "
          f"({os.cpu_count()} CPUs); results written to {out}")
    print(f"command: cd {REPO} && {exe} -m bench.bench_loop {shlex.join(argv)}".rstrip())
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
