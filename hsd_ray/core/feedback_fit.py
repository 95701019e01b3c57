"""Fitting and scoring the feedback gate: logistic regression (numpy, full-batch gradient descent with L2), rank-based
ROC AUC, precision/recall/F1, and the dev-split threshold rule. Driven by `bench/feedback_gate.py` (training the
shipped weights) and the unit tests. Pure: numpy only, deterministic (no random init)."""

from __future__ import annotations

import numpy as np

from hsd_ray.core.feedback import LinearGate, featurize_matrix


def fit_logistic(x_N_D: np.ndarray, y_N: np.ndarray, l2: float = 1e-3, lr: float = 0.5, steps: int = 1500,
                 class_balance: bool = True) -> tuple[np.ndarray, float]:
    """Minimise mean weighted log-loss + l2/2·|w|² (bias not penalised) by full-batch gradient descent with
    Nesterov momentum. Returns (weights [D], bias). Classes are re-weighted to equal total mass when `class_balance`."""
    y_N = np.asarray(y_N, dtype=np.float64)
    n = len(y_N)
    pos = max(y_N.sum(), 1.0)
    sw_N = np.where(y_N > 0.5, n / (2 * pos), n / (2 * max(n - pos, 1.0))) if class_balance else np.ones(n)
    w_D, b = np.zeros(x_N_D.shape[1]), 0.0
    vw_D, vb, mom = np.zeros_like(w_D), 0.0, 0.9
    for _ in range(steps):
        lw_D, lb = w_D + mom * vw_D, b + mom * vb  # look-ahead point
        p_N = 1.0 / (1.0 + np.exp(-np.clip(x_N_D @ lw_D + lb, -40, 40)))
        g_N = sw_N * (p_N - y_N) / n
        gw_D = x_N_D.T @ g_N + l2 * lw_D
        vw_D = mom * vw_D - lr * gw_D
        vb = mom * vb - lr * float(g_N.sum())
        w_D, b = w_D + vw_D, b + vb
    return w_D, float(b)


def train_linear_gate(rows: list[tuple[str, str, str]], labels: list[int], dim: int = 1 << 14, l2: float = 1e-3,
                      steps: int = 1500) -> LinearGate:
    """A LinearGate fitted on (prompt, reply, followup) rows with 0/1 labels (threshold 0.5 until chosen on dev)."""
    w_D, b = fit_logistic(featurize_matrix(rows, dim), np.asarray(labels), l2=l2, steps=steps)
    return LinearGate(w_D, b, 0.5, meta={"dim": dim, "l2": l2, "steps": steps})


def roc_auc(scores_N, labels_N) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties counting 1/2 (average ranks)."""
    s = np.asarray(scores_N, dtype=np.float64)
    y = np.asarray(labels_N).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over each run of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def prf(pred_N, labels_N) -> dict[str, float]:
    """Precision, recall, F1 of the positive class, plus counts (precision is 1.0 when nothing is predicted)."""
    p = np.asarray(pred_N).astype(bool)
    y = np.asarray(labels_N).astype(bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "n": int(len(y))}


def choose_threshold(scores_N, labels_N, min_precision: float = 0.9) -> tuple[float, dict[str, float]]:
    """Among candidate thresholds (the observed scores) whose precision >= min_precision, the one with the best F1
    (ties: the lowest threshold, i.e. the most recall). Falls back to max-F1 overall if none reaches the precision."""
    s = np.asarray(scores_N, dtype=np.float64)
    best, best_key, fallback, fb_key = None, None, None, None
    for t in sorted(set(s.tolist())):
        m = prf(s >= t, labels_N)
        key = (m["f1"], -t)
        if m["precision"] >= min_precision and (best_key is None or key > best_key):
            best, best_key = (t, m), key
        if fb_key is None or key > fb_key:
            fallback, fb_key = (t, m), key
    chosen = best if best is not None else fallback
    return float(chosen[0]), dict(chosen[1], met_precision=best is not None)
