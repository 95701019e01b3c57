"""Which reply tokens take the shifted target of `losses.sampled_token_loss_shifted_head`: the reply's first tokens,
the tokens where the advantage peaks, and of those optionally only the ones where the follow-up raises the end of the
reply. Pure torch: bool masks in, bool masks out. Shapes as in losses.py (B batch, T reply tokens, K teacher top-k).
"""

from __future__ import annotations

import torch

from hsd_ray.core.losses import _LOG_TAIL_FLOOR, _bool, advantages, loss_mask


def head_mask(mask_B_T: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` valid tokens of each row (bool): the complement of `loss_mask(mask, n)` within the mask."""
    m_B_T = _bool(mask_B_T)
    return m_B_T & ~_bool(loss_mask(m_B_T, n))


def advantage_peaks(
    teacher_logp_B_T: torch.Tensor, baseline_logp_B_T: torch.Tensor, mask_B_T: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Bool mask of the valid tokens whose centred advantage |A - row mean| is at least `ratio` times the row's mean
    |A - row mean| (none where ratio <= 0 or the row's A is flat).

    Why (ours; bench/learning/README.md, "Shifting where the signal peaks"): a complaint's advantage is concentrated
    on a few tokens, and those are where the follow-up names what it wants instead: on the base model's replies to
    "keep it under 20 words" the teacher puts 0.85-0.9 on <|im_end|> at the worst of them (3-5 nats over the
    baseline), under "use a list" it raises "1" and "\n". The sampled-token loss can only push the sampled token down
    there; the shifted target (`sampled_token_loss_shifted_head`) sends the mass to what the teacher raised."""
    m_B_T = _bool(mask_B_T)
    if ratio <= 0:
        return torch.zeros_like(m_B_T)
    c_B_T = advantages(teacher_logp_B_T, baseline_logp_B_T, m_B_T, center=True).abs()
    n_B = m_B_T.sum(-1, keepdim=True).clamp_min(1).to(c_B_T.dtype)
    mean_B = c_B_T.sum(-1, keepdim=True) / n_B
    return m_B_T & (mean_B > 0) & (c_B_T >= ratio * mean_B)


def raised_most_is(
    topk_ids_B_T_K: torch.Tensor, teacher_topk_logp_B_T_K: torch.Tensor, baseline_topk_logp_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor, ids: tuple[int, ...],
) -> torch.Tensor:
    """Bool mask of the valid tokens where the id the follow-up raises most over the baseline, among the teacher's
    top-k (largest log p_teacher - log p_baseline; first on ties), is one of `ids` (none when `ids` is empty).

    Why (ours; bench/learning/README.md, "Ending where the follow-up asks"): with `ids` the stop token this keeps
    the advantage peaks where a length complaint's signal sits (the teacher would have ended the reply there), and
    leaves the peaks of other complaints ("1", "\n" under "use a list") to the sampled-token loss."""
    m_B_T = _bool(mask_B_T)
    if not ids:
        return torch.zeros_like(m_B_T)
    rise_B_T_K = (teacher_topk_logp_B_T_K.detach().double().clamp(min=_LOG_TAIL_FLOOR)
                  - baseline_topk_logp_B_T_K.detach().double().clamp(min=_LOG_TAIL_FLOOR))
    top_B_T = topk_ids_B_T_K.gather(-1, rise_B_T_K.argmax(-1, keepdim=True)).squeeze(-1)
    return m_B_T & torch.isin(top_B_T, torch.tensor(ids, dtype=top_B_T.dtype, device=top_B_T.device))
