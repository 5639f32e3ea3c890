"""TextBrewer comparison: its ``MultiTeacherDistiller`` on the run's teachers, student initialisation,
data, batches, batch size, max length, optimiser/schedule and step cap, timed in the same process
as our trainer.

What is compared (recorded in the results):

* TextBrewer 0.2.x ``MultiTeacherDistiller`` (``train(num_steps=N)``; teachers run at every step,
  which is the only mode it offers with a step cap: its logit caching needs ``num_epochs``);
  loss = ``kd_loss_weight * CE(softmax(mean_i z_i / T), softmax(z_s / T)) + hard_label_weight * CE(y, z_s)``
  with ``kd_loss_weight = alpha * T^2`` and ``hard_label_weight = 1 - alpha`` (our ``avg``
  strategy's weights and temperature; TextBrewer averages the teachers' *logits*, ours their
  tempered *probabilities*);
* our ``avg`` strategy online (teachers run at every step: the same amount of work) and with our
  teacher-output cache, and the run's main strategy (``mtbert`` by default).

Different tokenizers: TextBrewer feeds every teacher the same ``teacher`` part of the batch
(``model_t(**batch["teacher"])``), so the batch carries each teacher's own tokenisation under
``input_ids_i`` / ``attention_mask_i`` and a thin wrapper per teacher picks its own keys; the
student gets its tokenisation plus labels under ``batch["student"]``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import types

import torch
from torch import nn

log = logging.getLogger("distill.bench")


def import_textbrewer():
    """Import ``textbrewer`` lazily.

    TextBrewer imports ``tensorboardX`` (or ``torch.utils.tensorboard``) at import time but only
    uses it when ``TrainingConfig.log_dir`` is set; when neither is installed a stub module is
    registered (``log_dir`` stays None here).

    Returns:
        ``(module, None)`` or ``(None, reason)`` when it is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("textbrewer") is None:
        return None, "textbrewer is not installed (pip install --no-deps textbrewer tensorboardX)"
    if importlib.util.find_spec("tensorboardX") is None and importlib.util.find_spec("tensorboard") is None:
        stub = types.ModuleType("tensorboardX")

        class SummaryWriter:  # pragma: no cover - never used with log_dir=None
            def __init__(self, *a, **k):
                raise RuntimeError("tensorboard logging is disabled in the benchmark")

        stub.SummaryWriter = SummaryWriter
        sys.modules.setdefault("tensorboardX", stub)
    try:
        import textbrewer
    except Exception as e:  # pragma: no cover
        return None, f"textbrewer failed to import: {type(e).__name__}: {e}"
    return textbrewer, None


class _TeacherView(nn.Module):
    """Teacher ``i`` reading its own tokenisation from the shared teacher batch; returns logits.
    Runs under the same autocast as our trainer (none on CPU)."""

    def __init__(self, model: nn.Module, i: int, device: str, precision: str):
        super().__init__()
        self.model, self.i, self.device, self.precision = model, i, device, precision

    def forward(self, **batch):
        from distill.device import autocast_ctx

        with autocast_ctx(self.device, self.precision):
            return self.model(batch[f"input_ids_{self.i}"], batch[f"attention_mask_{self.i}"]).logits.float()


class _StudentView(nn.Module):
    """The student; returns logits and the hard-label cross-entropy (TextBrewer's ``losses``)."""

    def __init__(self, student: nn.Module, device: str, precision: str):
        super().__init__()
        self.student, self.device, self.precision = student, device, precision

    def forward(self, input_ids, attention_mask, labels):
        from distill.device import autocast_ctx

        with autocast_ctx(self.device, self.precision):
            logits = self.student(input_ids, attention_mask).logits.float()
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


class _Batches:
    """Iterable of the first ``steps`` batches of our trainer's epoch-1 order (built lazily, as ours are)."""

    def __init__(self, ctx, steps: int, seed: int):
        import numpy as np

        train = ctx.P.split.train
        B = ctx.cfg.student_batch_size
        order = np.random.default_rng(seed * 1000 + 0).permutation(len(train))  # = train_student, epoch 0
        self.rows = [[train[i] for i in order[s:s + B]] for s in range(0, len(order), B)][:steps]
        self.ctx = ctx

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        ctx = self.ctx
        y_all = torch.tensor(ctx.P.ds.labels)
        for rows in self.rows:
            teacher = {}
            for i, tk in enumerate(ctx.toks):
                teacher[f"input_ids_{i}"], teacher[f"attention_mask_{i}"] = tk.batch(rows, "cpu")
            ids, mask = ctx.stok.batch(rows, "cpu")
            yield {"teacher": teacher, "student": {"input_ids": ids, "attention_mask": mask, "labels": y_all[rows]}}


