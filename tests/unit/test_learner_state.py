"""Learner state (issue 12): the KL anchor stays the base weights across restarts, the EMA reference is
checkpointed, loads are strict, config cross-checks, EOS only for a real end of sequence, importance weights per turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsd_ray.config import Config, ConfigError, LoraConfig
from hsd_ray.core.batch import HindsightBatch
from hsd_ray.core.engine_api import SamplingParams
from hsd_ray.core.policy import apply_lora, load_trainable_state, resume_policy, trainable_state
from hsd_ray.core.turns import Turn, TurnScores

pytestmark = pytest.mark.unit


def _model(tiny_model_dir):
    from hsd_ray.models import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model_dir, "float32", "cpu")[0]


def _train(model, delta=0.5):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(delta)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_kl_anchor_is_the_base_after_a_restart(tiny_model_dir):
    base, trained = _model(tiny_model_dir), _model(tiny_model_dir)
    _train(trained)
    state = {"model": trainable_state(trained)}
    restarted = _model(tiny_model_dir)
    reference = resume_policy(restarted, state, kl_on=True, kind="initial")
    with reference.model() as ref:
        assert _same(ref, base) and not _same(ref, trained)
    assert _same(restarted, trained)
    assert resume_policy(_model(tiny_model_dir), state, kl_on=False) is None


def test_ema_reference_is_checkpointed(tiny_model_dir):
    model = _model(tiny_model_dir)
    reference = resume_policy(model, None, kl_on=True, kind="ema", ema_rate=0.5)
    _train(model)
    reference.update()
    state = {"model": trainable_state(model), "reference": reference.state_dict()}
    again = resume_policy(_model(tiny_model_dir), state, kl_on=True, kind="ema", ema_rate=0.5)
    with reference.model() as a, again.model() as b:
        assert _same(a, b)
    assert resume_policy(_model(tiny_model_dir), None, kl_on=True, kind="initial").state_dict() is None


def test_loads_are_strict_and_lora_loads_only_adapter_keys(tiny_model_dir):
    full = _model(tiny_model_dir)
    state = trainable_state(full)
    with pytest.raises(ValueError, match="unexpected"):
        load_trainable_state(full, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(full, {k: v for k, v in list(state.items())[1:]})
    lora = apply_lora(_model(tiny_model_dir), LoraConfig(enabled=True, r=2, target_modules=["q_proj"]))
    _train(lora)
    adapter = trainable_state(lora)
    assert adapter and all("lora_" in k for k in adapter)
    fresh = apply_lora(_model(tiny_model_dir), LoraConfig(enabled=True, r=2, target_modules=["q_proj"]))
    load_trainable_state(fresh, adapter)
    assert all(torch.equal(trainable_state(fresh)[k], v) for k, v in adapter.items())
    with pytest.raises(ValueError, match="missing"):
        load_trainable_state(fresh, dict(list(adapter.items())[1:]))


def test_config_cross_checks_name_the_fields():
    with pytest.raises(ConfigError, match=r"loss\.top_k \(30\).*engine\.vllm_max_logprobs \(20\)"):
        Config.load(None, ["loss.kind=topk", "engine.kind=vllm", "loss.top_k=30"])
    Config.load(None, ["loss.kind=topk", "engine.kind=hf", "loss.top_k=30"])  # only vLLM bounds it
    with pytest.raises(ConfigError, match=r"learner\.batch_turns \(2\).*learner\.num_workers \(4\)"):
        Config.load(None, ["learner.num_workers=4", "learner.batch_turns=2"])


def _scored(logprobs):
    t = Turn(context=[{"role": "user", "content": "q"}], reply="r", followup="o", reply_logprobs=logprobs)
    t.scores = TurnScores(np.array([1, 2], np.int64), np.array([3, 4, 5], np.int64), np.zeros(3, np.float32),
                          np.zeros(3, np.float32))
    return t


def test_importance_weights_are_per_turn():
    batch = HindsightBatch.collate([_scored([-0.5, -0.25]), _scored(None)], pad_id=0, stop_ids=())
    served = batch.served_logp_B_T
    assert served is not None and served.shape == (2, 3)
    assert served[0, :2].tolist() == [-0.5, -0.25] and torch.isnan(served[0, 2])  # the appended EOS: weight 1
    assert torch.isnan(served[1]).all()  # the turn without logprobs: weight 1, the other keeps its weights
    assert HindsightBatch.collate([_scored(None)], pad_id=0, stop_ids=()).served_logp_B_T is None


def test_eos_only_for_a_real_end_of_sequence(tiny_model_dir):
    from hsd_ray.engines.hf import HFEngine

    engine = HFEngine(tiny_model_dir)
    tok = engine.tokenizer
    assert tok.eos_token_id in engine.eos_ids
    from hsd_ray.core.prompts import render_prompt

    prompt = render_prompt(tok, [{"role": "user", "content": "hello"}], max_tokens=128)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    [free] = engine.generate([prompt], greedy)
    assert len(free.text) > 4, free
    stop = free.text[2:4]
    [cut] = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, stop=[stop]))
    assert cut.finished and cut.finish_reason == "stop" and not cut.ended_on_eos  # cut at a stop string
    # any of the model's EOS ids ends the sequence: make the first greedy token one of them
    engine.model.generation_config.eos_token_id = [tok.eos_token_id, free.token_ids[0]]
    [ended] = engine.generate([prompt], greedy)
    assert ended.ended_on_eos and ended.finished and ended.token_ids == []


def test_batched_greedy_matches_one_prompt_at_a_time(tiny_model_dir):
    """HFEngine runs greedy, stop-free batches left-padded in one generate call: each row's ids, logprobs, finish and
    EOS flags are those of the prompt generated alone, including rows that end on EOS while others go on."""
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.engines.hf import HFEngine

    engine = HFEngine(tiny_model_dir)
    tok = engine.tokenizer
    torch.manual_seed(0)  # the random tiny model repeats one token greedily; noisy weights give varied replies
    with torch.no_grad():
        for w in engine.model.parameters():
            if w.dim() == 2:
                w.add_(0.2 * torch.randn_like(w))
    texts = ["hello", "what is the capital of France and why is it famous?", "2+2", "tell me a long story about cats"]
    prompts = [render_prompt(tok, [{"role": "user", "content": t}], max_tokens=128) for t in texts]
    greedy = SamplingParams(max_tokens=10, temperature=0.0)
    alone = [engine.generate([p], greedy)[0] for p in prompts]
    # make a token of one reply an EOS that another reply never produces: one row ends early, another runs on
    stopper = next(t for g in alone for t in g.token_ids[1:] if any(t not in h.token_ids for h in alone))
    engine.model.generation_config.eos_token_id = [tok.eos_token_id, stopper]
    alone = [engine.generate([p], greedy)[0] for p in prompts]
    batched = engine.generate(prompts, greedy)
    assert any(g.ended_on_eos for g in alone) and any(not g.finished for g in alone), alone
    for a, b in zip(alone, batched):
        assert (b.token_ids, b.text, b.finished, b.ended_on_eos, b.prompt_tokens) == \
            (a.token_ids, a.text, a.finished, a.ended_on_eos, a.prompt_tokens)
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
