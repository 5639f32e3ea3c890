"""Students: build one, train it with a strategy through :func:`~distill.trainer.fit` (the run's
``student/<strategy>/seed<k>`` phase), and summarise which teacher it listened to.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from .device import PeakMemory
from .early_stopping import BestEpoch
from .guards import expand_weights
from .integrity import CorruptArtifact, verify_checksums
from .metrics import classification_metrics, predict_logits
from .modeling import (ClassificationHead, EncoderClassifier, count_params, encoder_from_config, head_dropout,
                       load_encoder, save_classifier, weights_size_mb)
from .runio import RunState, atomic_dir, atomic_write_json, load_checkpoint, save_checkpoint
from .strategies import DistillStrategy, StudentSpec, TeacherSpec, build_strategy
from .tokens import Tokenized
from .transfer import gold_copies
from .trainer import FitResult, FitSettings, fit

log = logging.getLogger("distill")


def build_student(cfg, P, teachers: list[EncoderClassifier], seed: int, stok: Tokenized | None = None):
    """Student encoder (teacher prefix, checkpoint or config) + head (from the shared head when sizes allow),
    or the TextCNN (:mod:`distill.textcnn`; its vocabulary from ``stok``'s ids of the training texts and
    the transfer set, the same for every strategy of the run; its embeddings from the tokenizer teacher's).

    Seeds torch with ``seed`` first, so the same seed gives the same initialisation.
    """
    torch.manual_seed(seed)
    src = P.student_source
    if src["kind"] == "textcnn":
        from .textcnn import build_textcnn

        emb = teachers[src["teacher_index"]].encoder.get_input_embeddings().weight
        return build_textcnn(cfg.textcnn_settings(), P.student_tok, [stok.ids[r] for r in P.split.train + P.transfer.rows],
                             len(P.ds.label_names), emb)
    if src["kind"] == "config":
        enc = encoder_from_config(src["config"])
    else:
        enc = load_encoder(src["path"], num_layers=P.K)
        if cfg.student_init == "teacher":
            init_from_teacher(enc, teachers[src["teacher_index"]].encoder, src["teacher"])
    d = enc.config.hidden_size
    head = ClassificationHead(d, len(P.ds.label_names), cfg.query_dim, head_dropout(enc.config), pooling=cfg.pooling)
    shared = [i for i, g in enumerate(P.given) if g is None]  # the co-finetuned teachers share one head
    if cfg.student_head_init == "shared" and cfg.teacher_mode == "joint" and shared and d == P.head_dim:
        head.load_state_dict(teachers[shared[0]].head.state_dict())
    return EncoderClassifier(enc, head, d)


def init_from_teacher(student_encoder, teacher_encoder, name: str) -> None:
    """Start the student's encoder from the co-finetuned teacher it is cut from (``--student-init
    teacher``): its embeddings and first K layers (DistilBERT, Sanh et al. 2019, sec. 3, initialise the
    student from the teacher; keeping the bottom layers is the "top-layer dropping" that Sajjad et al.
    2020 found best among layer-dropping choices).

    Args:
        student_encoder: the K-layer encoder built from the teacher's pre-trained checkpoint (same
            architecture and parameter names, fewer layers); updated in place.
        teacher_encoder: the co-finetuned teacher's encoder (L >= K layers); only read.

    Raises:
        DistillError: a student parameter has no counterpart of the same name and shape in the teacher.
    """
    from .errors import DistillError

    src = teacher_encoder.state_dict()
    own = student_encoder.state_dict()
    bad = [k for k, v in own.items() if k not in src or src[k].shape != v.shape]
    if bad:
        raise DistillError(f"--student-init teacher: the co-finetuned teacher {name!r} has no parameter {bad[0]!r} "
                           f"of the student's shape ({len(bad)} in all); use --student-init pretrained.")
    student_encoder.load_state_dict({k: src[k] for k in own})  # copies into the student's own tensors


def specs(cfg, P, teacher_dev_f1: list[float] | None = None) -> tuple[list[TeacherSpec], StudentSpec]:
    """What the strategies need to know about the teachers and the student."""
    f1 = teacher_dev_f1 or [None] * len(cfg.teachers)
    pooled = P.head_dim
    if cfg.pooling == "cnn":
        from .textcnn import CNN_HEAD_FILTERS, CNN_HEAD_KERNELS

        pooled = len(CNN_HEAD_KERNELS) * CNN_HEAD_FILTERS
    tspecs = [TeacherSpec(n, c.hidden_size, c.num_hidden_layers, lm, tl, pooled, f)
              for n, c, lm, tl, f in zip(cfg.teachers, P.teacher_cfgs, P.layer_maps, P.token_level, f1)]
    return tspecs, StudentSpec(P.student_source["hidden_size"], P.K, len(P.ds.label_names))


def fit_settings(cfg, seed: int, max_steps: int | None = None) -> FitSettings:
    """The student's :class:`~distill.trainer.FitSettings` from the run config (the TextCNN: its own
    epochs, and its learning rate for every parameter)."""
    if cfg.textcnn:
        t = cfg.textcnn_settings()
        return FitSettings(t.epochs, cfg.student_batch_size, t.lr, t.lr, cfg.weight_decay, cfg.warmup, seed, max_steps)
    return FitSettings(cfg.student_epochs, cfg.student_batch_size, cfg.student_lr, cfg.head_lr, cfg.weight_decay,
                       cfg.warmup, seed, max_steps)


class Evaluator:
    """Held-out evaluation for :class:`~distill.trainer.StepContext` (``ctx.evaluate``): accuracy,
    macro-F1 (%) and mean CE (nats) of ``model`` on a held-out part (``"dev"``; the test part is never
    offered) or on a subset of its rows. Restores the model's train/eval mode afterwards.

    Attributes:
        parts: ``{part: dataset rows}`` that may be evaluated.
    """

    def __init__(self, model, tok: Tokenized, labels: list[int], parts: dict[str, list[int]], num_labels: int,
                 device: str, batch_size: int, precision: str):
        self.model, self.tok, self.labels, self.parts = model, tok, labels, parts
        self.num_labels, self.device, self.batch_size, self.precision = num_labels, device, batch_size, precision

    def __call__(self, part: str, rows: list[int] | None = None) -> dict:
        """``{"accuracy", "macro_f1", "n", "loss"}`` on ``rows`` (default: the whole part).

        Raises:
            KeyError: ``part`` is not a held-out part.
        """
        if part not in self.parts:
            raise KeyError(f"no held-out part {part!r} (available: {sorted(self.parts)})")
        rows = self.parts[part] if rows is None else rows
        was_training = self.model.training
        logits = predict_logits(self.model, self.tok, rows, self.device, self.batch_size, self.precision,
                                f"eval {part}")
        self.model.train(was_training)
        y = np.asarray([self.labels[r] for r in rows])
        lp = torch.log_softmax(torch.from_numpy(logits), -1).numpy()
        out = classification_metrics(logits, list(y), self.num_labels)
        out["loss"] = float(-lp[np.arange(len(y)), y].mean()) if len(y) else float("nan")
        return out


def train_student(student: EncoderClassifier, strategy: DistillStrategy, tok: Tokenized, labels: list[int],
                  train_rows: list[int], provider, fs: FitSettings, *, device: str, precision: str,
                  evaluate=None, checkpoint=None, resume_state=None, early_stopping=None) -> FitResult:
    """Train ``student`` with ``strategy`` (the strategy's teacher signals come from ``provider``:
    the cache or online teachers; None for strategies that use none); ``early_stopping``: a
    :class:`~distill.early_stopping.BestEpoch` (``--student-patience``) or None."""
    return fit(strategy, student, labels, train_rows, fs, tok=tok,
               teachers=provider if strategy.needs.teachers else None, device=device, precision=precision,
               evaluate=evaluate, checkpoint=checkpoint, resume_state=resume_state,
               desc=f"{strategy.name} seed {fs.seed}", early_stopping=early_stopping)


def teacher_weight_summary(per_text: np.ndarray | None, labels: list[int], label_names: list[str],
                           teacher_names: list[str]) -> dict | None:
    """Which teacher taught what, from the per-text mean weights a strategy used.

    Args:
        per_text: (n, N) mean weight of each teacher for every training text (NaN rows = never seen).
        labels: the n texts' gold class ids (-1 for transfer-set texts: counted in ``mean`` and
            ``dominant_share``, in no class of ``per_class``).

    Returns:
        ``{"teachers", "mean": [N], "per_class": {label: [N]}, "dominant_share": [N], "texts": n}``:
        the mean weight overall and per gold class, and the share of texts on which each teacher had
        the largest mean weight (ties split evenly); None when the strategy reported no weights.
    """
    if per_text is None:
        return None
    seen = ~np.isnan(per_text).any(1)
    w, y = per_text[seen], np.asarray(labels)[seen]
    if not len(w):
        return None
    top = w.max(1, keepdims=True)
    winners = np.isclose(w, top, rtol=0, atol=1e-9)
    dominant = (winners / winners.sum(1, keepdims=True)).mean(0)
    per_class = {name: w[y == c].mean(0).tolist() for c, name in enumerate(label_names) if (y == c).any()}
    return {"teachers": list(teacher_names), "mean": w.mean(0).tolist(), "per_class": per_class,
            "dominant_share": dominant.tolist(), "texts": int(len(w))}


def quiz_rows(cfg, split, labels: list[int]) -> list[int]:
    """The quiz set of the run's teacher-updating strategy (MetaDistil), [] when the run has none: dataset
    rows of the training part (see :func:`distill.split.quiz_split`)."""
    from .split import quiz_split
    from .strategies import STRATEGIES

    for name in cfg.strategies:
        if STRATEGIES[name].teacher_updatable:
            size = cfg.strategy_settings(name).quiz_size
            return quiz_split(split.train, labels, size, cfg.seed, f"--set {name}.quiz_size")
    return []


def attach_teachers(strategy: DistillStrategy, P, teachers: list[EncoderClassifier], toks: list[Tokenized],
                    stok: Tokenized, rows: list[int]) -> list[int]:
    """For a teacher-updating strategy: hand it copies of the active teachers, their tokenizations, the
    student's and the quiz set; returns the student's training rows without the quiz rows. Other
    strategies: ``rows`` unchanged."""
    if not strategy.teacher_updatable:
        return rows
    active = P.teacher_selection.active
    use = meta_teachers(strategy, active)
    strategy.attach([teachers[i] for i in use], [toks[i] for i in use], stok, P.quiz, P.ds.labels,
                    slots=[active.index(i) for i in use], n_slots=len(active), dev_rows=P.split.dev)
    quiz = set(P.quiz)
    return [r for r in rows if r not in quiz]


def meta_teachers(strategy: DistillStrategy, active: list[int]) -> list[int]:
    """The teachers (indices in ``--teacher``) a teacher-updating strategy learns from: its ``teacher``
    setting, else every active teacher.

    Raises:
        DistillError: the chosen teacher was left out of distillation by the weak-teacher rule.
    """
    from .errors import DistillError

    one = getattr(strategy.settings, "teacher", None)
    if one is None:
        return list(active)
    if one not in active:
        raise DistillError(f"--set {strategy.name}.teacher={one}: teacher {one} is not distilled from in this run "
                           f"(active teachers: {active}; see --weak-teacher-margin).")
    return [one]


def save_updated_teachers(strategy: DistillStrategy, P, cfg, folder) -> list[str]:
    """Save a teacher-updating strategy's meta-updated teachers under ``folder/teacher_<i>`` (i = index in
    ``--teacher``; safetensors, atomically); never into the shared teacher store. Returns the folders."""
    from pathlib import Path

    from .modeling import save_classifier
    from .runio import atomic_dir

    out = []
    for t, i in zip(strategy.live, meta_teachers(strategy, P.teacher_selection.active)):
        dest = Path(folder) / f"teacher_{i}"
        with atomic_dir(dest) as tmp:
            save_classifier(t, P.teacher_toks[i], tmp, {"label_names": P.ds.label_names, "max_length": cfg.max_length,
                                                        "source_model": cfg.teachers[i], "role": "teacher",
                                                        "updated_by": strategy.name})
        out.append(str(dest))
    return out


def student_phase(cfg, P, strat: str, seed: int, teachers, toks, tspecs, sspec, stok, provider,
                  state: RunState, run_dir: Path, device: str, precision: str) -> dict:
    """Phase ``student/<strategy>/seed<k>``: train (or resume) one student, evaluate it on dev and
    test, save the main strategy's model, and record ``students/<strategy>-seed<k>/metrics.json``."""
    phase = f"student/{strat}/seed{seed}"
    sdir = run_dir / "students" / f"{strat}-seed{seed}"
    if state.done(phase):
        res = state.get(phase)
        try:
            if "model_dir" in res:
                verify_checksums(run_dir / res["model_dir"], "")
            return res
        except CorruptArtifact as e:
            log.warning("%s: the saved student is damaged (%s: %s); training this seed again", phase, e.path, e.problem)
    C = len(P.ds.label_names)
    # the strategy's own modules (projections, policies) start from the seed, not from whatever the
    # process did before: a resumed run builds them after other phases were skipped
    torch.manual_seed(seed)
    strategy = build_strategy(strat, cfg.strategy_settings(strat), tspecs, sspec)
    # strategies that learn from teachers also train on the transfer set (task loss on labelled rows only)
    rows, labels, copies = P.split.train + (P.transfer.rows if strategy.needs.teachers else []), P.train_labels, []
    if getattr(strategy.settings, "augmented", False):  # nokd's control for --augment: copies with gold labels
        copies, labels = gold_copies(P.transfer, P.train_labels, P.split.train)
        rows = rows + copies
    rows = attach_teachers(strategy, P, teachers, toks, stok, rows)  # MetaDistil: live teachers, quiz held out
    student = build_student(cfg, P, teachers, seed, stok)
    ckpt = run_dir / "checkpoints" / f"{strat}-seed{seed}.ckpt"
    resume_state = load_checkpoint(ckpt) if ckpt.is_file() else None
    if resume_state is not None:
        log.info("resuming %s after epoch %d", phase, len(resume_state["logs"]))
    evaluate = Evaluator(student, stok, P.ds.labels, {"dev": P.split.dev}, C, device, cfg.eval_batch_size, precision)
    stopper = (BestEpoch(cfg.student_patience, score=lambda: evaluate("dev")["macro_f1"])
               if cfg.student_patience is not None else None)
    t0 = time.perf_counter()
    with PeakMemory(device) as peak:
        result = train_student(student, strategy, stok, labels, rows, provider,
                               strategy.adjust_fit(fit_settings(cfg, seed)), device=device, precision=precision,
                               evaluate=evaluate, checkpoint=lambda st: save_checkpoint(ckpt, st),
                               resume_state=resume_state, early_stopping=stopper)
    train_s = time.perf_counter() - t0
    y = {part: [P.ds.labels[i] for i in getattr(P.split, part)] for part in ("dev", "test")}
    quiz_n = len(P.quiz) if strategy.teacher_updatable else 0  # training texts held out as its quiz set
    res = {"strategy": strat, "seed": seed, "description": strategy.describe(), "paper": strategy.paper,
           "settings": strategy.settings.model_dump(),
           **{part: classification_metrics(predict_logits(student, stok, getattr(P.split, part), device,
                                                          cfg.eval_batch_size, precision, f"eval {part}"), y[part], C)
              for part in ("dev", "test")},
           "epochs": [vars(e) for e in result.logs], "train_seconds": train_s, "params": count_params(student),
           "best_epoch": stopper.best_epoch if stopper is not None else None,
           "peak_memory_mb": round(peak.mb, 1), "memory_at_start_mb": round(peak.start_mb, 1), "quiz_texts": quiz_n,
           "teacher_signal": "meta-updated copies" if strategy.teacher_updatable
           else provider.mode if strategy.needs.teachers else "none",
           "train_texts": {"labelled": len(P.split.train) - quiz_n,
                           "transfer": len(rows) - len(P.split.train) + quiz_n - len(copies),
                           **({"gold_labelled_copies": len(copies)} if copies else {})},
           "teacher_weights": teacher_weight_summary(expand_weights(result.weights.per_text(),
                                                                    P.teacher_selection.active, len(cfg.teachers)),
                                                     [labels[r] for r in rows], P.ds.label_names,
                                                     cfg.teachers)}
    if strategy.teacher_updatable:  # the meta-updated teachers: in the run folder, never in the teacher store
        res["updated_teachers"] = [str(Path(d).relative_to(run_dir))
                                   for d in save_updated_teachers(strategy, P, cfg, sdir / "teachers")]
    if strat in (cfg.strategy, "nokd") and D.world().main:  # nokd too: the run's student when KD does not pay on dev
        with atomic_dir(sdir / "model") as tmp:
            save_classifier(student, P.student_tok, tmp, {
                "label_names": P.ds.label_names, "max_length": cfg.max_length, "role": "student",
                "strategy": strat, "seed": seed, "source": P.student_source})
        res["file_mb"] = round(weights_size_mb(sdir / "model"), 2)
        res["model_dir"] = str((sdir / "model").relative_to(run_dir))
    if D.world().main:
        atomic_write_json(sdir / "metrics.json", res)
        ckpt.unlink(missing_ok=True)
    state.mark(phase, res)  # in memory on every rank; written by rank 0
    log.info("%s seed %d: test acc %.2f macro-F1 %.2f (%.0f s)", strat, seed, res["test"]["accuracy"],
             res["test"]["macro_f1"], train_s)
    return res
