"""Shared shape of the per-sample teacher-weighting strategies (camkd, ebkd, aekd, rl).

``L = (1 - alpha) L_s + alpha L_KD`` with ``L_s = CE(y, y_s)`` and the weighted multi-teacher KD loss
of paper 003 eq. (4)/(7), ``L_KD = mean_b sum_k w_kb T^2 CE(softmax(z_k/T), softmax(z_s/T))``
(:func:`distill.losses.weighted_kd_loss`). A subclass gives only the weights ``w`` (N, B).

Scale: paper 003 writes ``L = L_s + alpha' L_KD``; ``alpha = 0.5`` here is ``alpha' = 1`` up to an
overall factor 1/2, and keeps every weighting strategy on the same scale as the ``avg`` and
``hinton`` baselines (same ``alpha``, same ``T``): with uniform weights ``w = 1/N`` the loss equals
``avg``'s exactly, so a comparison isolates the weighting rule.
"""

from __future__ import annotations

import torch

from .. import losses
from .base import DistillStrategy
from .hinton import KDSettings


class WeightedKD(DistillStrategy):
    """Base of the per-sample teacher-weighting strategies; subclasses implement :meth:`weights`."""

    Settings = KDSettings

    def weights(self, student, teachers, batch) -> torch.Tensor:
        """Teacher weights (N, B), detached, each column summing to 1 (0 when no teacher is used)."""
        raise NotImplementedError

    def kd_terms(self, student, teachers, batch, w: torch.Tensor) -> dict:
        """``{"loss": (1 - alpha) L_s + alpha L_KD, "kd", "task", "teacher_weights" (B, N)}``."""
        s = self.settings
        kd = losses.weighted_kd_loss(student.logits, teachers.logits, w, s.temperature)
        task = losses.task_loss(student.logits, batch.labels)
        return {"loss": s.alpha * kd + (1 - s.alpha) * task, "kd": kd.detach(), "task": task.detach(),
                "teacher_weights": w.detach().T}

    def loss(self, student, teachers, batch):
        return self.kd_terms(student, teachers, batch, self.weights(student, teachers, batch))
