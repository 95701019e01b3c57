"""The follow-up-shift loss (losses.shifted_topk_loss) and the baseline look-up behind it (scoring.logprobs_at)."""

import math

import numpy as np
import pytest
import torch

from hsd_ray.core import losses
from hsd_ray.core.scoring import logprobs_at

pytestmark = pytest.mark.unit


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.exp(x).sum())


def test_value_matches_the_formula_by_hand():
    """One position, V = 5, the teacher's top-2 = ids 3 and 1: q ∝ p_s · (p_t / p_b) over {3, 1, tail}."""
    student = np.array([0.5, -1.0, 2.0, 0.0, 1.0])
    ls = _log_softmax(student)
    ids, t, b, scale = [3, 1], np.log([0.5, 0.2]), np.log([0.1, 0.3]), 0.7
    ps = np.array([math.exp(ls[3]), math.exp(ls[1])])
    ps = np.append(ps, 1 - ps.sum())
    pt, pb = np.array([0.5, 0.2, 0.3]), np.array([0.1, 0.3, 0.6])
    q = ps * (pt / pb) ** scale
    q /= q.sum()
    expected = float(np.sum(q * np.log(q / ps)))
    loss, m = losses.shifted_topk_loss(
        torch.tensor(student, dtype=torch.float32)[None, None], torch.tensor([[ids]]),
        torch.tensor(np.array([[t]]), dtype=torch.float32), torch.tensor(np.array([[b]]), dtype=torch.float32),
        torch.ones(1, 1, dtype=torch.bool), scale=scale)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert m["shift_tv"] == pytest.approx(0.5 * np.abs(q - ps).sum(), rel=1e-5)


def test_no_shift_no_gradient_whatever_the_teacher_says():
    """Teacher == baseline: the follow-up changed nothing, so nothing moves, though the teacher differs from the
    student (what the hindsight prompt alone does is not distilled)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g, requires_grad=True)
    ids = torch.stack([torch.randperm(11, generator=g)[:4] for _ in range(6)]).view(2, 3, 4)
    teacher = torch.log_softmax(torch.randn(2, 3, 11, generator=g), -1).gather(-1, ids)
    loss, _ = losses.shifted_topk_loss(logits, ids, teacher, teacher.clone(), torch.ones(2, 3, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(logits.grad.abs().max()) < 1e-6


def test_equals_forward_kl_to_the_teacher_when_the_baseline_is_the_student():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 13, generator=g)
    ids = torch.stack([torch.randperm(13, generator=g)[:5] for _ in range(8)]).view(2, 4, 5)
    teacher = torch.log_softmax(torch.randn(2, 4, 13, generator=g), -1).gather(-1, ids)
    student_at_ids = torch.log_softmax(logits, -1).gather(-1, ids)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    shifted, _ = losses.shifted_topk_loss(logits, ids, teacher, student_at_ids, mask)
    forward, _ = losses.topk_divergence_loss(logits, ids, teacher, mask, divergence="forward_kl")
    assert float(shifted) == pytest.approx(float(forward), rel=1e-4)


def test_raises_a_token_only_the_follow_up_makes_likely():
    """The case the sampled-token loss cannot learn: the follow-up raises token 4 (a user's name) from 0.1% to 7%
    in the teacher; the student gives it 0.2% and never samples it. Five steps raise it more than threefold; the
    tokens the follow-up leaves nearly alone (0 and 1: same ratio teacher / baseline) stay on top."""
    logits = torch.tensor([[[3.0, 2.0, 0.0, -1.0, -3.0]]], requires_grad=True)
    ids = torch.tensor([[[0, 1, 4]]])
    baseline = torch.log(torch.tensor([[[0.6, 0.3, 0.001]]]))
    teacher = torch.log(torch.tensor([[[0.55, 0.275, 0.07]]]))
    opt = torch.optim.SGD([logits], lr=1.0)
    p0 = torch.softmax(logits.detach(), -1)[0, 0]
    for _ in range(5):
        opt.zero_grad()
        loss, _ = losses.shifted_topk_loss(logits, ids, teacher, baseline, torch.ones(1, 1, dtype=torch.bool))
        loss.backward()
        opt.step()
    p = torch.softmax(logits.detach(), -1)[0, 0]
    assert p[4] > 3 * p0[4]
    assert p.argsort(descending=True)[:2].tolist() == [0, 1]


def test_masked_positions_and_feedback_weight():
    logits = torch.randn(2, 2, 7, requires_grad=True)
    ids = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [0, 6]]])
    teacher = torch.log(torch.tensor([[[0.5, 0.2], [0.4, 0.4]], [[0.3, 0.3], [0.2, 0.1]]]))
    base = torch.log(torch.tensor([[[0.2, 0.2], [0.1, 0.4]], [[0.3, 0.1], [0.2, 0.3]]]))
    garbage = teacher.clone()
    garbage[0, 1] = float("nan")
    mask = torch.tensor([[True, False], [True, True]])
    loss, _ = losses.shifted_topk_loss(logits, ids, garbage, base, mask, seq_weight_B=torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(logits.grad[1].abs().max()) == 0.0  # weight 0: the row contributes nothing
    assert float(logits.grad[0, 1].abs().max()) == 0.0  # masked position


def test_logprobs_at_reads_the_other_top_k_and_floors_the_rest():
    ids = np.array([[5, 2, 9], [1, 0, 3]])
    other_ids = np.array([[2, 7, 5], [4, 1, 8]])
    other_logp = np.array([[-0.5, -1.5, -2.5], [-0.2, -2.0, -3.0]], dtype=np.float32)
    out = logprobs_at(ids, other_ids, other_logp)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-2.5, -0.5, -2.5], [-2.0, -3.0, -3.0]])
