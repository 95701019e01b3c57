"""hindsight.teacher_reply_tokens: the teacher writes its own greedy reply under the hindsight context, and that reply
(not the served one) is what gets scored and distilled (core/scoring.py `_with_teacher_replies`)."""

import copy

import numpy as np
import pytest
import torch

from hsd_ray.config import Config, ConfigError
from hsd_ray.core.batch import HindsightBatch, pack_sequences, reply_logits
from hsd_ray.core.engine_api import SamplingParams, ScoreRequest
from hsd_ray.core.hindsight import build_example
from hsd_ray.core.losses import token_logprobs
from hsd_ray.core.policy import make_optimizer
from hsd_ray.core.prompts import template_text
from hsd_ray.core.scoring import score_turns
from hsd_ray.core.train_step import learner_step
from hsd_ray.core.turns import Turn
from hsd_ray.engines.hf import HFEngine

pytestmark = pytest.mark.unit

TURNS = [
    ("What is the capital of France?", "The capital of France is Paris, a city on the Seine.", "Call me Sam, please."),
    ("Name a color.", "Blue is a color that many people like a lot.", "Just the color please."),
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir)


def _turns(with_logprobs: bool = True):
    turns = []
    for q, r, o in TURNS:
        t = Turn(context=[{"role": "user", "content": q}], reply=r, followup=o)
        if with_logprobs:
            t.reply_logprobs = [-1.5] * 40  # serving-time log-probs of the *served* reply
        turns.append(t)
    return turns


def _cfg(tokens: int, *extra: str) -> Config:
    return Config.load(overrides=[f"hindsight.teacher_reply_tokens={tokens}", "hindsight.template=online", *extra])


def test_target_is_the_teachers_greedy_reply_scored_in_both_contexts(engine):
    cfg = _cfg(12)
    turns = score_turns(engine, _turns(), cfg.hindsight, cfg.loss)
    for t in turns:
        s = t.scores
        e = build_example(engine.tokenizer, t, template=template_text("online"), max_context_tokens=1024,
                          max_reply_tokens=512, reference_followup=cfg.hindsight.reference_followup)
        gen = engine.generate([e.teacher_prompt_ids], SamplingParams(max_tokens=12, temperature=0.0))[0]
        expected = [*gen.token_ids, engine.tokenizer.eos_token_id] if gen.ended_on_eos else gen.token_ids
        assert list(s.target_ids_T) == expected and list(s.target_ids_T) != e.target_ids
        assert 1 <= len(s.target_ids_T) <= 13
        teacher, baseline = engine.score([ScoreRequest(e.teacher_prompt_ids, expected),
                                          ScoreRequest(e.baseline_prompt_ids, expected)])
        np.testing.assert_allclose(s.teacher_logp_T, teacher.logp_T, atol=1e-5)
        np.testing.assert_allclose(s.baseline_logp_T, baseline.logp_T, atol=1e-5)
        assert s.served_reply is False
        assert list(s.student_prompt_ids) == e.student_prompt_ids


def test_served_logprobs_do_not_weigh_a_teacher_written_reply(engine):
    cfg = _cfg(12)
    scored = score_turns(engine, _turns(), cfg.hindsight, cfg.loss)
    batch = HindsightBatch.collate(scored, engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    assert batch.served_logp_B_T is None  # no turn's serving-time log-probs belong to its scored target
    off = Config.load(overrides=["hindsight.template=online"])
    served = score_turns(engine, _turns(), off.hindsight, off.loss)
    assert all(t.scores.served_reply for t in served)
    served_batch = HindsightBatch.collate(served, engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    assert served_batch.served_logp_B_T is not None and float(served_batch.served_logp_B_T.nansum()) < 0


def test_teacher_reply_respects_the_reply_budget(engine):
    cfg = _cfg(40, "hindsight.max_reply_tokens=5")
    for t in score_turns(engine, _turns(), cfg.hindsight, cfg.loss):
        assert 1 <= len(t.scores.target_ids_T) <= 6  # 5 tokens, plus the end-of-turn id if it ended there


def test_negative_token_budget_is_refused():
    with pytest.raises(ConfigError, match="teacher_reply_tokens"):
        Config.load(overrides=["hindsight.teacher_reply_tokens=-1"])


def _student_logp_of(model, engine, turns) -> float:
    """Sum over turns of the student's log-prob (no follow-up) of each turn's scored target."""
    packed = pack_sequences([list(t.scores.student_prompt_ids) for t in turns],
                            [list(t.scores.target_ids_T) for t in turns], engine.tokenizer.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(reply_logits(model, packed).float(), packed.target_ids_B_T)
    return float(logp[packed.target_mask_B_T].sum())


def _gain_on_teacher_replies(engine, teacher_tokens: int) -> float:
    """Five learner steps on the turns (served replies, or teacher-written ones); how much the student's log-prob of
    the teacher's own replies rose."""
    cfg = _cfg(teacher_tokens, "loss.baseline=student", "loss.center_advantages=false", "loss.kl_coef=0",
               "learner.lr=1e-3", "learner.warmup_steps=0")
    probe_cfg = _cfg(12)
    targets = score_turns(engine, _turns(False), probe_cfg.hindsight, probe_cfg.loss)
    torch.manual_seed(0)
    model = copy.deepcopy(engine.model)
    optimizer, scheduler = make_optimizer(model, cfg.learner)
    before = _student_logp_of(model, engine, targets)
    batch = HindsightBatch.collate(score_turns(engine, _turns(False), cfg.hindsight, cfg.loss),
                                   engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    for _ in range(5):
        learner_step(model, optimizer, batch, cfg.loss, grad_clip=10.0, scheduler=scheduler)
    return _student_logp_of(model, engine, targets) - before


def test_steps_raise_the_student_probability_of_the_teachers_reply(engine):
    """What the option is for: the student learns to say what the teacher says under hindsight. Distilling on the
    teacher's own replies raises the student's log-prob of those replies, and far more than distilling on the served
    replies does."""
    teacher_gain, served_gain = _gain_on_teacher_replies(engine, 12), _gain_on_teacher_replies(engine, 0)
    assert teacher_gain > 1.0, teacher_gain
    assert teacher_gain > 2 * max(served_gain, 0.0), (teacher_gain, served_gain)
