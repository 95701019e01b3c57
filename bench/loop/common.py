"""Shared by the loop benchmark's parts: the conversations sent, small helpers (waiting, Ray's spilling summary, the
learner's log lines from the workers' log files, the chat client, GET /health), `make_config` (the loop Config of a
run) and the two probe actors: `LearnerProbe` (the learner's model and optimizer in a process with the learner's CPU
reservation, for stage (c) of the pipeline) and `FollowerProbe` (a serving-side engine that follows the registry, for
the broadcast measure). This module measures nothing by itself.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.request
from pathlib import Path

from bench.util import free_port

RAW_REPEATS = 11  # raw in-process copies (cheap; many, because microsecond copies are easily preempted)

QUESTIONS = [
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
FOLLOWUPS = [
    "Too long, please answer in one sentence.", "No, that is wrong. Try again.", "Thanks, that's helpful.",
    "Can you use bullet points instead?", "Please be more specific.", "write it all in lowercase",
    "Great, now say it in French.", "That doesn't answer my question.",
]


# ---- conversations ---------------------------------------------------------------------------------------------------


def conversations(n: int, offset: int, tag: str) -> list[dict]:
    """n conversations (question, follow-up, user id, seed); `offset` picks where in the lists they start."""
    return [
        {"user": f"{tag}-{i}", "seed": offset + i, "followup": FOLLOWUPS[(offset + i) % len(FOLLOWUPS)],
         "question": QUESTIONS[(offset + i) % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")}
        for i in range(n)
    ]


def followup_messages(conv: dict) -> list[dict]:
    return [{"role": "user", "content": conv["question"]}, {"role": "assistant", "content": conv["reply"]},
            {"role": "user", "content": conv["followup"]}]


# ---- small helpers ---------------------------------------------------------------------------------------------------


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def spilled() -> str | None:
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


# The learner's own log lines: "[learner] published v3 (step 3) in 0.123s", "[learner] final weights (step 5, v5) saved
# to ...". Under Ray Train V2 the worker's root logger is already configured by Ray (plain "%(message)s" to stderr), so
# the "[learner] " prefix of the learner's logging format may be missing: the messages themselves are matched too.
LEARNER_LOG = re.compile(r"\[learner\] |published v\d+ \(step \d+\) in |final weights \(step \d+, v\d+\) saved to ")


def worker_log_lines(ray_temp: str | None, pattern: re.Pattern = LEARNER_LOG) -> list[str]:
    """Lines matching `pattern` from the workers' stdout / stderr files under the local Ray's temp folder (the driver
    does not see them: log_to_driver is off); by default the learner's publish and final-weights lines."""
    if not ray_temp:
        return []
    lines: list[str] = []
    # resolve(): each file once, though both session_<id> and the session_latest link match the glob
    files = {f.resolve() for pattern_ in ("*.out", "*.err") for f in Path(ray_temp).glob(f"session_*/logs/{pattern_}")}
    for f in sorted(files):
        try:
            lines += [ln.strip() for ln in f.read_text(errors="replace").splitlines() if pattern.search(ln)]
        except OSError:
            pass
    return lines


def quiet_serve() -> None:
    """Serve (re)configures its driver-side logger when it starts; keep the benchmark's output to its own lines."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def health(base_url: str) -> dict:
    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    with urllib.request.urlopen(root + "/health", timeout=10) as r:
        return json.loads(r.read())


def client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)


def chat(client_, cfg, messages, user, **kw):
    return client_.chat.completions.create(model=cfg.serve.model_name, messages=messages, user=user, **kw)


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
        # every follow-up trains: this measures throughput, not the feedback gate (which rightly drops "Great, now
        # say it in French." as build-on, so a step's turn count would depend on which follow-ups it drew)
        "feedback.gate": "none",
        # every step a served version, as these measures count (the gate holds versions back while it judges one;
        # what it costs: bench/bench_gate.py)
        "version_gate.enabled": "false",
    }
    given = [f"{k}={v}" for k, v in overrides.items()] + list(args.overrides)
    return Config.load(overrides=given)


# ---- actors used by the measures (classes wrapped with ray.remote at use) --------------------------------------------


class LearnerProbe:
    """Stage (c): the learner's model + optimizer in a process with the learner's CPU reservation."""

    def __init__(self, cfg_dict: dict):
        import torch

        from hsd_ray.config import Config
        from hsd_ray.core.policy import ReferencePolicy, apply_lora, make_optimizer
        from hsd_ray.models import load_model_and_tokenizer, resolve_model

        self.cfg = Config.model_validate(cfg_dict)
        torch.manual_seed(self.cfg.seed)
        self.model, self.tokenizer = load_model_and_tokenizer(resolve_model(self.cfg.model), "float32", "cpu")
        if self.cfg.learner.lora.enabled:
            self.model = apply_lora(self.model, self.cfg.learner.lora)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.cfg.learner)
        loss = self.cfg.loss  # the KL penalty's reference policy, as the learner builds it
        self.reference = ReferencePolicy(self.model, loss.reference, loss.ema_rate) if loss.kl_coef > 0 else None

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def steps(self, batches: list[list]) -> dict:
        """Warm-up step on batches[0], then one timed step per batch (collate + learner_step, as the learner does)."""
        from hsd_ray.core.batch import HindsightBatch
        from hsd_ray.core.train_step import learner_step

        def one(turns):
            batch = HindsightBatch.collate(turns, self.tokenizer.pad_token_id, (self.tokenizer.eos_token_id,))
            m = learner_step(self.model, self.optimizer, batch, self.cfg.loss, grad_clip=self.cfg.learner.grad_clip,
                             scheduler=self.scheduler, reference=self.reference,
                             autocast_bf16=self.cfg.learner.autocast_bf16)
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

        from hsd_ray.core.weights import BASE_ADAPTER

        t0 = time.perf_counter()
        published = ray.get(self.registry.latest.remote(BASE_ADAPTER))
        t1 = time.perf_counter()
        weights = ray.get(published.ref)
        t2 = time.perf_counter()
        self.engine.load_weights(weights)
        t3 = time.perf_counter()
        return {"lookup_s": t1 - t0, "fetch_s": t2 - t1, "load_s": t3 - t2}

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()
