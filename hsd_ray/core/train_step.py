"""One learner step: the distillation loss on a HindsightBatch and the optimizer update (learner side).

`learner_step` turns a HindsightBatch into one optimizer step for full fine-tuning or LoRA (the model may be wrapped
in DDP by Ray Train); returns metrics. Deviations from the paper (arXiv 2603.12273), all configurable:
- the baseline log-probs come from the teacher pass, not from the learner's own forward (a distributed learner sees
  teacher scores that may be a few versions old; taking both sides from one version keeps A_i consistent);
- optional contrastive baseline, KL anchor to a reference policy, a retain anchor on replayed reference replies
  (core/retain.py), and a clipped importance weight for stale replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import math

import torch

from hsd_ray.core import losses, shift_positions
from hsd_ray.core.batch import HindsightBatch, PackedSequences, reply_logits
from hsd_ray.core.retain import retain_loss

if TYPE_CHECKING:  # the core reads config attributes only; it does not need pydantic at run time
    from hsd_ray.config import LossConfig


def compute_loss(model, batch: HindsightBatch, cfg: LossConfig, reference=None) -> tuple[torch.Tensor, dict]:
    """Forward the student over the batch and return (loss, metrics). Differentiable w.r.t. the model."""
    packed = batch.packed.to(_device_of(model))
    device = packed.input_ids_B_L.device
    logits_B_T_V = reply_logits(model, packed)
    logp_B_T = losses.token_logprobs(logits_B_T_V, packed.target_ids_B_T)
    mask_B_T = losses.loss_mask(packed.target_mask_B_T, cfg.ignore_first_k)
    metrics: dict[str, float] = {}
    if cfg.kind == "sampled_token":
        teacher_B_T, baseline_B_T = batch.teacher_logp_B_T.to(device), batch.baseline_logp_B_T.to(device)
        shift_topk = _shift_topk(batch, device) if cfg.shifted_head else None  # (ids, teacher, baseline)
        head_B_T = _shifted_positions(cfg, mask_B_T, teacher_B_T, baseline_B_T, shift_topk, batch.stop_ids, metrics)
        A_B_T = losses.advantages(teacher_B_T, baseline_B_T, mask_B_T.bool() & ~head_B_T,
                                  center=cfg.center_advantages)
        weights = None
        if cfg.importance_cap > 0 and batch.served_logp_B_T is not None:
            served = batch.served_logp_B_T.to(device)
            served = torch.where(torch.isnan(served), logp_B_T.detach(), served)  # unknown → weight 1
            weights = losses.importance_weights(logp_B_T.detach(), served, cfg.importance_cap)
            metrics["is_weight_mean"] = float(weights[mask_B_T.bool()].mean()) if mask_B_T.any() else 1.0
        if shift_topk is not None:
            loss, m = losses.sampled_token_loss_shifted_head(
                logits_B_T_V, logp_B_T, A_B_T, *shift_topk, mask_B_T, head_B_T, scale=cfg.shift_scale,
                weights_B_T=weights, seq_weight_B=batch.feedback_weight_B)
        else:
            loss, m = losses.sampled_token_loss(logp_B_T, A_B_T, mask_B_T, weights, batch.feedback_weight_B)
    elif cfg.kind == "shifted_topk":
        if batch.baseline_topk_logp_B_T_K is None:
            raise ValueError("loss.kind=shifted_topk needs the teacher's and the baseline's top-k scores")
        loss, m = losses.shifted_topk_loss(
            logits_B_T_V, batch.topk_ids_B_T_K.to(device), batch.topk_logp_B_T_K.to(device),
            batch.baseline_topk_logp_B_T_K.to(device), mask_B_T, scale=cfg.shift_scale,
            seq_weight_B=batch.feedback_weight_B)
    else:
        if batch.topk_ids_B_T_K is None:
            raise ValueError("loss.kind=topk needs teacher top-k scores (teacher must score with top_k > 0)")
        loss, m = losses.topk_divergence_loss(
            logits_B_T_V,
            batch.topk_ids_B_T_K.to(device),
            batch.topk_logp_B_T_K.to(device),
            mask_B_T,
            divergence=cfg.divergence,
            jsd_beta=cfg.jsd_beta,
            seq_weight_B=batch.feedback_weight_B,
        )
    metrics.update(m)
    if cfg.repeat_unlikelihood > 0:
        repeated_B_T = losses.repeated_ngram_mask(packed.target_ids_B_T, mask_B_T)  # on the mask's device
        ul, um = losses.repetition_unlikelihood(logp_B_T, repeated_B_T, mask_B_T, batch.feedback_weight_B)
        loss = loss + cfg.repeat_unlikelihood * ul
        metrics.update(um)
    if cfg.kl_coef > 0:
        if reference is None:
            raise ValueError("loss.kl_coef > 0 needs a reference policy")
        with torch.no_grad(), reference.model() as ref_model:
            ref_logp_B_T = losses.token_logprobs(reply_logits(ref_model, packed), packed.target_ids_B_T)
        kl, km = losses.kl_penalty(logp_B_T, ref_logp_B_T, mask_B_T)
        loss = loss + cfg.kl_coef * kl
        metrics.update(km)
    # Sampled-token estimate of KL(student ‖ teacher) on y: what distillation should drive down.
    valid = packed.target_mask_B_T
    metrics["kl_teacher_sampled"] = float((logp_B_T.detach() - batch.teacher_logp_B_T.to(device))[valid].mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _shift_topk(batch: HindsightBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k ids and log-probs and the baseline's log-probs at them, on `device` once for both the
    shifted positions and the shifted target."""
    if batch.baseline_topk_logp_B_T_K is None:
        raise ValueError("loss.head_tokens / shift_peak_ratio need the teacher's and baseline's top-k scores")
    return (batch.topk_ids_B_T_K.to(device), batch.topk_logp_B_T_K.to(device),
            batch.baseline_topk_logp_B_T_K.to(device))


