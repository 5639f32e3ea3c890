"""Distillation strategies: one module per multi-teacher method.

**The interface** is :class:`DistillStrategy` (an ``nn.Module``). A method is one subclass,
registered by name with :func:`register`:

* class attributes ``uses_teachers`` / ``needs_hidden`` tell the trainer which teacher outputs to
  cache (logits always; mapped-layer hidden states only when ``needs_hidden``);
* ``__init__(cfg, teachers, student)`` builds the method's own learnable parameters (e.g. the
  ``W_ij`` projections of MT-BERT eq. (1)); they are trained together with the student;
* ``forward(student, teachers, labels) -> dict`` returns ``{"loss": total, <component>: value}``.

Per-sample teacher-weighting methods (CA-MKD eq. (5), EBKD, AEKD, a reinforced teacher-selection
policy), MetaDistil-style methods (a ``on_step`` hook can update teachers) and other students
(a TextCNN with hint and logit-L2 losses, paper 003 eq. (8)-(13)) fit the same interface.

Implemented here: ``mtbert`` (MT-BERT eqs. (1)-(3)), ``nokd`` (student finetuned on gold labels
only), ``hinton`` (single-teacher KD, Hinton et al. 2015) and ``avg`` (average-ensemble KD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import losses
from .errors import DistillError


@dataclass
class TeacherSpec:
    """What a strategy needs to know about teacher ``i``.

    Attributes:
        name: hub id or path.
        hidden_size: ``d_i``.
        num_layers: ``L_i``.
        layer_map: teacher layer (1-based) matched to each student layer j = 1..K.
        token_level: True when the teacher's tokenization equals the student's (token-level hidden
            MSE), False when it differs (pooled per-layer MSE).
    """

    name: str
    hidden_size: int
    num_layers: int
    layer_map: list[int]
    token_level: bool


@dataclass
class StudentSpec:
    """Student facts: hidden size ``d_s`` and depth ``K``."""

    hidden_size: int
    num_layers: int


@dataclass
class StrategyConfig:
    """Loss settings shared by the strategies (CLI flags of the same names).

    Attributes:
        temperature: soft-label temperature ``t`` (MT-BERT uses 1).
        w_hid, w_kd, w_task: weights of the hidden, soft-label and task losses (MT-BERT eq. (3) uses 1, 1, 1).
        loss_weighting: MT-BERT eq. (2) per-teacher weighting ``1/(1+CE(y, y_i))`` (off = ablation).
        alpha: Hinton/avg KD: weight of the soft-label loss; the task loss gets ``1 - alpha``.
        kd_temperature: temperature of the Hinton/avg baselines.
        teacher_index: the single teacher for ``hinton`` (default: best dev macro-F1).
    """

    temperature: float = 1.0
    w_hid: float = 1.0
    w_kd: float = 1.0
    w_task: float = 1.0
    loss_weighting: bool = True
    alpha: float = 0.5
    kd_temperature: float = 2.0
    teacher_index: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class StudentSignals:
    """Student outputs for one batch: ``logits`` (B, C); ``layers`` K tensors (B, L, d_s) or None; ``mask`` (B, L)."""

    logits: torch.Tensor
    layers: list[torch.Tensor] | None
    mask: torch.Tensor


@dataclass
class TeacherSignals:
    """Teacher outputs for one batch: ``logits`` (N, B, C); ``layers[i]`` K tensors per teacher
    ((B, L, d_i) token-level or (B, d_i) pooled, see :class:`TeacherSpec`) or None."""

    logits: torch.Tensor
    layers: list[list[torch.Tensor]] | None


STRATEGIES: dict[str, type["DistillStrategy"]] = {}


def register(name: str):
    """Class decorator adding a strategy to :data:`STRATEGIES` under ``name``."""

    def deco(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def build_strategy(name: str, cfg: StrategyConfig, teachers: list[TeacherSpec], student: StudentSpec) -> "DistillStrategy":
    """Instantiate a registered strategy. Raises :class:`DistillError` for unknown names."""
    if name not in STRATEGIES:
        raise DistillError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    return STRATEGIES[name](cfg, teachers, student)


class DistillStrategy(nn.Module):
    """Base class of a distillation method (see the module docstring)."""

    name = "base"
    uses_teachers = True
    needs_hidden = False

    def __init__(self, cfg: StrategyConfig, teachers: list[TeacherSpec], student: StudentSpec):
        super().__init__()
        self.cfg, self.teachers, self.student = cfg, teachers, student

    def forward(self, student: StudentSignals, teachers: TeacherSignals | None, labels: torch.Tensor) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the report."""
        return self.name


