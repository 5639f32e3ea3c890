"""Teachers: build them with the shared MT-BERT head, co-finetune them with :func:`~distill.trainer.fit`,
and keep them in a teacher store reused by later runs.

Co-finetuning (MT-BERT §2.1): all teachers are trained jointly on ``sum_i CE(y, y_i)`` through ONE
shared attentive-pooling + prediction head (with a per-teacher projection where hidden sizes differ,
see :mod:`distill.modeling`). ``independent`` mode gives each teacher its own head (the paper's
"w/o co-finetuning" ablation). The store folder is keyed by a fingerprint of the teachers, data,
split and teacher settings.

A teacher given as a *finetuned classifier folder* for the run's labels (a folder written by distill:
a run's ``teachers/teacher_i`` or ``student``) is used as it is: it keeps its own head and is not
co-finetuned (see :func:`given_teacher_meta`); the other teachers are co-finetuned as usual.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import cache as teacher_cache
from . import distributed as D
from .early_stopping import BestEpoch
from .errors import DistillError
from .metrics import classification_metrics, predict_logits, softmax_np
from .modeling import (META_FILE, ClassificationHead, EncoderClassifier, count_params, head_dropout,
                       load_classifier, load_encoder, save_classifier, weights_size_mb)
from .runio import atomic_dir, atomic_write_json, fingerprint, load_checkpoint, save_checkpoint
from .trainer import Batch, FitSettings, StepContext, adamw, fit

log = logging.getLogger("distill")


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


class CoFinetune(nn.Module):
    """The co-finetuning method for :func:`~distill.trainer.fit`: ``L = sum_i CE(y, y_i)`` (MT-BERT §2.1).

    The teachers are the trained ``model`` (an ``nn.ModuleList``); each reads its own tokenisation
    ``toks[i]``. One AdamW: encoder parameters at ``lr``, heads and projections at ``head_lr``
    (a shared head is counted once). Logged components: ``ce_teacher_i``, ``i`` the teacher's number in the
    run (``indices``; teachers used as given are not in ``toks``).

    Early stopping (``patience`` and/or ``budget_s``): after every epoch each teacher is evaluated on
    the dev rows; training stops when the mean of the teachers' dev macro-F1 (%) has not improved for
    ``patience`` epochs, or once the co-finetuning time exceeds ``budget_s`` seconds (checked after
    each epoch), and :meth:`restore_best` puts back the weights of the best dev epoch. The best
    weights and counters are checkpointed (``get_extra_state``), so ``--resume`` continues exactly.
    """

    def __init__(self, toks: list, dev_rows: list[int] | None = None, labels: list[int] | None = None,
                 num_labels: int = 0, patience: int | None = None, budget_s: float | None = None,
                 batch_size: int = 64, indices: list[int] | None = None):
        super().__init__()
        self.indices = list(indices) if indices is not None else list(range(len(toks)))  # run's teacher numbers
        self.toks, self.dev_rows, self.labels, self.num_labels = toks, dev_rows or [], labels, num_labels
        self.patience, self.budget_s, self.batch_size = patience, budget_s, batch_size
        self.best, self.elapsed, self._t0 = BestEpoch(patience, budget_s), 0.0, 0.0

    @property
    def early_stopping(self) -> bool:
        return bool(self.dev_rows) and (self.patience is not None or self.budget_s is not None)

    @property
    def best_f1(self) -> float:
        """The best mean dev macro-F1 (%) so far (-1 before the first epoch)."""
        return self.best.best_f1

    def configure_optimizers(self, model, fs: FitSettings, total_steps: int):
        enc, head, seen = [], [], set()
        for t in model:
            for n, p in t.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    (enc if n.startswith("encoder.") else head).append(p)
        return [adamw([(enc, fs.lr), (head, fs.head_lr)], fs.weight_decay, total_steps, fs.warmup)]

    def step_loss(self, batch: Batch, ctx: StepContext) -> dict:
        """``{"loss": sum_i CE_i, "ce_teacher_i": CE_i}`` of one batch (each teacher on its own tokenisation)."""
        loss = torch.zeros((), device=ctx.device)
        parts = {}
        with ctx.autocast():
            for i, (t, tk) in enumerate(zip(ctx.model, self.toks)):
                ids, mask = tk.batch(batch.rows, ctx.device)
                ce = nn.functional.cross_entropy(t(ids, mask).logits.float(), batch.labels)
                loss = loss + ce
                parts[f"ce_teacher_{self.indices[i]}"] = ce.detach()
        return {"loss": loss, **parts}

    def on_epoch_start(self, ctx):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, ctx):
        self.elapsed += time.perf_counter() - self._t0
        if not self.early_stopping:
            return None
        y = [self.labels[r] for r in self.dev_rows]
        f1 = [classification_metrics(predict_logits(t, tk, self.dev_rows, ctx.device, self.batch_size, ctx.precision,
                                                    f"teacher {self.indices[i]} dev"), y, self.num_labels)["macro_f1"]
              for i, (t, tk) in enumerate(zip(ctx.model, self.toks))]
        score = float(np.mean(f1))
        out = {"dev_macro_f1": f1, "dev_mean_macro_f1": score}
        stop = self.best.update(score, ctx.epoch + 1, ctx.model, self.elapsed)
        if stop:
            ctx.stop, out["stopped"] = True, stop
        log.info("co-finetuning epoch %d: teachers' dev macro-F1 %s (best epoch %d)%s", ctx.epoch + 1,
                 " / ".join(f"{v:.2f}" for v in f1), self.best.best_epoch, f"; stopping: {stop}" if stop else "")
        return out

    def restore_best(self, model: nn.Module) -> int | None:
        """Load the best dev epoch's weights into ``model``; returns that epoch (None without early stopping)."""
        return self.best.restore(model)

    def get_extra_state(self):
        return {**self.best.state(), "elapsed": self.elapsed}

    def set_extra_state(self, state):
        self.best.load(state)
        self.elapsed = state["elapsed"]


