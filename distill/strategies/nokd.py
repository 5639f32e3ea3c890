"""``nokd``: the student finetuned on gold labels only (the no-KD baseline)."""

from __future__ import annotations

from .. import losses
from .base import DistillStrategy, Needs, register


@register("nokd")
class NoKD(DistillStrategy):
    """``L = CE(y, y_s)`` (MT-BERT eq. (3) task loss alone): the same student, no teacher.

    Shapes: student logits (B, C), labels (B,).
    """

    paper = "baseline: finetuning on gold labels (MT-BERT eq. (3) task loss only)"
    needs = Needs(teachers=False)

    def loss(self, student, teachers, batch):
        loss = losses.task_loss(student.logits, batch.labels)
        return {"loss": loss, "task": loss.detach()}

    def describe(self):
        return "no KD: CE(y, y_s) only"
