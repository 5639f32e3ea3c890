"""``fit``: the one training loop of the project (teacher co-finetuning, every student strategy, benchmarks).

The loop knows nothing about any one method. It drives a *method* object (a
:class:`distill.strategies.DistillStrategy`, or :class:`distill.teachers.CoFinetune` for the
teachers) through the hooks below, in the spirit of Lightning's ``training_step`` with manual
optimisation and torchdistill's pre/post-forward procedures:

* ``configure_optimizers(model, settings, total_steps) -> list[Optimization]``: the optimisers and
  schedulers (default of the strategies: one AdamW with an encoder group and a head group);
* ``step_loss(batch, ctx) -> dict``: the forward pass and loss of one batch, ``{"loss": total,
  <component>: value, ...}`` and, optionally, ``"teacher_weights"`` (B, N) - the per-sample teacher
  weights it used;
* ``training_step(batch, ctx) -> dict`` (optional): forward, loss, backward and step; without it,
  :meth:`StepContext.default_step` (``step_loss`` through ``ctx.forward`` - ``DistributedDataParallel``
  under a launcher - then :meth:`StepContext.backward_step`); returns what ``step_loss`` returned;
* ``on_epoch_start(ctx)`` / ``on_epoch_end(ctx) -> dict | None`` (e.g. a reward on dev data);
* its ``state_dict()`` (parameters, buffers and ``get_extra_state``) is checkpointed with the model,
  the optimisers, the schedulers and the torch RNG state after every epoch, so ``--resume`` continues
  exactly where a killed run stopped.

Every loss component a method returns is averaged per epoch into :class:`EpochLog`.

Under ``torchrun`` / ``accelerate launch`` (:mod:`distill.distributed`) every rank draws the same row
order and trains on its slice of each global batch of ``batch_size x world size`` rows; ``model`` and
``method`` are wrapped together in ``DistributedDataParallel``, and each rank's loss is weighted by its
share of the global batch, so a step equals one process's step on the global batch (up to float
summation order). A method that owns its whole step outside ``step_loss`` sets ``distributed = False``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .device import autocast_ctx, grad_scaler
from .early_stopping import BestEpoch
from .errors import DistillError
from .tokens import Tokenized, progress

log = logging.getLogger("distill")

CHECKPOINT_FORMAT = "distill-fit/2"


@dataclass
class FitSettings:
    """Optimisation settings of one :func:`fit` call.

    Attributes:
        epochs: passes over the training rows.
        batch_size: rows per step and per process (the global batch is ``batch_size x world size``).
        lr: learning rate of the encoder parameters (AdamW, per step).
        head_lr: learning rate of the other parameters (heads, projections, strategy parameters).
        weight_decay: AdamW weight decay.
        warmup: fraction of the steps with a linear learning-rate warm-up (then linear decay).
        seed: seed of the row order (see ``order_seed``) and, for students, of torch's RNG.
        max_steps: stop after this many optimisation steps (benchmarks); None = all epochs.
        grad_clip: gradient-norm clipping threshold.
    """

    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 13
    max_steps: int | None = None
    grad_clip: float = 1.0


@dataclass
class EpochLog:
    """One epoch: wall time (s), mean total loss, samples/s (all processes together), the mean of every
    loss component the method returned, what its ``on_epoch_end`` hook reported (e.g. a reward), and
    under a launcher each rank's samples/s (``rank_samples_per_s``, empty for one process)."""

    epoch: int
    seconds: float
    loss: float
    samples_per_s: float
    components: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    rank_samples_per_s: list = field(default_factory=list)