def _shifted_positions(cfg: LossConfig, mask_B_T: torch.Tensor, teacher_B_T: torch.Tensor, baseline_B_T: torch.Tensor,
                       shift_topk: tuple | None, stop_ids: tuple[int, ...], metrics: dict) -> torch.Tensor:
    """The reply tokens that take the shifted target (core/shift_positions.py): the head, and with
    `shift_peak_ratio` the advantage peaks (with `shift_peaks_to=end` only those where the follow-up raises a stop
    id most). All False without a shifted head (`shift_topk` None); counts the peaks outside the head in `metrics`."""
    head_B_T = shift_positions.head_mask(mask_B_T, cfg.head_tokens)  # all False when head_tokens is 0
    if shift_topk is None or cfg.shift_peak_ratio <= 0:
        return head_B_T
    peaks_B_T = shift_positions.advantage_peaks(teacher_B_T, baseline_B_T, mask_B_T, cfg.shift_peak_ratio)
    if cfg.shift_peaks_to == "end":
        if not stop_ids:
            raise ValueError("loss.shift_peaks_to=end needs the batch's stop ids (HindsightBatch.collate)")
        peaks_B_T = peaks_B_T & shift_positions.raised_most_is(*shift_topk, mask_B_T, stop_ids)
    metrics["peak_tokens"] = float((peaks_B_T & ~head_B_T).sum())
    return head_B_T | peaks_B_T


def learner_step(
    model, optimizer, batch: HindsightBatch, cfg: LossConfig, *, grad_clip: float, scheduler=None, reference=None,
    autocast_bf16: bool = False, retain: PackedSequences | None = None,
) -> dict:
    """One optimizer step on `batch`; returns metrics (loss, grad_norm, lr, tokens, loss-specific terms). `retain`:
    replayed reference replies for the retain anchor (used when cfg.retain_coef > 0)."""
    model.train()
    device = _device_of(model)
    retain_metrics = {}
    if retain is not None and cfg.retain_coef > 0:
        retain_metrics = _retain_backward(model, reference, retain, cfg.retain_coef, autocast_bf16)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        loss, metrics = compute_loss(model, batch, cfg, reference)
    loss.backward()
    metrics.update(retain_metrics)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if math.isfinite(float(grad_norm)):
        optimizer.step()
    else:
        metrics["skipped_nonfinite"] = 1.0  # a NaN step would poison every later version
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    if reference is not None:
        reference.update()
    metrics.update(grad_norm=float(grad_norm), lr=optimizer.param_groups[0]["lr"], tokens=float(batch.num_tokens))
    return metrics


def _retain_backward(model, reference, retain: PackedSequences, coef: float, autocast_bf16: bool) -> dict:
    """Accumulate the retain anchor's gradient before the main loss's. Under DDP it runs inside `no_sync`, so the main
    backward all-reduces both together: two forwards before one DDP backward would mark parameters ready twice."""
    if reference is None:
        raise ValueError("loss.retain_coef > 0 needs a reference policy")
    local = model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
    with local:
        with torch.autocast(_device_of(model).type, dtype=torch.bfloat16, enabled=autocast_bf16):
            kl, metrics = retain_loss(model, reference, retain)
        (coef * kl).backward()
    return metrics


@torch.no_grad()
def mean_teacher_kl(model, batch: HindsightBatch, teacher_logits_fn) -> float:
    """Exact mean KL(student ‖ hindsight teacher) over the reply tokens; `teacher_logits_fn(packed)` gives the teacher's
    logits_B_T_V. Used by tests and diagnostics to check that learning moves the student toward the teacher."""
    model.eval()
    packed = batch.packed
    student = reply_logits(model, packed).float()
    teacher = teacher_logits_fn(packed).float()
    return float(losses.exact_divergence(student, teacher, packed.target_mask_B_T, "reverse_kl", 0.5))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
