"""The gatekeeper: the actor that evaluates every candidate version before any replica or teacher may load it.

With `version_gate.enabled` the learner publishes candidates; the `VersionRegistry` (broadcast.py) hides them from
the followers. The gatekeeper polls `registry.candidate()`, loads the candidate into its own engine (the same engine
kind and settings as serving), measures it on the probe set (hsd_ray/data/probes.json) and calls
`registry.accept(v, numbers)` — followers switch on their next poll — or `registry.reject(v, reason, numbers)`: the
version is never served, the log line says "rejected" with its numbers, `hsd_versions_rejected_total{reason}` counts
it (once, under its first reason), and the learner rolls back (rollback.py).

personalization.mode=both: a user adapter's candidate is judged on the shared policy its user is served (the
latest accepted shared version; the engine loads it first when it holds another), and a shared candidate with the
LoRA slot emptied (an all-zero adapter). The user references and base replies above are of one shared version:
they are measured again once it changes. The capability numbers stay the base model's: never worse than the base.

One engine, no second copy of the model: at start it holds the base weights and caches what the base says (greedy
probe replies with their top-k, reference perplexity, which facts and checkable prompts it answers right); the last
accepted version's replies are cached when it is accepted. What a candidate costs, pass by pass, and how each
threshold default (config `version_gate`) was chosen: docs/version_gate.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

from hsd_ray import metrics
from hsd_ray.config import EngineConfig, VersionGateConfig
from hsd_ray.core.abuse import abusive_count
from hsd_ray.core.engine_api import SamplingParams, ScoreRequest
from hsd_ray.core.prompts import encode_text, render_prompt
from hsd_ray.core.version_gate import (ALL_CHECKS, CAPABILITY_CHECKS, GateLimits, GateNumbers, gate_reasons,
                                       loop_rate, lost_answers, mean_kl, one_answer_share, perplexity, probe_stats,
                                       relevance_change, relevance_requests, topk_arrays, truncate_words)
from hsd_ray.core.weights import BASE_ADAPTER, WeightSet, is_user_adapter
from hsd_ray.data import load_probes
from hsd_ray.loop.gate_answers import AnswerProbes, greedy

GATEKEEPER_ACTOR_NAME = "hsd-gatekeeper"
MAX_USER_REFERENCES = 256  # users' accepted references kept; an older one is measured again when next needed
MAX_BASE_REPLIES = 4096  # the base model's greedy replies to users' prompts kept (per prompt)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatekeeperSettings:
    """The config sections the gatekeeper reads, resolved once by the job (config at the edges)."""

    model_dir: str
    engine: EngineConfig
    gate: VersionGateConfig
    enable_lora: bool
    adapter_id: str = BASE_ADAPTER
    user_checks: tuple[str, ...] = CAPABILITY_CHECKS  # what a per-user adapter's candidate is held to
    temperature: float = 0.7  # what serving samples with (serve.temperature, serve.top_p): the sampled checks' draws
    top_p: float = 0.9


@dataclass
class _Reference:
    """A version's greedy probe replies (as score requests), their top-k under that version, and their mean length."""

    version: int
    targets: list[ScoreRequest]
    topk: list[tuple]  # (ids_T_K, logp_T_K) per target
    length: float
    loops: float  # share of its greedy probe replies that loop (version_gate.is_degenerate)
    texts: list[str]  # the replies themselves, one per probe prompt (the base's are the relevance check's yardstick)


