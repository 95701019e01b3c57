"""Unlikelihood of a reply repeating itself (losses.repeated_ngram_mask, losses.repetition_unlikelihood,
`loss.repeat_unlikelihood`)."""

import math

import pytest
import torch

from hsd_ray.config import Config
from hsd_ray.core import losses

pytestmark = pytest.mark.unit


def test_mask_marks_the_token_that_completes_a_repeated_ngram():
    #            a  b  c  a  b  c  a  d    (n = 3: "a b c" again at t=5, "b c a" again at t=6)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 4]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert losses.repeated_ngram_mask(ids, mask, 3).tolist() == [[False] * 5 + [True, True, False]]
    assert losses.repeated_ngram_mask(ids, mask, 2).tolist() == [[False] * 4 + [True, True, True, False]]
    assert losses.repeated_ngram_mask(ids, mask, 4).tolist() == [[False] * 6 + [True, False]]


def test_mask_ignores_padding_and_other_rows():
    """An n-gram that reaches into padding is neither seen nor repeated; rows never see each other's n-grams."""
    ids = torch.tensor([[7, 1, 2, 1, 2, 0], [1, 2, 9, 9, 9, 9]])
    mask = torch.tensor([[False, True, True, True, True, False], [True, True, False, False, False, False]])
    assert losses.repeated_ngram_mask(ids, mask, 2).tolist() == [[False, False, False, False, True, False],
                                                                 [False] * 6]


def test_value_is_minus_log_one_minus_p_at_repeats_over_each_rows_length():
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3], [0.4, 0.6, 0.7, 0.1]]))
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    repeated = torch.tensor([[False, True, True, True], [False, False, False, False]])  # t=3 of row 0 is padding
    weight = torch.tensor([1.0, 0.5])
    loss, m = losses.repetition_unlikelihood(logp, repeated, mask, weight)
    row0 = (-math.log(1 - 0.9) - math.log(1 - 0.2)) / 3
    assert float(loss) == pytest.approx((row0 + 0.0) / 2, rel=1e-6)
    assert m["repeat_frac"] == pytest.approx(2 / 7)


def test_a_certain_repeat_stays_finite():
    loss, _ = losses.repetition_unlikelihood(torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2, dtype=torch.bool),
                                             torch.ones(1, 2, dtype=torch.bool))
    assert math.isfinite(float(loss.detach()))


def test_it_lowers_the_repeat_and_leaves_a_reply_without_one_alone():
    """Five SGD steps on one position whose token repeats an n-gram (p .6) bring it under .2; a reply with no
    repeat gets no gradient at all."""
    logits = torch.tensor([[[1.0, 0.0, -1.0, 0.5]]], requires_grad=True)
    target, mask = torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        loss, _ = losses.repetition_unlikelihood(losses.token_logprobs(logits, target), mask, mask)
        loss.backward()
        opt.step()
    assert torch.softmax(logits.detach(), -1)[0, 0, 0] < 0.2
    logits.grad = None
    loss, _ = losses.repetition_unlikelihood(losses.token_logprobs(logits, target), ~mask, mask)
    loss.backward()
    assert float(loss.detach()) == 0.0 and not logits.grad.any()


def test_config_default_is_on_and_negative_weights_are_refused():
    """On since 2026-12-06, chosen on dev with the shifted head (bench/learning/README.md, "Not repeating itself")."""
    assert Config.load().loss.repeat_unlikelihood == 1.0
    with pytest.raises(Exception, match="repeat_unlikelihood"):
        Config.load(overrides=["loss.repeat_unlikelihood=-1"])
