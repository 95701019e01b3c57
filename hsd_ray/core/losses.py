"""Losses of self-distillation from hindsight: token log-probs, advantages, the sampled-token loss, the top-k
distribution loss, its follow-up-shift form, a KL-to-reference penalty and an exact (full-vocabulary) divergence for
evaluation.

Method: "Aligning Language Models from User Interactions" (arXiv 2603.12273); full-distribution form after SDPO
(arXiv 2601.20802). The learner drives these functions; the teacher/scorer only produces
the inputs (teacher log-probs, optional teacher top-k). Pure torch: tensors in, `(loss, metrics)` out; no Ray, vLLM,
I/O, logging or globals.

Conventions: B = batch, T = reply tokens (right-padded), V = vocab, K = top-k. `mask_B_T` (bool or 0/1 float) marks
real reply tokens. Every loss is a mean over each sequence's own valid tokens, then a mean over the sequences that have
at least one valid token (0 with zero gradient when there is none). Values at masked positions are never read into a
result (padding may hold garbage, even NaN, in `teacher_*`, `baseline_*`, `weights_*`). All arithmetic is float32 or
wider: bf16/fp16 inputs are upcast.

Deviations from the paper / reference code:
- `advantages(center=True)` mean-centres A per sequence (the authors' online variant); the paper's offline loss
  does not.
- `importance_weights` is our addition for stale replies (served by policy v, trained at v+d): min(ratio, cap), the
  cap as in SDPO.
- `topk_divergence_loss` uses the TEACHER's top-k (what vLLM prompt_logprobs returns, k <= 20 by default) plus one tail
  bucket, not the student's top-k (k = 50..100) as in SDPO; see its docstring for the approximation.
- `shifted_topk_loss` (ours) distils the ratio teacher / baseline over the teacher's top-k onto the student, not the
  teacher itself: only what the follow-up changed moves the policy.
- `sampled_token_loss_shifted_head` (ours) takes that shifted target at the reply's first tokens only and the
  sampled-token loss elsewhere (why: its docstring).
- `repetition_unlikelihood` (not in the paper; Welleck et al. 2019) lowers tokens that repeat an n-gram of their own
  reply.
- `kl_penalty` (KL to a frozen reference) is not in the paper (beta = 0 there); offered because drift was measured here.
  Its value estimates KL(pi_theta || pi_ref) (k3); used as a loss on samples from pi_theta its gradient is an unbiased
  estimate of grad KL(pi_ref || pi_theta) (as in GRPO) -- both are zero at, and pull towards, pi_ref.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Divergence = Literal["reverse_kl", "forward_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd")

# Smallest probability a tail bucket may take (log-space floor); keeps log(0) out and gradients finite.
TAIL_FLOOR = 1e-30
_LOG_TAIL_FLOOR = math.log(TAIL_FLOOR)
# Finite stand-in for -inf when excluding entries from a logsumexp (an all-excluded row stays finite, no NaN grads).
_EXCLUDED_LOGIT = -1e30


# ----------------------------------------------------------------------------------------------------------- helpers
def _wide(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; keep float32/float64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _bool(mask_B_T: torch.Tensor) -> torch.Tensor:
    return mask_B_T if mask_B_T.dtype == torch.bool else mask_B_T != 0


def masked_sequence_mean(
    x_B_T: torch.Tensor, mask_B_T: torch.Tensor, seq_weight_B: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of x over each row's valid tokens, then mean over rows with >= 1 valid token (0 if none). No host sync.

    `seq_weight_B` scales each row's mean before the batch mean (the feedback gate's per-turn weight; 0 = the row
    contributes nothing, but it still counts in the denominator, so weights never re-scale the other rows)."""
    m_B_T = _bool(mask_B_T)
    n_B = m_B_T.sum(-1)
    sum_B = torch.where(m_B_T, x_B_T, torch.zeros((), dtype=x_B_T.dtype, device=x_B_T.device)).sum(-1)
    has_B = n_B > 0
    per_seq_B = sum_B / n_B.clamp_min(1).to(sum_B.dtype)
    if seq_weight_B is not None:
        per_seq_B = per_seq_B * seq_weight_B.detach().to(device=per_seq_B.device, dtype=per_seq_B.dtype)
    return (per_seq_B * has_B.to(sum_B.dtype)).sum() / has_B.sum().clamp_min(1).to(sum_B.dtype)