@dataclass
class Batch:
    """One training batch.

    Attributes:
        rows: dataset row indices (B).
        labels: gold class ids (B,) int64 on the training device.
        ids, mask: the model's tokenisation (B, L) int64, padded to the longest row; None when
            :func:`fit` was given no tokenisation (the method tokenises itself, e.g. co-finetuning).
    """

    rows: list[int]
    labels: torch.Tensor
    ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class Optimization:
    """An optimiser, its (per-step) scheduler and the parameters whose gradient norm is clipped."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None
    params: list


def adamw(groups: list[tuple[list, float]], weight_decay: float, total_steps: int, warmup: float) -> Optimization:
    """AdamW over parameter groups ``(params, lr)`` (frozen parameters dropped) with a linear warm-up
    over ``warmup * total_steps`` steps and linear decay (transformers' schedule)."""
    from transformers import get_linear_schedule_with_warmup

    params = [{"params": [p for p in ps if p.requires_grad], "lr": lr} for ps, lr in groups]
    params = [g for g in params if g["params"]]
    opt = torch.optim.AdamW(params, weight_decay=weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(warmup * total_steps), max(1, total_steps))
    return Optimization(opt, sched, [p for ps, _ in groups for p in ps])


class StepContext:
    """What a method sees during :func:`fit`.

    Attributes:
        model: the module being trained (the student; the teachers for co-finetuning).
        teachers: a :class:`distill.cache.TeacherProvider` (cached or online teacher signals) or None.
        optimizations: what the method's ``configure_optimizers`` returned.
        settings: the :class:`FitSettings`.
        device, precision: where and how to compute.
        epoch: 0-based epoch in progress; ``step``: optimisation steps done so far (whole run).
        steps_per_epoch, total_steps: schedule sizes.
        evaluate: ``evaluate(part) -> {"accuracy", "macro_f1", "n", "loss"}`` of the current model on
            ``"dev"`` (never ``"test"``), or None when the caller provided no held-out data.
        train_rows: the dataset rows of the training part (positions index the teacher-output cache).
        stop: set it to True in ``on_epoch_end`` to end training after this epoch (early stopping).
        rank_weight: this rank's share of the global batch times the world size (1.0 for one process):
            :meth:`backward_step` scales the loss by it, so DDP's gradient average is the global mean's.
    """

    def __init__(self, model, teachers, optimizations, settings, device, precision, steps_per_epoch, total_steps,
                 evaluate, train_rows, forward=None):
        self.model, self.teachers, self.optimizations = model, teachers, optimizations
        self.settings, self.device, self.precision = settings, device, precision
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.evaluate, self.train_rows = evaluate, train_rows
        self.scaler = grad_scaler(device, precision)
        self.epoch = 0
        self.step = 0
        self.stop = False
        self.rank_weight = 1.0
        self._forward = forward

    def forward(self, batch: "Batch") -> dict:
        """The method's ``step_loss(batch, ctx)``, through ``DistributedDataParallel`` under a launcher."""
        return self._forward(batch, self)

    def autocast(self):
        """bf16/fp16 autocast on CUDA, nothing on CPU."""
        return autocast_ctx(self.device, self.precision)

    def default_step(self, batch: "Batch") -> dict:
        """The default training step: :meth:`forward` (the method's ``step_loss``), then
        :meth:`backward_step`; returns what ``step_loss`` returned."""
        out = self.forward(batch)
        self.backward_step(out["loss"])
        return out

    def backward_step(self, loss: torch.Tensor, which: int = 0) -> None:
        """Zero the gradients, backward (with fp16 loss scaling), clip the gradient norm, step the
        optimiser ``which`` and its scheduler."""
        o = self.optimizations[which]
        o.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * self.rank_weight if self.rank_weight != 1.0 else loss).backward()
        self.scaler.unscale_(o.optimizer)
        torch.nn.utils.clip_grad_norm_(o.params, self.settings.grad_clip)
        self.scaler.step(o.optimizer)
        self.scaler.update()
        if o.scheduler is not None:
            o.scheduler.step()


class WeightTracker:
    """Accumulates the per-sample teacher weights a strategy used, per training text.

    Shapes: ``add(positions (B,), weights (B, N))``; :meth:`per_text` -> (n, N) mean weight of every
    training text over all the steps that saw it (rows never seen are NaN).
    """

    def __init__(self, n: int):
        self.n, self.sums, self.counts = n, None, np.zeros(n)

    def add(self, positions: list[int], weights: torch.Tensor) -> None:
        """Add one step's weights (B, N) for the training texts at ``positions`` (B,)."""
        w = weights.detach().float().cpu().numpy()
        if self.sums is None:
            self.sums = np.zeros((self.n, w.shape[1]))
        np.add.at(self.sums, positions, w)
        np.add.at(self.counts, positions, 1)

    def per_text(self) -> np.ndarray | None:
        """(n, N) mean weight per training text; None when no weights were recorded."""
        if self.sums is None:
            return None
        with np.errstate(invalid="ignore"):
            return self.sums / self.counts[:, None]

    def state(self) -> dict:
        """Tensors for a checkpoint."""
        return {"sums": torch.from_numpy(self.sums) if self.sums is not None else None,
                "counts": torch.from_numpy(self.counts)}

    def load(self, st: dict) -> None:
        """Restore from :meth:`state`."""
        self.sums = st["sums"].numpy() if st.get("sums") is not None else None
        self.counts = st["counts"].numpy()

    def reduced(self) -> "WeightTracker":
        """The tracker summed over all ranks (every rank calls it; ``self`` for one process)."""
        if D.world().size == 1:
            return self
        shape = next((s for s in D.all_gather(None if self.sums is None else self.sums.shape) if s is not None), None)
        out = WeightTracker(self.n)
        out.counts = D.all_reduce_sum(torch.from_numpy(self.counts)).numpy()
        if shape is not None:
            mine = self.sums if self.sums is not None else np.zeros(shape)
            out.sums = D.all_reduce_sum(torch.from_numpy(mine)).numpy()
        return out