def given_teacher_meta(path: Path, name: str, label_names: list[str]) -> dict | None:
    """``classifier.json`` of a teacher folder that is already a finetuned classifier for ``label_names``
    (a folder written by distill, e.g. a run's ``teachers/teacher_0``), else None (a pre-trained encoder,
    which gets a new head and is co-finetuned).

    A distill classifier for *other* labels is treated as a pre-trained encoder (with a warning): its
    encoder is finetuned again under a new head.

    Raises:
        DistillError: an unreadable ``classifier.json``, or a TextCNN folder (not a Transformer teacher).
    """
    f = Path(path) / META_FILE
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"teacher {name!r}: {f} is not valid JSON ({e}); restore the folder or pass the "
                           "pre-trained encoder instead.") from None
    if not str(meta.get("format", "")).startswith("distill-classifier/"):
        return None
    if meta.get("architecture") == "textcnn":
        raise DistillError(f"teacher {name!r}: a TextCNN classifier cannot be a teacher (no Transformer layers); "
                           "pass a Transformer encoder or classifier folder.")
    if meta.get("label_names") != list(label_names):
        log.warning("teacher %s is a finetuned classifier for other labels (%s, not %s): its encoder is finetuned "
                    "again under a new head", name, meta.get("label_names"), list(label_names))
        return None
    return meta


def given_head_dim(cfg, P) -> int:
    """The head space size ``d_c``: ``--head-dim``, else that of the teachers given as finetuned classifiers
    (their pooled features are distilled side by side with the co-finetuned teachers'), else the smallest
    teacher hidden size.

    Raises:
        DistillError: given teachers whose pooled feature size differs from each other or from the run's.
    """
    given = {n: m for n, m in zip(cfg.teachers, P.given) if m is not None}
    if not given:
        return cfg.head_dim or min(c.hidden_size for c in P.teacher_cfgs)

    def feature(dim, pooling):  # the pooled feature's size (the TextCNN head's is fixed)
        return None if pooling == "cnn" else dim

    want = cfg.head_dim or min(m["head_dim"] for m in given.values())
    if {feature(m["head_dim"], m.get("pooling", "attentive")) for m in given.values()} != {feature(want, cfg.pooling)}:
        listed = ", ".join(f"{n} (head dim {m['head_dim']}, {m.get('pooling', 'attentive')} pooling)"
                           for n, m in given.items())
        raise DistillError(f"teachers given as finetuned classifiers must share the run's head space: {listed} vs "
                           f"--head-dim {want}, --pooling {cfg.pooling}. Their pooled features are distilled side by "
                           "side; give classifiers with one head size and pooling (and the same --pooling), or "
                           "their pre-trained encoders instead.")
    return want


