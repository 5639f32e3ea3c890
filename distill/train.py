"""Training loops: multi-teacher co-finetuning, the teacher-output cache and student distillation.

Co-finetuning (MT-BERT §2.1): all teachers are trained jointly on ``sum_i CE(y, y_i)`` through
one shared attentive-pooling + prediction head (with a per-teacher projection where hidden sizes
differ, see :mod:`distill.modeling`). ``independent`` mode gives each teacher its own head (the
paper's "w/o co-finetuning" ablation).

Teacher-output cache: once teachers are frozen, one inference pass over the training split stores
per example each teacher's logits (C floats) and the mapped-layer states the hidden loss needs: for
a teacher whose tokenizer equals the student's, K x L x d_i token states in fp16; otherwise K
pooled d_i vectors in fp32. The size is estimated before the pass; when it exceeds
``cache_max_mb`` the trainer falls back to running the teachers at every step (``online``), which
is correct but slower. Dev/test logits come from the same pass (used for the teacher metrics).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .modeling import EncoderClassifier, masked_mean
from .strategies import DistillStrategy, StudentSignals, TeacherSignals

log = logging.getLogger("distill")


# ----------------------------------------------------------------------------------------- tokens
class Tokenized:
    """Token ids of every dataset row for one tokenizer (pre-tokenised once, padded per batch).

    Attributes:
        ids: one list of token ids per row (truncated to ``max_length``).
        pad_id: the tokenizer's padding id.
        key: identifies the tokenisation (tokenizer vocabulary + max length) for token-level matching.
    """

    def __init__(self, tokenizer, texts: list[str], max_length: int, batch: int = 1000):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: list[list[int]] = []
        for s in range(0, len(texts), batch):
            enc = tokenizer(texts[s:s + batch], truncation=True, max_length=max_length)
            self.ids.extend(enc["input_ids"])

    def batch(self, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (B, L_batch) for the given row indices."""
        seqs = [self.ids[r] for r in rows]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, :len(s)] = torch.tensor(s)
            mask[k, :len(s)] = 1
        return ids.to(device), mask.to(device)

    def lengths(self, rows) -> list[int]:
        return [len(self.ids[r]) for r in rows]


def same_tokenization(a, b, probe: list[str]) -> bool:
    """True when two tokenizers give identical ids on ``probe`` texts and share a vocabulary."""
    if a.get_vocab() != b.get_vocab():
        return False
    return a(probe, truncation=True, max_length=64)["input_ids"] == b(probe, truncation=True, max_length=64)["input_ids"]


# ----------------------------------------------------------------------------------------- utils
def autocast_ctx(device: str, precision: str):
    """bf16/fp16 autocast on CUDA; fp32 otherwise."""
    if device.startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def resolve_precision(device: str, precision: str) -> str:
    """``auto`` -> bf16 on CUDA devices that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of positions grouped by length (less padding at inference)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def progress(iterable, desc: str, total: int | None = None):
    """A tqdm progress bar (sparse updates when not on a terminal, so CI logs stay short)."""
    import sys

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def grad_scaler(device: str, precision: str):
    """A ``torch.amp.GradScaler`` for fp16 autocast on CUDA (loss scaling); disabled otherwise."""
    return torch.amp.GradScaler("cuda", enabled=device.startswith("cuda") and precision == "fp16")


def optimizer_step(loss, opt, sched, scaler, params) -> None:
    """Backward, clip the gradient norm at 1.0, step the optimizer and the schedule (with loss scaling)."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(opt)
    scaler.update()
    sched.step()


def make_optimizer(groups: list[tuple[list, float]], weight_decay: float, total_steps: int, warmup: float):
    """AdamW over parameter groups ``(params, lr)`` with linear warm-up and decay (transformers' schedule)."""
    from transformers import get_linear_schedule_with_warmup

    params = [{"params": [p for p in ps if p.requires_grad], "lr": lr} for ps, lr in groups]
    params = [g for g in params if g["params"]]
    opt = torch.optim.AdamW(params, weight_decay=weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(warmup * total_steps), max(1, total_steps))
    return opt, sched


