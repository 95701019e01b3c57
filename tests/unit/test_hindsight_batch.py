"""HindsightBatch.collate: scored turns become right-aligned tensors, whatever memory their arrays live in."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hsd_ray.core.batch import HindsightBatch
from hsd_ray.core.turns import Turn, TurnScores

pytestmark = pytest.mark.unit


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)  # what a turn's arrays are after ray.get: views into the object store
    return a


def _turn(prompt: list[int], targets: list[int], teacher: list[float], baseline: list[float], k: int = 2) -> Turn:
    T = len(targets)
    scores = TurnScores(
        student_prompt_ids=_read_only(np.array(prompt, dtype=np.int64)),
        target_ids_T=_read_only(np.array(targets, dtype=np.int64)),
        teacher_logp_T=_read_only(np.array(teacher, dtype=np.float32)),
        baseline_logp_T=_read_only(np.array(baseline, dtype=np.float32)),
        teacher_topk_ids_T_K=_read_only(np.arange(T * k, dtype=np.int64).reshape(T, k)),
        teacher_topk_logp_T_K=_read_only(np.full((T, k), -0.5, dtype=np.float32)),
    )
    return Turn(context=[{"role": "user", "content": "q"}], reply="r", followup="o", scores=scores,
                reply_logprobs=[-0.25] * T)


def test_collate_right_aligns_read_only_arrays_without_a_warning():
    turns = [_turn([5, 6], [7, 8, 9], [-1.0, -2.0, -3.0], [-1.5, -2.5, -3.5]), _turn([5], [4], [-0.5], [-0.75])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.as_tensor on read-only numpy memory warns; collate must not
        batch = HindsightBatch.collate(turns, pad_id=0, stop_ids=())
    assert batch.mask_B_T.tolist() == [[True, True, True], [False, False, True]]
    assert batch.teacher_logp_B_T.dtype == torch.float32
    assert batch.teacher_logp_B_T.tolist() == [[-1.0, -2.0, -3.0], [0.0, 0.0, -0.5]]
    assert batch.baseline_logp_B_T.tolist() == [[-1.5, -2.5, -3.5], [0.0, 0.0, -0.75]]
    assert batch.topk_ids_B_T_K.dtype == torch.long
    assert batch.topk_ids_B_T_K[1].tolist() == [[0, 0], [0, 0], [0, 1]]
    assert batch.topk_logp_B_T_K[0].tolist() == [[-0.5, -0.5]] * 3
    assert batch.served_logp_B_T[1, 2].item() == -0.25 and batch.served_logp_B_T[0].tolist() == [-0.25] * 3
    assert batch.baseline_topk_logp_B_T_K is None  # no turn carries the baseline's top-k