@register("nokd")
class NoKD(DistillStrategy):
    """Student finetuned on gold labels only: ``L = CE(y, y_s)`` (the no-KD baseline)."""

    uses_teachers = False

    def forward(self, student, teachers, labels):
        loss = losses.task_loss(student.logits, labels)
        return {"loss": loss, "task": loss.detach()}

    def describe(self):
        return "no KD: CE(y, y_s) only"


@register("hinton")
class HintonKD(DistillStrategy):
    """Single-teacher KD (Hinton et al. 2015): ``alpha T^2 CE(p_t^T, p_s^T) + (1 - alpha) CE(y, y_s)``."""

    def __init__(self, cfg, teachers, student):
        super().__init__(cfg, teachers, student)
        self.index = cfg.teacher_index if cfg.teacher_index is not None else 0
        if not 0 <= self.index < len(teachers):
            raise DistillError(f"--kd-teacher {self.index} is out of range (0..{len(teachers) - 1}).")

    def forward(self, student, teachers, labels):
        kd = losses.hinton_kd_loss(student.logits, teachers.logits[self.index], self.cfg.kd_temperature)
        task = losses.task_loss(student.logits, labels)
        a = self.cfg.alpha
        return {"loss": a * kd + (1 - a) * task, "kd": kd.detach(), "task": task.detach()}

    def describe(self):
        return (f"Hinton KD from teacher {self.index} ({self.teachers[self.index].name}), "
                f"T={self.cfg.kd_temperature}, alpha={self.cfg.alpha}")


@register("avg")
class AverageEnsembleKD(DistillStrategy):
    """Average-ensemble KD: soft labels are the mean of the teachers' tempered softmax
    (paper 003 "Avg Weight"; MT-BERT Fig. 3 "average ensemble")."""

    def forward(self, student, teachers, labels):
        kd = losses.average_ensemble_kd_loss(student.logits, teachers.logits, self.cfg.kd_temperature)
        task = losses.task_loss(student.logits, labels)
        a = self.cfg.alpha
        return {"loss": a * kd + (1 - a) * task, "kd": kd.detach(), "task": task.detach()}

    def describe(self):
        return f"average-ensemble KD, T={self.cfg.kd_temperature}, alpha={self.cfg.alpha}"


@register("mtbert")
class MTBert(DistillStrategy):
    """MT-BERT (Wu et al. 2021): ``L = w_hid L_hid + w_kd L_dis + w_task L_task`` (eq. (3)) with
    the multi-teacher hidden loss eq. (1), the loss-weighted soft-label loss eq. (2) and the task loss.

    ``W_ij`` (``Linear(d_i, d_s)``, one per teacher i and student layer j) is learnable. Layer
    mapping: student layer j <- teacher layer ``round(j L_i / K)``. Teachers whose tokenizer differs
    from the student's are matched on masked-mean pooled states of the mapped layers.
    """

    needs_hidden = True

    def __init__(self, cfg, teachers, student):
        super().__init__(cfg, teachers, student)
        self.projections = nn.ModuleList(
            nn.ModuleList(nn.Linear(t.hidden_size, student.hidden_size) for _ in range(student.num_layers))
            for t in teachers
        )
        self.needs_hidden = cfg.w_hid > 0

    def forward(self, student, teachers, labels):
        out = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        if self.cfg.w_hid > 0:
            hid = losses.mtbert_hidden_loss(student.layers, teachers.layers, self.projections, student.mask,
                                            [t.token_level for t in self.teachers])
            total = total + self.cfg.w_hid * hid
            out["hid"] = hid.detach()
        if self.cfg.w_kd > 0:
            dis = losses.mtbert_distill_loss(student.logits, teachers.logits, labels, self.cfg.temperature,
                                             self.cfg.loss_weighting)
            total = total + self.cfg.w_kd * dis
            out["dis"] = dis.detach()
        if self.cfg.w_task > 0:
            task = losses.task_loss(student.logits, labels)
            total = total + self.cfg.w_task * task
            out["task"] = task.detach()
        out["loss"] = total
        return out

    def describe(self):
        rules = "; ".join(
            f"{t.name}: layers {t.layer_map}, {'token-level MSE' if t.token_level else 'pooled MSE (tokenizer differs)'}"
            for t in self.teachers)
        return (f"MT-BERT: {self.cfg.w_hid}*L_hid(eq.1) + {self.cfg.w_kd}*L_dis(eq.2, t={self.cfg.temperature}, "
                f"loss weighting {'on' if self.cfg.loss_weighting else 'off'}) + {self.cfg.w_task}*L_task(eq.3); {rules}")