def run_textbrewer(ctx, steps: int, seed: int) -> dict:
    """Distil the run's student with TextBrewer's ``MultiTeacherDistiller`` for ``steps`` steps.

    Returns:
        ``{"skipped": False, "version", "setup": {...}, "textbrewer": {steps, samples, wall_s,
        samples_per_s, test}}``, or ``{"skipped": True, "reason"}`` when TextBrewer is not
        installed. samples/s = samples / wall seconds of the whole ``train`` call; ``test`` =
        accuracy / macro-F1 (%) of the distilled student on the run's test split.
    """
    tb, reason = import_textbrewer()
    if tb is None:
        return {"skipped": True, "reason": reason}
    from transformers import get_linear_schedule_with_warmup

    from distill.students import fit_settings

    from .training import evaluate, fresh_student

    cfg = ctx.cfg
    logging.getLogger("Distillation").setLevel(logging.WARNING)
    student = fresh_student(ctx, seed)
    fs = fit_settings(cfg, seed)
    model_S = _StudentView(student, ctx.device, ctx.precision).to(ctx.device)
    model_T = [_TeacherView(t, i, ctx.device, ctx.precision).eval() for i, t in enumerate(ctx.teachers)]
    enc = [p for n, p in student.named_parameters() if n.startswith("encoder.")]
    head = [p for n, p in student.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": fs.lr}, {"params": head, "lr": fs.head_lr}],
                            weight_decay=cfg.weight_decay)
    avg = cfg.strategy_settings("avg")
    T, alpha = avg.temperature, avg.alpha
    batches = _Batches(ctx, steps, seed)
    n_steps = len(batches)
    with tempfile.TemporaryDirectory(prefix="textbrewer-") as tmp:
        tcfg = tb.TrainingConfig(device=ctx.device, output_dir=tmp, ckpt_steps=n_steps, log_dir=None)
        dcfg = tb.DistillationConfig(temperature=T, kd_loss_type="ce", kd_loss_weight=alpha * T * T,
                                     hard_label_weight=1 - alpha)
        distiller = tb.MultiTeacherDistiller(
            tcfg, dcfg, model_T=model_T, model_S=model_S,
            adaptor_T=lambda batch, out: {"logits": out},
            adaptor_S=lambda batch, out: {"logits": out["logits"], "losses": out["loss"]})
        model_S.train()
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        distiller.train(opt, batches, num_steps=n_steps, max_grad_norm=1.0,
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(cfg.warmup * n_steps), "num_training_steps": n_steps})
        wall = time.perf_counter() - t0
    student.eval()
    samples = sum(len(r) for r in batches.rows)
    res_tb = {"steps": n_steps, "samples": samples, "wall_s": wall, "samples_per_s": samples / wall,
              "teacher_signal": "online", "test": evaluate(ctx, student)}
    log.info("textbrewer: %d steps, %.1f samples/s", n_steps, res_tb["samples_per_s"])
    return {
        "skipped": False, "version": getattr(tb, "__version__", None),
        "setup": {
            "distiller": "textbrewer.MultiTeacherDistiller (train(num_steps=N), teachers run every step)",
            "teachers": [t.name for t in ctx.tspecs], "teacher_inputs": "each teacher its own tokenizer "
            "(per-teacher keys in batch['teacher'], one wrapper per teacher)",
            "student_init": "distill.pipeline.build_student (same seed as ours)",
            "batches": "the first N batches of our trainer's epoch-1 order (same rows, same dynamic padding)",
            "steps": n_steps, "batch_size": cfg.student_batch_size, "max_length": cfg.max_length,
            "optimizer": f"AdamW (encoder lr {fs.lr}, head lr {fs.head_lr}, wd {cfg.weight_decay}), "
                         f"linear schedule with {int(cfg.warmup * n_steps)} warm-up steps, grad clip 1.0",
            "loss": f"{alpha * T * T:g} * CE(softmax(mean teacher logits / {T:g}), student at T) + "
                    f"{1 - alpha:g} * CE(y, student)",
            "ours_loss_avg": f"{alpha:g} * {T:g}^2 * CE(mean_i softmax(z_i / {T:g}), student at T) + {1 - alpha:g} * CE(y)",
            "difference": "TextBrewer averages teacher logits before the softmax, our avg averages probabilities; "
                          "TextBrewer also writes a checkpoint at the last step (inside its timed call)",
            "device": ctx.device, "precision": ctx.precision, "threads": torch.get_num_threads(),
        },
        "textbrewer": res_tb,
    }


def compare(tb: dict, ours: dict) -> dict:
    """Add ``ours`` (our step-capped measurements) and ``ratios`` (ours / TextBrewer samples/s;
    accuracy and macro-F1 differences in percentage points) to a :func:`run_textbrewer` result."""
    if tb.get("skipped"):
        return tb
    ref = tb["textbrewer"]
    sel = {k: v for k, v in ours.items() if k.endswith(("_online", "_cache"))}
    ratios = {f"{k}_over_textbrewer_samples_per_s": v["samples_per_s"] / ref["samples_per_s"] for k, v in sel.items()}
    for k, v in sel.items():
        if "test" in v:
            ratios[f"{k}_minus_textbrewer_accuracy_pp"] = v["test"]["accuracy"] - ref["test"]["accuracy"]
            ratios[f"{k}_minus_textbrewer_macro_f1_pp"] = v["test"]["macro_f1"] - ref["test"]["macro_f1"]
    return dict(tb, ours=sel, ratios=ratios)
