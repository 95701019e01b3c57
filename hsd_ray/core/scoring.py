"""Hindsight scoring of turns: what a teacher does to a leased batch (arXiv 2603.12273, §3).

`score_turns` builds the hindsight examples of a list of turns and scores them with any Engine in one batched call:
the teacher context (x + o) and the baseline context (plain x for the paper's A_i, or x + reference follow-up for the
contrastive variant, ours) are both scored by the *same* weights, so A_i never mixes policy versions. The results
travel on the Turn as `TurnScores` to the learner (core/train_step.py). With `hindsight.teacher_reply_tokens` the
scored reply is first written by the teacher itself (one batched greedy generate call under the teacher context).

Pure apart from the engine calls: config sections are read by attribute only (never imported at run time).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from hsd_ray.core.engine_api import Engine, SamplingParams, ScoreRequest
from hsd_ray.core.hindsight import HindsightExample, build_example, end_of_turn_id
from hsd_ray.core.prompts import template_text
from hsd_ray.core.turns import Turn, TurnScores

if TYPE_CHECKING:  # the core reads config attributes only; it does not need pydantic at run time
    from hsd_ray.config import HindsightConfig, LossConfig


def logprobs_at(ids_T_K: np.ndarray, other_ids_T_K: np.ndarray, other_logp_T_K: np.ndarray) -> np.ndarray:
    """Another context's log-probs of `ids_T_K`, read from its own top-k (`other_ids_T_K`, `other_logp_T_K`): where an
    id is outside that top-k, the top-k's smallest log-prob at that position (an upper bound: the engines return top-k
    only, vLLM's prompt-logprob mode included). float32 [T, K]."""
    same_T_K_K = ids_T_K[:, :, None] == other_ids_T_K[:, None, :]
    floor_T_K = np.broadcast_to(other_logp_T_K.min(axis=1, keepdims=True), ids_T_K.shape)
    found_T_K = same_T_K_K.any(axis=2)
    at_T_K = np.take_along_axis(other_logp_T_K, same_T_K_K.argmax(axis=2), axis=1)
    return np.where(found_T_K, at_T_K, floor_T_K).astype(np.float32)


def score_turns(engine: Engine, turns: list[Turn], hcfg: HindsightConfig, lcfg: LossConfig) -> list[Turn]:
    """Attach TurnScores to each turn (in place, and returned). One engine.score call for the whole list."""
    ref = hcfg.reference_followup if lcfg.baseline == "reference_followup" else None
    examples = [
        build_example(
            engine.tokenizer,
            t,
            template=template_text(hcfg.template),
            max_context_tokens=hcfg.max_context_tokens,
            max_reply_tokens=hcfg.max_reply_tokens,
            reference_followup=ref,
        )
        for t in turns
    ]
    if hcfg.teacher_reply_tokens:
        examples = _with_teacher_replies(engine, examples, min(hcfg.teacher_reply_tokens, hcfg.max_reply_tokens))
    requests = [ScoreRequest(e.teacher_prompt_ids, e.target_ids) for e in examples]
    requests += [ScoreRequest(e.baseline_prompt_ids, e.target_ids) for e in examples]
    top_k = lcfg.top_k if lcfg.scores_topk else 0
    scored = engine.score(requests, top_k=top_k)
    version = engine.version.version
    for i, (t, e) in enumerate(zip(turns, examples)):
        teacher, baseline = scored[i], scored[len(examples) + i]
        t.scores = TurnScores(
            student_prompt_ids=np.asarray(e.student_prompt_ids, dtype=np.int64),
            target_ids_T=np.asarray(e.target_ids, dtype=np.int64),
            teacher_logp_T=teacher.logp_T,
            baseline_logp_T=baseline.logp_T,
            teacher_topk_ids_T_K=teacher.topk_ids_T_K,
            teacher_topk_logp_T_K=teacher.topk_logp_T_K,
            baseline_topk_logp_T_K=logprobs_at(teacher.topk_ids_T_K, baseline.topk_ids_T_K, baseline.topk_logp_T_K)
            if lcfg.scores_baseline_topk else None,
            teacher_version=version,
            teacher_prompt_tokens=len(e.teacher_prompt_ids),
            baseline_prompt_tokens=len(e.baseline_prompt_ids),
            served_reply=not hcfg.teacher_reply_tokens,
        )
    return turns


def _with_teacher_replies(engine: Engine, examples: list[HindsightExample], max_tokens: int) -> list[HindsightExample]:
    """The examples with the teacher's own greedy reply under the hindsight context as the scored target (context
    distillation): the served reply can only raise tokens the policy already samples, and a user's name, which the
    policy gives 0.02% at a reply's first position, is never among them (bench/learning/README.md). One batched
    generate call; an end-of-turn id is appended only to a reply that ended on its own, as for served replies."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    generations = engine.generate([e.teacher_prompt_ids for e in examples], params)
    eos = end_of_turn_id(engine.tokenizer)
    return [replace(e, target_ids=[*g.token_ids, eos] if g.ended_on_eos else list(g.token_ids))
            for e, g in zip(examples, generations)]
