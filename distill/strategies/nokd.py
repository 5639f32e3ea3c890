"""``nokd``: the student finetuned on gold labels only (the no-KD baseline)."""

from __future__ import annotations

from pydantic import Field

from .. import losses
from .base import DistillStrategy, Needs, StrategySettings, register


class NoKDSettings(StrategySettings):
    """Settings of the no-KD baseline."""

    augmented: bool = Field(False, description="also train on the --augment copies of the labelled texts, each with "
                                               "its source's gold label (EDA-style augmentation without a teacher: "
                                               "the control for --augment)")


@register("nokd")
class NoKD(DistillStrategy):
    """``L = CE(y, y_s)`` (MT-BERT eq. (3) task loss alone): the same student, no teacher.

    Shapes: student logits (B, C), labels (B,).
    """

    paper = "baseline: finetuning on gold labels (MT-BERT eq. (3) task loss only)"
    needs = Needs(teachers=False)
    Settings = NoKDSettings

    def loss(self, student, teachers, batch):
        loss = losses.task_loss(student.logits, batch.labels)
        return {"loss": loss, "task": loss.detach()}

    def describe(self):
        return "no KD: CE(y, y_s) only" + (" (+ augmented copies with gold labels)" if self.settings.augmented else "")
