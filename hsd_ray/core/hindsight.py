"""Hindsight contexts: the token ids the student and the teacher see for one Turn (arXiv 2603.12273, §3).

Student context: the chat template over x with the generation prompt. Teacher context: the same, but the follow-up o is
appended to the *last user message* of x through a template (the paper's two templates live in core/prompts.py); the reply y
is scored as the assistant's answer to that augmented prompt (y is never shown as an earlier turn). The contrastive
baseline (ours) is a teacher context built with a fixed reference follow-up instead of o.

Exactness rules, all tested:
- One renderer (`core.prompts.render_prompt`) builds every prompt, also the one the chat service generates from, so scored prompts
  match served prompts token for token.
- Message text is tokenised with special tokens *split*: a user typing "<|im_end|>" gets plain text tokens, never a
  real control token; only the chat template itself emits control tokens.
- The scored tokens are exactly y's tokens (the ids the policy sampled when known) in both contexts; an end-of-turn
  token is appended only when the reply ended on its own (appending one to a reply cut by max_tokens teaches "stop
  here", measured in METHOD.md).
- Contexts are left-truncated, replies right-truncated, to the configured budgets.

Pure: a tokenizer and records in, token ids out. No Ray, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsd_ray.core.prompts import encode_text, hindsight_messages, render_prompt
from hsd_ray.core.turns import Turn



def reply_ids(tokenizer, turn: Turn, max_reply_tokens: int) -> list[int]:
    """The reply tokens to score: the sampled ids when known, else the text tokenised plainly; EOS only if finished."""
    ids = list(turn.reply_token_ids) if turn.reply_token_ids is not None else encode_text(tokenizer, turn.reply, True)
    eos = end_of_turn_id(tokenizer)
    while ids and ids[-1] == eos:  # ids never carry the terminator; `reply_finished` says whether it belongs
        ids.pop()
    truncated = len(ids) > max_reply_tokens
    ids = ids[:max_reply_tokens]
    if turn.reply_finished and not truncated:
        ids.append(eos)
    return ids


def end_of_turn_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos token; cannot mark the end of a reply")
    return int(eos)


@dataclass
class HindsightExample:
    """Token ids for one turn: the same `target_ids` scored after each prompt."""

    student_prompt_ids: list[int]
    teacher_prompt_ids: list[int]
    baseline_prompt_ids: list[int]  # student prompt (paper) or reference-follow-up prompt (contrastive)
    target_ids: list[int]


def build_example(
    tokenizer,
    turn: Turn,
    *,
    template: str,
    max_context_tokens: int,
    max_reply_tokens: int,
    reference_followup: str | None = None,
) -> HindsightExample:
    """Student, teacher and baseline prompts plus the reply tokens for `turn`.

    `reference_followup=None` makes the baseline the plain student context (the paper's A_i); a string makes it the
    hindsight context with that follow-up (contrastive baseline, so the hindsight wording itself cancels out).
    """
    student = render_prompt(tokenizer, turn.context, max_context_tokens)
    teacher = render_prompt(tokenizer, hindsight_messages(turn.context, turn.followup, template), max_context_tokens)
    if reference_followup is None:
        baseline = student
    else:
        ref_messages = hindsight_messages(turn.context, reference_followup, template)
        baseline = render_prompt(tokenizer, ref_messages, max_context_tokens)
    return HindsightExample(student, teacher, baseline, reply_ids(tokenizer, turn, max_reply_tokens))
