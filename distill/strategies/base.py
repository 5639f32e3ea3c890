"""The strategy interface: one module per multi-teacher method, its own settings, a registry.

A method is one subclass of :class:`DistillStrategy`, registered by name with :func:`register`.
It declares

* ``Settings``: a pydantic model of its own knobs (defaults, ranges, descriptions). The CLI
  (``--set <strategy>.<field>=<value>``), ``config.json`` and ``distill strategies`` read this one
  declaration; values are validated before any training;
* ``needs``: what the trainer must provide (:class:`Needs`: teacher signals, mapped-layer states);
* ``paper``: the reference (paper and equations).

and overrides only what it changes (defaults = plain distillation):

* ``loss(student, teachers, batch) -> {"loss": total, <component>: value, "teacher_weights": (B, N)}``;
* ``configure_optimizers`` (default: one AdamW, encoder at ``lr``, head + the strategy's own
  parameters at ``head_lr``);
* ``training_step(batch, ctx)`` (default: ``step_loss`` - teacher signals, student forward, ``loss`` -
  then backward and step; ``distributed = False`` when a method's own step cannot run under DDP);
* ``on_epoch_start`` / ``on_epoch_end`` (e.g. a reward from dev data);
* ``adjust_fit`` (e.g. warm-up epochs added to the student's epochs);
* ``teacher_updatable = True`` with ``attach(...)``: the method trains copies of the teachers itself;
* extra checkpointed state through ``nn.Module.get_extra_state`` / ``set_extra_state``.

The trainer (:func:`distill.trainer.fit`) logs every component ``loss`` returns and records
``teacher_weights`` per training text for the report ("which teacher taught what").
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..errors import DistillError
from ..trainer import Batch, FitSettings, Optimization, StepContext, adamw


class StrategySettings(BaseModel):
    """Base of every strategy's settings (pydantic; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Needs:
    """What a strategy needs from the trainer.

    Attributes:
        teachers: teacher signals (logits and pooled head features, cached or online).
        layers: the teachers' mapped-layer states and the student's per-layer hidden states.
    """

    teachers: bool = True
    layers: bool = False


@dataclass
class TeacherSpec:
    """What a strategy needs to know about teacher ``i``.

    Attributes:
        name: hub id or path.
        hidden_size: ``d_i``.
        num_layers: ``L_i``.
        layer_map: teacher layer (1-based) matched to each student layer j = 1..K.
        token_level: True when the teacher's tokenization equals the student's (token-level states),
            False when it differs (masked-mean pooled states per mapped layer).
        pooled_size: size ``d_c`` of the pooled head feature (the input of the prediction layer).
        dev_macro_f1: the finetuned teacher's dev macro-F1 (%), None when unknown.
    """

    name: str
    hidden_size: int
    num_layers: int
    layer_map: list[int]
    token_level: bool
    pooled_size: int = 0
    dev_macro_f1: float | None = None


@dataclass
class StudentSpec:
    """Student facts: hidden size ``d_s``, depth ``K``, number of classes ``C``."""

    hidden_size: int
    num_layers: int
    num_labels: int = 0


@dataclass
class StudentSignals:
    """Student outputs for one batch.

    Attributes:
        logits: (B, C) float32.
        layers: K tensors (B, L, d_s) (hidden states of layers 1..K) or None.
        mask: (B, L) attention mask.
        pooled: (B, d_s) pooled feature fed to the prediction layer.
    """

    logits: torch.Tensor
    layers: list[torch.Tensor] | None
    mask: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class TeacherSignals:
    """Teacher outputs for one batch.

    Attributes:
        logits: (N, B, C) float32.
        layers: per teacher K tensors, (B, L, d_i) token-level or (B, d_i) pooled (see
            :class:`TeacherSpec`), or None when not needed.
        pooled: (N, B, d_c) pooled head features, or None.
    """

    logits: torch.Tensor
    layers: list[list[torch.Tensor]] | None = None
    pooled: torch.Tensor | None = None


STRATEGIES: dict[str, type["DistillStrategy"]] = {}


def register(name: str):
    """Class decorator adding a strategy to :data:`STRATEGIES` under ``name``."""

    def deco(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def parse_value(text: str):
    """A ``--set`` value: JSON (numbers, true/false, null, lists) when it parses, else the string."""
    low = text.strip()
    if low in ("none", "None"):
        return None
    if low in ("True", "False"):
        return low == "True"
    try:
        return json.loads(low)
    except json.JSONDecodeError:
        return text


def resolve_settings(name: str, values: dict | None) -> StrategySettings:
    """Validate ``values`` against strategy ``name``'s ``Settings``.

    Raises:
        DistillError: unknown strategy, unknown field, or a value out of range (names ``--set name.field``).
    """
    if name not in STRATEGIES:
        raise DistillError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)} (see `distill strategies`).")
    return validate_settings(STRATEGIES[name].Settings, name, values)


def validate_settings(cls: type[BaseModel], name: str, values: dict | None):
    """``cls(**values)``, with a pydantic error turned into one naming ``--set name.field`` and the fix.

    Raises:
        DistillError: unknown field (listing the known ones) or a value out of range.
    """
    try:
        return cls(**(values or {}))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ())) or "?"
        if err.get("type") == "extra_forbidden":
            known = ", ".join(cls.model_fields) or "none"
            raise DistillError(f"--set {name}.{field}: {name} has no setting {field!r} (its settings: {known}).") from None
        raise DistillError(f"--set {name}.{field}={err.get('input')!r}: {err.get('msg')}.") from None


