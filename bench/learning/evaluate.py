"""Evaluation of the learning benchmark, run by `bench.learning.run` before training and every K interactions.

1. `wait_for_drain`: every follow-up the users sent is captured, scored and trained on (up to a partial batch), and
   the learner's last step is published; then `wait_until_serving`: the replicas answer with the latest version's
   `system_fingerprint`.
2. `Evaluator.evaluate`, on exactly the version the replicas serve:
   - `via="engine"` (default): one batched call on an engine in this process (vLLM by default) that loads the
     registry's latest published weights — about 20× faster than HTTP on 2 CPUs, where a replica answers one request
     at a time, so the same minutes buy 4× the samples. The version loaded is checked against the replicas'
     `system_fingerprint`. `via="http"`: every evaluation reply goes through the chat service like a user's.
   - on the evaluation split's prompts (`split`: "dev" to choose settings, "test" to report; never trained on),
     with no follow-up (never captured): compliance with EVERY preference, `samples` replies per prompt at the
     serving temperature, and yes/no correctness next to the yes/no format (`scoring`). Sampling seeds are fixed
     per (prompt, sample) — prompt i of the batch is drawn with `sampling_seed + i` — the same at every evaluation
     and in every run (paired comparisons); `noise` varies `sampling_seed` to measure the noise floor;
   - capability: strict accuracy on the split's checkable prompts (arithmetic, capitals, unit conversions), greedy
     (temperature 0), `capability_max_tokens` (24);
   - perplexity of a fixed reference text, computed in this process (the evaluation engine's `score`, or
     transformers with via="http") on the weights currently published in the version registry (`latest`), or the
     base model while nothing is published (version 0).
"""

from __future__ import annotations

import copy
import math
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from bench.learning.preferences import Preference
from bench.learning.prompts import PromptSets
from bench.learning.scoring import eval_requests, score_capability, score_compliance
from bench.learning.users import MODEL_NAME
from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet


def _poll(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_drain(loop, batch_turns: int, followups_sent: int, learner=None, timeout: float = 900.0) -> dict:
    """Block until every sent follow-up is captured and everything trainable is trained and published."""
    t0 = time.time()

    def check_learner():
        if learner is not None and not learner.is_alive():
            raise RuntimeError(f"the learner stopped during the benchmark: {learner.error!r}")

    def captured():
        check_learner()
        return ray.get(loop.ledger.stats.remote())["captured"] >= followups_sent

    _poll(captured, min(timeout, 120.0), f"{followups_sent} follow-ups to be captured")

    def idle_once() -> bool:
        """Nothing left to train, every step's weights published and, under the version gate, decided: the served
        version is final until more traffic comes. Turns the gate rejected count as trained-then-dropped."""
        check_learner()
        q, progress = loop.queue.stats(), ray.get(loop.control.get_progress.remote())
        if q["pending"] + q["leased"] + q["training"] > 0 or q["scored"] >= batch_turns:
            return False
        step = progress.get("step", 0)
        if q["trained"] + q["dropped"].get("rejected", 0) != step * batch_turns:
            return False
        if step == 0:
            return True
        versions = loop.registry.versions()
        return (progress.get("published_step", -1) >= step and not any(v["state"] == "candidate" for v in versions)
                and max((v["version"] for v in versions), default=0) >= progress.get("version", 0))

    _poll(lambda: idle_once() and (time.sleep(1.0) or idle_once()), timeout, "the learner to catch up")
    return {"drain_s": time.time() - t0}


def wait_until_serving(loop, client, replicas: int = 1, timeout: float = 300.0) -> str:
    """The fingerprint of the latest published version, once `replicas` probes in a row answer with it."""
    latest = loop.registry.latest_version()
    expected = PolicyVersion(BASE_ADAPTER, max(latest, 0)).fingerprint()

    def serving() -> bool:
        for _ in range(replicas):
            r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                               user="bench-probe", max_tokens=1, temperature=0)
            if r.system_fingerprint != expected:
                return False
        return True

    _poll(serving, timeout, f"the replicas to serve {expected}", interval=0.5)
    return expected


