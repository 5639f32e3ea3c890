"""Per-sample teacher-weighting rules, shared by every strategy that weights its teachers.

Convention: ``N`` teachers, ``B`` samples; weights are (N, B) (or (N,) per batch), non-negative and
summing to 1 over the teachers. With one teacher every rule gives weight 1.
"""

from __future__ import annotations

import numpy as np
import torch


def camkd_weights(teacher_ce: torch.Tensor) -> torch.Tensor:
    """CA-MKD confidence weights, paper 003 eq. (5) (Zhang et al., ICASSP 2022):
    ``w_k = (1 / (N - 1)) * (1 - exp(L_k) / sum_j exp(L_j))`` with ``L_k = CE(y, y_k)`` the k-th
    teacher's loss on the gold label: the more correct teacher gets more weight.

    Shapes: (N, B) -> (N, B); each column sums to 1. The result is detached (teachers are frozen).
    """
    n = teacher_ce.shape[0]
    if n == 1:
        return torch.ones_like(teacher_ce)
    return ((1.0 - torch.softmax(teacher_ce.detach().float(), dim=0)) / (n - 1))


def prediction_entropy(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each teacher's prediction at T = 1: (N, B, C) -> (N, B)."""
    logp = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """EBKD entropy weights (Kwon et al., "Adaptive knowledge distillation based on entropy", ICASSP 2020):
    the more confident (lower-entropy) teacher gets more weight,
    ``w_k = (1 / (N - 1)) * (1 - H_k / sum_j H_j)`` with ``H_k`` the entropy of teacher k's
    prediction at T = 1.

    The reference implementation (``Rorozhl/CA-MKD``, helper/loops.py) uses ``1 - H_k / sum_j H_j``,
    whose weights sum to N - 1; we divide by N - 1 so they sum to 1 like every other rule here (for
    two teachers ``w_1 = H_2 / (H_1 + H_2)``). When every teacher is certain (all H = 0) the weights are
    uniform. Shapes: (N, B, C) -> (N, B).
    """
    n = teacher_logits.shape[0]
    if n == 1:
        return torch.ones(teacher_logits.shape[:2], device=teacher_logits.device)
    h = prediction_entropy(teacher_logits)
    total = h.sum(0, keepdim=True)
    w = (1.0 - h / total.clamp_min(1e-12)) / (n - 1)
    return torch.where(total > 1e-12, w, torch.full_like(w, 1.0 / n))


def project_capped_simplex(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Euclidean projection of ``v`` (N,) onto ``{w : sum w = 1, lo <= w_k <= hi}``.

    ``w = clip(v - tau, lo, hi)`` with the shift ``tau`` found by bisection (the sum is monotone in tau).
    Requires ``N lo <= 1 <= N hi``.
    """
    a, b = float(v.min() - hi - 1.0), float(v.max() - lo + 1.0)
    for _ in range(60):  # the bracket shrinks 2^60-fold: far below float64 resolution of the weights
        tau = 0.5 * (a + b)
        if np.clip(v - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    return np.clip(v - 0.5 * (a + b), lo, hi)


def min_norm_weights(gram: np.ndarray, lo: float = 0.0, hi: float = 1.0, iters: int = 500,
                     tol: float = 1e-10) -> np.ndarray:
    """Min-norm point of the convex hull of N gradients with bounded weights (AE-KD, Du et al., NeurIPS 2020):
    ``argmin_w || sum_k w_k g_k ||^2 = w^T G w`` subject to ``sum w = 1`` and ``lo <= w_k <= hi``.

    Two teachers: the closed form ``w_1 = (G_22 - G_12) / (G_11 + G_22 - 2 G_12)`` clipped to the
    bounds (MGDA's two-vector min-norm element). More: accelerated projected gradient descent (FISTA,
    step ``1 / (2 lambda_max(G))``) with :func:`project_capped_simplex`; the problem is a small convex
    QP, so this converges to the optimum.

    Args:
        gram: (N, N) Gram matrix ``G_kl = <g_k, g_l>``.
        lo, hi: bounds on every weight (``N lo <= 1 <= N hi``).

    Returns:
        (N,) float64 weights.
    """
    n = gram.shape[0]
    G = np.asarray(gram, dtype=np.float64)
    if n == 2:
        denom = G[0, 0] + G[1, 1] - 2 * G[0, 1]
        w1 = (G[1, 1] - G[0, 1]) / denom if denom > 1e-18 else 0.5
        w1 = float(np.clip(w1, max(lo, 1.0 - hi), min(hi, 1.0 - lo)))
        return np.array([w1, 1.0 - w1])
    w = project_capped_simplex(np.full(n, 1.0 / n), lo, hi)
    L = 2.0 * max(np.linalg.eigvalsh(G).max(), 1e-12)
    y, t = w.copy(), 1.0
    for _ in range(iters):
        w_new = project_capped_simplex(y - (2.0 * G @ y) / L, lo, hi)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = w_new + ((t - 1.0) / t_new) * (w_new - w)
        done = np.abs(w_new - w).max() < tol
        w, t = w_new, t_new
        if done:
            break
    return w