def freeze_lower_layers(model: EncoderClassifier, train_layers: int) -> None:
    """Train only the top ``train_layers`` Transformer layers of ``model.encoder`` (0 = all layers).

    Embeddings and lower layers get ``requires_grad=False``; the projection and head stay trainable.
    """
    if train_layers <= 0 or train_layers >= model.num_layers:
        return
    keep = {str(i) for i in range(model.num_layers - train_layers, model.num_layers)}
    for name, p in model.encoder.named_parameters():
        parts = name.split(".")
        layer_idx = next((parts[k + 1] for k, s in enumerate(parts[:-1]) if s in ("layer", "layers")
                          and parts[k + 1].isdigit()), None)
        p.requires_grad = layer_idx in keep


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_logits(model: EncoderClassifier, tok: Tokenized, rows: list[int], device: str, batch_size: int,
                   precision: str = "fp32", desc: str = "predict") -> np.ndarray:
    """Logits (len(rows), C) of ``model`` on dataset ``rows`` (float32 numpy)."""
    model.eval()
    out = [None] * len(rows)
    batches = length_sorted_batches(tok.lengths(rows), batch_size)
    for b in progress(batches, desc):
        ids, mask = tok.batch([rows[i] for i in b], device)
        with autocast_ctx(device, precision):
            logits = model(ids, mask).logits.float().cpu().numpy()
        for k, i in enumerate(b):
            out[i] = logits[k]
    return np.stack(out) if out else np.zeros((0, model.head.classifier.out_features), np.float32)