def teacher_fingerprint(cfg, P) -> str:
    """Key of the teacher store folder: teachers (config and weight size), data, training split and settings."""
    def wsize(p):
        return sum(f.stat().st_size for f in Path(p).glob("*.safetensors"))

    return fingerprint({
        "teachers": [[n, str(P.teacher_cfgs[i].to_dict()), wsize(P.teacher_paths[i])]
                     + ([{"given": P.given[i]}] if P.given[i] is not None else []) for i, n in enumerate(cfg.teachers)],
        "data": P.ds.source, "labels": P.ds.label_names,
        "train": fingerprint([P.ds.ids[i] for i in P.split.train]),
        "train_labels": fingerprint([P.ds.labels[i] for i in P.split.train]),
        "settings": [cfg.max_length, cfg.teacher_mode, cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_train_layers,
                     cfg.teacher_batch_size * D.world().size,  # the global batch
                     cfg.head_lr, P.head_dim, cfg.pooling, cfg.query_dim, cfg.seed,
                     cfg.weight_decay, cfg.warmup]
        + ([{"patience": cfg.teacher_patience, "budget_s": cfg.teacher_time_budget}]
           if cfg.teacher_patience is not None or cfg.teacher_time_budget is not None else []),
    })


def teacher_store_root(option: str | None, run_dir: Path) -> Path:
    """Where finetuned teachers and their output caches are kept and reused across runs.

    ``--teacher-store`` when given; else ``$DISTILL_TEACHER_STORE``; else a ``.teacher-store`` folder beside
    the run folder when one exists (the location of versions before 0.4, so their runs resume without
    finetuning again); else the user cache folder ``${XDG_CACHE_HOME:-~/.cache}/distill/teachers``.
    """
    import os

    if option:
        return Path(option)
    if os.environ.get("DISTILL_TEACHER_STORE"):
        return Path(os.environ["DISTILL_TEACHER_STORE"])
    legacy = Path(run_dir).resolve().parent / ".teacher-store"
    if legacy.is_dir():
        return legacy
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distill" / "teachers"


def build_teachers(cfg, P) -> list[EncoderClassifier]:
    """Pre-trained teacher encoders with the shared (``joint``) or own (``independent``) heads; a teacher
    given as a finetuned classifier (``P.given[i]``) is loaded as it is, with its own head."""
    torch.manual_seed(cfg.seed)
    C = len(P.ds.label_names)
    shared = ClassificationHead(P.head_dim, C, cfg.query_dim, head_dropout(P.teacher_cfgs[0]), pooling=cfg.pooling)
    out = []
    for p, c, given in zip(P.teacher_paths, P.teacher_cfgs, P.given):
        if given is not None:
            out.append(load_classifier(p)[0])
            continue
        head = shared if cfg.teacher_mode == "joint" else ClassificationHead(P.head_dim, C, cfg.query_dim,
                                                                             head_dropout(c), pooling=cfg.pooling)
        out.append(EncoderClassifier(load_encoder(p, trust_remote_code=cfg.trust_remote_code), head, P.head_dim))
    return out


def cofinetuned(P) -> list[int]:
    """Indices of the teachers co-finetuned by the run (all but those given as finetuned classifiers)."""
    return [i for i, g in enumerate(P.given) if g is None]


