"""Retain anchor: keep the policy's distribution where the reference put it on a fixed set of ordinary prompts.

Why: on the learning benchmark every run that trained forgot facts the base model knew (a default mixed-traffic run
lost 9 of the 22 capitals the base named), and the KL penalty cannot see it: that penalty is taken on the tokens of
the replies being trained on, and none of them is a fact question. The anchor replays the reference policy's own
greedy replies to shipped prompts (hsd_ray/data/retain.json: capitals, arithmetic and facts that no prompt of the
benchmark or of the version gate shares) and adds, at every position of those replies, the exact forward
KL(reference ‖ policy) over the whole vocabulary, weighted by `loss.retain_coef`. Forward, because it is
mass-covering: it holds probability on the reference's answer token, which is what a forgotten fact loses; a reply
the reference would not give again after a drift is still its own, so the anchor never teaches a text.

Pure functions and a small value type; the learner builds the set once from the reference (`greedy_replies`) and
draws `per_step` replies each step (`RetainSet.draw`, the same on every rank of a step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hsd_ray.core import losses
from hsd_ray.core.batch import PackedSequences, pack_sequences, reply_logits
from hsd_ray.core.prompts import render_prompt, reply_end_ids

RETAIN_MAX_TOKENS = 32  # the start of a reply is where a fact is stated; longer replies add cost, not anchor


@torch.no_grad()
def greedy_replies(model, prompts: list[list[int]], pad_id: int, eos_ids: list[int],
                   max_new_tokens: int = RETAIN_MAX_TOKENS) -> list[list[int]]:
    """Greedy replies of `model` to token-id prompts, one left-padded batch; each cut after its first EOS (kept,
    so the anchor also holds where a reply ends). Every reply has at least one token."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    device = next(model.parameters()).device
    out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_id, eos_token_id=eos_ids or None)
    replies = []
    for row in out[:, width:].tolist():
        end = next((j for j, t in enumerate(row) if t in eos_ids), None)
        replies.append(row[: end + 1] if end is not None else row)
    return replies


@dataclass(frozen=True)
class RetainSet:
    """Prompts (chat-rendered ids) and the reference's replies to them."""

    prompts: tuple[tuple[int, ...], ...]
    replies: tuple[tuple[int, ...], ...]
    pad_id: int

    def __post_init__(self):
        if not self.prompts or len(self.prompts) != len(self.replies):
            raise ValueError("a retain set needs the same non-zero number of prompts and replies")

    def draw(self, step: int, per_step: int, seed: int = 0) -> PackedSequences:
        """`per_step` distinct pairs, chosen by (seed, step) alone: every rank of a step draws the same ones."""
        k = min(per_step, len(self.prompts))
        picked = random.Random(f"retain-{seed}-{step}").sample(range(len(self.prompts)), k)
        return pack_sequences([list(self.prompts[i]) for i in picked], [list(self.replies[i]) for i in picked],
                              self.pad_id)


def retain_loss(model, reference, packed: PackedSequences) -> tuple[torch.Tensor, dict]:
    """Exact forward KL(reference ‖ policy) per reply token, mean per sequence then over the batch; differentiable
    w.r.t. `model` only. `reference.model()` is a context giving the reference model (core.policy.ReferencePolicy;
    for LoRA it is the policy with its adapter off, so the two forwards must not overlap). Metric: kl_retain."""
    packed = packed.to(next(model.parameters()).device)
    with torch.no_grad(), reference.model() as ref_model:
        ref_logits = reply_logits(ref_model, packed)
    kl = losses.exact_divergence(reply_logits(model, packed), ref_logits, packed.target_mask_B_T, "forward_kl")
    return kl, {"kl_retain": float(kl.detach())}


def build_retain_set(reference, tokenizer, prompts: list[str], max_new_tokens: int = RETAIN_MAX_TOKENS) -> RetainSet:
    """Chat-render `prompts` as single user messages and let the reference answer them greedily."""
    ids = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    with reference.model() as ref_model:
        was_training = ref_model.training
        ref_model.eval()
        replies = greedy_replies(ref_model, ids, tokenizer.pad_token_id, reply_end_ids(ref_model, tokenizer),
                                 max_new_tokens)
        ref_model.train(was_training)
    return RetainSet(tuple(map(tuple, ids)), tuple(map(tuple, replies)), tokenizer.pad_token_id)
