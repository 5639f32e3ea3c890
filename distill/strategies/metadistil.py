"""``metadistil``: teachers that keep learning from the student's quiz loss (Zhou et al., ACL 2022, "BERT
Learns to Teach: Knowledge Distillation with Meta Learning"), with the additions of paper 004 (an extra
teacher, a student warm-up, noise injection). METHODS.md section 4, steps (1)-(8).

Per training batch ``x`` (B texts) with the student's weights ``theta`` and the teachers' ``phi``:

1. teacher logits ``z_t(x; phi)``, (B, C): the mean of the teachers' logits *before* the softmax
   (paper 004's extra teacher: every teacher is meta-updated);
2. the distillation loss of the student, ``L(theta, phi) = (1 - alpha) CE(y, z_s) + alpha T^2
   KL(softmax(z_t/T) || softmax(z_s/T))`` (the task term on labelled rows only);
3. the *pilot update*: ``theta' = theta - eta * dL/dtheta``, one SGD step with ``pilot_lr`` or the
   student's base learning rates (functional: ``torch.func.functional_call`` on a dict of tensors; the module is never
   copied or modified, so step (7), "restore the student", has nothing to undo);
4. a quiz batch ``q`` (``quiz_batch_size`` texts) from the quiz set: ``quiz_size`` texts held out of the
   training part (the same for every seed; recorded in ``split.json``; never dev or test);
5. the quiz loss ``L_q(theta') = CE(y_q, z_s(q; theta'))`` (student without dropout here);
6. the teachers' update from ``dL_q/dphi = -eta (d^2 L / dphi dtheta) dL_q/dtheta'``:
   ``meta_grad=exact`` differentiates through the pilot update (second order, ``create_graph``);
   ``meta_grad=finite_difference`` uses the Hessian-free central difference of DARTS (Liu et al., 2019,
   eq. (8)): ``-[dL/dphi(theta + eps w) - dL/dphi(theta - eps w)] / (2 eps)``, ``w = eta * dL_q/dtheta'``
   (per parameter, with its learning rate), ``eps = 0.01 / |w|`` (first derivatives only). AdamW on the
   teachers (``teacher_lr``, 1e-5 as the reference code, no weight decay; paper 004's 6e-5 took a MiniLM
   teacher from 87.1 to 59.6 dev macro-F1 in 3 epochs on AG News, and its student to 66.9 test macro-F1);
8. the real distillation step of the student from the *updated* teachers' logits (AdamW, the run's
   ``--student-lr``), the same loss as step 2.

Where the reference code (JetRunner/MetaDistil, ``nlp/run_glue_distillation_meta.py``) differs: its
NLP KD term is the MSE of the softened probabilities (METHODS.md and paper 004 say KL; KL is used here),
its pilot step size is a separate setting (5e-5; here ``pilot_lr``, by default the student's base
learning rates), and its quiz loss runs over the whole held set
each step (here a sampled quiz batch). Both clip the teachers' gradient norm at 1.0 (``grad_clip``).

Additions (paper 004):

* ``warmup_epochs``: the student is finetuned on gold labels (CE only) for that many epochs before the
  distillation epochs; they are added to ``--student-epochs``.
* ``noise_p``: each token of the *student's* training input is replaced by a noise word with probability
  ``p`` in steps 2/3 and 8 (not the quiz, not the teachers: the issue's choice; paper 004 noises both,
  after Liu et al. 2021, and leaves the noise word open). A noise word here is a token id drawn uniformly
  from the student tokenizer's vocabulary, special tokens excluded; special tokens and padding are
  never replaced. The draws use torch's RNG (checkpointed, so a resumed run draws the same).

The teachers start every seed from the co-finetuned teachers of the run (copies; the teacher store is
never written) and run in eval mode (no dropout: their soft labels are a function of ``phi`` only).
Their meta-updated weights are part of the checkpoint (``--resume`` continues mid-run) and are saved
in the run folder (``students/metadistil-seed<k>/teachers/``).
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import losses
from ..errors import DistillError
from ..trainer import Batch, FitSettings, StepContext, adamw
from .base import DistillStrategy, register
from .hinton import KDSettings


class MetaDistilSettings(KDSettings):
    """Settings of ``metadistil``: the KD settings (alpha, T), the teachers' optimiser, the quiz set, the
    meta-gradient, and paper 004's warm-up and noise."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD term; the task loss gets 1 - alpha")
    temperature: float = Field(2.0, gt=0, description="soft-label temperature T (KL scaled by T^2)")
    teacher_lr: float = Field(1e-5, gt=0, description="AdamW learning rate of the teachers' meta-update (reference "
                                                    "code: 1e-5; paper 004: 6e-5, which wrecked the teachers here)")
    pilot_lr: float | None = Field(None, gt=0, description="SGD step size of the pilot update (reference code: 5e-5); "
                                                           "default: the student's base learning rates")
    teacher_dev_texts: int = Field(256, ge=0, description="dev texts on which the meta-updated teachers are scored "
                                                          "after every epoch (0 = not scored)")
    teacher: int | None = Field(None, ge=0, description="learn from this teacher only (index in --teacher); "
                                                        "default: every active teacher, logits averaged")
    teacher_layers: int = Field(0, ge=0, description="meta-update only the top N Transformer layers (and the head) of "
                                                     "each teacher; 0 = every parameter (the paper)")
    quiz_size: int = Field(100, ge=2, description="training texts held out as the quiz set (paper: 100)")
    quiz_batch_size: int = Field(32, ge=1, description="quiz texts per meta-update (sampled from the quiz set)")
    meta_grad: Literal["exact", "finite_difference"] = Field(
        "exact", description="teacher gradient through the pilot update: exact second order, or the "
                             "Hessian-free central difference (first derivatives only)")
    warmup_epochs: int = Field(0, ge=0, description="student epochs of gold-label finetuning before distilling "
                                                    "(paper 004: 1); added to --student-epochs")
    noise_p: float = Field(0.0, ge=0, lt=1, description="probability that a student input token is replaced by a "
                                                        "random vocabulary token (paper 004: 0.2)")


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) to float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_objective(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MetaDistil's distillation loss ``(1 - alpha) CE(y, z_s) + alpha T^2 KL(p_t^T || p_s^T)`` (batch mean).

    Shapes: ``s_logits`` (B, C), ``t_logits`` (B, C) (the teachers' mean logits), ``labels`` (B,) with -1 for
    unlabelled rows (no task term). Returns ``(total, kd, task)``; gradients flow into both logits.
    """
    T = temperature
    kd = T * T * F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                          reduction="batchmean")
    task = losses.task_loss(s_logits, labels)
    return alpha * kd + (1 - alpha) * task, kd, task


def inject_noise(ids: torch.Tensor, mask: torch.Tensor, p: float, vocab_size: int, special_ids: list[int],
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Paper 004's noise injection: every non-special, non-padding token of ``ids`` (B, L) int64 is
    replaced with probability ``p`` by a token id drawn uniformly from the vocabulary without the special
    ids. Returns a new tensor (B, L); ``ids`` is not modified."""
    if p <= 0:
        return ids
    special = torch.tensor(sorted(set(special_ids)), device=ids.device, dtype=ids.dtype)
    eligible = mask.bool() & ~torch.isin(ids, special)
    hit = (torch.rand(ids.shape, generator=generator, device="cpu") < p).to(ids.device) & eligible
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in special_ids if i < vocab_size]] = False
    allowed = keep.nonzero().squeeze(1).to(ids.device)
    draw = allowed[torch.randint(len(allowed), ids.shape, generator=generator, device="cpu").to(ids.device)]
    return torch.where(hit, draw, ids)


