"""``camkd``: confidence-aware multi-teacher KD, paper 003 eqs. (4)-(13) (CA-MKD, Zhang et al., ICASSP 2022)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .. import losses
from ..weighting import camkd_weights
from .base import register
from .hinton import KDSettings
from .weighted import WeightedKD


class CAMKDSettings(KDSettings):
    """Settings of ``camkd``: the KD settings and the extra feature/logit term."""

    feature_loss: Literal["hint", "logit", "none"] = Field(
        "hint", description="extra term: hint = smooth-L1 on pooled features, eqs. (8)-(10); logit = L2 on "
                            "logits, eqs. (11)-(13); none = KD only")
    beta: float = Field(1.0, ge=0, description="weight of the extra term (beta in eqs. (10)/(13))")


@register("camkd")
class CAMKD(WeightedKD):
    """CA-MKD per-sample teacher weights with the weighted KD loss and an optional feature term.

    * Weights, paper 003 eq. (5): ``w_k = (1 / (N - 1)) (1 - softmax_k(L_k))`` with ``L_k = CE(y, y_k)``
      each teacher's gold-label CE at T = 1, per sample (N, B), detached.
    * KD, eq. (4)/(7): ``L_KD = mean_b sum_k w_kb T^2 CE(softmax(z_k/T), softmax(z_s/T))``.
    * ``feature_loss="hint"`` (isomorphic case, eqs. (8)-(10)): ``L_hint = mean_b sum_k w_kb
      SmoothL1(f_k - P_k f_s)`` where ``f_k`` (B, d_c) is teacher k's pooled head feature (the input of
      its prediction layer), ``f_s`` (B, d_s) the student's, and ``P_k = Linear(d_s, d_c)`` a learnable
      projection per teacher (trained at the head learning rate).
    * ``feature_loss="logit"`` (heterogeneous case, eqs. (11)-(13)): ``L_logit = mean_b sum_k w_kb
      ||z_k - z_s||^2``.
    * Total: ``(1 - alpha) L_s + alpha L_KD + beta L_feat`` (see :mod:`.weighted` for the scale).

    Choices the papers leave open, as taken here: the feature is the pooled head feature, not a
    token-level layer (teachers and student may tokenize differently); the same eq. (5) weights
    weight the feature term (the CA-MKD code weights its feature term with the teacher heads applied
    to the student feature, a CNN-specific device); the feature term is on from the first epoch (the
    CA-MKD code skips it in epoch 1); no ``1/N`` factor on the weighted sums (the CA-MKD code divides
    by ``B N``; with weights summing to 1 that only rescales ``alpha``).

    On transfer-set texts (no gold label) ``y`` in eq. (5) is the teacher ensemble's prediction
    (:func:`distill.losses.pseudo_labels`) and ``L_s`` is left out.

    Shapes: student logits (B, C), pooled (B, d_s); teacher logits (N, B, C), pooled (N, B, d_c).
    """

    paper = ("paper 003 eq. (5) weights, eqs. (4)/(7) KD, (8)-(10) hint, (11)-(13) logit L2; Zhang et al., "
             "'Confidence-Aware Multi-Teacher Knowledge Distillation', ICASSP 2022")
    Settings = CAMKDSettings

    def __init__(self, settings, teachers, student):
        super().__init__(settings, teachers, student)
        self.projections = nn.ModuleList(nn.Linear(student.hidden_size, t.pooled_size or student.hidden_size)
                                         for t in teachers) if settings.feature_loss == "hint" else None

    def weights(self, student, teachers, batch):
        return camkd_weights(losses.teacher_gold_ce(teachers.logits, batch.labels))

    def loss(self, student, teachers, batch):
        w = self.weights(student, teachers, batch)
        out = self.kd_terms(student, teachers, batch, w)
        s = self.settings
        if s.feature_loss == "none" or s.beta == 0:
            return out
        if s.feature_loss == "hint":
            fs = torch.stack([p(student.pooled.to(p.weight.dtype)) for p in self.projections])
            per = losses.hint_loss_per_teacher(fs, teachers.pooled)
        else:
            per = losses.logit_l2_per_teacher(student.logits, teachers.logits)
        feat = (w * per).sum(0).mean()
        out["loss"] = out["loss"] + s.beta * feat
        out[s.feature_loss] = feat.detach()
        return out

    def describe(self):
        s = self.settings
        extra = "" if s.feature_loss == "none" else f" + {s.beta}*L_{s.feature_loss}"
        return (f"CA-MKD: eq. (5) per-sample weights; {1 - s.alpha:g}*L_s + {s.alpha:g}*L_KD(eq. 4/7, T={s.temperature})"
                f"{extra}")