class Gatekeeper:
    """The gatekeeper actor's class (`ray.remote(Gatekeeper)`, named GATEKEEPER_ACTOR_NAME, started by loop/job.py)."""

    def __init__(self, settings: GatekeeperSettings, registry):
        from hsd_ray.engines.factory import make_engine

        self.settings, self.registry, g = settings, registry, settings.gate
        self.limits = GateLimits(**{f.name: getattr(g, f.name) for f in fields(GateLimits)})  # the config's names
        self.engine = make_engine(settings.model_dir, settings.engine, enable_lora=settings.enable_lora,
                                  adapter_id=settings.adapter_id)
        self._prepare_probes(load_probes(g.probes_path))
        self.base = self._reference(0)  # the engine holds the base weights until the first candidate
        # the facts and checkable prompts the base gets right: what can be lost; with the top 2 per token, for margins
        self.base_right, base_replies = self.asked.ask(top_k=2)
        # the facts the base decides firmly: only these count as lost (a knife-edge one flips with any step)
        margins = self.asked.fact_margins(base_replies[: self.asked.n_facts])
        self.counted_facts = [b and m >= g.min_fact_margin for b, m in zip(self.base_right, margins)]
        self.facts_base = sum(self.counted_facts)
        self.fragile_facts = {self.asked.questions[i]: round(m, 3) for i, m in enumerate(margins)
                              if self.base_right[i] and not self.counted_facts[i]}
        self.ppl_base, self.accuracy_base = self._perplexity(), self.asked.accuracy(self.base_right)
        # (verdicts given, the commonest one's share); asked only where the check can hold anything back (< 1)
        self.ask_verdicts = bool(self.asked.yes_no) and g.max_one_answer_share < 1
        self.verdicts_base = one_answer_share(self.asked.verdicts()) if self.ask_verdicts else (0, 0.0)
        self.sampled_base = self._sampled()  # the base's sampled probe replies: the sampled checks' yardstick
        self.sampled_loops_base = loop_rate(self.sampled_base)
        self.sampled_abusive_base = abusive_count(self.sampled_base)
        self.abusive_base = abusive_count(self.base.texts + [r.text for r in base_replies])
        self.accepted = self.base
        self.user_accepted: OrderedDict[str, _Reference] = OrderedDict()  # per-user adapter -> its accepted reference
        self.base_replies: OrderedDict[tuple, str] = OrderedDict()  # a user's prompt (ids) -> the base's greedy reply
        self.traffic_base: OrderedDict[tuple, str] = OrderedDict()  # the same for a shared candidate's traffic prompts
        self.base_weights: WeightSet | None = None  # the base model's full weights, read once when needed again
        self.engine_shared: int | None = 0  # the shared version whose weights the engine holds (None: a candidate's)
        self.zero_lora: WeightSet | None = None  # set once a user adapter used the LoRA slot: what empties it
        self.slot_holds_user = False  # the LoRA slot holds a user's adapter, not zeros (shared weights leave it)
        self.decisions: list[dict] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatekeeper", daemon=True)
        if registry is not None:  # None: measure weights by hand (evaluate), as bench and tests do
            self._resume_from_registry()
            self._thread.start()
        log.info("gatekeeper ready: base ppl %.3g, accuracy %.3f, facts bound on %d of the %d it knows (fragile: %s), "
                 "abusive replies %d, sampled probe replies that loop %.3f of %d", self.ppl_base, self.accuracy_base,
                 self.facts_base, sum(self.base_right[: self.asked.n_facts]), self.fragile_facts, self.abusive_base,
                 self.sampled_loops_base, len(self.sampled_base))

    # ---- actor methods ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"accepted_version": self.accepted.version, "ppl_base": self.ppl_base,
                "accuracy_base": self.accuracy_base, "fragile_facts": self.fragile_facts,
                "decisions": list(self.decisions), "alive": self._thread.is_alive(), "last_error": self.last_error}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def step(self) -> bool:
        """Evaluate the candidate that has waited longest (the shared policy's or a user's adapter), if any, and
        decide. Returns False when there was none."""
        import ray

        published = ray.get(self.registry.next_candidate.remote())
        if published is None:
            return False
        adapter, v = published.version.adapter_id, published.version.version
        user = is_user_adapter(adapter)
        try:
            self._serve_shared() if user else self._empty_lora_slot()
            accepted = self._user_reference(adapter) if user else self.accepted
            weights = ray.get(published.ref)
            prompts, questions = self._user_prompts(published)
            t0 = time.perf_counter()
            base_texts, sampled = self._yardstick(user, prompts, weights)
            base_s = time.perf_counter() - t0
            self._load(weights)
        except Exception as e:  # noqa: BLE001 - unfetchable or unloadable weights are never served
            self._decide(v, ["invalid"], None, adapter, detail=f"{type(e).__name__}: {e}")
            return True
        checks = self.settings.user_checks if user else ALL_CHECKS
        numbers, replies = self.evaluate(accepted, prompts, base_texts, checks, questions, sampled)
        numbers.seconds += base_s
        reasons = gate_reasons(numbers, self.limits, checks)
        if not reasons:  # the new reference before followers can move past it
            self._remember(adapter, self._reference(v, replies))
        if not user:
            self.engine_shared = None if reasons else v
        self._decide(v, reasons, numbers, adapter)
        return True

    def evaluate(self, accepted: _Reference | None = None, user_prompts: list = (), base_texts: list[str] = (),
                 checks: tuple[str, ...] = ALL_CHECKS, questions: list[str] = (),
                 sampled: bool = False) -> tuple[GateNumbers, list]:
        """The loaded weights' numbers against the cached base and `accepted` references (default: the shared
        policy's last accepted version), and its probe replies. With `user_prompts` (a user adapter's, or a shared
        candidate's traffic, with `questions`: each one's last user message), also its loops and relevance on them
        against `base_texts`: greedy, or `sampled` (`base_texts` were, with the same seeds) by the sampled checks
        instead of the probes. Each check only where `checks` hold it (relevance is a sixth of a candidate's time)."""
        t0 = time.perf_counter()
        k, accepted = self.settings.gate.top_k, accepted or self.accepted
        # a scoring pass each, only where the candidate is judged on it (not a per-user adapter's: CAPABILITY_CHECKS)
        kl_accepted = self._kl(accepted) if "kl_accepted" in checks else None
        kl_base = None
        if "kl_base" in checks:  # against the base itself: the pass above already measured it
            kl_base = kl_accepted if accepted is self.base and kl_accepted is not None else self._kl(self.base)
        replies = greedy(self.engine, self.probe_prompts, self.settings.gate.probe_max_tokens, top_k=k)
        length, loops = probe_stats(replies)
        right, answered = self.asked.ask()
        right, late = self.asked.read_late(right, answered, self.counted_facts)
        probe_texts, answer_texts = [r.text for r in replies], [r.text for r in answered]
        numbers = GateNumbers(
            kl_accepted=kl_accepted, kl_base=kl_base,
            ppl=self._perplexity(), ppl_base=self.ppl_base,
            accuracy=self.asked.accuracy(right), accuracy_base=self.accuracy_base,
            facts_lost=sum(c and not r for c, r in zip(self.counted_facts, right)),
            facts_base=self.facts_base, facts_late=late,
            length=length, length_accepted=accepted.length,
            loops=loops, loops_base=self.base.loops,
            abusive=abusive_count(probe_texts + answer_texts), abusive_base=self.abusive_base,
            relevance=self._relevance(probe_texts) if "relevance" in checks else None,
            lost=lost_answers(self.asked.questions, self.base_right, right, answer_texts),
        )
        if "one_answer" in checks and self.ask_verdicts:
            numbers.yes_no = len(self.asked.yes_no)
            numbers.verdicts_base, numbers.one_answer_base = self.verdicts_base
            numbers.verdicts, numbers.one_answer = one_answer_share(self.asked.verdicts())
        sampled_traffic = sampled and bool(user_prompts) and bool(questions)
        if "sampled_loops" in checks or "sampled_relevance" in checks:
            self._read_sampled(numbers, *((user_prompts, questions, base_texts) if sampled_traffic else ()))
        if user_prompts and not sampled_traffic:
            texts = [r.text for r in greedy(self.engine, list(user_prompts), self.settings.gate.probe_max_tokens)]
            numbers.user_prompts, numbers.user_loops, numbers.user_loops_base = (
                len(texts), loop_rate(texts), loop_rate(list(base_texts)))
            if questions and "user_relevance" in checks:
                numbers.user_relevance = self._relevance(texts, list(base_texts), list(questions))
            numbers.abusive, numbers.abusive_base = (numbers.abusive + abusive_count(texts),
                                                     numbers.abusive_base + abusive_count(base_texts))
        numbers.seconds = time.perf_counter() - t0
        return numbers, replies

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _decide(self, version: int, reasons: list[str], numbers: GateNumbers | None, adapter: str,
                detail: str = "") -> None:
        import ray

        as_dict = numbers.to_dict() if numbers is not None else None
        text = numbers.summary() if numbers is not None else detail
        name = f"v{version}" if adapter == BASE_ADAPTER else f"{adapter} v{version}"
        if reasons:
            ray.get(self.registry.reject.remote(version, ",".join(reasons), as_dict, adapter))
            metrics.inc("hsd_versions_rejected_total", reason=reasons[0])
            log.warning("gatekeeper: %s rejected (%s): %s", name, ",".join(reasons), text)
        else:
            ray.get(self.registry.accept.remote(version, as_dict, adapter))
            log.info("gatekeeper: %s accepted: %s", name, text)
        self.decisions = [*self.decisions[-999:], {"adapter": adapter, "version": version, "accepted": not reasons,
                                                   "reasons": reasons, "numbers": as_dict}]

    def _load(self, weights) -> None:
        """Load a candidate. A user's adapter is loaded as this engine's one LoRA adapter (relabelled, inside this
        actor only): per-user adapters train on the served shared policy, which this engine holds (_serve_shared), so
        shared + that LoRA is exactly what the user is served."""
        if is_user_adapter(weights.version.adapter_id):
            self._zero_like(weights)  # what empties the slot again
            self.slot_holds_user = True  # before the load: a load that fails half-way leaves the slot unknown
            weights = replace(weights, version=replace(weights.version, adapter_id=self.settings.adapter_id))
        self.engine.load_weights(weights)

    def _zero_like(self, weights: WeightSet) -> WeightSet:
        """An all-zero copy of a user adapter (every user adapter has the same shape), relabelled for the LoRA slot:
        lora_B = 0 adds exactly nothing, so the engine answers as the shared policy under it."""
        if self.zero_lora is None:
            self.zero_lora = weights.zeroed(replace(weights.version, adapter_id=self.settings.adapter_id, version=0))
        return self.zero_lora

    def _empty_lora_slot(self) -> None:
        """Before a shared candidate (mode both) or the shared policy's replies: no user's adapter may stay in the
        slot. Loaded only when one is there (a slot never used, or emptied since, answers as the shared policy)."""
        if self.slot_holds_user:
            self.engine.load_weights(self.zero_lora)
            self.slot_holds_user = False

    def _serve_shared(self) -> None:
        """Before a user's candidate: the engine holds the shared version its user is served (mode both moves it;
        per_user never does). What was measured on another shared version is measured again when next needed."""
        import ray

        published = ray.get(self.registry.latest.remote(self.settings.adapter_id))
        served = published.version.version if published is not None else 0
        if served == self.engine_shared:
            return
        # without one, the base itself (after a rejected first candidate)
        self.engine.load_weights(ray.get(published.ref) if published is not None else self._base_full_weights())
        self.engine_shared = served
        self.base_replies.clear()
        self.user_accepted.clear()
        log.info("gatekeeper: user adapters are judged on the shared policy v%d", served)

    def _user_reference(self, adapter: str) -> _Reference:
        """The user's last accepted version's reference: cached, else measured from the registry's copy (loaded for
        that), else the base (the adapter has no accepted version yet)."""
        import ray

        if adapter in self.user_accepted:
            self.user_accepted.move_to_end(adapter)
            return self.user_accepted[adapter]
        published = ray.get(self.registry.latest.remote(adapter))
        if published is None:
            return self.base
        self._load(ray.get(published.ref))
        return self._remember(adapter, self._reference(published.version.version))

    def base_replies_to(self, prompts: list[list[int]], cache: OrderedDict | None = None, prepare=None) -> list[str]:
        """The shared policy's greedy replies to `prompts` (the base model's, but in mode both): cached, else
        generated with the LoRA slot emptied (no second engine); with `cache` and `prepare`, another model's."""
        cache = self.base_replies if cache is None else cache
        missing = list({tuple(p): p for p in prompts if tuple(p) not in cache}.values())
        if missing:
            (prepare or self._empty_lora_slot)()
            for p, r in zip(missing, greedy(self.engine, missing, self.settings.gate.probe_max_tokens)):
                cache[tuple(p)] = r.text
        for p in prompts:
            cache.move_to_end(tuple(p))
        texts = [cache[tuple(p)] for p in prompts]
        while len(cache) > MAX_BASE_REPLIES:
            cache.popitem(last=False)
        return texts

    def _yardstick(self, user: bool, prompts: list[list[int]], weights: WeightSet) -> tuple[list[str], bool]:
        """What replies to the prompts that came with a candidate are judged against, and whether they were sampled:
        for a user's adapter the shared policy's; for a shared candidate's traffic the base model's, sampled with the
        seeds the candidate will draw with where the sampled checks are on (not cached: the seeds go by position),
        else greedy."""
        if user:
            return self.base_replies_to(prompts), False
        if prompts and self.settings.gate.sampled_per_probe:
            self._load_base(weights)
            return self._sampled(prompts), True
        return self.base_replies_to(prompts, self.traffic_base, lambda: self._load_base(weights)), False

    def _load_base(self, like: WeightSet) -> None:
        """The base model into the engine, to answer traffic prompts not seen before (the candidate `like` is loaded
        after): of a LoRA candidate an all-zero adapter, of full weights the model folder's (read once, kept)."""
        self.engine.load_weights(like.zeroed(replace(like.version, version=0)) if like.kind == "lora"
                                 else self._base_full_weights())
        self.engine_shared = 0  # a zero adapter answers exactly as the base too

    def _base_full_weights(self) -> WeightSet:
        from hsd_ray.core.policy import export_weights
        from hsd_ray.models import load_model_and_tokenizer

        if self.base_weights is None:
            self.base_weights = export_weights(load_model_and_tokenizer(self.settings.model_dir)[0], 0, 0)
        return self.base_weights

    def _user_prompts(self, published) -> tuple[list[list[int]], list[str]]:
        """The latest prompts that came with a candidate (its user's, or its traffic), rendered, and each one's last
        user message; none without them (user_probes or traffic_probes 0, or their owner, the learner, died)."""
        import ray

        if published.probes is None:
            return [], []
        try:
            conversations = ray.get(published.probes)
        except Exception as e:  # noqa: BLE001 - judged on the probe set alone, as without user probes
            log.warning("gatekeeper: the prompts of %s v%d are gone (%s): probe set only",
                        published.version.adapter_id, published.version.version, e)
            return [], []
        room = self.settings.engine.max_model_len - self.settings.gate.probe_max_tokens  # left-truncated to fit
        return ([render_prompt(self.engine.tokenizer, messages, max_tokens=room) for messages in conversations],
                [next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
                 for messages in conversations])

    def _remember(self, adapter: str, reference: _Reference) -> _Reference:
        if not is_user_adapter(adapter):
            self.accepted = reference
            return reference
        self.user_accepted[adapter] = reference
        self.user_accepted.move_to_end(adapter)
        while len(self.user_accepted) > MAX_USER_REFERENCES:
            self.user_accepted.popitem(last=False)
        return reference

    def _prepare_probes(self, probes: dict) -> None:
        tok = self.engine.tokenizer
        self.probe_texts = list(probes["probes"])
        self.probe_prompts = [render_prompt(tok, [{"role": "user", "content": p}]) for p in self.probe_texts]
        g = self.settings.gate
        self.asked = AnswerProbes(self.engine, probes, g.check_max_tokens, g.facts_max_tokens)  # what has an answer
        ids = encode_text(tok, probes["reference_text"], split_special=False)
        self.reference_request = ScoreRequest(prompt_ids=ids[:1], target_ids=ids[1:])

    def _reference(self, version: int, replies: list | None = None) -> _Reference:
        """The loaded weights' greedy probe replies (or `replies`, already generated with their top log-probs) and
        their top-k, from the generation itself (a second scoring pass was a sixth of an accepted candidate's time)."""
        k = self.settings.gate.top_k
        if replies is None:
            replies = greedy(self.engine, self.probe_prompts, self.settings.gate.probe_max_tokens, top_k=k)
        kept = [(p, r) for p, r in zip(self.probe_prompts, replies) if r.token_ids]
        return _Reference(version, [ScoreRequest(p, list(r.token_ids)) for p, r in kept],
                          [topk_arrays(r.top_logprobs, k) for _, r in kept], *probe_stats(replies),
                          [r.text for r in replies])

    def _sampled(self, prompts: list | None = None) -> list[str]:
        """The loaded weights' replies to each probe prompt (or each of `prompts`), `sampled_per_probe` times, at the
        serving temperature, with fixed seeds (prompt i of the batch draws with seed i): a candidate that answers
        like the base draws the base's replies, not a fresh sample."""
        g = self.settings.gate
        if not g.sampled_per_probe:
            return []
        prompts = [p for p in (prompts or self.probe_prompts) for _ in range(g.sampled_per_probe)]
        params = SamplingParams(max_tokens=g.probe_max_tokens, temperature=self.settings.temperature,
                                top_p=self.settings.top_p, seed=0)
        return [r.text for r in self.engine.generate(prompts, params)]

    def _read_sampled(self, numbers: GateNumbers, prompts: list | None = None, questions: list[str] = (),
                      base: list[str] | None = None) -> None:
        """The sampled checks' numbers into `numbers`: loops and relevance of the candidate's sampled probe replies
        (or to a shared candidate's traffic `prompts` with their `questions`) against the base's (`base`, drawn with
        the same seeds), and their abuse and the base's added to the greedy counts (only where sampled replies are
        read: a per-user adapter is not measured against the base's)."""
        texts, k = self._sampled(prompts), self.settings.gate.sampled_per_probe
        if not texts:
            return
        questions = [q for q in (questions or self.probe_texts) for _ in range(k)]
        base = self.sampled_base if base is None else base
        numbers.sampled, numbers.sampled_loops = len(texts), loop_rate(texts)
        numbers.sampled_loops_base = loop_rate(base) if prompts else self.sampled_loops_base
        numbers.sampled_relevance = self._relevance(texts, base, questions)
        numbers.abusive, numbers.abusive_base = (numbers.abusive + abusive_count(texts), numbers.abusive_base
                                                 + (abusive_count(base) if prompts else self.sampled_abusive_base))

    def _relevance(self, texts: list[str], yardstick: list[str] | None = None,
                   questions: list[str] | None = None) -> float:
        """`relevance_change` of the replies `texts` to `questions` (default: the probes) against the `yardstick`
        replies cut to as many words (default: the base's greedy probe replies), read by the loaded weights (on the
        dev split within 0.07 nats of the base model's reading: docs/version_gate.md)."""
        yardstick, questions = yardstick or self.base.texts, questions or self.probe_texts
        cut = [truncate_words(b, len(t.split())) for t, b in zip(texts, yardstick)]
        own, base = list(zip(texts, questions)), list(zip(cut, questions))
        logp = [float(s.logp_T.sum()) for s in self.engine.score(relevance_requests(self.engine.tokenizer, own + base))]
        return relevance_change(logp[: len(own)], logp[len(own):])

    def _kl(self, reference: _Reference) -> float:
        """Mean per-token KL(loaded weights ‖ `reference`'s version) on that version's greedy probe replies."""
        scored = self.engine.score(reference.targets, top_k=self.settings.gate.top_k)
        return mean_kl([(s.topk_ids_T_K, s.topk_logp_T_K) for s in scored], reference.topk)

    def _perplexity(self) -> float:
        return perplexity([self.engine.score([self.reference_request])[0].logp_T])

    def _resume_from_registry(self) -> None:
        """A restarted gatekeeper (or one started beside a registry that already serves a version) takes the
        served version as its accepted reference."""
        import ray

        published = ray.get(self.registry.latest.remote(self.settings.adapter_id))
        if published is None:
            return
        try:
            self.engine.load_weights(ray.get(published.ref))
        except Exception as e:  # noqa: BLE001 - e.g. its owner died: judge against the base until the next accept
            log.warning("gatekeeper: cannot load served v%d (%s); the base is the reference",
                        published.version.version, e)
            return
        self.accepted = self._reference(published.version.version)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    self._stop.wait(self.settings.gate.poll_seconds)
            except Exception as e:  # noqa: BLE001 - keep the gate alive; the candidate stays undecided, retried
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("gatekeeper: evaluation failed")
                self._stop.wait(1.0)


def start_gatekeeper(cfg, registry):
    """The gatekeeper actor for `cfg` (a `Config`), following `registry`; None when the gate is off."""
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.models import resolve_model

    g = cfg.version_gate
    if not g.enabled:
        return None
    settings = GatekeeperSettings(str(resolve_model(cfg.model)), cfg.engine, g,
                                  cfg.learner.lora.enabled or cfg.gates_user_adapters,
                                  user_checks=ALL_CHECKS if g.user_adapters == "all" else CAPABILITY_CHECKS,
                                  temperature=cfg.serve.temperature, top_p=cfg.serve.top_p)
    return (
        ray.remote(Gatekeeper)
        .options(name=GATEKEEPER_ACTOR_NAME, namespace=NAMESPACE, num_cpus=g.cpus, num_gpus=g.gpus,
                 max_restarts=-1, max_concurrency=4)  # a restarted gatekeeper resumes from the registry
        .remote(settings, registry)
    )