@register("metadistil")
class MetaDistil(DistillStrategy):
    """MetaDistil (Zhou et al., ACL 2022; METHODS.md section 4) with paper 004's additions; see the module
    docstring for the eight steps, the loss and every choice the papers leave open.

    Shapes: student logits (B, C); teacher logits (N, B, C), averaged over N before the softmax.

    Raises:
        DistillError: from :meth:`attach` when the quiz set is empty or a teacher copy cannot be trained.
    """

    paper = ("Zhou et al. 2022, 'BERT Learns to Teach: Knowledge Distillation with Meta Learning' (ACL), "
             "steps (1)-(8) of METHODS.md section 4; paper 004's extra teacher, warm-up and noise")
    Settings = MetaDistilSettings
    teacher_updatable: ClassVar[bool] = True
    distributed: ClassVar[bool] = False  # its own teacher optimiser and second-order step: one process

    def __init__(self, settings, teachers, student):
        super().__init__(settings, teachers, student)
        if settings.teacher is not None and settings.teacher >= len(teachers):
            raise DistillError(f"--set metadistil.teacher={settings.teacher}: out of range (0..{len(teachers) - 1}).")
        self.live = nn.ModuleList()  # the meta-updated teacher copies (checkpointed with the strategy)
        self.teacher_toks, self.student_tok, self.quiz_rows, self.quiz_labels = [], None, [], None
        self.meta_steps = 0

    # ------------------------------------------------------------------------------------- wiring
    def attach(self, teachers: list[nn.Module], teacher_toks: list, student_tok, quiz_rows: list[int],
               labels: list[int], slots: list[int] | None = None, n_slots: int | None = None,
               dev_rows: list[int] | None = None) -> None:
        """Give the strategy trainable copies of the finetuned ``teachers`` (their tokenizations
        ``teacher_toks``), the student's tokenization and the quiz set (dataset rows with gold
        ``labels``, indexed by row). ``slots``: the position of each given teacher among the run's
        ``n_slots`` active teachers (for the reported teacher weights; default: all of them, in order).
        ``dev_rows``: dev rows on which the teachers are scored after every epoch (see :meth:`on_epoch_end`).

        Raises:
            DistillError: empty quiz set, or a quiz text without a gold label.
        """
        self.slots = list(slots) if slots is not None else list(range(len(teachers)))
        self.n_slots = n_slots or len(teachers)
        if not quiz_rows:
            raise DistillError("metadistil: the quiz set is empty; give --set metadistil.quiz_size=N with N >= 2 "
                               "and a training part larger than N.")
        if any(labels[r] < 0 for r in quiz_rows):
            raise DistillError("metadistil: quiz texts need gold labels (the quiz set comes from the labelled part).")
        from ..teachers import freeze_lower_layers

        self.live = nn.ModuleList(copy.deepcopy(t) for t in teachers)
        for t in self.live:
            for p in t.parameters():
                p.requires_grad_(True)
            freeze_lower_layers(t, self.settings.teacher_layers)
        self.teacher_toks, self.student_tok = teacher_toks, student_tok
        self.quiz_rows, self.dev_rows, self.labels = list(quiz_rows), list(dev_rows or []), labels
        self.quiz_labels = torch.tensor([labels[r] for r in quiz_rows])
        self.quiz_pos = {r: k for k, r in enumerate(self.quiz_rows)}  # dataset row -> position in the quiz set
        tk = student_tok.tokenizer
        self.vocab_size = len(tk)
        self.special_ids = list(tk.all_special_ids)

    def adjust_fit(self, fs: FitSettings) -> FitSettings:
        """The warm-up epochs come before the distillation epochs."""
        fs.epochs += self.settings.warmup_epochs
        return fs

    def configure_optimizers(self, model, fs, total_steps):
        """[student AdamW (encoder at ``lr``, head at ``head_lr``), teachers' AdamW at ``teacher_lr``]."""
        student = super().configure_optimizers(model, fs, total_steps)
        # no weight decay on the teachers (reference code): decay would pull them away from what they learned
        teach = adamw([(self.meta_params(), self.settings.teacher_lr)], 0.0, total_steps, fs.warmup)
        return student + [teach]

    # ------------------------------------------------------------------------------------- pieces
    def teacher_logits(self, rows: list[int], device) -> torch.Tensor:
        """The teachers' mean logits (B, C) for dataset ``rows`` (differentiable in the teachers' weights)."""
        out = []
        for t, tk in zip(self.live, self.teacher_toks):
            t.eval()  # no dropout: the soft labels are a function of the weights only
            ids, mask = tk.batch(rows, device)
            out.append(_f32(t(ids, mask).logits))
        return torch.stack(out).mean(0)

    def meta_params(self) -> list[nn.Parameter]:
        """The teacher parameters the meta-update trains (all, or the top ``teacher_layers`` and the heads)."""
        return [p for p in self.live.parameters() if p.requires_grad]

    def student_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's (possibly noised) input ids and mask (B, L)."""
        ids = inject_noise(batch.ids, batch.mask, self.settings.noise_p, self.vocab_size, self.special_ids)
        return ids, batch.mask

    def pilot_lrs(self, model: nn.Module, ctx: StepContext) -> dict[str, float]:
        """The pilot step size per student parameter name: ``pilot_lr``, else the base learning rate of the
        parameter's group in the student's optimiser (not the warm-up/decay schedule's current value)."""
        opt = ctx.optimizations[0].optimizer
        lr_of = {id(p): self.settings.pilot_lr or g.get("initial_lr", g["lr"]) for g in opt.param_groups
                 for p in g["params"]}
        return {n: lr_of.get(id(p), 0.0) for n, p in model.named_parameters() if p.requires_grad}

    def meta_gradient(self, model: nn.Module, ids, mask, rows, labels, quiz_rows, lrs: dict[str, float]) -> dict:
        """Steps (1)-(6): the gradient of the quiz loss after the pilot update w.r.t. every teacher
        parameter. Returns ``{"grads": [tensor per teacher parameter], "quiz": L_q, "pilot": L}``.

        Attention runs on PyTorch's math kernel here: the fused (flash / memory-efficient) kernels have no
        second derivative."""
        with sdpa_kernel([SDPBackend.MATH]):
            return self._meta_gradient(model, ids, mask, rows, labels, quiz_rows, lrs)

    def _meta_gradient(self, model, ids, mask, rows, labels, quiz_rows, lrs):
        s, dev = self.settings, ids.device
        names = list(lrs)
        params = {n: p for n, p in model.named_parameters() if n in lrs}
        tparams = self.meta_params()
        t_logits = self.teacher_logits(rows, dev)
        exact = s.meta_grad == "exact"
        s_logits = _f32(functional_call(model, params, (ids, mask)).logits)
        L, _, _ = kd_objective(s_logits, t_logits, labels, s.alpha, s.temperature)
        g = torch.autograd.grad(L, [params[n] for n in names], create_graph=exact)
        fast = {n: params[n] - lrs[n] * gi for n, gi in zip(names, g)}
        if not exact:
            fast = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
        q_ids, q_mask = self.student_tok.batch(quiz_rows, dev)
        q_y = self.quiz_labels.to(dev)[torch.tensor([self.quiz_pos[r] for r in quiz_rows], device=dev)]
        was_training = model.training
        model.eval()  # the quiz is a measurement: no dropout (as the reference code)
        Lq = F.cross_entropy(_f32(functional_call(model, fast, (q_ids, q_mask)).logits), q_y)
        model.train(was_training)
        if exact:
            grads = torch.autograd.grad(Lq, tparams, allow_unused=True)
        else:
            v = torch.autograd.grad(Lq, [fast[n] for n in names])
            w = [lrs[n] * vi for n, vi in zip(names, v)]  # eta_n v_n: one learning rate per parameter
            eps = 0.01 / torch.sqrt(sum((wi.float() ** 2).sum() for wi in w)).clamp_min(1e-12)
            side = []
            for sign in (1.0, -1.0):
                shifted = {n: (params[n] + sign * eps * wi).detach() for n, wi in zip(names, w)}
                zs = _f32(functional_call(model, shifted, (ids, mask)).logits)
                Ls, _, _ = kd_objective(zs, self.teacher_logits(rows, dev), labels, s.alpha, s.temperature)
                side.append(torch.autograd.grad(Ls, tparams, allow_unused=True))
            grads = [None if a is None else -(a - b) / (2 * eps) for a, b in zip(*side)]
        grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(tparams, grads)]
        return {"grads": grads, "quiz": Lq.detach(), "pilot": L.detach()}

    # ------------------------------------------------------------------------------------- the step
    def training_step(self, batch: Batch, ctx: StepContext) -> dict:
        """A warm-up step (gold CE) in the first ``warmup_epochs`` epochs, else steps (1)-(8)."""
        s, model = self.settings, ctx.model
        if ctx.epoch < s.warmup_epochs:
            with ctx.autocast():
                task = losses.task_loss(_f32(model(batch.ids, batch.mask).logits), batch.labels)
            ctx.backward_step(task)
            return {"loss": task, "task": task.detach()}
        ids, mask = self.student_input(batch)
        # (4) the quiz batch: sampled with torch's RNG (checkpointed by fit, so a resume draws the same)
        pick = torch.randperm(len(self.quiz_rows))[: s.quiz_batch_size].tolist()
        quiz = [self.quiz_rows[i] for i in pick]
        meta = self.meta_gradient(model, ids, mask, batch.rows, batch.labels, quiz, self.pilot_lrs(model, ctx))
        # (6) the teachers' AdamW step from the meta-gradient
        o = ctx.optimizations[1]
        o.optimizer.zero_grad(set_to_none=True)
        for p, gr in zip(self.meta_params(), meta["grads"]):
            p.grad = gr.detach()
        torch.nn.utils.clip_grad_norm_(o.params, ctx.settings.grad_clip)
        o.optimizer.step()
        o.scheduler.step()
        self.meta_steps += 1
        # (7) nothing to restore: the pilot update never touched the module. (8) the real step
        with torch.no_grad():
            t_logits = self.teacher_logits(batch.rows, batch.ids.device)
        with ctx.autocast():
            total, kd, task = kd_objective(_f32(model(ids, mask).logits), t_logits, batch.labels, s.alpha,
                                           s.temperature)
        ctx.backward_step(total)
        return {"loss": total, "kd": kd.detach(), "task": task.detach(), "quiz": meta["quiz"],
                "teacher_weights": self.weights(len(batch.rows))}

    def weights(self, B: int) -> torch.Tensor:
        """(B, N_active) teacher weights of a step: 1/n on the meta-updated teachers, 0 on the others."""
        w = torch.zeros(B, self.n_slots)
        w[:, self.slots] = 1.0 / len(self.slots)
        return w

    def on_epoch_end(self, ctx: StepContext) -> dict | None:
        """The meta-updated teachers' macro-F1 (%) on a fixed sample of ``teacher_dev_texts`` dev texts
        (never test): does learning to teach keep the teachers accurate?"""
        n = self.settings.teacher_dev_texts
        if not n or not self.dev_rows or ctx.epoch < self.settings.warmup_epochs:
            return None
        from ..metrics import classification_metrics, predict_logits

        rows = self.dev_rows[:: max(1, len(self.dev_rows) // n)][:n]
        y = [self.labels[r] for r in rows]
        out = {}
        for k, (t, tk) in enumerate(zip(self.live, self.teacher_toks)):
            logits = predict_logits(t, tk, rows, ctx.device, 64, ctx.precision, f"teacher {k} dev")
            out[f"teacher_{self.slots[k]}_dev_macro_f1"] = classification_metrics(logits, y, logits.shape[1])["macro_f1"]
        return out

    def get_extra_state(self):
        return {"meta_steps": self.meta_steps}

    def set_extra_state(self, state):
        self.meta_steps = int(state.get("meta_steps", 0))

    def describe(self) -> str:
        s = self.settings
        extra = [f"warm-up {s.warmup_epochs} epoch(s)"] if s.warmup_epochs else []
        extra += [f"noise p={s.noise_p}"] if s.noise_p else []
        who = (f"--teacher {s.teacher} only, meta-updated" if s.teacher is not None
               else f"{len(self.teachers)} meta-updated teacher(s) (logits averaged)")
        return (f"MetaDistil ({s.meta_grad} meta-gradient), {who}, T={s.temperature}, alpha={s.alpha}, teacher lr {s.teacher_lr}, quiz "
                f"{s.quiz_size} texts x {s.quiz_batch_size} per step" + (", " + ", ".join(extra) if extra else ""))
