"""The sampled-token loss with a shifted head (losses.sampled_token_loss_shifted_head, `loss.head_tokens`) and the
positions that take it (core/shift_positions.py)."""

import pytest
import torch

from hsd_ray.core import losses, shift_positions

pytestmark = pytest.mark.unit


def test_head_mask_marks_each_rows_first_valid_tokens():
    mask = torch.tensor([[False, True, True, True], [True, True, True, True], [False, False, False, True]])
    assert shift_positions.head_mask(mask, 2).tolist() == [[False, True, True, False], [True, True, False, False],
                                                           [False, False, False, True]]
    assert not shift_positions.head_mask(mask, 0).any()


def test_advantage_peaks_are_the_tokens_far_above_the_rows_mean_centred_advantage():
    """Row 0: A - baseline = [0, 0, 0, 0, 4] centres to [-.8, -.8, -.8, -.8, 3.2], mean |c| 1.28: at ratio 2 only
    the last token (3.2 >= 2.56), at 3 none (3.84). Row 1 is flat (no peak whatever the ratio); row 2's padded
    position is never one. Sign does not matter: a peak pushed down is a peak."""
    teacher = torch.tensor([[0.0, 0, 0, 0, 4], [1.0, 1, 1, 1, 1], [0.0, 0, -4, 0, 9]])
    baseline = torch.zeros(3, 5)
    mask = torch.tensor([[True] * 5, [True] * 5, [True, True, True, True, False]])
    peaks = shift_positions.advantage_peaks(teacher, baseline, mask, 2.0)
    assert peaks.tolist() == [[False, False, False, False, True], [False] * 5, [False, False, True, False, False]]
    assert not shift_positions.advantage_peaks(teacher, baseline, mask, 3.0)[0].any()
    assert not shift_positions.advantage_peaks(teacher, baseline, mask, 0.0).any()


def test_raised_most_is_where_the_follow_up_raises_one_of_the_ids_most_over_the_baseline():
    """Top-k ids [5, 2, 7] at four positions, stop id 2. Position 0: 2 rises most (log .6/.1 against .3/.3 and
    .1/.6): kept. Position 1: 7 rises most though 5 stays the teacher's top token: not kept. Position 2: the baseline
    gives 2 no mass at all (-inf, clamped): it rises most. Position 3 is padding: never kept."""
    ids = torch.tensor([[[5, 2, 7]] * 4])
    teacher = torch.log(torch.tensor([[[0.3, 0.6, 0.1], [0.5, 0.1, 0.4], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1]]]))
    baseline = torch.log(torch.tensor([[[0.3, 0.1, 0.6], [0.5, 0.1, 0.1], [0.6, 0.0, 0.4], [0.8, 0.1, 0.1]]]))
    mask = torch.tensor([[True, True, True, False]])
    assert shift_positions.raised_most_is(ids, teacher, baseline, mask, (2,)).tolist() == [[True, False, True, False]]
    assert shift_positions.raised_most_is(ids, teacher, baseline, mask, (7, 2)).tolist() == [[True, True, True, False]]
    assert not shift_positions.raised_most_is(ids, teacher, baseline, mask, ()).any()
    assert not shift_positions.raised_most_is(ids, teacher, baseline, mask, (5,)).any()


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    targets = torch.randint(0, 9, (2, 4), generator=g)
    ids = torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(8)]).view(2, 4, 3)
    teacher = torch.log_softmax(torch.randn(2, 4, 9, generator=g), -1).gather(-1, ids)
    baseline = torch.log_softmax(torch.randn(2, 4, 9, generator=g), -1).gather(-1, ids)
    A = torch.randn(2, 4, generator=g)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    return logits, targets, ids, teacher, baseline, A, mask


def test_value_is_the_shifted_divergence_at_the_head_and_the_sampled_term_elsewhere():
    """Every valid token weighs 1/|y| in its row: row 0 = (div at t=1 − A₂ logp₂ − A₃ logp₃) / 3, row 1 likewise
    over 4 tokens with t=0 the head; the batch mean weighs each row by its feedback weight."""
    logits, targets, ids, teacher, baseline, A, mask = _case()
    head = shift_positions.head_mask(mask, 1)
    logp = losses.token_logprobs(logits, targets)
    weight = torch.tensor([1.0, 0.5])
    loss, m = losses.sampled_token_loss_shifted_head(logits, logp, A, ids, teacher, baseline, mask, head,
                                                     scale=0.7, seq_weight_B=weight)
    rows = []
    for b, first in ((0, 1), (1, 0)):
        one = torch.zeros(2, 4, dtype=torch.bool)
        one[b, first] = True
        div, _ = losses.shifted_topk_loss(logits, ids, teacher, baseline, one, scale=0.7)  # that one token
        rest = [t for t in range(first + 1, 4)]
        sampled = -sum(float(A[b, t]) * float(logp.detach()[b, t]) for t in rest)
        rows.append(weight[b].item() * (float(div.detach()) + sampled) / (len(rest) + 1))
    assert float(loss.detach()) == pytest.approx(sum(rows) / 2, rel=1e-5)
    assert m["head_tokens"] == 2.0 and m["tokens"] == 7.0


