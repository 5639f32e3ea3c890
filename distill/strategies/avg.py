"""``avg``: average-ensemble KD (paper 003 "Avg Weight"; MT-BERT Fig. 3 "average ensemble")."""

from __future__ import annotations

import torch

from .. import losses
from .base import DistillStrategy, register
from .hinton import KDSettings


@register("avg")
class AverageEnsembleKD(DistillStrategy):
    """Soft labels are the mean of the teachers' tempered softmax, ``p = (1/N) sum_i softmax(z_i/T)``:
    ``L = alpha T^2 CE(p, softmax(z_s/T)) + (1 - alpha) CE(y, y_s)``.

    Shapes: student logits (B, C), teacher logits (N, B, C). Teacher weights: 1/N each.
    """

    paper = "paper 003 'Avg Weight' baseline; MT-BERT Fig. 3 'average ensemble'"
    Settings = KDSettings

    def loss(self, student, teachers, batch):
        s = self.settings
        kd = losses.average_ensemble_kd_loss(student.logits, teachers.logits, s.temperature)
        task = losses.task_loss(student.logits, batch.labels)
        N, B = teachers.logits.shape[:2]
        return {"loss": s.alpha * kd + (1 - s.alpha) * task, "kd": kd.detach(), "task": task.detach(),
                "teacher_weights": torch.full((B, N), 1.0 / N, device=student.logits.device)}

    def describe(self):
        return f"average-ensemble KD, T={self.settings.temperature}, alpha={self.settings.alpha}"
