"""Transformers implementation of the Engine interface: generation, batched teacher-forced scoring, weight loading.

The reference engine: exact float32 scoring used to check vLLM against, the engine of the learner-side tools
(`hsd_ray.signal`, benchmarks) and a fallback for serving when vLLM is not installed. Scoring batches are cut by a
padded-token budget, longest first, so one long turn never multiplies the padding of many short ones.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from hsd_ray.core.batch import pack_sequences, reply_logits, unpad_rows
from hsd_ray.core.engine_api import Generation, PolicyVersion, SamplingParams, ScoreRequest, TokenScores
from hsd_ray.core.policy import base_weights, tied_aliases
from hsd_ray.core.prompts import reply_end_ids
from hsd_ray.core.weights import BASE_ADAPTER, WeightLoadError, WeightSet, validate_tensors
from hsd_ray.engines.base import VersionedWeights, check_tied, chunk_by_budget, trim_to_text
from hsd_ray.models import load_model_and_tokenizer


class HFEngine(VersionedWeights):
    """One transformers model behind a lock: requests never see a half-loaded weight set."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        score_token_budget: int = 8192,
        adapter_id: str = BASE_ADAPTER,
    ):
        self.model_dir = Path(model_dir)
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir, dtype, device)
        self._plain = self.model  # the transformers model (self.model becomes its peft wrapper once adapters load)
        self.device = torch.device(device)
        self.score_token_budget = score_token_budget
        self._version = PolicyVersion(adapter_id=adapter_id, version=0)
        self._lock = threading.RLock()
        self._lora_loaded = False

    # ---- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Greedy requests without stop strings run as left-padded batches (cut by the token budget): the gatekeeper's
        probe sets and a batch of greedy chats cost one generate call per batch instead of one per prompt. Sampled
        rows stay one at a time: row i is drawn with seed + i, which a shared batch cannot reproduce."""
        results: list[Generation | None] = [None] * len(prompts)
        with self._lock, self._answering_with(params.adapter_id) as version:
            if params.temperature <= 0 and not params.stop and len(prompts) > 1:
                lengths = [len(p) + params.max_tokens for p in prompts]
                for group in chunk_by_budget(lengths, self.score_token_budget):
                    batch = self._generate_greedy_batch([prompts[i] for i in group], params, version)
                    for i, gen in zip(group, batch):
                        results[i] = gen
            for i, p in enumerate(prompts):
                if results[i] is None:
                    results[i] = self._generate_one(p, params, version, i)
        return results  # type: ignore[return-value]

    @contextmanager
    def _answering_with(self, adapter_id: str):
        """The weights a generate call runs on, and their version: a resident per-user adapter, or the shared policy
        (with every per-user adapter switched off). A user adapter evicted since the request was routed falls back to
        the shared policy, and the reply's version says so."""
        if not self.user_adapters:
            yield self._version
        elif adapter_id in self.user_adapters:
            self.model.set_adapter(adapter_id)
            yield self.user_adapters[adapter_id]
        else:
            with self.model.disable_adapter():
                yield self._version

    def _generate_greedy_batch(self, prompts: list[list[int]], params: SamplingParams,
                               version: PolicyVersion) -> list[Generation]:
        if len(prompts) == 1:
            return [self._generate_one(prompts[0], params, version)]
        width, pad = max(len(p) for p in prompts), self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.eos_ids[0]
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        out = self.model.generate(input_ids, attention_mask=mask, max_new_tokens=params.max_tokens, do_sample=False,
                                  eos_token_id=self.eos_ids, pad_token_id=pad, output_logits=True,
                                  return_dict_in_generate=True, logits_processor=_penalties(params, width))
        logp_T_B_V = torch.log_softmax(torch.stack(out.logits, 0).float(), -1)
        eos, gens = set(self.eos_ids), []
        for b, prompt in enumerate(prompts):
            new = out.sequences[b, width:].tolist()
            end = next((t + 1 for t, tok in enumerate(new) if tok in eos), len(new))  # after EOS: padding
            new = new[:end]
            logprobs = [float(logp_T_B_V[t, b, tok]) for t, tok in enumerate(new)]
            top = _top_logprobs(logp_T_B_V[: len(new), b], params.top_logprobs)
            gens.append(self._generation(prompt, new, logprobs, params, version, top))
        return gens

    def _generate_one(self, prompt: list[int], params: SamplingParams, version: PolicyVersion,
                      row: int = 0) -> Generation:
        eos = self.eos_ids
        input_ids = torch.tensor([prompt], device=self.device)
        sample = params.temperature > 0
        gen_kwargs = dict(do_sample=sample, temperature=params.temperature, top_p=params.top_p) if sample else {}
        if params.seed is not None:
            torch.manual_seed(params.seed + row)  # as VLLMEngine: prompt i of a batch is drawn with seed + i
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.max_tokens,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            stop_strings=params.stop or None,
            tokenizer=self.tokenizer if params.stop else None,
            logits_processor=_penalties(params, len(prompt)),
            **gen_kwargs,
        )
        new = out.sequences[0, len(prompt) :].tolist()
        logits = torch.stack(out.logits, 0)[:, 0].float()  # raw logits (before penalties / temperature / top-p)
        logp_T_V = torch.log_softmax(logits, -1)
        logprobs = logp_T_V.gather(1, torch.tensor(new, device=logits.device)[:, None])[:, 0]
        top = _top_logprobs(logp_T_V, params.top_logprobs)
        return self._generation(prompt, new, logprobs.tolist(), params, version, top)

    def _generation(self, prompt: list[int], new: list[int], logprobs: list[float], params: SamplingParams,
                    version: PolicyVersion, top: list | None = None):
        """The Generation of generated ids `new` (a trailing EOS dropped, the text cut at the first stop string);
        `top`: the top log-probs of each id, cut to the same length."""
        finished = ended_on_eos = bool(new) and new[-1] in self.eos_ids
        if finished:
            new, logprobs = new[:-1], logprobs[:-1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in params.stop:  # OpenAI semantics: the stop string is not part of the reply
            cut = text.find(stop)
            if cut >= 0:
                new, logprobs, text = trim_to_text(self.tokenizer, new, logprobs, text[:cut])
                finished, ended_on_eos = True, False
        if not finished and len(new) < params.max_tokens:
            finished = True  # stopped by a stop string inside generate()
        return Generation(new, text, logprobs, finished, len(prompt), version, ended_on_eos,
                          None if top is None else top[: len(new)])

    @property
    def eos_ids(self) -> list[int]:
        """Every id that ends a sequence for this model (core.prompts.reply_end_ids)."""
        return reply_end_ids(self.model, self.tokenizer)

    # ---- scoring --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, requests: list[ScoreRequest], top_k: int = 0) -> list[TokenScores]:
        results: list[TokenScores | None] = [None] * len(requests)
        lengths = [len(r.prompt_ids) + len(r.target_ids) for r in requests]
        with self._lock:
            for group in chunk_by_budget(lengths, self.score_token_budget):
                reqs = [requests[i] for i in group]
                for i, res in zip(group, self._score_batch(reqs, top_k)):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _score_batch(self, requests: list[ScoreRequest], top_k: int) -> list[TokenScores]:
        pad = self.tokenizer.pad_token_id
        packed = pack_sequences([r.prompt_ids for r in requests], [r.target_ids for r in requests], pad)
        packed = packed.to(self.device)
        logp_B_T_V = torch.log_softmax(reply_logits(self.model, packed).float(), -1)
        logp_B_T = logp_B_T_V.gather(2, packed.target_ids_B_T[..., None])[..., 0]
        rows = unpad_rows(logp_B_T, packed.target_mask_B_T)
        if top_k <= 0:
            return [TokenScores(r.astype(np.float32)) for r in rows]
        top_logp, top_ids = logp_B_T_V.topk(top_k, dim=-1)
        ids_rows = unpad_rows(top_ids, packed.target_mask_B_T)
        lp_rows = unpad_rows(top_logp, packed.target_mask_B_T)
        return [
            TokenScores(r.astype(np.float32), i.astype(np.int64), lp.astype(np.float32))
            for r, i, lp in zip(rows, ids_rows, lp_rows)
        ]

    # ---- weights (load_weights: VersionedWeights) -------------------------------------------------------------
    @torch.no_grad()
    def _load_full(self, tensors: dict) -> None:
        """New shared weights; resident adapters (per-user ones, personalization.mode=both, or the gatekeeper's LoRA
        slot) stay and now sit on them."""
        params = base_weights(self._plain)  # by transformers names, also under peft's wrapped layers
        # a tied lm_head may be sent (it must then equal the embedding) or omitted (export_weights omits it)
        aliases = tied_aliases(self._plain)
        required = {k: v for k, v in params.items() if k not in aliases}
        validate_tensors({k: v for k, v in tensors.items() if k not in aliases}, required, require_all=True)
        validate_tensors({k: v for k, v in tensors.items() if k in aliases}, params, require_all=False)
        check_tied(tensors, aliases)
        for name, t in tensors.items():  # all checked first: nothing is half-applied
            if name not in aliases:
                params[name].copy_(t)

    @torch.no_grad()
    def _load_lora(self, weights: WeightSet) -> None:
        from peft import get_peft_model, set_peft_model_state_dict

        if self.user_adapters:
            raise WeightLoadError("this engine serves per-user adapters; a shared LoRA adapter beside them is not "
                                  "built")
        cfg = _peft_config(weights)
        if not self._lora_loaded:
            self.model = get_peft_model(self.model, cfg)
            self.model.eval()
            self._lora_loaded = True
        validate_tensors(weights.tensors, _adapter_tensors_expected(self.model, "default"), require_all=True)
        set_peft_model_state_dict(self.model, weights.tensors)

    @torch.no_grad()
    def _load_user_adapter(self, weights: WeightSet) -> None:
        """A user's adapter beside the shared policy (a peft named adapter), validated before it is touched: a new
        one that fails validation is removed again, a resident one keeps its previous tensors."""
        from peft import get_peft_model, set_peft_model_state_dict

        if self._lora_loaded:
            raise WeightLoadError("this engine serves a shared LoRA adapter; per-user adapters beside it are not built")
        name = weights.version.adapter_id
        cfg = _peft_config(weights)
        new = name not in getattr(self.model, "peft_config", {})
        if new and not self.user_adapters:
            self.model = get_peft_model(self._plain, cfg, adapter_name=name)
            self.model.eval()
        elif new:
            self.model.add_adapter(name, cfg)
        try:
            validate_tensors(weights.tensors, _adapter_tensors_expected(self.model, name), require_all=True)
        except WeightLoadError:
            if new:
                self._unload_user_adapter(name)
            raise
        set_peft_model_state_dict(self.model, weights.tensors, adapter_name=name)

    def _unload_user_adapter(self, adapter_id: str) -> None:
        if adapter_id not in getattr(self.model, "peft_config", {}):
            return
        if len(self.model.peft_config) == 1:  # the last adapter: back to the plain model
            self.model = self._plain = self.model.unload()
            return
        if self.model.active_adapter == adapter_id:
            self.model.set_adapter(next(a for a in self.model.peft_config if a != adapter_id))
        self.model.delete_adapter(adapter_id)


_LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type")


class _OpenAIPenalties:
    """OpenAI's presence and frequency penalties as a transformers logits processor: the logit of a token already
    generated `c` times drops by `frequency * c + presence * (c > 0)`. Generated tokens only, not the prompt, as vLLM
    counts them; applied before temperature and top-p (transformers runs a caller's processors before its warpers)."""

    def __init__(self, start: int, presence: float, frequency: float):
        self.start, self.presence, self.frequency = start, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.start :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def _penalties(params: SamplingParams, start: int):
    """The logits processors of a generate call: the penalties when any is set (`start`: where generated ids begin)."""
    from transformers import LogitsProcessorList

    if not (params.presence_penalty or params.frequency_penalty):
        return None
    return LogitsProcessorList([_OpenAIPenalties(start, params.presence_penalty, params.frequency_penalty)])


def _top_logprobs(logp_T_V: torch.Tensor, k: int) -> list | None:
    """The k most likely (id, log-prob) of each position of raw log-probs [T, V], best first; None when k is 0."""
    if k <= 0:
        return None
    values, ids = logp_T_V.topk(k, dim=-1)
    return [list(zip(row_ids, row_values)) for row_ids, row_values in zip(ids.tolist(), values.tolist())]


def _peft_config(weights: WeightSet):
    """peft's LoraConfig of a LoRA weight set (WeightLoadError when it carries none)."""
    from peft import LoraConfig

    if weights.lora_config is None:
        raise WeightLoadError("a LoRA weight set needs its lora_config")
    return LoraConfig(**{k: v for k, v in weights.lora_config.items() if k in _LORA_KEYS})


def _adapter_tensors_expected(model, adapter_id: str) -> dict:
    """peft state-dict names of `adapter_id`'s tensors as a WeightSet names them (without the adapter name)."""
    marker = f".{adapter_id}."
    return {k.replace(marker, "."): v for k, v in model.state_dict().items() if "lora_" in k and marker in k}