def test_without_a_head_it_is_the_sampled_token_loss():
    logits, targets, ids, teacher, baseline, A, mask = _case(1)
    logp = losses.token_logprobs(logits, targets)
    hybrid, _ = losses.sampled_token_loss_shifted_head(logits, logp, A, ids, teacher, baseline, mask,
                                                       shift_positions.head_mask(mask, 0))
    plain, _ = losses.sampled_token_loss(logp, A, mask)
    assert float(hybrid.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)


def _first_token_after_steps(shifted_head: bool, steps: int = 5) -> torch.Tensor:
    """One reply position, V = 6: the usual opener (id 0, p .63), a list mark (id 1, p .03) and four stray tokens
    (ids 2–5, .34 together). The complaint's teacher halves the opener and raises the list mark tenfold; the served
    reply began with the opener, so its advantage there is negative."""
    logits = torch.tensor([[[3.0, 0.0, 1.0, 1.0, 1.0, 1.0]]], requires_grad=True)
    target, mask = torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool)
    ids = torch.tensor([[[0, 1]]])
    teacher, baseline = torch.log(torch.tensor([[[0.3, 0.3]]])), torch.log(torch.tensor([[[0.6, 0.03]]]))
    A = torch.tensor([[-1.0]])
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        logp = losses.token_logprobs(logits, target)
        if shifted_head:
            loss, _ = losses.sampled_token_loss_shifted_head(logits, logp, A, ids, teacher, baseline, mask, mask)
        else:
            loss, _ = losses.sampled_token_loss(logp, A, mask)
        loss.backward()
        opt.step()
    return torch.softmax(logits.detach(), -1)[0, 0]


def test_a_lowered_opener_gives_its_mass_to_what_the_follow_up_raised_not_to_the_tail():
    """The reason for the head: pushing the sampled opener down hands its mass to every token in proportion to the
    student's own probability, so the stray tokens gain most; the shifted head hands it to the list mark."""
    p0 = torch.softmax(torch.tensor([3.0, 0.0, 1.0, 1.0, 1.0, 1.0]), -1)
    pushed, shifted = _first_token_after_steps(False), _first_token_after_steps(True)
    assert pushed[0] < p0[0] and shifted[0] < p0[0]  # both lower the opener
    assert pushed[2:].sum() - p0[2:].sum() > pushed[1] - p0[1]  # pushed down: the tail gains more than the list mark
    # shifted: the list mark gains, the tail barely moves
    assert shifted[1] - p0[1] > 5 * abs(shifted[2:].sum() - p0[2:].sum())
    assert shifted[1] > pushed[1]


def _last_token_after_steps(peaks: bool, steps: int = 5) -> torch.Tensor:
    """A five-token reply, V = 5: at the last position the sampled continuation (id 0, p .69), the end of the reply
    (id 1, p .03) and three stray tokens. Told "keep it short", the teacher puts .9 on the end there (the baseline
    .05) and .05 on the continuation (the baseline .6); the earlier tokens score the same under both."""
    logits = torch.zeros(1, 5, 5)
    logits[0, 4] = torch.tensor([3.0, 0.0, 1.0, 1.0, 1.0])
    logits.requires_grad_(True)
    target, mask = torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool)
    ids = torch.tensor([[[0, 1]] * 5])
    teacher = torch.log(torch.tensor([[[0.5, 0.1]] * 4 + [[0.05, 0.9]]]))
    baseline = torch.log(torch.tensor([[[0.5, 0.1]] * 4 + [[0.6, 0.05]]]))
    shifted = shift_positions.advantage_peaks(teacher[..., 0], baseline[..., 0], mask, 2.0)
    if not peaks:
        shifted = torch.zeros_like(mask)
    A = losses.advantages(teacher[..., 0], baseline[..., 0], mask & ~shifted, center=True)
    opt = torch.optim.SGD([logits], lr=5.0)  # each token weighs 1/5 of the row: the head test's step at one token
    for _ in range(steps):
        opt.zero_grad()
        logp = losses.token_logprobs(logits, target)
        loss, _ = losses.sampled_token_loss_shifted_head(logits, logp, A, ids, teacher, baseline, mask, shifted)
        loss.backward()
        opt.step()
    return torch.softmax(logits.detach(), -1)[0, 4]


def test_at_a_peak_the_end_of_reply_gains_the_mass_the_continuation_loses():
    """The reason for `shift_peak_ratio`: the last token's advantage (log .05/.6) is the row's peak (|c| 1.99 against
    a mean of 0.80); pushed down, its mass goes to the stray tokens (five steps: end .03 → .02, strays .28 → .98),
    shifted it goes to the end of the reply (end .03 → .75, strays .28 → .16)."""
    p0 = torch.softmax(torch.tensor([3.0, 0.0, 1.0, 1.0, 1.0]), -1)
    assert shift_positions.advantage_peaks(torch.log(torch.tensor([[0.5] * 4 + [0.05]])),
                                           torch.log(torch.tensor([[0.5] * 4 + [0.6]])),
                                           torch.ones(1, 5, dtype=torch.bool), 2.0).tolist() == [[False] * 4 + [True]]
    pushed, shifted = _last_token_after_steps(False), _last_token_after_steps(True)
    assert pushed[0] < p0[0] and shifted[0] < p0[0]
    assert pushed[2:].sum() - p0[2:].sum() > pushed[1] - p0[1]
    assert shifted[1] - p0[1] > 5 * abs(shifted[2:].sum() - p0[2:].sum())
    assert shifted[1] > 2 * pushed[1]