def _token_mean(x_B_T: torch.Tensor, m_B_T: torch.Tensor) -> float:
    """Plain mean over valid tokens (for metrics); 0.0 when there are none."""
    n = int(m_B_T.sum())
    return float(x_B_T[m_B_T].double().sum() / n) if n else 0.0


def _check_divergence(divergence: str, jsd_beta: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if not 0.0 <= jsd_beta <= 1.0:
        raise ValueError(f"jsd_beta must be in [0, 1], got {jsd_beta}")


def _divergence_from_logprobs(
    ls_N: torch.Tensor, lt_N: torch.Tensor, divergence: str, jsd_beta: float
) -> torch.Tensor:
    """Divergence between two normalised distributions given as log-probs over the last dim (finite entries).

    reverse_kl = KL(s || t); forward_kl = KL(t || s); jsd = b KL(t || m) + (1-b) KL(s || m), m = b t + (1-b) s.
    """
    if divergence == "reverse_kl":
        return (ls_N.exp() * (ls_N - lt_N)).sum(-1)
    if divergence == "forward_kl":
        return (lt_N.exp() * (lt_N - ls_N)).sum(-1)
    if jsd_beta == 0.0 or jsd_beta == 1.0:  # m equals one side: both terms vanish (avoids log 0)
        return (ls_N * 0.0).sum(-1)
    lm_N = torch.logaddexp(lt_N + math.log(jsd_beta), ls_N + math.log1p(-jsd_beta))
    kl_t_m = (lt_N.exp() * (lt_N - lm_N)).sum(-1)
    kl_s_m = (ls_N.exp() * (ls_N - lm_N)).sum(-1)
    return jsd_beta * kl_t_m + (1.0 - jsd_beta) * kl_s_m


# --------------------------------------------------------------------------------------------------- log-probs, A, w
def token_logprobs(logits_B_T_V: torch.Tensor, targets_B_T: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32 (or float64 if the logits are float64).

    Computed as logit[target] - logsumexp(logits), which avoids materialising a second V-sized log-softmax tensor.
    Negative targets (e.g. an ignore index of -100 at padding) give 0.
    """
    logits = _wide(logits_B_T_V)
    valid_B_T = targets_B_T >= 0
    safe_B_T = targets_B_T.clamp_min(0)
    picked_B_T = logits.gather(-1, safe_B_T.unsqueeze(-1)).squeeze(-1)
    logp_B_T = picked_B_T - torch.logsumexp(logits, dim=-1)
    return torch.where(valid_B_T, logp_B_T, torch.zeros((), dtype=logp_B_T.dtype, device=logp_B_T.device))


def advantages(
    teacher_logp_B_T: torch.Tensor, baseline_logp_B_T: torch.Tensor, mask_B_T: torch.Tensor, *, center: bool
) -> torch.Tensor:
    """A = teacher - baseline at valid tokens, 0 elsewhere (detached). `center`: subtract each row's mean over its
    valid tokens (online variant), so every row's masked mean of A is 0."""
    m_B_T = _bool(mask_B_T)
    zero = torch.zeros((), dtype=_wide(teacher_logp_B_T).dtype, device=teacher_logp_B_T.device)
    a_B_T = torch.where(m_B_T, _wide(teacher_logp_B_T.detach()) - _wide(baseline_logp_B_T.detach()), zero)
    if center:
        n_B = m_B_T.sum(-1, keepdim=True).clamp_min(1).to(a_B_T.dtype)
        a_B_T = torch.where(m_B_T, a_B_T - a_B_T.sum(-1, keepdim=True) / n_B, zero)
    return a_B_T


def loss_mask(mask_B_T: torch.Tensor, ignore_first_k: int) -> torch.Tensor:
    """Drop the first `ignore_first_k` valid tokens of each row (by position order; any mask layout works).

    Returns a mask of the input's dtype. k <= 0 returns the mask unchanged.
    """
    if ignore_first_k <= 0:
        return mask_B_T
    m_B_T = _bool(mask_B_T)
    rank_B_T = torch.cumsum(m_B_T.to(torch.int64), dim=-1)  # 1-based index among the row's valid tokens
    return (m_B_T & (rank_B_T > ignore_first_k)).to(mask_B_T.dtype)


@torch.no_grad()
def importance_weights(logp_now_B_T: torch.Tensor, logp_served_B_T: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token weight min(exp(logp_now - logp_served), cap) (detached); `cap <= 0` gives weights of 1.

    logp_now is the current policy's log-prob of the served token, logp_served the serving policy's.
    """
    log_ratio_B_T = _wide(logp_now_B_T) - _wide(logp_served_B_T)
    if cap <= 0:
        return torch.ones_like(log_ratio_B_T)
    return torch.exp(log_ratio_B_T.clamp(max=math.log(cap)))


# ------------------------------------------------------------------------------------------------------------ losses
def sampled_token_loss(
    student_logp_B_T: torch.Tensor,
    A_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    weights_B_T: torch.Tensor | None = None,
    seq_weight_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's loss L = -mean_seq( (1/|y|) sum_i stopgrad(A_i) w_i log pi_theta(y_i | x, y_<i) ).

    With A_i = log pi_t(y_i) - log pi_theta(y_i) (uncentred, y ~ pi_theta, w = 1) its gradient is an unbiased
    estimate of grad sum_i KL(pi_theta || pi_t) at the sampled prefixes. A and w are detached here, however they come
    in; padding in A or w (even NaN) is zeroed before it meets log pi, so it reaches neither loss nor gradient.
    Metrics (over valid tokens): adv_mean, adv_abs_mean, adv_pos_frac, tokens, loss, and weight_mean when weighted.
    """
    m_B_T = _bool(mask_B_T)
    terms_B_T, metrics = _sampled_token_terms(student_logp_B_T, A_B_T, m_B_T, weights_B_T)
    loss = masked_sequence_mean(terms_B_T, m_B_T, seq_weight_B)
    return loss, {"loss": float(loss.detach()), **metrics}


def _sampled_token_terms(
    student_logp_B_T: torch.Tensor, A_B_T: torch.Tensor, m_B_T: torch.Tensor, weights_B_T: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token -A_i w_i log pi(y_i), zero outside the bool mask `m_B_T`, and the advantage metrics over it
    (adv_mean, adv_abs_mean, adv_pos_frac, tokens, and weight_mean when weighted)."""
    logp_B_T = _wide(student_logp_B_T)
    coef_B_T = _wide(A_B_T.detach())
    if weights_B_T is not None:
        coef_B_T = coef_B_T * _wide(weights_B_T.detach())
    # Zero the coefficient at padding before it meets logp, so garbage there cannot reach the gradient.
    coef_B_T = torch.where(m_B_T, coef_B_T, torch.zeros((), dtype=coef_B_T.dtype, device=coef_B_T.device))
    with torch.no_grad():
        a_B_T = A_B_T.detach()
        metrics = {
            "adv_mean": _token_mean(a_B_T, m_B_T),
            "adv_abs_mean": _token_mean(a_B_T.abs(), m_B_T),
            "adv_pos_frac": _token_mean((a_B_T > 0).double(), m_B_T),
            "tokens": float(m_B_T.sum()),
        }
        if weights_B_T is not None:
            metrics["weight_mean"] = _token_mean(weights_B_T.detach(), m_B_T)
    return -coef_B_T.to(logp_B_T.dtype) * logp_B_T, metrics


def bucket_logprobs(logp_B_T_V: torch.Tensor, ids_B_T_K: torch.Tensor) -> torch.Tensor:
    """Log-probs of K+1 buckets: the K given ids, then one tail bucket holding all remaining mass.

    Accepts log-probs or raw logits (it renormalises). The tail is logsumexp over the ids NOT in the set (exact in
    float32 even when the tail is ~1e-10, unlike log1p(-sum p)), floored at TAIL_FLOOR mass so K = V gives a finite
    tail instead of log 0; bucket log-probs are likewise clamped at log(TAIL_FLOOR) (for -inf logits). `exp` of the
    result sums to 1 (+ at most TAIL_FLOOR). Ids must be distinct within a position.
    Memory: one extra V-sized float copy (plus the float32 upcast of half-precision input); chunk over T if needed.
    """
    logits = _wide(logp_B_T_V)
    lse_B_T_1 = torch.logsumexp(logits, dim=-1, keepdim=True)
    top_B_T_K = (logits.gather(-1, ids_B_T_K) - lse_B_T_1).clamp(min=_LOG_TAIL_FLOOR)  # -inf logits stay finite
    rest_B_T_V = logits.scatter(-1, ids_B_T_K, _EXCLUDED_LOGIT)
    tail_B_T_1 = torch.logsumexp(rest_B_T_V, dim=-1, keepdim=True) - lse_B_T_1
    tail_B_T_1 = torch.logaddexp(tail_B_T_1, torch.full_like(tail_B_T_1, _LOG_TAIL_FLOOR))
    return torch.cat([top_B_T_K, tail_B_T_1], dim=-1)


@torch.no_grad()
def teacher_bucket_logprobs(teacher_topk_logp_B_T_K: torch.Tensor) -> torch.Tensor:
    """Teacher's K+1 bucket log-probs from its top-k log-probs only: tail = log(1 - sum p), floored at TAIL_FLOOR.

    Computed in float64 (cheap: K-sized) so a tail near the float32 resolution is not lost to cancellation; then
    renormalised so the K+1 buckets sum to exactly 1 even when rounding made sum(top-k) >= 1. Returns float32 (float64
    input stays float64). Entries of -inf are clamped to log(TAIL_FLOOR).
    """
    out_dtype = _wide(teacher_topk_logp_B_T_K).dtype
    top_B_T_K = teacher_topk_logp_B_T_K.double().clamp(min=_LOG_TAIL_FLOOR, max=0.0)
    lse_B_T_1 = torch.logsumexp(top_B_T_K, dim=-1, keepdim=True)
    tail_B_T_1 = torch.log(-torch.expm1(lse_B_T_1.clamp(max=-TAIL_FLOOR)))  # log(1 - sum p), >= ~log(TAIL_FLOOR)
    buckets_B_T_K1 = torch.cat([top_B_T_K, tail_B_T_1.clamp(min=_LOG_TAIL_FLOOR)], dim=-1)
    buckets_B_T_K1 = buckets_B_T_K1 - torch.logsumexp(buckets_B_T_K1, dim=-1, keepdim=True)
    return buckets_B_T_K1.to(out_dtype)


def _sanitised_topk(
    student_logits_B_T_V: torch.Tensor, topk_ids_B_T_K: torch.Tensor, m_B_T: torch.Tensor, *topk_logps_B_T_K
) -> tuple[torch.Tensor, ...]:
    """The top-k ids and log-probs with padding made harmless: distinct placeholder ids and a uniform distribution
    (float64, detached) at masked positions, so nothing there can produce NaN. Checks K <= V."""
    K, V = topk_ids_B_T_K.shape[-1], student_logits_B_T_V.shape[-1]
    if K > V:
        raise ValueError(f"top-k K={K} exceeds vocab V={V}")
    m_B_T_1 = m_B_T.unsqueeze(-1)
    placeholder_K = torch.arange(K, device=topk_ids_B_T_K.device, dtype=topk_ids_B_T_K.dtype)
    uniform = torch.full((), -math.log(K + 1), dtype=torch.float64, device=topk_ids_B_T_K.device)
    return (torch.where(m_B_T_1, topk_ids_B_T_K, placeholder_K),
            *(torch.where(m_B_T_1, lp.detach().to(torch.float64), uniform) for lp in topk_logps_B_T_K))


def topk_divergence_loss(
    student_logits_B_T_V: torch.Tensor,
    topk_ids_B_T_K: torch.Tensor,
    teacher_topk_logp_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    divergence: Divergence = "reverse_kl",
    jsd_beta: float = 0.5,
    seq_weight_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Full-distribution distillation loss over K+1 buckets: the teacher's top-k token ids plus one tail bucket.

    Buckets: student p_s(b) = softmax(student logits) at the K ids and tail_s = 1 - sum (see `bucket_logprobs`);
    teacher p_t(b) = exp(teacher_topk_logp) and tail_t = 1 - sum, floored at TAIL_FLOOR (`teacher_bucket_logprobs`).
    Each side's K+1 buckets sum to 1. Per token: reverse_kl = KL(p_s || p_t), forward_kl = KL(p_t || p_s),
    jsd = beta KL(p_t || m) + (1-beta) KL(p_s || m) with m = beta p_t + (1-beta) p_s. Then per-sequence mean, then
    batch mean.
    The teacher side carries no gradient.

    Approximation: the buckets are the TEACHER's top-k (what vLLM prompt_logprobs returns; k <= 20 with vLLM's default
    max_logprobs) plus a tail, so all student mass outside the teacher's top-k is lumped into one tail bucket and only
    its total is matched (the divergence over buckets is a lower bound on the full one, by the data-processing
    inequality). With K = V (every id at every position, any order) the tail is empty and the loss equals
    `exact_divergence`. SDPO instead uses the student's top-k (k = 50..100), which vLLM does not return for the teacher.

    Requirements: ids distinct within each position (pass the teacher's top-k; if the engine adds the sampled token when
    it is outside the top-k, drop it or keep K fixed per batch). Ids/log-probs at masked positions are ignored.
    Metrics: topk_div (the loss), student_tail_mass and teacher_tail_mass (means over valid tokens: how much the
    approximation lumps), tokens.
    """
    _check_divergence(divergence, jsd_beta)
    m_B_T = _bool(mask_B_T)
    ids_B_T_K, t_top_B_T_K = _sanitised_topk(student_logits_B_T_V, topk_ids_B_T_K, m_B_T, teacher_topk_logp_B_T_K)
    ls_B_T_K1 = bucket_logprobs(student_logits_B_T_V, ids_B_T_K)
    lt_B_T_K1 = teacher_bucket_logprobs(t_top_B_T_K).to(ls_B_T_K1.dtype)
    div_B_T = _divergence_from_logprobs(ls_B_T_K1, lt_B_T_K1, divergence, jsd_beta)
    loss = masked_sequence_mean(div_B_T, m_B_T, seq_weight_B)
    with torch.no_grad():
        metrics = {
            "topk_div": float(loss.detach()),
            "student_tail_mass": _token_mean(ls_B_T_K1[..., -1].exp(), m_B_T),
            "teacher_tail_mass": _token_mean(lt_B_T_K1[..., -1].exp(), m_B_T),
            "tokens": float(m_B_T.sum()),
        }
    return loss, metrics


def shifted_topk_loss(
    student_logits_B_T_V: torch.Tensor,
    topk_ids_B_T_K: torch.Tensor,
    teacher_topk_logp_B_T_K: torch.Tensor,
    baseline_topk_logp_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    scale: float = 1.0,
    seq_weight_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Distil only what the follow-up changed: forward KL(q || p_s) over the teacher's K+1 buckets, with the target
    q ∝ p_s · (p_teacher / p_baseline)^scale (student side of q detached).

    The teacher sees the user's follow-up, the baseline the same hindsight context with the reference follow-up; both
    are scored by the same weights (core/scoring.py), `baseline_topk_logp_B_T_K` at the teacher's top-k ids. Where the
    follow-up changes nothing (teacher == baseline) q = p_s and the gradient is zero, whatever the teacher and student
    disagree about otherwise (the hindsight prompt's own effect); where it raises a token the student never samples
    (a user's name at the first position), q raises it too — which the sampled-token loss cannot, it only reweighs the
    sampled token. It is the sampled-token loss's advantage log p_t − log p_b taken over the top-k instead of one token
    (a product-of-experts target as in proxy-tuning / contrastive decoding). With scale 1 and p_s == p_b it equals
    forward-KL top-k distillation towards the teacher. q is re-formed from the current student at every step, so
    repeated steps keep moving it (bounded by the KL anchor), unlike a fixed target.

    Buckets as `topk_divergence_loss` (teacher top-k + tail; `teacher_bucket_logprobs` for both teacher and baseline,
    so a baseline top-k that sums past 1 is renormalised). Ids/log-probs at masked positions are ignored.
    Metrics: shift_div (the loss), shift_tv (mean total variation between q and p_s: how far the follow-up moves the
    student per token), tokens.
    """
    m_B_T = _bool(mask_B_T)
    div_B_T, tv_B_T = _shifted_divergence(student_logits_B_T_V, topk_ids_B_T_K, teacher_topk_logp_B_T_K,
                                          baseline_topk_logp_B_T_K, m_B_T, scale)
    loss = masked_sequence_mean(div_B_T, m_B_T, seq_weight_B)
    metrics = {"shift_div": float(loss.detach()), "shift_tv": _token_mean(tv_B_T, m_B_T), "tokens": float(m_B_T.sum())}
    return loss, metrics


def _shifted_divergence(
    student_logits_B_T_V: torch.Tensor, topk_ids_B_T_K: torch.Tensor, teacher_topk_logp_B_T_K: torch.Tensor,
    baseline_topk_logp_B_T_K: torch.Tensor, m_B_T: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(q || p_s) of `shifted_topk_loss` (differentiable) and the total variation between q and p_s
    (detached); values at positions outside the bool mask `m_B_T` are finite and never read."""
    ids_B_T_K, t_B_T_K, b_B_T_K = _sanitised_topk(student_logits_B_T_V, topk_ids_B_T_K, m_B_T,
                                                  teacher_topk_logp_B_T_K, baseline_topk_logp_B_T_K)
    ls_B_T_K1 = bucket_logprobs(student_logits_B_T_V, ids_B_T_K)
    with torch.no_grad():
        shift_B_T_K1 = (teacher_bucket_logprobs(t_B_T_K) - teacher_bucket_logprobs(b_B_T_K)).to(ls_B_T_K1.dtype)
        lq_B_T_K1 = torch.log_softmax(ls_B_T_K1.detach() + scale * shift_B_T_K1, dim=-1)
        q_B_T_K1 = lq_B_T_K1.exp()
        tv_B_T = 0.5 * (q_B_T_K1 - ls_B_T_K1.exp()).abs().sum(-1)
    return (q_B_T_K1 * (lq_B_T_K1 - ls_B_T_K1)).sum(-1), tv_B_T


def sampled_token_loss_shifted_head(
    student_logits_B_T_V: torch.Tensor,
    student_logp_B_T: torch.Tensor,
    A_B_T: torch.Tensor,
    topk_ids_B_T_K: torch.Tensor,
    teacher_topk_logp_B_T_K: torch.Tensor,
    baseline_topk_logp_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    head_B_T: torch.Tensor,
    *,
    scale: float = 1.0,
    weights_B_T: torch.Tensor | None = None,
    seq_weight_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The sampled-token loss, except at the `head_B_T` positions (the reply's first tokens, and with
    `shift_positions.advantage_peaks` the tokens where A peaks), which take the `shifted_topk_loss` divergence.
    Every valid token weighs 1/|y| in its row's mean, as in `sampled_token_loss`.

    Why (ours; measured in bench/learning/README.md, "A shifted head"): a complaint's advantage is largest, and
    negative, at the reply's first token (the usual opener the teacher would not have written). Pushing a sampled
    token down raises every other token in proportion to the student's own probability, so repeated steps hand the
    opener's mass to the student's tail (stray letters, quotes, its own name) instead of to what the complaint asked
    for. At the head the target is q ∝ p_s · p_teacher / p_baseline over the teacher's top-k: the mass goes where
    the follow-up raised it.
    `A_B_T` should be zero (and centred) outside the head, as `advantages(..., mask & ~head)` gives.
    Metrics: those of `sampled_token_loss` on the rest (tokens: all valid ones), shift_tv on the head, head_tokens.
    """
    m_B_T = _bool(mask_B_T)
    h_B_T = _bool(head_B_T) & m_B_T
    terms_B_T, metrics = _sampled_token_terms(student_logp_B_T, A_B_T, m_B_T & ~h_B_T, weights_B_T)
    div_B_T, tv_B_T = _shifted_divergence(student_logits_B_T_V, topk_ids_B_T_K, teacher_topk_logp_B_T_K,
                                          baseline_topk_logp_B_T_K, h_B_T, scale)
    loss = masked_sequence_mean(torch.where(h_B_T, div_B_T.to(terms_B_T.dtype), terms_B_T), m_B_T, seq_weight_B)
    return loss, {**metrics, "loss": float(loss.detach()), "tokens": float(m_B_T.sum()),
                  "shift_tv": _token_mean(tv_B_T, h_B_T), "head_tokens": float(h_B_T.sum())}


REPEAT_NGRAM = 4  # token n-gram: "1. Use a bike's brakes." twice repeats 4-grams; an item's "\n\n2. The" does not


def repeated_ngram_mask(ids_B_T: torch.Tensor, mask_B_T: torch.Tensor, n: int = REPEAT_NGRAM) -> torch.Tensor:
    """Bool mask of the valid tokens that complete a token n-gram already complete earlier in the same row (all n
    tokens valid both times). The first occurrence is never marked, only what repeats it."""
    m_B_T = _bool(mask_B_T)
    rows = []
    for row, ok in zip(ids_B_T.tolist(), m_B_T.tolist()):  # one host copy; the mask is built there, sent once
        seen: set[tuple[int, ...]] = set()
        marks = [False] * len(row)
        for t in range(n - 1, len(row)):
            if not all(ok[t - n + 1:t + 1]):
                continue
            gram = tuple(row[t - n + 1:t + 1])
            marks[t] = gram in seen
            seen.add(gram)
        rows.append(marks)
    return torch.tensor(rows, dtype=torch.bool, device=m_B_T.device).reshape(m_B_T.shape)


def repetition_unlikelihood(
    student_logp_B_T: torch.Tensor, repeated_B_T: torch.Tensor, mask_B_T: torch.Tensor,
    seq_weight_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Unlikelihood of repeating (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training", its
    sequence-level n-gram form): -log(1 - pi_theta(y_i)) at the tokens that repeat an n-gram of their own reply,
    0 elsewhere, averaged like every loss here (1/|y| per row). Why (ours): every trained run's served version loops
    several times as often as the base (bench/learning/README.md, "A shifted head"), and nothing in the hindsight
    signal tells the student not to repeat itself. Metrics: repeat_frac (share of valid tokens), repeat_ul."""
    m_B_T = _bool(mask_B_T)
    r_B_T = _bool(repeated_B_T) & m_B_T
    logp_B_T = _wide(student_logp_B_T).clamp(max=math.log1p(-1e-6))  # p < 1, so log(1 - p) stays finite
    zero = torch.zeros((), dtype=logp_B_T.dtype, device=logp_B_T.device)
    ul_B_T = torch.where(r_B_T, -torch.log(-torch.expm1(logp_B_T)), zero)
    loss = masked_sequence_mean(ul_B_T, m_B_T, seq_weight_B)
    return loss, {"repeat_ul": float(loss.detach()), "repeat_frac": _token_mean(r_B_T.double(), m_B_T)}


def kl_penalty(
    student_logp_B_T: torch.Tensor, ref_logp_B_T: torch.Tensor, mask_B_T: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """k3 estimator of KL(pi_theta || pi_ref) on the sampled reply tokens: r = ref - student, kl = exp(r) - r - 1 >= 0.

    Gradient flows through `student_logp_B_T` only. d kl / d student_logp = 1 - pi_ref/pi_theta: pushes log pi_theta
    down where it exceeds the reference and up where it is below. Multiply by your beta. Metric: kl_ref.
    """
    m_B_T = _bool(mask_B_T)
    student = _wide(student_logp_B_T)
    zero = torch.zeros((), dtype=student.dtype, device=student.device)
    # Sanitise padding before exp so garbage there cannot overflow into a NaN gradient.
    r_B_T = torch.where(m_B_T, _wide(ref_logp_B_T.detach()).to(student.dtype) - student, zero)
    kl_B_T = torch.exp(r_B_T) - r_B_T - 1.0
    loss = masked_sequence_mean(kl_B_T, m_B_T)
    return loss, {"kl_ref": float(loss.detach())}


def exact_divergence(
    student_logits_B_T_V: torch.Tensor,
    teacher_logits_B_T_V: torch.Tensor,
    mask_B_T: torch.Tensor,
    divergence: Divergence = "reverse_kl",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Exact full-vocabulary divergence per token (same definitions as `topk_divergence_loss`), per-sequence mean, then
    batch mean. For evaluation ("mean KL(student || hindsight teacher)") and tests. Teacher side is detached.
    Log-probs are clamped at log(TAIL_FLOOR) so -inf logits (e.g. masked vocab padding) give finite values, not NaN.
    Memory: a few V-sized float32 copies; chunk over T for long sequences with large vocabularies.
    """
    _check_divergence(divergence, jsd_beta)
    ls_B_T_V = torch.log_softmax(_wide(student_logits_B_T_V), dim=-1).clamp(min=_LOG_TAIL_FLOOR)
    lt_B_T_V = torch.log_softmax(_wide(teacher_logits_B_T_V.detach()), dim=-1).clamp(min=_LOG_TAIL_FLOOR)
    lt_B_T_V = lt_B_T_V.to(ls_B_T_V.dtype)
    div_B_T = _divergence_from_logprobs(ls_B_T_V, lt_B_T_V, divergence, jsd_beta)
    return masked_sequence_mean(div_B_T, mask_B_T)
