"""Distillation losses. Every function cites its paper and equation (see ``shared/docs/METHODS.md``).

Notation: B batch size, C classes, N teachers, L tokens, d hidden size, ``T`` temperature.
All losses return a scalar tensor averaged over the batch (and over tokens/dims for MSE).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                       reduction: str = "mean") -> torch.Tensor:
    """``CE(p, softmax(z_s / T)) = -sum_c p_c log softmax(z_s / T)_c``.

    Args:
        target_probs: (B, C) soft labels (rows sum to 1).
        student_logits: (B, C).
        reduction: ``mean`` over the batch, or ``none`` for (B,).
    """
    ce = -(target_probs * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1)
    return ce.mean() if reduction == "mean" else ce


#: Label id of a transfer-set text (no gold label; see :mod:`distill.transfer`).
UNLABELED = -1


def task_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Task loss ``CE(y, y_s)`` on gold labels, MT-BERT eq. (3), averaged over the labelled rows of
    the batch; rows labelled :data:`UNLABELED` (-1, transfer-set texts) are left out, and a batch
    without any labelled row gives 0 (still attached to the graph). Shapes (B, C), (B,)."""
    if not bool((labels != UNLABELED).any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits, labels, ignore_index=UNLABELED)


def pseudo_labels(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gold labels, with every :data:`UNLABELED` row replaced by the teacher ensemble's prediction
    ``argmax_c (1/N) sum_i softmax(z_i)_c`` (the rule every gold-label teacher weight uses on
    transfer-set texts). Shapes: (N, B, C), (B,) -> (B,) int64."""
    unknown = labels == UNLABELED
    if not bool(unknown.any()):
        return labels
    ens = F.softmax(teacher_logits.float(), dim=-1).mean(0).argmax(-1)
    return torch.where(unknown, ens, labels)


def teacher_gold_ce(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each teacher's per-sample loss on the gold label ``CE(y, y_i)`` (T = 1). On transfer-set
    texts (label -1) ``y`` is the ensemble's prediction (:func:`pseudo_labels`).

    Shapes: (N, B, C), (B,) -> (N, B).
    """
    y = pseudo_labels(teacher_logits, labels)
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    return -logp.gather(-1, y.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)


def mtbert_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                        temperature: float = 1.0, loss_weighting: bool = True) -> torch.Tensor:
    """Multi-teacher distillation loss with loss-based weights, MT-BERT eq. (2):

    ``L_dis = sum_i CE(softmax(z_i/t), softmax(z_s/t)) / (1 + CE(y, y_i))``, averaged over the batch.

    The weight ``1 / (1 + CE(y, y_i))`` is per sample and uses the teacher's T = 1 prediction; it
    is not differentiated (teachers are frozen). ``loss_weighting=False`` gives the paper's
    "w/o loss weighting" ablation (Fig. 4). No ``t^2`` factor: the paper uses t = 1.

    Shapes: student (B, C), teachers (N, B, C), labels (B,).
    """
    t = temperature
    total = student_logits.new_zeros(())
    w = 1.0 / (1.0 + teacher_gold_ce(teacher_logits, labels)) if loss_weighting else None
    for i in range(teacher_logits.shape[0]):
        p_i = F.softmax(teacher_logits[i].float() / t, dim=-1)
        ce = soft_cross_entropy(p_i, student_logits.float(), t, reduction="none")  # (B,)
        total = total + (ce * w[i].detach() if w is not None else ce).mean()
    return total