# One evaluation engine per (model, kind) for the whole process, reset to the base weights at each run: an engine
# per run leaked ~1 GB each (vLLM does not free in-process), and after 7 runs the machine ran out of memory.
_ENGINES: dict[tuple[str, str], object] = {}
# The base model's evaluation, per settings: every run's first evaluation is the same computation (fixed sampling
# seeds, base weights), so a process evaluates it once (engine path only; the HTTP path always asks the replicas).
_BASE_EVALS: dict[tuple, dict] = {}
# Per LoRA evaluation engine (by id): an all-zero copy of the adapter its runs train. A LoRA run's versions never
# touch the base weights, so loading it (lora_B = 0 adds nothing) takes the engine back to the base for the next run.
_ZERO_LORAS: dict[int, object] = {}


def _base_weights(model_dir: str):
    """The model folder's own weights as a version-0 full weight set."""
    from pathlib import Path

    from safetensors.torch import load_file

    tensors: dict = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return WeightSet(PolicyVersion(BASE_ADAPTER, 0), "full", tensors)


class Evaluator:
    def __init__(self, client, prompts: PromptSets, preferences: list[Preference], *, model_dir: str,
                 split: str = "dev", samples: int = 2, max_tokens: int = 48, temperature: float = 0.7,
                 top_p: float = 0.9, capability_max_tokens: int = 24, concurrency: int = 1, via: str = "engine",
                 engine_kind: str = "vllm", sampling_seed: int = 0, lora_rank: int | None = None):
        if via not in ("engine", "http"):
            raise ValueError(f"via must be 'engine' or 'http', not {via!r}")
        self.client, self.prompts, self.preferences, self.split = client, prompts, preferences, split
        self.samples, self.max_tokens, self.temperature, self.top_p = samples, max_tokens, temperature, top_p
        self.capability_max_tokens, self.concurrency = capability_max_tokens, max(1, concurrency)
        self.model_dir, self.via, self.sampling_seed = model_dir, via, sampling_seed
        self.engine_kind = engine_kind if via == "engine" else "hf"
        self.lora_rank = lora_rank  # the learner trains a LoRA adapter of this rank (None: full weights)
        self._engine = None

    def evaluate(self, loop, expected_fingerprint: str) -> dict:
        key = (self.model_dir, self.engine_kind, self.split, self.samples, self.max_tokens, self.temperature,
               self.top_p, self.capability_max_tokens, self.sampling_seed, id(self.prompts),
               tuple(p.name for p in self.preferences))
        base = self.via == "engine" and loop.registry.latest() is None
        if base and key in _BASE_EVALS:
            return {**copy.deepcopy(_BASE_EVALS[key]), "cached": True}
        out = self._evaluate(loop, expected_fingerprint)
        if base:
            _BASE_EVALS[key] = copy.deepcopy(out)
        return out

    def _evaluate(self, loop, expected_fingerprint: str) -> dict:
        t0 = time.time()
        out: dict = {"fingerprint": expected_fingerprint, "via": self.via, "split": self.split}
        if self.via == "engine":
            self._sync(loop, expected_fingerprint)
        requests = eval_requests(self.prompts, self.split, self.preferences, self.samples)
        if self.via == "engine":
            replies = self._generate([r[3] for r in requests], self.temperature, self.max_tokens,
                                     seed=self.sampling_seed)
        else:
            replies = self._map(lambda r: self._chat(r[3], self.temperature, self.max_tokens, 7919 * r[1] + 101 * r[2]
                                                     + (0 if r[0] == "open" else 50_000) + self.sampling_seed),
                                requests)
        out.update(score_compliance(requests, replies, self.preferences, self.prompts.yes_no_truth(self.split)))
        t1 = time.time()
        out["capability"] = self.capability()
        t2 = time.time()
        out["perplexity"], out["perplexity_version"] = self.perplexity(loop)
        fps = [r["fingerprint"] for r in replies] + out["capability"].pop("fingerprints")
        out["off_version_replies"] = sum(fp != expected_fingerprint for fp in fps)
        out["timings"] = {"compliance_s": t1 - t0, "capability_s": t2 - t1, "perplexity_s": time.time() - t2}
        return out

    def capability(self) -> dict:
        items = list(self.prompts.capability(self.split))
        if self.via == "engine":
            replies = self._generate([p.question for p in items], 0.0, self.capability_max_tokens, seed=0)
        else:
            replies = self._map(lambda p: self._chat(p.question, 0.0, self.capability_max_tokens, 0), items)
        return score_capability(items, replies)

    def perplexity(self, loop) -> tuple[float, int]:
        """Perplexity of the reference text under the published weights (base weights before the first version)."""
        from hsd_ray.core.engine_api import ScoreRequest

        engine = self._sync(loop)
        ids = engine.tokenizer(self.prompts.reference_text, add_special_tokens=False)["input_ids"]
        (scores,) = engine.score([ScoreRequest(ids[:1], ids[1:])])
        return math.exp(-float(scores.logp_T.mean())), engine.version.version

    # ---- helpers ----------------------------------------------------------------------------------------------------
    def _sync(self, loop, expected_fingerprint: str | None = None):
        """The in-process engine on the registry's latest published weights (built on first use)."""
        from hsd_ray.config import EngineConfig
        from hsd_ray.engines.factory import make_engine

        if self._engine is None:
            key = (str(self.model_dir), self.engine_kind, self.lora_rank)
            if key not in _ENGINES:  # vLLM reserves its LoRA slot (sized by the rank) when it starts
                _ENGINES[key] = make_engine(self.model_dir, EngineConfig(kind=self.engine_kind,
                                                                         max_lora_rank=self.lora_rank),
                                            enable_lora=self.lora_rank is not None)
            self._engine = _ENGINES[key]
        engine = self._engine
        latest = loop.registry.latest()
        if latest is None and engine.version.version != 0:  # a new run: back to the base weights
            # a LoRA run's versions never touch the base weights; an all-zero adapter adds exactly nothing
            engine.load_weights(_ZERO_LORAS.get(id(engine)) or _base_weights(self.model_dir))
        if latest is not None and latest.version.version != engine.version.version:
            weights = ray.get(latest.ref)
            if weights.kind == "lora" and id(engine) not in _ZERO_LORAS:
                _ZERO_LORAS[id(engine)] = weights.zeroed(PolicyVersion(BASE_ADAPTER, 0))
            engine.load_weights(weights)
        if expected_fingerprint is not None and engine.version.fingerprint() != expected_fingerprint:
            raise RuntimeError(f"evaluation engine is on {engine.version.fingerprint()}, replicas serve "
                               f"{expected_fingerprint}: a version was published during the evaluation")
        return engine

    def _generate(self, prompts: list[str], temperature: float, max_tokens: int, seed: int) -> list[dict]:
        """One batched generation on the evaluation engine; prompt i is sampled with seed + i (fixed across evals)."""
        from hsd_ray.core.prompts import render_prompt
        from hsd_ray.core.engine_api import SamplingParams

        engine = self._engine
        ids = [render_prompt(engine.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=self.top_p, seed=seed)
        fingerprint = engine.version.fingerprint()
        return [{"text": g.text, "finish_reason": "stop" if g.finished else "length", "fingerprint": fingerprint}
                for g in engine.generate(ids, params)]

    def _map(self, fn, items: list) -> list:
        if self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _chat(self, prompt: str, temperature: float, max_tokens: int, seed: int) -> dict:
        r = self.client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], user="bench-eval",
            max_tokens=max_tokens, temperature=temperature, top_p=self.top_p, seed=seed,
        )
        c = r.choices[0]
        return {"text": c.message.content or "", "finish_reason": c.finish_reason, "fingerprint": r.system_fingerprint}