def build_strategy(name: str, settings, teachers: list[TeacherSpec], student: StudentSpec) -> "DistillStrategy":
    """Instantiate a registered strategy; ``settings`` is its ``Settings`` instance or a dict of overrides.

    Raises:
        DistillError: unknown name or invalid settings.
    """
    if not isinstance(settings, StrategySettings):
        settings = resolve_settings(name, settings)
    return STRATEGIES[name](settings, teachers, student)


class DistillStrategy(nn.Module):
    """Base class of a distillation method (see the module docstring)."""

    name: ClassVar[str] = "base"
    paper: ClassVar[str] = ""
    Settings: ClassVar[type[StrategySettings]] = StrategySettings
    needs: Needs = Needs()
    #: True when the method updates the teachers while the student trains (torchdistill's
    #: ``teacher_updatable``): the pipeline then hands it trainable copies of the finetuned teachers,
    #: their tokenizations and a quiz set through ``attach`` (see :mod:`.metadistil`).
    teacher_updatable: ClassVar[bool] = False
    #: False when the method's step does more than ``step_loss`` + one optimiser step (its own second
    #: optimiser, meta-gradients, a policy update): such a method is refused under a launcher.
    distributed: ClassVar[bool] = True

    def __init__(self, settings: StrategySettings, teachers: list[TeacherSpec], student: StudentSpec):
        super().__init__()
        self.settings, self.teachers, self.student = settings, teachers, student

    # ---------------------------------------------------------------- what a method overrides
    def loss(self, student: StudentSignals, teachers: TeacherSignals | None, batch: Batch) -> dict:
        """``{"loss": scalar, <component>: detached scalar, "teacher_weights": (B, N) optional}``."""
        raise NotImplementedError

    def configure_optimizers(self, model: nn.Module, fs: FitSettings, total_steps: int) -> list[Optimization]:
        """Default: one AdamW; the student's encoder at ``fs.lr``, its head and this strategy's own
        parameters at ``fs.head_lr``; linear warm-up/decay; all of them clipped together."""
        enc = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
        head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")] + list(self.parameters())
        return [adamw([(enc, fs.lr), (head, fs.head_lr)], fs.weight_decay, total_steps, fs.warmup)]

    def adjust_fit(self, fs: FitSettings) -> FitSettings:
        """The run's :class:`FitSettings` for this method (default: unchanged; e.g. extra warm-up epochs)."""
        return fs

    def student_signals(self, batch: Batch, ctx: StepContext) -> StudentSignals:
        """Forward the student (call inside ``ctx.autocast()``); hidden states only when ``needs.layers``."""
        out = ctx.model(batch.ids, batch.mask, output_hidden_states=self.needs.layers)
        return StudentSignals(out.logits.float(), list(out.hidden_states[1:]) if self.needs.layers else None,
                              batch.mask, out.pooled)

    def teacher_signals(self, batch: Batch, ctx: StepContext) -> TeacherSignals | None:
        """The batch's teacher signals from the cache or the online teachers (None when unused)."""
        if not self.needs.teachers or ctx.teachers is None:
            return None
        return ctx.teachers(batch.rows, batch.ids.shape[1])

    def step_loss(self, batch: Batch, ctx: StepContext) -> dict:
        """Teacher signals, student forward and :meth:`loss` of one batch (what DDP wraps under a launcher)."""
        t = self.teacher_signals(batch, ctx)
        with ctx.autocast():
            return self.loss(self.student_signals(batch, ctx), t, batch)

    def training_step(self, batch: Batch, ctx: StepContext) -> dict:
        """Default step: :meth:`step_loss` (through ``ctx.forward``), backward, optimiser step."""
        return ctx.default_step(batch)

    def forward(self, student: StudentSignals, teachers: TeacherSignals | None, batch: Batch) -> dict:
        return self.loss(student, teachers, batch)

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Called before every epoch."""

    def on_epoch_end(self, ctx: StepContext) -> dict | None:
        """Called after every epoch; what it returns is logged with the epoch (``EpochLog.extra``)."""
        return None

    def describe(self) -> str:
        """One line for the report: the method and its settings."""
        vals = ", ".join(f"{k}={v}" for k, v in self.settings.model_dump().items())
        return f"{self.name}{' (' + vals + ')' if vals else ''}"


def settings_table(name) -> list[dict]:
    """Strategy ``name``'s settings (or those of a pydantic settings class) as rows
    ``{name, type, default, range, description}``."""
    cls = STRATEGIES[name].Settings if isinstance(name, str) else name
    rows = []
    for fname, f in cls.model_fields.items():
        rng = []
        for m in f.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(m, attr, None) is not None:
                    rng.append(f"{sym} {getattr(m, attr)}")
        ann, optional = f.annotation, False
        args = typing.get_args(ann)
        if type(None) in args and len(args) == 2:  # Optional[X]: show X, "or none"
            ann, optional = next(a for a in args if a is not type(None)), True
        if typing.get_origin(ann) is Literal:
            tname = "one of " + " | ".join(map(str, typing.get_args(ann)))
        else:
            tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        tname += " or none" if optional else ""
        rows.append({"name": fname, "type": tname, "default": f.default, "range": ", ".join(rng),
                     "description": f.description or ""})
    return rows
