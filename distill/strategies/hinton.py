"""``hinton``: single-teacher KD (Hinton, Vinyals, Dean 2015), the KD1/KD2 baselines of paper 003."""

from __future__ import annotations

import torch
from pydantic import Field

from .. import losses
from ..errors import DistillError
from .base import DistillStrategy, StrategySettings, register


class KDSettings(StrategySettings):
    """Soft-label KD settings shared by the KD baselines and the teacher-weighting strategies:
    ``L = (1 - alpha) CE(y, y_s) + alpha T^2 L_KD``."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD term; the task loss gets 1 - alpha")
    temperature: float = Field(2.0, gt=0, description="soft-label temperature T (the KD term is scaled by T^2)")


class HintonSettings(KDSettings):
    """Settings of ``hinton``: the KD settings and the teacher to learn from."""

    teacher: int | None = Field(None, ge=0, description="index of the teacher (default: best dev macro-F1)")


@register("hinton")
class HintonKD(DistillStrategy):
    """Single-teacher KD: ``L = alpha T^2 CE(softmax(z_t/T), softmax(z_s/T)) + (1 - alpha) CE(y, y_s)``.

    The teacher is ``teacher`` or, by default, the one with the best dev macro-F1.
    Shapes: student logits (B, C), teacher logits (N, B, C).

    Raises:
        DistillError: ``teacher`` out of range.
    """

    paper = "Hinton et al. 2015, 'Distilling the knowledge in a neural network' (paper 003's KD1/KD2 baselines)"
    Settings = HintonSettings

    def __init__(self, settings, teachers, student):
        super().__init__(settings, teachers, student)
        idx = settings.teacher
        if idx is None:
            scores = [t.dev_macro_f1 if t.dev_macro_f1 is not None else -1.0 for t in teachers]
            idx = max(range(len(teachers)), key=lambda i: scores[i])
        if not 0 <= idx < len(teachers):
            raise DistillError(f"--set hinton.teacher={idx}: out of range (0..{len(teachers) - 1}).")
        self.index = idx

    def loss(self, student, teachers, batch):
        s = self.settings
        kd = losses.hinton_kd_loss(student.logits, teachers.logits[self.index], s.temperature)
        task = losses.task_loss(student.logits, batch.labels)
        w = torch.zeros(student.logits.shape[0], teachers.logits.shape[0], device=student.logits.device)
        w[:, self.index] = 1.0
        return {"loss": s.alpha * kd + (1 - s.alpha) * task, "kd": kd.detach(), "task": task.detach(),
                "teacher_weights": w}

    def describe(self):
        s = self.settings
        return (f"Hinton KD from teacher {self.index} ({self.teachers[self.index].name}), "
                f"T={s.temperature}, alpha={s.alpha}")