class _Unit(nn.Module):
    """The trained module and the method together, so one ``DistributedDataParallel`` covers both
    (a strategy's projections and heads train with the student)."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch, ctx):
        return self.method.step_loss(batch, ctx)


@dataclass
class FitResult:
    """What :func:`fit` returns: one :class:`EpochLog` per epoch and the teacher-weight tracker."""

    logs: list[EpochLog]
    weights: WeightTracker


def fit(method: nn.Module, model: nn.Module, labels: list[int], train_rows: list[int], settings: FitSettings, *,
        tok: Tokenized | None = None, teachers=None, device: str = "cpu", precision: str = "fp32",
        evaluate: Callable[[str], dict] | None = None, checkpoint: Callable[[dict], None] | None = None,
        resume_state: dict | None = None, order_seed: Callable[[int], int] | None = None,
        seed_torch: bool = True, desc: str = "train", early_stopping: BestEpoch | None = None) -> FitResult:
    """Train ``model`` with ``method`` (see the module docstring for the hooks).

    Args:
        method: the training method (a strategy, or co-finetuning).
        model: the module whose parameters are trained.
        labels: gold class ids of all dataset rows.
        train_rows: dataset rows to train on.
        tok: the model's tokenisation (gives ``Batch.ids``/``mask``); None when the method tokenises.
        teachers: teacher signals for the strategies (``ctx.teachers``).
        evaluate: held-out evaluation for epoch hooks (``ctx.evaluate``).
        checkpoint: ``callable(state)`` after every epoch but the last (for ``--resume``).
        resume_state: a state from ``checkpoint`` to continue from.
        order_seed: epoch -> seed of that epoch's row permutation (default ``seed * 1000 + epoch``).
        seed_torch: call ``torch.manual_seed(settings.seed)`` first (dropout and strategy sampling).
        early_stopping: a :class:`~distill.early_stopping.BestEpoch` with a ``score`` (dev macro-F1 %):
            called after every epoch; training stops when it says so, and the best epoch's weights are
            loaded into ``model`` at the end (each epoch's score is in ``EpochLog.extra``).

    Returns:
        :class:`FitResult` (the teacher weights summed over all ranks).

    Raises:
        DistillError: under a launcher, a method that owns its step (``distributed = False``).
    """
    s, W = settings, D.world()
    if W.size > 1 and not getattr(method, "distributed", True):
        raise DistillError(f"{getattr(method, 'name', type(method).__name__)} owns its training step and does not "
                           f"run under a launcher yet (world size {W.size}); run it as one process.")
    if seed_torch:
        torch.manual_seed(s.seed)
    model.to(device)
    method.to(device)
    gbatch = s.batch_size * W.size  # the global batch
    steps_per_epoch = math.ceil(len(train_rows) / gbatch)
    total_steps = steps_per_epoch * s.epochs if s.max_steps is None else min(s.max_steps, steps_per_epoch * s.epochs)
    opts = method.configure_optimizers(model, s, total_steps)
    ctx = StepContext(model, teachers, opts, s, device, precision, steps_per_epoch, total_steps, evaluate, train_rows,
                      forward=getattr(method, "step_loss", None))
    tracker = WeightTracker(len(train_rows))
    pos = {r: k for k, r in enumerate(train_rows)}
    logs: list[EpochLog] = []
    start = 0
    if (resume_state is not None and resume_state.get("format") == CHECKPOINT_FORMAT
            and (set(resume_state["model"]) != set(model.state_dict())
                 or set(resume_state["method"]) != set(method.state_dict()))):
        # e.g. written by a version whose strategy had other parameters (mtbert's W_ij before 0.3 with w_hid = 0):
        # loading it would fail half-way and leave a half-restored model
        log.warning("ignoring a checkpoint whose parameters differ from this model and strategy (written by another "
                    "distill version or settings); this phase starts again")
        resume_state = None
    if resume_state is not None and resume_state.get("format") == CHECKPOINT_FORMAT:
        model.load_state_dict(resume_state["model"])
        method.load_state_dict(resume_state["method"])
        for o, st in zip(opts, resume_state["optimizations"]):
            o.optimizer.load_state_dict(st["optimizer"])
            if o.scheduler is not None:
                o.scheduler.load_state_dict(st["scheduler"])
        if W.main:  # the checkpoint holds the weights summed over the ranks: count them once
            tracker.load(resume_state["weights"])
        logs = [EpochLog(**e) for e in resume_state["logs"]]
        if early_stopping is not None and resume_state.get("early_stopping"):
            early_stopping.load(resume_state["early_stopping"])
        start, ctx.step = len(logs), resume_state["step"]
        rngs = resume_state.get("rng_ranks") or []
        torch.set_rng_state(rngs[W.rank] if len(rngs) == W.size else resume_state["rng"])
    elif resume_state is not None:
        log.warning("ignoring a checkpoint of an older format; this phase starts again")
    if W.size > 1 and ctx._forward is not None:  # after the resume: DDP broadcasts rank 0's weights
        ctx._forward = D.wrap_ddp(_Unit(model, method), device)
    order_seed = order_seed or (lambda e: s.seed * 1000 + e)
    y_all = torch.tensor(labels)
    for epoch in range(start, s.epochs):
        ctx.epoch = epoch
        model.train()
        method.train()
        method.on_epoch_start(ctx)
        order = np.random.default_rng(order_seed(epoch)).permutation(len(train_rows))
        t0, sums, nb, seen = time.perf_counter(), {}, 0, 0
        for b0 in progress(range(0, len(order), gbatch), f"{desc} epoch {epoch + 1}/{s.epochs}"):
            rows = [train_rows[i] for i in order[b0:b0 + gbatch]]
            if W.size > 1:  # this rank's slice of the global batch, weighted by its share
                n_global = len(rows)
                rows = D.rank_slice(rows, [train_rows[i] for i in order])
                ctx.rank_weight = len(rows) * W.size / max(n_global, W.size)
            batch = Batch(rows, y_all[rows].to(device))
            if tok is not None:
                batch.ids, batch.mask = tok.batch(rows, device)
            out = method.training_step(batch, ctx) if hasattr(method, "training_step") else ctx.default_step(batch)
            w = out.pop("teacher_weights", None)
            if w is not None:
                tracker.add([pos[r] for r in rows], w)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + (v.item() if torch.is_tensor(v) else float(v))
            nb += 1
            seen += len(rows)
            ctx.step += 1
            if s.max_steps is not None and ctx.step >= s.max_steps:
                break
        extra = method.on_epoch_end(ctx) or {}
        if early_stopping is not None:
            score = early_stopping.score()
            stop = early_stopping.update(score, epoch + 1, model)
            extra = {**extra, "dev_macro_f1": score, "best_epoch": early_stopping.best_epoch,
                     **({"stopped": stop} if stop else {})}
            ctx.stop = ctx.stop or bool(stop)
            log.info("%s epoch %d: dev macro-F1 %.2f (best epoch %d)%s", desc, epoch + 1, score,
                     early_stopping.best_epoch, f"; stopping: {stop}" if stop else "")
        dt = time.perf_counter() - t0
        rank_rates = []
        if W.size > 1:  # components: the mean over every rank's steps; samples/s: all ranks together
            keys = sorted(sums)
            tot = D.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [nb], dtype=torch.float64)).tolist()
            sums, nb = dict(zip(keys, tot[:-1])), int(tot[-1])
            rank_rates = [round(r, 2) for r in D.all_gather(seen / dt)]
        means = {k: v / max(nb, 1) for k, v in sums.items()}
        rate = sum(rank_rates) if rank_rates else seen / dt
        logs.append(EpochLog(epoch + 1, dt, means.pop("loss", float("nan")), rate, means, extra, rank_rates))
        log.info("%s epoch %d/%d: loss %.4f%s, %.1f s", desc, epoch + 1, s.epochs, logs[-1].loss,
                 "".join(f", {k} {v:.4f}" for k, v in means.items()), dt)
        if ctx.stop or (s.max_steps is not None and ctx.step >= s.max_steps):
            break
        if checkpoint is not None and epoch + 1 < s.epochs:
            rngs, weights = D.all_gather(torch.get_rng_state()), tracker.reduced().state()  # every rank takes part
            if W.main:  # one writer; the ranks' weights are identical (DDP)
                checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "method": method.state_dict(),
                            "optimizations": [{"optimizer": o.optimizer.state_dict(),
                                               "scheduler": o.scheduler.state_dict() if o.scheduler else None}
                                              for o in opts],
                            "weights": weights, "logs": [vars(e) for e in logs], "step": ctx.step,
                            "rng": rngs[0], "rng_ranks": rngs,
                            "early_stopping": early_stopping.state() if early_stopping is not None else None})
    if early_stopping is not None:
        early_stopping.restore(model)
    model.eval()
    method.eval()
    return FitResult(logs, tracker.reduced())
