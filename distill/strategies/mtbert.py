"""``mtbert``: MT-BERT (Wu, Wu, Huang, Findings of ACL 2021, paper 000), eqs. (1)-(3)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from .. import losses
from ..errors import DistillError
from .base import DistillStrategy, Needs, StrategySettings, register


#: Named MT-BERT settings for ``--set mtbert.preset=NAME``; settings given beside the preset win.
#: ``paper``: eq. (3) with unit weights, t = 1 and eq. (2)'s loss weighting (paper 000, Section 3).
PRESETS: dict[str, dict] = {
    "paper": {"w_hid": 1.0, "w_kd": 1.0, "w_task": 1.0, "temperature": 1.0, "loss_weighting": True},
}


class MTBertSettings(StrategySettings):
    """Settings of ``mtbert``: temperature, the weights of the three losses of eq. (3), eq. (2) weighting.

    Defaults are the paper's except ``w_hid``: 0 since distill 0.3, chosen on AG News dev (the hidden
    loss cost 0.59 dev macro-F1 on every seed, README "AG News: the MT-BERT ablation"; MIND's dev split
    could not rank the terms). ``preset="paper"`` restores the paper's settings for every field not
    given beside it.
    """

    preset: Literal["paper"] | None = Field(
        None, description="'paper' = MT-BERT's own settings (w_hid = w_kd = w_task = 1, t = 1, loss weighting) "
                          "for every field not set beside it")
    temperature: float = Field(1.0, gt=0, description="soft-label temperature t of eq. (2) (the paper uses 1)")
    w_hid: float = Field(0.0, ge=0, description="weight of the hidden loss L_hid, eq. (1); 0 (the default since "
                                                "0.3, chosen on AG News dev) disables it; the paper uses 1")
    w_kd: float = Field(1.0, ge=0, description="weight of the soft-label loss L_dis, eq. (2)")
    w_task: float = Field(1.0, ge=0, description="weight of the task loss L_task, eq. (3)")
    loss_weighting: bool = Field(True, description="eq. (2) per-teacher weights 1/(1+CE(y, y_i)); off = Fig. 4 ablation")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """Fill the fields not given from ``PRESETS[preset]`` (an unknown name fails on ``preset``'s type)."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        return data


@register("mtbert")
class MTBert(DistillStrategy):
    """MT-BERT: ``L = w_hid L_hid + w_kd L_dis + w_task L_task`` (eq. (3)) with the multi-teacher
    hidden loss eq. (1), the loss-weighted soft-label loss eq. (2) and the task loss.

    ``W_ij`` (``Linear(d_i, d_s)``, one per teacher i and student layer j) is learnable and trained
    with the student's head learning rate. Layer mapping: student layer j <- teacher layer
    ``round(j L_i / K)``. Teachers whose tokenizer differs from the student's are matched on
    masked-mean pooled states of the mapped layers.

    Shapes: student logits (B, C) and K layers (B, L, d_s); teacher logits (N, B, C) and per teacher
    K layers (B, L, d_i) or (B, d_i). Reported teacher weights: eq. (2)'s ``1/(1+CE(y, y_i))``
    normalised over the teachers (B, N). On transfer-set texts (no gold label) ``y`` in eq. (2) is
    the teacher ensemble's prediction and the task loss is left out.
    """

    paper = "MT-BERT (Wu et al., Findings of ACL 2021) eqs. (1)-(3)"
    Settings = MTBertSettings

    def __init__(self, settings, teachers, student):
        """Raises:
            DistillError: ``w_hid``, ``w_kd`` and ``w_task`` are all 0 (no loss to train on)."""
        super().__init__(settings, teachers, student)
        if settings.w_hid == settings.w_kd == settings.w_task == 0:
            raise DistillError("--set mtbert.w_hid / w_kd / w_task: all three loss weights are 0, so the student "
                               "would have no loss; give at least one a weight > 0 (e.g. --set mtbert.preset=paper).")
        # W_ij only when the hidden loss is on: unused parameters would sit in every checkpoint and DDP bucket
        self.projections = nn.ModuleList(
            nn.ModuleList(nn.Linear(t.hidden_size, student.hidden_size) for _ in range(student.num_layers))
            for t in (teachers if settings.w_hid > 0 else [])
        )
        self.needs = Needs(teachers=True, layers=settings.w_hid > 0)

    def loss(self, student, teachers, batch):
        s = self.settings
        out = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        if s.w_hid > 0:
            hid = losses.mtbert_hidden_loss(student.layers, teachers.layers, self.projections, student.mask,
                                            [t.token_level for t in self.teachers])
            total = total + s.w_hid * hid
            out["hid"] = hid.detach()
        if s.w_kd > 0:
            dis = losses.mtbert_distill_loss(student.logits, teachers.logits, batch.labels, s.temperature,
                                             s.loss_weighting)
            total = total + s.w_kd * dis
            out["dis"] = dis.detach()
        if s.w_task > 0:
            task = losses.task_loss(student.logits, batch.labels)
            total = total + s.w_task * task
            out["task"] = task.detach()
        out["loss"] = total
        with torch.no_grad():
            N = teachers.logits.shape[0]
            w = (1.0 / (1.0 + losses.teacher_gold_ce(teachers.logits, batch.labels)) if s.loss_weighting
                 else torch.ones(N, student.logits.shape[0], device=student.logits.device))
            out["teacher_weights"] = (w / w.sum(0, keepdim=True)).T
        return out

    def describe(self):
        s = self.settings
        rules = "; ".join(
            f"{t.name}: layers {t.layer_map}, {'token-level MSE' if t.token_level else 'pooled MSE (tokenizer differs)'}"
            for t in self.teachers) if s.w_hid > 0 else "no hidden loss"
        return (f"MT-BERT: {s.w_hid}*L_hid(eq.1) + {s.w_kd}*L_dis(eq.2, t={s.temperature}, "
                f"loss weighting {'on' if s.loss_weighting else 'off'}) + {s.w_task}*L_task(eq.3); {rules}")
