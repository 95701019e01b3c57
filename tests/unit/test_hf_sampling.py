"""The transformers engine's OpenAI sampling options: presence / frequency penalties (exactly OpenAI's formula over the
generated tokens) and the top log-probs of every generated token (exactly the scoring path's top-k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsd_ray.core.engine_api import SamplingParams, ScoreRequest
from hsd_ray.core.prompts import render_prompt
from hsd_ray.engines.hf import HFEngine

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir)


def _prompts(engine) -> list[list[int]]:
    return [render_prompt(engine.tokenizer, [{"role": "user", "content": q}])
            for q in ("Tell me a story.", "What is the capital of France? Answer in one short sentence.")]


@torch.no_grad()
def penalized_greedy(model, prompt: list[int], steps: int, presence: float, frequency: float) -> list[int]:
    """The reference: argmax of logit - frequency * count - presence * (count > 0), counts over generated ids only."""
    ids: list[int] = []
    for _ in range(steps):
        logits = model(torch.tensor([prompt + ids])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=logits.shape[0]).float()
        ids.append(int((logits - frequency * counts - presence * (counts > 0).float()).argmax()))
    return ids


@pytest.mark.parametrize("presence, frequency", [(0.0, 1.5), (2.0, 0.0), (-1.0, 0.5)])
def test_penalties_are_openais_formula_on_generated_tokens(engine, presence, frequency):
    prompts = _prompts(engine)
    params = SamplingParams(max_tokens=12, temperature=0.0, presence_penalty=presence, frequency_penalty=frequency)
    one = engine.generate(prompts[:1], params)[0]  # one at a time
    batch = engine.generate(prompts, params)  # the left-padded greedy batch
    for prompt, gen in zip(prompts, batch):
        expected = penalized_greedy(engine.model, prompt, 12, presence, frequency)
        eos = next((i for i, t in enumerate(expected) if t in engine.eos_ids), len(expected))
        assert gen.token_ids == expected[:eos]
    assert one.token_ids == batch[0].token_ids
    plain = engine.generate(prompts[:1], SamplingParams(max_tokens=12, temperature=0.0))[0]
    assert plain.token_ids != one.token_ids  # the tiny model repeats itself: a penalty changes its reply
    # log-probs stay the raw model's, as without penalties
    (scored,) = engine.score([ScoreRequest(prompts[0], one.token_ids)])
    np.testing.assert_allclose(one.logprobs, scored.logp_T, atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_top_logprobs_are_the_scoring_paths_top_k(engine, temperature):
    prompts = _prompts(engine)
    params = SamplingParams(max_tokens=10, temperature=temperature, seed=3, top_logprobs=5)
    gens = engine.generate(prompts, params)
    scored = engine.score([ScoreRequest(p, g.token_ids) for p, g in zip(prompts, gens)], top_k=5)
    for gen, s in zip(gens, scored):
        assert len(gen.top_logprobs) == len(gen.token_ids) and all(len(row) == 5 for row in gen.top_logprobs)
        lps = np.array([[lp for _, lp in row] for row in gen.top_logprobs])
        assert (np.diff(lps, axis=1) <= 0).all()  # best first
        np.testing.assert_allclose(lps, s.topk_logp_T_K, atol=1e-4, rtol=0)
        ids = np.array([[t for t, _ in row] for row in gen.top_logprobs])
        gaps = np.abs(np.diff(s.topk_logp_T_K, axis=1)) > 1e-4  # tied neighbours may swap places
        distinct = np.concatenate([gaps, np.ones((len(ids), 1), bool)], 1) & np.concatenate(
            [np.ones((len(ids), 1), bool), gaps], 1)
        assert (ids[distinct] == s.topk_ids_T_K[distinct]).all()
        if temperature == 0:
            assert [row[0][0] for row in gen.top_logprobs] == gen.token_ids
    assert engine.generate(prompts[:1], SamplingParams(max_tokens=4))[0].top_logprobs is None  # not asked for