def get_teachers(cfg, P, toks: list, store: Path, device: str, precision: str) -> tuple[list[EncoderClassifier], dict]:
    """Co-finetune the teachers (or reuse them from ``store``); they come back frozen, in eval mode.

    Returns:
        ``(teachers, record)``; the record (``teachers.json`` in the store) has the epoch logs,
        ``seconds``, ``mode``, ``train_layers`` and ``reused``.
    """
    done, W = store / "teachers.json", D.world()
    if D.broadcast(done.is_file()):  # rank 0 decides; under a launcher every rank reads the same store
        try:
            rec = json.loads(done.read_text())
            teachers = [load_classifier(store / f"teacher_{i}", device)[0] for i in range(len(cfg.teachers))]
        except (DistillError, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            if not W.main:
                raise DistillError(f"rank {W.rank}: cannot read the teacher store entry {store} that rank 0 reuses "
                                   f"({e}); under a multi-node launcher the store must be on a file system every "
                                   "node mounts (--teacher-store).") from e
            # derived data: rebuilding it is safe, and cheaper than a run that stops here
            log.warning("teacher store entry %s is damaged (%s); finetuning the teachers again", store, e)
            done.unlink()
            teachers = None
        if D.broadcast(teachers is not None):
            log.info("reusing finetuned teachers from %s", store)
            rec["reused"] = True
            return teachers, rec
    teachers = build_teachers(cfg, P)
    ckpt = store / ".cofinetune.ckpt"
    resume = load_checkpoint(ckpt) if ckpt.is_file() else None
    if resume is not None:
        log.info("resuming teacher co-finetuning after epoch %d", len(resume["logs"]))
    train = cofinetuned(P)
    for i, name in enumerate(cfg.teachers):
        if i not in train:
            log.info("teacher %s: a finetuned classifier for these labels, used as given (not co-finetuned)", name)
    if train:
        log.info("co-finetuning %d teacher(s) (%s, %s layers trainable) on %d examples, %d epoch(s)", len(train),
                 cfg.teacher_mode, f"top {cfg.teacher_train_layers}" if cfg.teacher_train_layers else "all",
                 len(P.split.train), cfg.teacher_epochs)
    t0 = time.perf_counter()
    logs, best_epoch = [], None
    for i in train:
        freeze_lower_layers(teachers[i], cfg.teacher_train_layers)
    if cfg.teacher_epochs > 0 and train:
        fs = FitSettings(cfg.teacher_epochs, cfg.teacher_batch_size, cfg.teacher_lr, cfg.head_lr, cfg.weight_decay,
                         cfg.warmup, cfg.seed)
        method = CoFinetune([toks[i] for i in train], P.split.dev, P.ds.labels, len(P.ds.label_names),
                            cfg.teacher_patience, cfg.teacher_time_budget, cfg.eval_batch_size, indices=train)
        model = nn.ModuleList([teachers[i] for i in train])
        logs = fit(method, model, P.ds.labels, P.split.train, fs, device=device,
                   precision=precision, checkpoint=lambda st: save_checkpoint(ckpt, st), resume_state=resume,
                   order_seed=lambda e: cfg.seed + e, seed_torch=False, desc="co-finetune teachers").logs
        best_epoch = method.restore_best(model)
        if best_epoch is not None:
            log.info("teachers: kept the weights of epoch %d (best mean dev macro-F1 %.2f) of %d run",
                     best_epoch, method.best_f1, len(logs))
    for t in teachers:
        t.to(device).eval()
        for p in t.parameters():
            p.requires_grad = False
    seconds = time.perf_counter() - t0
    rec = {"epochs": [vars(e) for e in logs], "seconds": seconds, "mode": cfg.teacher_mode,
           "train_layers": cfg.teacher_train_layers, "reused": False,
           "best_epoch": best_epoch if cfg.teacher_epochs > 0 and train else None,
           "given": [n for i, n in enumerate(cfg.teachers) if i not in train],
           "stopped": next((e.extra["stopped"] for e in logs if e.extra.get("stopped")), None) if logs else None,
           **({"world_size": W.size, "global_batch": cfg.teacher_batch_size * W.size} if W.size > 1 else {})}
    if W.main:  # the ranks' teachers are identical (DDP): one writer
        for i, (t, name) in enumerate(zip(teachers, cfg.teachers)):
            with atomic_dir(store / f"teacher_{i}") as tmp:
                save_classifier(t, P.teacher_toks[i], tmp, {"label_names": P.ds.label_names,
                                                            "max_length": cfg.max_length, "source_model": name,
                                                            "role": "teacher"})
        atomic_write_json(done, rec)
        ckpt.unlink(missing_ok=True)
    D.barrier()
    return teachers, rec


def teacher_outputs_phase(cfg, P, teachers, toks, store: Path, needs_layers: bool, device: str,
                          precision: str) -> tuple[list[dict], dict]:
    """Teacher logits on dev/test and the cache over the training split and the transfer set
    (see :mod:`distill.cache`).

    Returns ``(per-teacher outputs, info)``; info has the cache mode (``cache``/``online``), the
    estimated and actual size (MB), the limit, the schema version and whether the file was reused.
    """
    est = teacher_cache.estimate_cache_mb(len(P.split.train) + len(P.transfer.rows),
                                          [c.hidden_size for c in P.teacher_cfgs], P.head_dim, P.K, P.token_level,
                                          cfg.max_length, len(P.ds.label_names), needs_layers)
    use_cache = cfg.teacher_cache and est <= cfg.cache_max_mb
    if cfg.teacher_cache and not use_cache:
        log.warning("teacher-output cache would take %.0f MB > --cache-max-mb %.0f: teachers run at every "
                    "student step instead (slower, same result)", est, cfg.cache_max_mb)
    outs, info = teacher_cache.load_or_build(store, teachers, toks, P.split, P.K, P.layer_maps, P.token_level,
                                             needs_layers=needs_layers, use_cache=use_cache, device=device,
                                             batch_size=cfg.eval_batch_size, precision=precision,
                                             transfer_rows=P.transfer.rows, transfer_key=P.transfer.key(P.ds))
    return outs, dict(info, mode="cache" if use_cache else "online", estimated_mb=round(est, 1),
                      limit_mb=cfg.cache_max_mb)


def teacher_report(cfg, P, teachers, outs: list[dict], run_dir: Path):
    """Dev/test metrics, sizes and layer maps of every teacher and of the ensemble (mean of probabilities).

    Returns ``(teacher metrics, ensemble metrics, ensemble parameter count)``; teachers co-finetuned
    jointly share one head, counted once.
    """
    C = len(P.ds.label_names)
    y = {part: [P.ds.labels[i] for i in getattr(P.split, part)] for part in ("dev", "test")}
    metrics = []
    for i, t in enumerate(teachers):
        metrics.append({
            "name": cfg.teachers[i], "model_type": P.teacher_cfgs[i].model_type,
            "layers": P.teacher_cfgs[i].num_hidden_layers, "hidden_size": P.teacher_cfgs[i].hidden_size,
            "params": count_params(t), "file_mb": round(weights_size_mb(run_dir / "teachers" / f"teacher_{i}"), 2),
            "token_level_hidden_loss": P.token_level[i], "layer_map": P.layer_maps[i],
            "dev": classification_metrics(outs[i]["dev"], y["dev"], C),
            "test": classification_metrics(outs[i]["test"], y["test"], C)})
    ens = {part: classification_metrics(np.mean([softmax_np(o[part]) for o in outs], 0), y[part], C)
           for part in ("dev", "test")}
    ens_params = sum(m["params"] for m in metrics)
    shared = cofinetuned(P)
    if cfg.teacher_mode == "joint" and len(shared) > 1:  # the co-finetuned teachers' one head, counted once
        ens_params -= (len(shared) - 1) * count_params(teachers[shared[0]].head)
    for m in metrics:
        log.info("teacher %s: test acc %.2f macro-F1 %.2f", m["name"], m["test"]["accuracy"], m["test"]["macro_f1"])
    log.info("ensemble: test acc %.2f macro-F1 %.2f", ens["test"]["accuracy"], ens["test"]["macro_f1"])
    return metrics, ens, ens_params
