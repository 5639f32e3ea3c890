"""``aekd``: adaptive ensemble KD in gradient space (Du et al., "Agree to Disagree", NeurIPS 2020)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .. import losses
from ..errors import DistillError
from ..weighting import min_norm_weights
from .base import register
from .hinton import KDSettings
from .weighted import WeightedKD


class AEKDSettings(KDSettings):
    """Settings of ``aekd``: the KD settings, the tolerance ``C`` and how gradients enter the min-norm problem."""

    C: float = Field(0.6, gt=0, le=1, description="tolerance: upper bound on every teacher weight (needs C >= 1/N)")
    gradient: Literal["flatten", "batch_mean"] = Field(
        "flatten", description="teacher gradients w.r.t. the batch's student logits: flatten = (B*C) vectors; "
                               "batch_mean = averaged over the batch (C vectors, the authors' code)")
    normalize: bool = Field(False, description="L2-normalise each gradient before solving (reference: off)")


@register("aekd")
class AEKD(WeightedKD):
    """AE-KD: per batch, the teachers' weights are the min-norm point of the convex hull of their KD
    gradients, so the student follows the direction the teachers agree on.

    * Gradients: ``g_k = d L_KD,k / d z_s`` with ``L_KD,k = mean_b T^2 CE(softmax(z_k/T), softmax(z_s/T))``,
      taken w.r.t. the student logits (B, C) of the batch (autograd on a detached copy; the student's
      parameters are untouched). ``gradient="flatten"`` uses them as (B*C)-vectors (inner products
      sum the per-sample ones); ``"batch_mean"`` averages them over the batch to C-vectors as the
      authors' code (``AnTuo1998/AE-KD``, helper/optimization.py) does - which cancels much of the
      per-sample disagreement, hence not our default.
    * Weights: ``w = argmin_w ||sum_k w_k g_k||^2`` subject to ``sum w = 1`` and ``0 <= w_k <= C``
      (:func:`distill.weighting.min_norm_weights`; the authors solve the same QP with a one-class SVM,
      ``nu = 1 / (C N)``). The tolerance ``C`` bounds each weight from above, so every other teacher keeps
      at least ``1 - (N - 1) C`` when that is positive: with two teachers and ``C = 0.6`` each weight lies
      in [0.4, 0.6]. One weight vector per batch, shared by its texts, detached.
    * Loss: ``(1 - alpha) CE(y, y_s) + alpha sum_k w_k L_KD,k``.

    Shapes: student logits (B, C); teacher logits (N, B, C); weights (N,) broadcast to (N, B).

    With a single teacher (e.g. after the weak-teacher rule left the other out) its weight is 1.

    Raises:
        DistillError: ``C < 1/N`` with N >= 2 (no feasible weights).
    """

    paper = ("Du et al., 'Agree to Disagree: Adaptive Ensemble Knowledge Distillation in Gradient Space', "
             "NeurIPS 2020 (paper 003's AEKD baseline)")
    Settings = AEKDSettings

    def __init__(self, settings, teachers, student):
        super().__init__(settings, teachers, student)
        if len(teachers) > 1 and settings.C * len(teachers) < 1 - 1e-9:
            raise DistillError(f"--set aekd.C={settings.C}: with {len(teachers)} teachers the weights cannot sum "
                               f"to 1 under that cap; use C >= {1 / len(teachers):.3f}.")

    def teacher_gradients(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Each teacher's KD gradient w.r.t. the student logits: (N, B*C) (``flatten``) or (N, C)."""
        z = student_logits.detach().float().requires_grad_(True)
        with torch.enable_grad():
            per = losses.kd_per_teacher(z, teacher_logits.detach(), self.settings.temperature).mean(1)  # (N,)
            grads = [torch.autograd.grad(per[k], z, retain_graph=k + 1 < len(per))[0] for k in range(len(per))]
        g = torch.stack(grads)  # (N, B, C)
        g = g.flatten(1) if self.settings.gradient == "flatten" else g.mean(1)
        if self.settings.normalize:
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return g

    def weights(self, student, teachers, batch):
        if teachers.logits.shape[0] == 1:  # one teacher (e.g. the other left out as weak): nothing to solve
            return torch.ones(1, student.logits.shape[0], device=student.logits.device)
        g = self.teacher_gradients(student.logits, teachers.logits).double()
        w = min_norm_weights((g @ g.T).cpu().numpy(), 0.0, self.settings.C)
        B = student.logits.shape[0]
        return torch.as_tensor(w, dtype=torch.float32, device=student.logits.device).unsqueeze(1).expand(-1, B)

    def describe(self):
        s = self.settings
        return (f"AE-KD: per-batch min-norm weights of the teachers' KD gradients ({s.gradient}), each <= C={s.C}; "
                f"{1 - s.alpha:g}*L_s + {s.alpha:g}*L_KD(T={s.temperature})")
