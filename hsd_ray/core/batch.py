"""Packing ragged (prompt, reply) pairs into tensors, and the `HindsightBatch` the learner steps on.

Sequences are LEFT-padded so that every row's reply ends at the last position: the reply logits of the whole batch are
then the last T+1 positions (`logits_to_keep`), and the model never materialises B×L×V logits for the prompt part.
Position ids are computed from the attention mask so left padding does not shift positions.

Used by the transformers engine (scoring) and by the learner step, so both see identical tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsd_ray.core.turns import Turn


@dataclass
class PackedSequences:
    input_ids_B_L: torch.Tensor  # int64, left-padded prompt + targets
    attention_mask_B_L: torch.Tensor  # int64
    position_ids_B_L: torch.Tensor  # int64
    target_ids_B_T: torch.Tensor  # int64, left-padded targets (aligned to the end of each row)
    target_mask_B_T: torch.Tensor  # bool, True at real target tokens

    @property
    def num_targets(self) -> int:
        return self.target_ids_B_T.shape[1]

    def to(self, device) -> "PackedSequences":
        if torch.device(device) == self.input_ids_B_L.device:
            return self
        return PackedSequences(*(t.to(device) for t in vars(self).values()))


def pack_sequences(prompts: list[list[int]], targets: list[list[int]], pad_id: int) -> PackedSequences:
    if len(prompts) != len(targets) or not prompts:
        raise ValueError("need the same non-zero number of prompts and targets")
    if any(len(t) == 0 for t in targets):
        raise ValueError("every target must have at least one token")
    seqs = [p + t for p, t in zip(prompts, targets)]
    B, L, T = len(seqs), max(map(len, seqs)), max(map(len, targets))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    target_ids = torch.full((B, T), pad_id, dtype=torch.long)
    target_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (seq, tgt) in enumerate(zip(seqs, targets)):
        input_ids[b, L - len(seq) :] = torch.tensor(seq)
        attn[b, L - len(seq) :] = 1
        target_ids[b, T - len(tgt) :] = torch.tensor(tgt)
        target_mask[b, T - len(tgt) :] = True
    position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    return PackedSequences(input_ids, attn, position_ids, target_ids, target_mask)


def reply_logits(model, packed: PackedSequences) -> torch.Tensor:
    """logits_B_T_V predicting each target token (position t predicts target t)."""
    T = packed.num_targets
    out = model(
        input_ids=packed.input_ids_B_L,
        attention_mask=packed.attention_mask_B_L,
        position_ids=packed.position_ids_B_L,
        logits_to_keep=T + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :]


def unpad_rows(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> list[np.ndarray]:
    """Back to ragged per-row arrays (the valid suffix of each row)."""
    return [values_B_T[b][mask_B_T[b]].cpu().numpy() for b in range(values_B_T.shape[0])]


@dataclass
class HindsightBatch:
    """Scored turns as tensors for one learner step (shapes: B turns, L sequence, T reply tokens, K teacher top-k)."""

    packed: PackedSequences  # student prompt + reply, the sequence the learner differentiates through
    teacher_logp_B_T: torch.Tensor
    baseline_logp_B_T: torch.Tensor
    topk_ids_B_T_K: torch.Tensor | None
    topk_logp_B_T_K: torch.Tensor | None
    served_logp_B_T: torch.Tensor | None  # log-prob at serving time (importance weights); NaN where unknown (a turn
    # without logprobs is a NaN row = weight 1, the others keep theirs); None when no turn of the batch has them
    feedback_weight_B: torch.Tensor  # the feedback gate's loss weight per turn (1 when no gate decided)
    turn_ids: list[str]
    policy_versions: list[int | None]
    teacher_versions: list[int]
    replied_at: list[float]
    baseline_topk_logp_B_T_K: torch.Tensor | None = None  # the baseline's log-prob of the teacher's top-k ids
    stop_ids: tuple[int, ...] = ()  # the ids that end a reply (the tokenizer's EOS): loss.shift_peaks_to=end

    @property
    def mask_B_T(self) -> torch.Tensor:
        return self.packed.target_mask_B_T

    @property
    def num_tokens(self) -> int:
        return int(self.mask_B_T.sum())

    @classmethod
    def collate(cls, turns: list[Turn], pad_id: int, stop_ids: tuple[int, ...]) -> "HindsightBatch":
        """Turns that carry `scores` (and `student_prompt_ids`) → one batch. `stop_ids`: the ids that end a reply
        (the tokenizer's EOS; the default loss's `shift_peaks_to=end` needs them), () where nothing selects on them."""
        missing = [t.turn_id for t in turns if t.scores is None]
        if missing:
            raise ValueError(f"turns without teacher scores cannot be trained on: {missing[:3]}")
        scores = [t.scores for t in turns]
        packed = pack_sequences(
            [list(s.student_prompt_ids) for s in scores], [list(s.target_ids_T) for s in scores], pad_id
        )
        T = packed.num_targets

        def stack(arrays: list[np.ndarray], fill: float, dtype) -> torch.Tensor:
            out = torch.full((len(arrays), T, *arrays[0].shape[1:]), fill, dtype=dtype)
            # Copy through numpy: the arrays are read-only views into Ray's object store, and torch.as_tensor on
            # them warns about non-writable memory on every run's first batch.
            view = out.numpy()
            for b, a in enumerate(arrays):
                view[b, T - len(a) :] = a
            return out

        has_topk = all(s.teacher_topk_ids_T_K is not None for s in scores)
        has_shift = has_topk and all(s.baseline_topk_logp_T_K is not None for s in scores)
        served = [_served_logp(t) for t in turns]
        return cls(
            packed=packed,
            teacher_logp_B_T=stack([s.teacher_logp_T for s in scores], 0.0, torch.float32),
            baseline_logp_B_T=stack([s.baseline_logp_T for s in scores], 0.0, torch.float32),
            topk_ids_B_T_K=stack([s.teacher_topk_ids_T_K for s in scores], 0, torch.long) if has_topk else None,
            topk_logp_B_T_K=stack([s.teacher_topk_logp_T_K for s in scores], 0.0, torch.float32) if has_topk else None,
            baseline_topk_logp_B_T_K=stack([s.baseline_topk_logp_T_K for s in scores], 0.0, torch.float32)
            if has_shift else None,
            served_logp_B_T=stack(served, 0.0, torch.float32) if any(_has_served_logp(t) for t in turns) else None,
            feedback_weight_B=torch.tensor([t.feedback_weight() for t in turns], dtype=torch.float32),
            turn_ids=[t.turn_id for t in turns],
            policy_versions=[t.policy_version for t in turns],
            teacher_versions=[s.teacher_version for s in scores],
            replied_at=[t.replied_at for t in turns],
            stop_ids=tuple(stop_ids),
        )


def _served_logp(turn: Turn) -> np.ndarray:
    """Serving-time log-probs aligned with the scored targets; NaN where unknown (the appended EOS, or every token of
    a turn logged without logprobs) = weight 1. Per turn: one turn without them never turns the others' off."""
    T = len(turn.scores.target_ids_T)
    lp = np.full(T, np.nan, dtype=np.float32)
    if _has_served_logp(turn):
        n = min(T, len(turn.reply_logprobs))
        lp[:n] = turn.reply_logprobs[:n]
    return lp


def _has_served_logp(turn: Turn) -> bool:
    """The turn's serving-time log-probs exist and belong to the scored target (not to a teacher-written reply)."""
    return turn.reply_logprobs is not None and turn.scores.served_reply