def classification_metrics(logits_or_probs: np.ndarray, labels: list[int], num_labels: int) -> dict:
    """Accuracy and macro-F1 in percent (scikit-learn), over all ``num_labels`` classes."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(logits_or_probs).argmax(-1)
    y = np.asarray(labels)
    return {
        "accuracy": 100.0 * float(accuracy_score(y, pred)),
        "macro_f1": 100.0 * float(f1_score(y, pred, average="macro", labels=list(range(num_labels)), zero_division=0)),
        "n": int(len(y)),
    }


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------- co-finetuning
@dataclass
class EpochLog:
    """Wall time (s) and mean loss of one epoch."""

    epoch: int
    seconds: float
    loss: float
    samples_per_s: float


def cofinetune(teachers: list[EncoderClassifier], toks: list[Tokenized], labels: list[int], train_rows: list[int],
               *, epochs: int, batch_size: int, lr: float, head_lr: float, train_layers: int, weight_decay: float,
               warmup: float, seed: int, device: str, precision: str, checkpoint=None, resume_state=None,
               joint: bool = True) -> list[EpochLog]:
    """Finetune the teachers on ``sum_i CE(y, y_i)`` (MT-BERT §2.1 co-finetuning when the teachers
    share one head; ``joint=False`` trains each teacher on its own CE, heads not shared).

    Args:
        toks: each teacher's tokenisation of the whole dataset.
        train_rows: dataset rows to train on.
        train_layers: top layers of each encoder to train (0 = all); see :func:`freeze_lower_layers`.
        checkpoint: ``callable(state_dict)`` called after each epoch (for ``--resume``).
        resume_state: a state from ``checkpoint`` to continue from.

    Returns:
        One :class:`EpochLog` per epoch (this call's epochs plus resumed ones).
    """
    for t in teachers:
        freeze_lower_layers(t, train_layers)
        t.to(device)
    enc_params, head_params, seen = [], [], set()
    for t in teachers:
        for n, p in t.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            (enc_params if n.startswith("encoder.") else head_params).append(p)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    opt, sched = make_optimizer([(enc_params, lr), (head_params, head_lr)], weight_decay,
                                steps_per_epoch * epochs, warmup)
    scaler = grad_scaler(device, precision)
    logs: list[EpochLog] = []
    start = 0
    if resume_state is not None:
        for t, sd in zip(teachers, resume_state["teachers"]):
            t.load_state_dict(sd)
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        logs = [EpochLog(**e) for e in resume_state["logs"]]
        start = len(logs)
    y_all = torch.tensor(labels)
    for epoch in range(start, epochs):
        for t in teachers:
            t.train()
        g = np.random.default_rng(seed + epoch)
        order = g.permutation(len(train_rows))
        t0, tot, nb = time.perf_counter(), 0.0, 0
        bar = progress(range(0, len(order), batch_size), f"co-finetune teachers epoch {epoch + 1}/{epochs}")
        for s in bar:
            rows = [train_rows[i] for i in order[s:s + batch_size]]
            y = y_all[rows].to(device)
            loss = torch.zeros((), device=device)
            with autocast_ctx(device, precision):
                for t, tk in zip(teachers, toks):
                    ids, mask = tk.batch(rows, device)
                    loss = loss + nn.functional.cross_entropy(t(ids, mask).logits.float(), y)
            optimizer_step(loss, opt, sched, scaler, enc_params + head_params)
            tot += loss.item()
            nb += 1
        dt = time.perf_counter() - t0
        logs.append(EpochLog(epoch + 1, dt, tot / max(nb, 1), len(train_rows) / dt))
        log.info("teachers epoch %d/%d: loss %.4f, %.1f s", epoch + 1, epochs, tot / max(nb, 1), dt)
        if checkpoint is not None and epoch + 1 < epochs:
            checkpoint({"teachers": [t.state_dict() for t in teachers], "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "logs": [vars(e) for e in logs]})
    for t in teachers:
        t.eval()
        for p in t.parameters():
            p.requires_grad = False
    return logs


# ------------------------------------------------------------------------------ teacher outputs
@torch.no_grad()
def teacher_outputs(teacher: EncoderClassifier, tok: Tokenized, rows: list[int], layer_ids: list[int] | None,
                    token_level: bool, device: str, batch_size: int, precision: str, desc: str) -> dict:
    """One inference pass of a frozen teacher over ``rows``.

    Returns:
        ``{"logits": (n, C) float32, "layers": [K tensors]}``; each layer tensor is
        (n, max_length, d_i) float16 token states (``token_level``) or (n, d_i) float32
        masked-mean pooled states; ``layers`` is empty when ``layer_ids`` is None.
    """
    teacher.eval()
    n, C = len(rows), teacher.head.classifier.out_features
    logits = torch.zeros((n, C), dtype=torch.float32)
    layers = []
    if layer_ids:
        d = teacher.hidden_size
        for _ in layer_ids:
            layers.append(torch.zeros((n, tok.max_length, d), dtype=torch.float16) if token_level
                          else torch.zeros((n, d), dtype=torch.float32))
    for b in progress(length_sorted_batches(tok.lengths(rows), batch_size), desc):
        ids, mask = tok.batch([rows[i] for i in b], device)
        with autocast_ctx(device, precision):
            out = teacher(ids, mask, output_hidden_states=bool(layer_ids))
        idx = torch.tensor(b)
        logits[idx] = out.logits.float().cpu()
        for k, lj in enumerate(layer_ids or []):
            h = out.hidden_states[lj]
            if token_level:
                layers[k][idx, : h.shape[1]] = h.to(torch.float16).cpu()
            else:
                layers[k][idx] = masked_mean(h.float(), mask).cpu()
    return {"logits": logits, "layers": layers}


def estimate_cache_mb(n: int, teachers: list[EncoderClassifier], K: int, token_level: list[bool], max_length: int,
                      num_labels: int, needs_hidden: bool) -> float:
    """Teacher-output cache size in MB (10^6 bytes) for ``n`` training examples."""
    total = 0
    for t, tl in zip(teachers, token_level):
        total += n * num_labels * 4
        if needs_hidden:
            total += n * K * (max_length * t.hidden_size * 2 if tl else t.hidden_size * 4)
    return total / 1e6


class TeacherProvider:
    """Gives :class:`TeacherSignals` for a batch of training rows, from the cache or by running teachers.

    Args:
        cached: per teacher, the dict of :func:`teacher_outputs` over ``train_rows`` (cached mode), or None.
        teachers/toks/layer_maps/token_level: used in online mode (cache disabled or too large).
    """

    def __init__(self, train_rows, cached=None, teachers=None, toks=None, layer_maps=None, token_level=None,
                 needs_hidden=False, device="cpu", precision="fp32"):
        self.pos = {r: k for k, r in enumerate(train_rows)}
        self.cached, self.teachers, self.toks = cached, teachers, toks
        self.layer_maps, self.token_level = layer_maps, token_level
        self.needs_hidden, self.device, self.precision = needs_hidden, device, precision

    @property
    def mode(self) -> str:
        return "cache" if self.cached is not None else "online"

    @torch.no_grad()
    def __call__(self, rows: list[int], seq_len: int) -> TeacherSignals:
        if self.cached is not None:
            idx = torch.tensor([self.pos[r] for r in rows])
            logits = torch.stack([c["logits"][idx] for c in self.cached]).to(self.device)
            layers = None
            if self.needs_hidden:
                layers = []
                for c, tl in zip(self.cached, self.token_level):
                    layers.append([(h[idx, :seq_len].float() if tl else h[idx]).to(self.device) for h in c["layers"]])
            return TeacherSignals(logits, layers)
        all_logits, layers = [], [] if self.needs_hidden else None
        for t, tk, lm, tl in zip(self.teachers, self.toks, self.layer_maps, self.token_level):
            ids, mask = tk.batch(rows, self.device)
            with autocast_ctx(self.device, self.precision):
                out = t(ids, mask, output_hidden_states=self.needs_hidden)
            all_logits.append(out.logits.float())
            if self.needs_hidden:
                layers.append([out.hidden_states[j].float() if tl else masked_mean(out.hidden_states[j].float(), mask)
                               for j in lm])
        return TeacherSignals(torch.stack(all_logits), layers)


# ------------------------------------------------------------------------------------- student
def train_student(student: EncoderClassifier, strategy: DistillStrategy, tok: Tokenized, labels: list[int],
                  train_rows: list[int], provider: TeacherProvider | None, *, epochs: int, batch_size: int,
                  lr: float, head_lr: float, weight_decay: float, warmup: float, seed: int, device: str,
                  precision: str, checkpoint=None, resume_state=None, max_steps: int | None = None) -> list[EpochLog]:
    """Train ``student`` with ``strategy``'s loss. Strategy parameters (e.g. ``W_ij``) use ``head_lr``.

    Args:
        provider: teacher signals per batch (None for strategies that use no teacher).
        max_steps: stop after this many optimisation steps (benchmarks).

    Returns:
        One :class:`EpochLog` per epoch.
    """
    torch.manual_seed(seed)
    student.to(device)
    strategy.to(device)
    enc = [p for n, p in student.named_parameters() if n.startswith("encoder.")]
    head = [p for n, p in student.named_parameters() if not n.startswith("encoder.")] + list(strategy.parameters())
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    opt, sched = make_optimizer([(enc, lr), (head, head_lr)], weight_decay, total_steps, warmup)
    scaler = grad_scaler(device, precision)
    logs, start = [], 0
    if resume_state is not None:
        student.load_state_dict(resume_state["student"])
        strategy.load_state_dict(resume_state["strategy"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        logs = [EpochLog(**e) for e in resume_state["logs"]]
        start = len(logs)
    y_all = torch.tensor(labels)
    need_layers = strategy.needs_hidden
    step = 0
    for epoch in range(start, epochs):
        student.train()
        strategy.train()
        order = np.random.default_rng(seed * 1000 + epoch).permutation(len(train_rows))
        t0, tot, nb, seen = time.perf_counter(), 0.0, 0, 0
        for s in progress(range(0, len(order), batch_size), f"{strategy.name} seed {seed} epoch {epoch + 1}/{epochs}"):
            rows = [train_rows[i] for i in order[s:s + batch_size]]
            ids, mask = tok.batch(rows, device)
            y = y_all[rows].to(device)
            tsig = provider(rows, ids.shape[1]) if (strategy.uses_teachers and provider is not None) else None
            with autocast_ctx(device, precision):
                out = student(ids, mask, output_hidden_states=need_layers)
                ssig = StudentSignals(out.logits.float(),
                                      list(out.hidden_states[1:]) if need_layers else None, mask)
                losses = strategy(ssig, tsig, y)
            optimizer_step(losses["loss"], opt, sched, scaler, enc + head)
            tot += losses["loss"].item()
            nb += 1
            seen += len(rows)
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        dt = time.perf_counter() - t0
        logs.append(EpochLog(epoch + 1, dt, tot / max(nb, 1), seen / dt))
        log.info("%s seed %d epoch %d/%d: loss %.4f, %.1f s", strategy.name, seed, epoch + 1, epochs, tot / max(nb, 1), dt)
        if max_steps is not None and step >= max_steps:
            break
        if checkpoint is not None and epoch + 1 < epochs:
            checkpoint({"student": student.state_dict(), "strategy": strategy.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "logs": [vars(e) for e in logs]})
    student.eval()
    return logs