def hidden_mse(student_h: torch.Tensor, teacher_h_proj: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``MSE(H^s_j, W_ij H^i_{m(j)})`` for one teacher and layer, MT-BERT eq. (1).

    Token level: (B, L, d) tensors and ``mask`` (B, L); the mean runs over real tokens and the d
    dimensions. Pooled level (tokenizers differ): (B, d) tensors and ``mask=None``.
    """
    diff = (student_h.float() - teacher_h_proj.float()) ** 2
    if mask is None:
        return diff.mean()
    m = mask.unsqueeze(-1).to(diff.dtype)
    return (diff * m).sum() / (m.sum() * diff.shape[-1]).clamp_min(1.0)


def mtbert_hidden_loss(student_layers: Sequence[torch.Tensor], teacher_layers: Sequence[Sequence[torch.Tensor]],
                       projections, mask: torch.Tensor | None, token_level: Sequence[bool]) -> torch.Tensor:
    """Multi-teacher hidden loss, MT-BERT eq. (1): ``L_hid = sum_i sum_{j=1..K} MSE(H^s_j, W_ij H^i_{m_i(j)})``.

    Args:
        student_layers: K tensors, each (B, L, d_s) (student layer j's token states).
        teacher_layers: for teacher i, K tensors: (B, L, d_i) token states of layer ``m_i(j)`` when
            ``token_level[i]``, else (B, d_i) masked-mean pooled states of that layer.
        projections: ``projections[i][j]`` is the learnable ``W_ij`` (``Linear(d_i, d_s)``).
        mask: (B, L) student attention mask.
        token_level: per teacher, whether its tokenization equals the student's. When it does not,
            the rule is: compare masked-mean pooled states of the mapped layers (the mean is linear,
            so ``W mean(H) = mean(W H)``).
    """
    from .modeling import masked_mean

    total = student_layers[0].new_zeros((), dtype=torch.float32)
    for i, t_layers in enumerate(teacher_layers):
        for j, hs in enumerate(student_layers):
            ht = projections[i][j](t_layers[j].to(projections[i][j].weight.dtype))
            if token_level[i]:
                total = total + hidden_mse(hs, ht, mask)
            else:
                total = total + hidden_mse(masked_mean(hs, mask), ht)
    return total


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al. (2015) KD: ``T^2 * CE(softmax(z_t/T), softmax(z_s/T))`` (batch mean).

    Shapes: (B, C), (B, C). The ``T^2`` keeps gradient magnitudes comparable across temperatures.
    """
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * soft_cross_entropy(p, student_logits.float(), temperature)


def average_ensemble_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperature: float = 2.0) -> torch.Tensor:
    """Average-ensemble KD ("Avg Weight" baseline of paper 003; MT-BERT Fig. 3 "average"):
    soft labels ``p = (1/N) sum_i softmax(z_i/T)``, loss ``T^2 * CE(p, softmax(z_s/T))``.

    Shapes: student (B, C), teachers (N, B, C).
    """
    p = F.softmax(teacher_logits.float() / temperature, dim=-1).mean(0)
    return temperature ** 2 * soft_cross_entropy(p, student_logits.float(), temperature)


def kd_per_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample, per-teacher soft-label loss ``T^2 CE(softmax(z_k/T), softmax(z_s/T))``, the summand of
    paper 003 eq. (4)/(7) (with Hinton's ``T^2`` so gradient sizes do not depend on ``T``).

    Shapes: student (B, C), teachers (N, B, C) -> (N, B). CE and KL differ by the teacher's entropy,
    a constant, so their gradients are equal.
    """
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (N, B, C)
    return -(temperature ** 2) * (p * logq.unsqueeze(0)).sum(-1)


def weighted_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Per-sample weighted multi-teacher KD, paper 003 eq. (4)/(7):
    ``L_KD = mean_b sum_k w_kb T^2 CE(softmax(z_k/T), softmax(z_s/T))``.

    Args:
        weights: (N, B) teacher weights (detached by the caller; per sample they usually sum to 1).

    Shapes: student (B, C), teachers (N, B, C) -> scalar. With ``w = 1/N`` it equals
    :func:`average_ensemble_kd_loss` (CE is linear in the soft labels).
    """
    return (weights * kd_per_teacher(student_logits, teacher_logits, temperature)).sum(0).mean()


def hint_loss_per_teacher(student_feat: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 hint loss per sample and teacher, paper 003 eq. (8)-(9): ``SmoothL1(f_k - f_s)``,
    averaged over the feature dimensions.

    Shapes: student (already projected per teacher) (N, B, d), teachers (N, B, d) -> (N, B).
    """
    return F.smooth_l1_loss(student_feat.float(), teacher_feats.float(), reduction="none").mean(-1)


def logit_l2_per_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between logits per sample and teacher, paper 003 eq. (11)-(12):
    ``||z_k - z_s||_2^2``. Shapes: (B, C), (N, B, C) -> (N, B)."""
    return ((teacher_logits.float() - student_logits.float().unsqueeze(0)) ** 2).sum(-1)
