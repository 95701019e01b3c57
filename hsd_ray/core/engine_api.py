"""The engine interface and its records: what the core asks of an engine, and what it gets back.

Implementations live in hsd_ray/engines (`HFEngine`: transformers, `VLLMEngine`: vLLM prompt-logprob mode). They take
token ids in and give token ids / log-probs out; chat templating and hindsight construction happen in
hsd_ray.core.prompts / hsd_ray.core.hindsight so that both engines see byte-identical prompts.

`stream(prompt, params)` is the serving path: an async iterator of `GenerationDelta`s (the new tokens and text since
the last one) ending with the whole `Generation`. An engine with `continuous_batching = True` (vLLM's async engine,
engines/vllm_async.py) yields each delta as tokens are sampled and batches concurrent streams itself; the offline
engines generate the whole reply first and yield it as one delta (callers batch them with loop/batching.py).

Weights change by `load_weights(WeightSet)`: a full state dict or a LoRA adapter, tagged with its `PolicyVersion`.
An update either fully applies or raises and leaves the previous version serving.

Pure: no torch, no Ray; numpy arrays in the score records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

from hsd_ray.core.weights import BASE_ADAPTER, PolicyVersion, WeightSet


class EngineUnavailable(RuntimeError):
    """The engine could not be reached (a shared chat replica restarting, the service not deployed yet): no fault of
    the requests. A teacher hands such a batch back whole instead of blaming its turns one by one."""


TopLogprobs = list[tuple[int, float]]  # one generated position's k most likely (token id, raw log-prob), best first


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # reproducible sampling; prompt i of a batch is drawn with seed + i (both engines), so
    # repeated prompts in one batch are distinct samples
    adapter_id: str = BASE_ADAPTER  # whose weights sample: the shared policy or a resident per-user adapter (the
    # batcher groups requests by equal params, so one engine call never mixes adapters)
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token already in the reply
    frequency_penalty: float = 0.0  # OpenAI's: times the number of times the token is already in the reply
    top_logprobs: int = 0  # also return, per generated token, the k most likely tokens' raw log-probs

    def for_index(self, i: int) -> "SamplingParams":
        """The params prompt (or choice) i of a batch is drawn with: seed + i when seeded."""
        return self if self.seed is None else replace(self, seed=self.seed + i)


@dataclass
class Generation:
    """A generated reply. `token_ids` exclude the end-of-turn token; `finished` is True when the model stopped on its
    own (EOS or a stop string) and False when it hit max_tokens (OpenAI's finish_reason). `ended_on_eos` is True only
    for a real end of sequence (any of the model's EOS ids): what training may mark with an appended EOS — a reply
    cut at a stop string is finished for the client but did not end there for the model."""

    token_ids: list[int]
    text: str
    logprobs: list[float]  # raw-model log-prob of each generated id (temperature 1, before top-p)
    finished: bool
    prompt_tokens: int
    version: PolicyVersion
    ended_on_eos: bool = False
    top_logprobs: list[TopLogprobs] | None = None  # per generated id when SamplingParams.top_logprobs > 0

    @property
    def finish_reason(self) -> str:
        return "stop" if self.finished else "length"


@dataclass
class GenerationDelta:
    """What a streamed reply gained since the previous delta: sampled ids, their raw log-probs and the new text. The
    deltas' texts add up to the final `Generation`'s text; the Generation is authoritative for the ids (a stop string
    can trim ids that were already streamed)."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    version: PolicyVersion | None = None  # the version generating this reply (fixed for the whole reply)
    top_logprobs: list[TopLogprobs] | None = None  # per id, when asked for


@dataclass
class ScoreRequest:
    """Score `target_ids` as a continuation of `prompt_ids` (teacher forcing)."""

    prompt_ids: list[int]
    target_ids: list[int]


@dataclass
class TokenScores:
    """Per-target-token results of one ScoreRequest (T = len(target_ids))."""

    logp_T: np.ndarray  # float32 [T]: log p(target_i | prompt, target_<i)
    topk_ids_T_K: np.ndarray | None = None  # int64 [T, K]: the K most likely tokens at each position
    topk_logp_T_K: np.ndarray | None = None  # float32 [T, K]


@runtime_checkable
class Engine(Protocol):
    """Generation + scoring + versioned weights, over token ids."""

    continuous_batching: bool  # True: stream() admits requests while others generate (no external batcher needed)
    tokenizer: object  # a transformers tokenizer (for chat templates and decoding)

    @property
    def version(self) -> PolicyVersion: ...

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]: ...

    def stream(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[GenerationDelta | Generation]: ...

    def score(self, requests: list[ScoreRequest], top_k: int = 0) -> list[TokenScores]: ...

    def load_weights(self, weights: WeightSet) -> None: ...
