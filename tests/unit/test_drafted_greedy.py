"""Greedy replies started from another version's replies (core/drafted_greedy.py): the pure agreement check, exactly,
and on the transformers engine the same replies as plain greedy generation, whether the drafts agree, diverge, end
early or are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsd_ray.core.drafted_greedy import Draft, agreement, draft_target, draft_targets, greedy_from_drafts
from hsd_ray.core.engine_api import Generation, PolicyVersion, SamplingParams

pytestmark = pytest.mark.unit
EOS = [2, 7]


def _topk(best: list[int], k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows whose argmax is `best[t]` (stored out of order, so argmax is not simply column 0)."""
    ids = np.array([[b + 100, b, b + 200][:k] for b in best])
    logp = np.array([[-2.0, -0.1, -3.0][:k] for _ in best])
    return ids, logp


def test_agreement_full_first_mismatch_and_any_eos():
    assert agreement([5, 6, 2], *_topk([5, 6, 2]), EOS) == (3, None)
    assert agreement([5, 6, 2], *_topk([5, 9, 2]), EOS) == (1, 9)
    assert agreement([5, 6, 2], *_topk([8, 6, 2]), EOS) == (0, 8)
    assert agreement([5, 6, 2], *_topk([5, 6, 7]), EOS) == (3, None)  # another EOS of the model ends it as well
    assert agreement([5, 6, 2], *_topk([5, 6, 4]), EOS) == (2, 4)  # ... a non-EOS choice does not


def test_draft_targets_cover_the_stop_decision_and_skip_what_cannot_stand_for_a_reply():
    gen = Generation([5, 6], "ab", [-0.1, -0.2], True, 3, PolicyVersion(), ended_on_eos=True)
    assert Draft.of(gen) == Draft((5, 6), True)
    assert draft_target([1, 1], Draft((5, 6), True), 2).target_ids == [5, 6, 2]
    assert draft_target([1, 1], Draft((5, 6, 8), False), 2).target_ids == [5, 6, 8]
    drafts = [Draft((5, 6), True), Draft((5, 6, 8), False), None, Draft((5,), False), Draft((5, 6, 8), True)]
    # a full-length draft; a missing one; one that stopped early without EOS; one whose EOS falls past max_tokens
    assert list(draft_targets([[1]] * 5, drafts, 2, max_tokens=3)) == [0, 1]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from hsd_ray.engines.hf import HFEngine

    return HFEngine(tiny_model_dir)


def _prompts(engine) -> list[list[int]]:
    from hsd_ray.core.prompts import render_prompt

    texts = ["What is the capital of France?", "Name a fruit.", "Count to five.", "Say hi.", "Why is the sky blue?",
             "Write a haiku about rain.", "What is 12 times 7?", "Tell me a joke."]
    return [render_prompt(engine.tokenizer, [{"role": "user", "content": t}]) for t in texts]


def _greedy(engine, prompts, max_tokens):
    return engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0))


def test_drafts_of_the_same_weights_are_the_replies_and_generate_nothing(engine):
    prompts, max_tokens = _prompts(engine), 24
    plain = _greedy(engine, prompts, max_tokens)
    drafted, counts = greedy_from_drafts(engine, prompts, [Draft.of(g) for g in plain], max_tokens, engine.eos_ids)
    assert [g.token_ids for g in drafted] == [g.token_ids for g in plain]
    assert [(g.text, g.finished, g.ended_on_eos) for g in drafted] == [(g.text, g.finished, g.ended_on_eos)
                                                                      for g in plain]
    assert counts == {"rows": 8, "drafted": 8, "agreed": 8, "generated_tokens": 0}


def test_drafts_from_other_weights_give_the_new_weights_greedy_replies(engine):
    prompts, max_tokens = _prompts(engine), 24
    old = [Draft.of(g) for g in _greedy(engine, prompts, max_tokens)]
    saved = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            for p in engine.model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        plain = _greedy(engine, prompts, max_tokens)
        old[3] = None  # a prompt without a draft is generated whole
        drafted, counts = greedy_from_drafts(engine, prompts, old, max_tokens, engine.eos_ids)
    finally:
        engine.model.load_state_dict(saved)
    assert [g.token_ids for g in drafted] == [g.token_ids for g in plain]
    assert [(g.finished, g.ended_on_eos) for g in drafted] == [(g.finished, g.ended_on_eos) for g in plain]
    assert counts["drafted"] == 7 and counts["agreed"] < 7 and counts["generated_tokens"] > 0
    for d, p in zip(drafted, plain):  # the agreed prefix's log-probs are the new weights' own
        assert np.allclose(d.logprobs, p.logprobs, atol=1e-4)
