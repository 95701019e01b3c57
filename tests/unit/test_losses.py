"""Unit tests for hsd_ray.core.losses: every function against a float64 reference written with plain loops, gradients
against float64 autograd, the K = V identity of the top-k loss, tail-bucket edge cases, and a Monte-Carlo check that the
sampled-token loss gives an unbiased reverse-KL gradient."""

from __future__ import annotations

import math

import pytest
import torch

from hsd_ray.core import losses as L

pytestmark = pytest.mark.unit

B, T, V, K = 5, 7, 11, 4
LENGTHS = [7, 3, 0, 5, 1]  # ragged, incl. an all-masked row


# ---------------------------------------------------------------------------------------------------------- fixtures
def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prefix_mask(lengths: list[int], t: int = T) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def rand_logits(g: torch.Generator, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).float()


def teacher_topk(g: torch.Generator, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher's top-k ids (descending) and float32 log-probs, like vLLM prompt_logprobs."""
    t_logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2.0
    t_logp = torch.log_softmax(t_logits, -1)
    vals, ids = t_logp.topk(k, dim=-1)
    return ids, vals.float()


def close(got: torch.Tensor | float, ref: torch.Tensor | float, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    got_t = torch.as_tensor(got, dtype=torch.float64)
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    torch.testing.assert_close(got_t, ref_t, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------ float64 loop references
def ref_logsoftmax(x_V: torch.Tensor) -> torch.Tensor:
    m = x_V.max()
    return x_V - m - torch.log(torch.exp(x_V - m).sum())


def ref_seq_mean(per_token: list[list[torch.Tensor]]) -> torch.Tensor:
    """per_token[b] = list of valid-token values; mean per row, then over non-empty rows."""
    rows = [sum(vals) / len(vals) for vals in per_token if vals]
    return sum(rows) / len(rows) if rows else torch.zeros((), dtype=torch.float64)


def valid_positions(mask: torch.Tensor) -> list[list[int]]:
    return [[t for t in range(mask.shape[1]) if bool(mask[b, t])] for b in range(mask.shape[0])]


def ref_divergence(ls: torch.Tensor, lt: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for j in range(ls.shape[0]):
        ps, pt = torch.exp(ls[j]), torch.exp(lt[j])
        if kind == "reverse_kl":
            total = total + ps * (ls[j] - lt[j])
        elif kind == "forward_kl":
            total = total + pt * (lt[j] - ls[j])
        else:
            pm = beta * pt + (1 - beta) * ps
            total = total + beta * pt * (lt[j] - torch.log(pm)) + (1 - beta) * ps * (ls[j] - torch.log(pm))
    return total


def ref_student_buckets(logits_V: torch.Tensor, ids_K: list[int]) -> torch.Tensor:
    p = torch.exp(ref_logsoftmax(logits_V))
    top = [p[i] for i in ids_K]
    tail = sum(p[i] for i in range(p.shape[0]) if i not in ids_K)
    return torch.log(torch.stack(top + [torch.as_tensor(tail, dtype=torch.float64)]))


def ref_teacher_buckets(logp_K: torch.Tensor) -> torch.Tensor:
    tail = 1.0 - sum(math.exp(float(x)) for x in logp_K)
    return torch.log(torch.tensor([math.exp(float(x)) for x in logp_K] + [max(tail, 1e-300)], dtype=torch.float64))


def ref_topk_loss(logits64, ids, t_logp, mask, kind, beta):
    per = []
    for b, ts in enumerate(valid_positions(mask)):
        per.append([])
        for t in ts:
            ls = ref_student_buckets(logits64[b, t], [int(i) for i in ids[b, t]])
            lt = ref_teacher_buckets(t_logp[b, t].double())
            per[b].append(ref_divergence(ls, lt, kind, beta))
    return ref_seq_mean(per)


# ------------------------------------------------------------------------------------------------- token_logprobs
def test_token_logprobs_matches_reference():
    g = gen(1)
    logits = rand_logits(g, B, T, V)
    targets = torch.randint(0, V, (B, T), generator=g)
    got = L.token_logprobs(logits, targets)
    assert got.dtype == torch.float32
    for b in range(B):
        for t in range(T):
            close(got[b, t], ref_logsoftmax(logits[b, t].double())[targets[b, t]])


def test_token_logprobs_upcasts_bf16_and_ignores_negative_targets():
    g = gen(2)
    logits = (rand_logits(g, B, T, V, scale=8.0) + 30.0).to(torch.bfloat16)  # large offset: bf16 lse would be off
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = -100
    got = L.token_logprobs(logits, targets)
    assert got.dtype == torch.float32
    assert got[0, 0] == 0.0
    for b in range(B):
        for t in range(T):
            if (b, t) != (0, 0):
                close(got[b, t], ref_logsoftmax(logits[b, t].double())[targets[b, t]], atol=1e-6)


# ------------------------------------------------------------------------------------------- advantages / masks / w
@pytest.mark.parametrize("center", [False, True])
def test_advantages_matches_reference(center):
    g = gen(3)
    mask = prefix_mask(LENGTHS)
    teacher, base = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    teacher = teacher.masked_fill(~mask, float("nan"))  # garbage at padding must not leak
    got = L.advantages(teacher.clone().requires_grad_(), base, mask.float(), center=center)
    assert not got.requires_grad
    for b, ts in enumerate(valid_positions(mask)):
        raw = {t: float(teacher[b, t]) - float(base[b, t]) for t in ts}
        mean = sum(raw.values()) / len(raw) if (center and raw) else 0.0
        for t in range(T):
            close(got[b, t], raw[t] - mean if t in raw else 0.0)


def test_centering_makes_each_sequence_mean_zero():
    g = gen(4)
    mask = prefix_mask(LENGTHS)
    a = L.advantages(torch.randn(B, T, generator=g) + 3.0, torch.randn(B, T, generator=g), mask, center=True)
    for b, ts in enumerate(valid_positions(mask)):
        if ts:
            assert abs(sum(float(a[b, t]) for t in ts) / len(ts)) < 1e-6
    assert float(a[~mask].abs().sum()) == 0.0


@pytest.mark.parametrize("k", [0, 1, 2, 10])
def test_loss_mask_drops_exactly_first_k_valid_tokens(k):
    g = gen(5)
    masks = [prefix_mask(LENGTHS), torch.rand(B, T, generator=g) < 0.6]  # right-padded, and arbitrary holes
    for mask in masks:
        got = L.loss_mask(mask, k)
        assert got.dtype == mask.dtype
        for b, ts in enumerate(valid_positions(mask)):
            keep = set(ts[k:])
            assert [t for t in range(T) if bool(got[b, t])] == sorted(keep)
    got_f = L.loss_mask(prefix_mask(LENGTHS).float(), 2)
    assert got_f.dtype == torch.float32 and got_f.sum() == sum(max(n - 2, 0) for n in LENGTHS)


def test_importance_weights_capped_and_detached():
    g = gen(6)
    now = (torch.randn(B, T, generator=g) * 2).requires_grad_()
    served = torch.randn(B, T, generator=g) * 2
    cap = 2.0
    w = L.importance_weights(now, served, cap)
    assert not w.requires_grad and float(w.max()) <= cap + 1e-6
    assert float(w.max()) == pytest.approx(cap) and float(w.min()) < 1.0  # both regimes present
    for b in range(B):
        for t in range(T):
            close(w[b, t], min(math.exp(float(now.detach()[b, t]) - float(served[b, t])), cap))
    assert torch.equal(L.importance_weights(now, served, 0.0), torch.ones(B, T))
    huge = L.importance_weights(torch.full((2,), 500.0), torch.zeros(2), 2.0)
    assert torch.isfinite(huge).all() and torch.allclose(huge, torch.full((2,), 2.0))


# ---------------------------------------------------------------------------------------------- sampled_token_loss
@pytest.mark.parametrize("weighted", [False, True])
def test_sampled_token_loss_value_grad_metrics(weighted):
    g = gen(7)
    mask = prefix_mask(LENGTHS)
    logp = (-torch.rand(B, T, generator=g) * 5).float().requires_grad_()
    A = torch.randn(B, T, generator=g).masked_fill(~mask, 0.0)
    w = (torch.rand(B, T, generator=g) * 2).masked_fill(~mask, float("nan")) if weighted else None
    loss, m = L.sampled_token_loss(logp, A, mask, w)
    loss.backward()

    logp64 = logp.detach().double().requires_grad_()
    per = [[A[b, t].double() * (w[b, t].double() if weighted else 1.0) * logp64[b, t] for t in ts]
           for b, ts in enumerate(valid_positions(mask))]
    ref = -ref_seq_mean(per)
    ref.backward()
    close(loss, ref)
    close(logp.grad, logp64.grad)
    vals = [float(A[b, t]) for b, ts in enumerate(valid_positions(mask)) for t in ts]
    assert m["tokens"] == len(vals) == sum(LENGTHS)
    close(m["adv_mean"], sum(vals) / len(vals))
    close(m["adv_abs_mean"], sum(abs(v) for v in vals) / len(vals))
    close(m["adv_pos_frac"], sum(v > 0 for v in vals) / len(vals))


def test_sampled_token_loss_stops_gradient_through_advantage():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    A = torch.tensor([[0.5, -1.0]], requires_grad=True)
    loss, _ = L.sampled_token_loss(logp, A, torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert A.grad is None
    close(logp.grad, torch.tensor([[-0.25, 0.5]]))


def test_losses_on_fully_masked_batch_are_zero_with_zero_grad():
    g = gen(8)
    mask = torch.zeros(B, T, dtype=torch.bool)
    logits = rand_logits(g, B, T, V).requires_grad_()
    ids, t_logp = teacher_topk(g)
    logp = L.token_logprobs(logits, torch.zeros(B, T, dtype=torch.long))
    l1, m1 = L.sampled_token_loss(logp, torch.randn(B, T, generator=g), mask)
    l2, _ = L.topk_divergence_loss(logits, ids, t_logp, mask)
    l3, _ = L.kl_penalty(logp, torch.randn(B, T, generator=g), mask)
    (l1 + l2 + l3).backward()
    assert float(l1.detach()) == float(l2.detach()) == float(l3.detach()) == 0.0
    assert m1["tokens"] == 0 and m1["adv_mean"] == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------------- monte-carlo check
def test_sampled_token_loss_gradient_is_unbiased_reverse_kl_gradient():
    g = gen(9)
    n = 200_000
    theta = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    teacher_logp = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    p = torch.softmax(theta.detach(), -1)
    y = torch.multinomial(p, n, replacement=True, generator=g)

    student_logp_N_1 = torch.log_softmax(theta, -1)[y].unsqueeze(-1)
    A_N_1 = (teacher_logp[y].unsqueeze(-1) - student_logp_N_1).detach()  # no centering
    loss, _ = L.sampled_token_loss(student_logp_N_1, A_N_1, torch.ones(n, 1, dtype=torch.bool))
    (est,) = torch.autograd.grad(loss, theta)

    per_sample = -A_N_1 * (torch.nn.functional.one_hot(y, 5).double() - p)  # grad of -A log p_theta(y), per sample
    close(est, per_sample.mean(0), rtol=1e-9, atol=1e-12)
    se = per_sample.std(0) / math.sqrt(n)

    ls = torch.log_softmax(theta, -1)
    (exact,) = torch.autograd.grad((ls.exp() * (ls - teacher_logp)).sum(), theta)
    assert exact.abs().max() > 0.05  # the check is not vacuous
    assert ((est - exact).abs() <= 3.5 * se + 1e-12).all(), (est, exact, se)
    assert (est - exact).abs().max() < 2e-2


# ------------------------------------------------------------------------------------------------- top-k / buckets
def test_bucket_logprobs_matches_reference_and_sums_to_one():
    g = gen(10)
    logits = rand_logits(g, B, T, V)
    ids, _ = teacher_topk(g)
    got = L.bucket_logprobs(torch.log_softmax(logits, -1), ids)
    assert got.shape == (B, T, K + 1)
    close(L.bucket_logprobs(logits, ids), got, rtol=1e-6, atol=1e-6)  # raw logits work too
    close(got.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
    for b in range(B):
        for t in range(T):
            close(got[b, t], ref_student_buckets(logits[b, t].double(), [int(i) for i in ids[b, t]]), atol=1e-6)


def test_teacher_buckets_sum_to_one():
    g = gen(11)
    _, t_logp = teacher_topk(g)
    lt = L.teacher_bucket_logprobs(t_logp)
    close(lt.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
    for b in range(B):
        for t in range(T):
            close(lt[b, t], ref_teacher_buckets(t_logp[b, t]), atol=1e-6)
    # rounding can make an engine's top-k log-probs sum past 1 (here every id, shifted up by 1e-5): still sums to 1
    over = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64), -1).float() + 1e-5
    lt_over = L.teacher_bucket_logprobs(over)
    assert torch.isfinite(lt_over).all()
    close(lt_over.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)


@pytest.mark.parametrize("divergence,beta", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2)])
def test_topk_divergence_loss_value_and_grad(divergence, beta):
    g = gen(12)
    mask = prefix_mask(LENGTHS)
    logits = rand_logits(g, B, T, V).requires_grad_()
    ids, t_logp = teacher_topk(g)
    ids = ids.masked_fill(~mask[..., None], -1)  # garbage at padding must be ignored
    t_logp = t_logp.masked_fill(~mask[..., None], float("nan"))
    loss, m = L.topk_divergence_loss(logits, ids, t_logp, mask, divergence=divergence, jsd_beta=beta)
    loss.backward()

    logits64 = logits.detach().double().requires_grad_()
    ref = ref_topk_loss(logits64, ids, t_logp, mask, divergence, beta)
    ref.backward()
    assert float(ref.detach()) > 1e-3
    close(loss, ref)
    close(logits.grad, logits64.grad, atol=1e-6 * float(logits64.grad.abs().max()))
    assert m["tokens"] == sum(LENGTHS) and 0.0 < m["teacher_tail_mass"] < 1.0 and 0.0 < m["student_tail_mass"] < 1.0


@pytest.mark.parametrize("divergence,beta", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.5), ("jsd", 0.7)])
def test_exact_divergence_matches_reference(divergence, beta):
    g = gen(13)
    mask = prefix_mask(LENGTHS)
    s, t = rand_logits(g, B, T, V), rand_logits(g, B, T, V)
    got = L.exact_divergence(s, t, mask.float(), divergence, beta)
    per = [[ref_divergence(ref_logsoftmax(s[b, i].double()), ref_logsoftmax(t[b, i].double()), divergence, beta)
            for i in ts] for b, ts in enumerate(valid_positions(mask))]
    close(got, ref_seq_mean(per))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_topk_with_full_vocab_equals_exact_divergence(divergence):
    g = gen(14)
    mask = prefix_mask(LENGTHS)
    s_logits = rand_logits(g, B, T, V).requires_grad_()
    t_logits = rand_logits(g, B, T, V)
    ids = torch.argsort(torch.rand(B, T, V, generator=g), dim=-1)  # every id, random order
    t_logp = torch.log_softmax(t_logits, -1).gather(-1, ids)
    loss, m = L.topk_divergence_loss(s_logits, ids, t_logp, mask, divergence=divergence, jsd_beta=0.3)
    exact = L.exact_divergence(s_logits, t_logits, mask, divergence, 0.3)
    assert float(exact.detach()) > 1e-2
    close(loss, exact, rtol=1e-5, atol=1e-6)
    (g_topk,) = torch.autograd.grad(loss, s_logits)
    (g_exact,) = torch.autograd.grad(exact, s_logits)
    assert torch.isfinite(g_topk).all()
    close(g_topk, g_exact, rtol=1e-4, atol=1e-6)
    # student tail: exactly the floor; teacher tail: only float32 rounding of its log-probs (sum != 1 by ~1e-8)
    assert m["student_tail_mass"] < 1e-20 and m["teacher_tail_mass"] < 1e-6
    s_buckets = L.bucket_logprobs(s_logits, ids).exp().sum(-1)
    t_buckets = L.teacher_bucket_logprobs(t_logp).exp().sum(-1)
    close(s_buckets, torch.ones(B, T), rtol=0, atol=1e-6)
    close(t_buckets, torch.ones(B, T), rtol=0, atol=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_topk_with_tiny_tail_is_finite_and_accurate(divergence):
    """Top-k covers all but ~1e-9 of the mass on both sides: no NaN/inf, buckets sum to 1, matches float64."""
    g = gen(15)
    mask = prefix_mask(LENGTHS)
    ids = torch.argsort(torch.rand(B, T, V, generator=g), dim=-1)[..., :K]
    base = torch.full((B, T, V), -23.0)  # each outside token ~1e-10 relative to a top token
    s_logits = base.scatter(-1, ids, torch.randn(B, T, K, generator=g) * 0.5).requires_grad_()
    t_logits = base.scatter(-1, ids, torch.randn(B, T, K, generator=g) * 0.5)
    t_logp = torch.log_softmax(t_logits.double(), -1).gather(-1, ids).float()
    ls = L.bucket_logprobs(s_logits, ids)
    lt = L.teacher_bucket_logprobs(t_logp)
    for side in (ls, lt):
        assert torch.isfinite(side).all()
        close(side.exp().sum(-1), torch.ones(B, T), rtol=0, atol=1e-6)
    assert 1e-10 < float(ls.detach()[..., -1].exp().min()) and float(ls.detach()[..., -1].exp().max()) < 1e-8

    loss, _ = L.topk_divergence_loss(s_logits, ids, t_logp, mask, divergence=divergence)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_logits.grad).all()
    logits64 = s_logits.detach().double().requires_grad_()
    ref = ref_topk_loss(logits64, ids, t_logp, mask, divergence, 0.5)
    ref.backward()
    close(loss, ref, rtol=1e-4, atol=1e-6)
    close(s_logits.grad, logits64.grad, rtol=1e-4, atol=1e-6)


def test_topk_rejects_bad_arguments():
    g = gen(16)
    logits = rand_logits(g, B, T, V)
    ids, t_logp = teacher_topk(g)
    mask = prefix_mask(LENGTHS)
    with pytest.raises(ValueError):
        L.topk_divergence_loss(logits, ids, t_logp, mask, divergence="kl")
    with pytest.raises(ValueError):
        L.topk_divergence_loss(logits, ids, t_logp, mask, divergence="jsd", jsd_beta=1.5)
    with pytest.raises(ValueError):
        L.exact_divergence(logits, logits, mask, "tv")


def test_teacher_side_gets_no_gradient():
    g = gen(17)
    s = rand_logits(g, B, T, V).requires_grad_()
    ids, t_logp = teacher_topk(g)
    t_logp.requires_grad_()
    t_full = rand_logits(g, B, T, V).requires_grad_()
    loss, _ = L.topk_divergence_loss(s, ids, t_logp, prefix_mask(LENGTHS), divergence="forward_kl")
    (loss + L.exact_divergence(s, t_full, prefix_mask(LENGTHS), "jsd")).backward()
    assert t_logp.grad is None and t_full.grad is None and s.grad is not None


# -------------------------------------------------------------------------------------------------------- kl_penalty
def test_kl_penalty_matches_reference_nonnegative_and_zero_at_ref():
    g = gen(18)
    mask = prefix_mask(LENGTHS)
    student = (-torch.rand(B, T, generator=g) * 4).requires_grad_()
    ref_lp = -torch.rand(B, T, generator=g) * 4
    loss, m = L.kl_penalty(student, ref_lp.masked_fill(~mask, float("nan")), mask)
    loss.backward()
    s64 = student.detach().double().requires_grad_()
    per = []
    for b, ts in enumerate(valid_positions(mask)):
        per.append([torch.exp(ref_lp[b, t].double() - s64[b, t]) - (ref_lp[b, t].double() - s64[b, t]) - 1 for t in ts])
    ref = ref_seq_mean(per)
    ref.backward()
    close(loss, ref)
    close(student.grad, s64.grad)
    assert m["kl_ref"] == pytest.approx(float(loss.detach())) and float(loss.detach()) > 0
    # k3 >= 0 pointwise; zero (value and gradient) when ref == student
    grad_sign = torch.sign(student.grad)[mask]
    assert torch.equal(grad_sign, torch.sign(student.detach() - ref_lp)[mask])  # descent moves student toward ref
    same = student.detach().clone().requires_grad_()
    zero, _ = L.kl_penalty(same, same.detach(), mask)
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(same.grad.abs().max()) == 0.0


def test_kl_penalty_step_on_logits_moves_policy_toward_reference():
    g = gen(19)
    theta = torch.randn(1, 1, 6, generator=g, dtype=torch.float64).requires_grad_()
    ref_logits = torch.randn(1, 1, 6, generator=g, dtype=torch.float64)
    ref_lsm = torch.log_softmax(ref_logits, -1)

    def kls():
        ls = torch.log_softmax(theta.detach(), -1)
        return float((ls.exp() * (ls - ref_lsm)).sum()), float((ref_lsm.exp() * (ref_lsm - ls)).sum())

    before = kls()
    y = torch.multinomial(torch.softmax(theta.detach()[0, 0], -1), 20_000, replacement=True, generator=g)[None]
    logp = L.token_logprobs(theta.expand(1, y.shape[1], 6), y)
    ref_lp = ref_lsm[0, 0][y]
    loss, _ = L.kl_penalty(logp, ref_lp, torch.ones_like(y, dtype=torch.bool))
    loss.backward()
    with torch.no_grad():
        theta -= 0.1 * theta.grad
    after = kls()
    assert after[0] < before[0] and after[1] < before[1], (before, after)


def test_sequence_weights_scale_each_row_and_zero_removes_it():
    """The feedback gate's per-turn weight: row b's loss and gradient are multiplied by w_b; w_b = 0 removes the row's
    gradient, and the other rows keep the same scale (the denominator still counts every row)."""
    torch.manual_seed(0)
    logp = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    full, _ = L.sampled_token_loss(logp, A, mask)
    (g_full,) = torch.autograd.grad(full, logp)
    w = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    weighted, _ = L.sampled_token_loss(logp, A, mask, seq_weight_B=w)
    (g_w,) = torch.autograd.grad(weighted, logp)
    torch.testing.assert_close(g_w, g_full * w[:, None])
    assert torch.all(g_w[1] == 0)
    ids = torch.randint(0, 7, (3, 5, 1))
    logits = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    t_logp = torch.log_softmax(torch.randn(3, 5, 7, dtype=torch.float64), -1).gather(-1, ids)
    per_row = [L.topk_divergence_loss(logits[b:b + 1], ids[b:b + 1], t_logp[b:b + 1], mask[b:b + 1])[0]
               for b in range(3)]
    topk_w, _ = L.topk_divergence_loss(logits, ids, t_logp, mask, seq_weight_B=w)
    torch.testing.assert_close(topk_w, sum(wb * lb for wb, lb in zip(w, per_row)) / 3)
