"""hindsight.teacher_reply_tokens on the vLLM engine (the teacher actors' engine in the learning benchmark and on
GPUs): the teacher's greedy reply under the hindsight context is generated and scored by the same engine, and the
scores are what a prompt-logprob pass over that reply returns (transformers: tests/unit/test_teacher_reply.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_vllm_teacher_writes_and_scores_its_own_reply(tiny_model_dir):
    from hsd_ray.config import Config
    from hsd_ray.core.engine_api import SamplingParams, ScoreRequest
    from hsd_ray.core.hindsight import build_example
    from hsd_ray.core.prompts import template_text
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.core.turns import Turn
    from hsd_ray.engines.factory import make_engine

    cfg = Config.load(overrides=["engine.kind=vllm", "hindsight.teacher_reply_tokens=10", "loss.kind=topk"])
    engine = make_engine(str(tiny_model_dir), cfg.engine)
    turns = [Turn(context=[{"role": "user", "content": q}], reply="Sure, here it is.", followup=o)
             for q, o in [("Name a fruit.", "Call me Sam."), ("What is 2 + 2?", "Only the number, please.")]]
    score_turns(engine, turns, cfg.hindsight, cfg.loss)
    for t in turns:
        e = build_example(engine.tokenizer, t, template=template_text(cfg.hindsight.template),
                          max_context_tokens=cfg.hindsight.max_context_tokens,
                          max_reply_tokens=cfg.hindsight.max_reply_tokens,
                          reference_followup=cfg.hindsight.reference_followup)
        gen = engine.generate([e.teacher_prompt_ids], SamplingParams(max_tokens=10, temperature=0.0))[0]
        expected = [*gen.token_ids, engine.tokenizer.eos_token_id] if gen.ended_on_eos else list(gen.token_ids)
        assert list(t.scores.target_ids_T) == expected != e.target_ids
        assert t.scores.served_reply is False
        teacher = engine.score([ScoreRequest(e.teacher_prompt_ids, expected)], top_k=cfg.loss.top_k)[0]
        np.testing.assert_allclose(t.scores.teacher_logp_T, teacher.logp_T, atol=1e-4)
        np.testing.assert_allclose(t.scores.teacher_topk_logp_T_K, teacher.topk_logp_T_K, atol=1e-4)
    if hasattr(engine, "close"):
        engine.close()
