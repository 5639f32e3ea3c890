"""``distill run``: the end-to-end job (data -> co-finetuned teachers -> distilled students -> report).

Phases (each recorded in ``state.json``; ``--resume`` skips finished ones and continues an
interrupted training phase from its last finished epoch):

1. ``prepare``: load and validate data, split, resolve teachers and student (all errors surface here,
   before any long work);
2. ``teachers``: co-finetune the teachers, or reuse them from the teacher store when a previous run
   asked for the same teachers, data, split and settings;
3. ``teacher_outputs``: one inference pass of the frozen teachers (dev/test logits for the metrics,
   and the teacher-output cache over the training split);
4. ``student/<strategy>/seed<k>``: one phase per strategy (main + baselines) and seed;
5. ``report``: ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import RunConfig
from .data import TextDataset, load_dataset, stratified_split
from .errors import DistillError
from .hub import check_safetensors, resolve_model
from .modeling import (ClassificationHead, EncoderClassifier, count_params, encoder_from_config, layer_map,
                       load_classifier, load_encoder, save_classifier, weights_size_mb)
from .runio import (RunState, atomic_dir, atomic_write_json, atomic_write_text, check_writable, fingerprint,
                    link_or_copy_tree, load_checkpoint, save_checkpoint)
from .strategies import STRATEGIES, StudentSpec, TeacherSpec, build_strategy
from .train import (TeacherProvider, Tokenized, classification_metrics, cofinetune, estimate_cache_mb,
                    predict_logits, resolve_precision, same_tokenization, softmax_np, teacher_outputs, train_student)

log = logging.getLogger("distill")


def setup_logging(run_dir: Path | None = None, verbose: bool = False) -> None:
    """Concise console log; full log in ``run_dir/log.txt``."""
    root = logging.getLogger("distill")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    ch = logging.StreamHandler()
    ch.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(ch)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    root.propagate = False
    import transformers

    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. Raises if CUDA was asked but is absent."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DistillError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu.")
    return name


class Timer:
    """Wall-clock seconds of named phases."""

    def __init__(self, initial: dict | None = None):
        self.times: dict[str, float] = dict(initial or {})

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = timer.times.get(name, 0.0) + time.perf_counter() - self.t0

        return _T()


# ---------------------------------------------------------------------------------------- prepare
class Prepared:
    """Everything resolved in the ``prepare`` phase."""

    ds: TextDataset
    split: object
    teacher_paths: list[Path]
    teacher_cfgs: list
    teacher_toks: list
    student_tok: object
    student_source: dict
    K: int
    token_level: list[bool]
    layer_maps: list[list[int]]
    head_dim: int


def prepare(cfg: RunConfig) -> Prepared:
    """Load data, split, resolve teachers/student and check compatibility (fast; before any training).

    Raises:
        DistillError: any problem with data, teachers, student or settings.
    """
    from transformers import AutoConfig, AutoTokenizer

    cfg.validate()
    P = Prepared()
    P.ds = load_dataset(cfg.data, cfg.data_format, cfg.text_cols, cfg.label_col, cfg.id_col)
    P.split = stratified_split(P.ds.labels, P.ds.label_names, cfg.seed, cfg.dev_frac, cfg.test_frac, cfg.train_cap)
    P.teacher_paths, P.teacher_cfgs, P.teacher_toks = [], [], []
    for name in cfg.teachers:
        p = resolve_model(name, "teacher")
        check_safetensors(p, "teacher", name)
        c = AutoConfig.from_pretrained(str(p), trust_remote_code=cfg.trust_remote_code)
        if not hasattr(c, "num_hidden_layers") or not hasattr(c, "hidden_size"):
            raise DistillError(f"teacher {name!r}: {c.model_type} is not a Transformer encoder with layers.")
        P.teacher_paths.append(p)
        P.teacher_cfgs.append(c)
        P.teacher_toks.append(AutoTokenizer.from_pretrained(str(p), trust_remote_code=cfg.trust_remote_code))
    P.head_dim = cfg.head_dim or min(c.hidden_size for c in P.teacher_cfgs)
    # student
    if cfg.student is None:
        idx = cfg.student_from
        if idx is None:  # smallest teacher by (hidden size * depth)
            idx = min(range(len(P.teacher_cfgs)),
                      key=lambda i: P.teacher_cfgs[i].hidden_size ** 2 * P.teacher_cfgs[i].num_hidden_layers)
        L = P.teacher_cfgs[idx].num_hidden_layers
        P.K = cfg.student_layers or max(1, L // 2)
        if P.K > L:
            raise DistillError(f"--student-layers {P.K}: deeper than the teacher it is cut from "
                               f"({cfg.teachers[idx]!r} has {L} layers). Use at most {L}.")
        P.student_tok = P.teacher_toks[idx]
        P.student_source = {"kind": "teacher-prefix", "teacher": cfg.teachers[idx], "teacher_index": idx,
                            "path": str(P.teacher_paths[idx]), "layers": P.K}
        hidden = P.teacher_cfgs[idx].hidden_size
    elif cfg.student.endswith(".json"):
        if not Path(cfg.student).is_file():
            raise DistillError(f"--student {cfg.student}: config file not found.")
        c = AutoConfig.from_pretrained(cfg.student)
        P.K, hidden = c.num_hidden_layers, c.hidden_size
        idx = cfg.student_from if cfg.student_from is not None else 0
        P.student_tok = P.teacher_toks[idx]
        if getattr(c, "vocab_size", 0) < len(P.student_tok):
            raise DistillError(f"--student {cfg.student}: vocab_size {c.vocab_size} is smaller than the tokenizer "
                               f"of teacher {idx} ({len(P.student_tok)}); set vocab_size or --student-from.")
        P.student_source = {"kind": "config", "config": str(Path(cfg.student).resolve()), "tokenizer_from": cfg.teachers[idx]}
    else:
        p = resolve_model(cfg.student, "student")
        check_safetensors(p, "student", cfg.student)
        c = AutoConfig.from_pretrained(str(p))
        P.K = cfg.student_layers or c.num_hidden_layers
        if P.K > c.num_hidden_layers:
            raise DistillError(f"--student-layers {P.K}: {cfg.student!r} has only {c.num_hidden_layers} layers.")
        hidden = c.hidden_size
        P.student_tok = AutoTokenizer.from_pretrained(str(p))
        P.student_source = {"kind": "checkpoint", "model": cfg.student, "path": str(p), "layers": P.K}
    P.student_source["hidden_size"] = hidden
    probe = P.ds.texts[:8]
    P.token_level = [same_tokenization(P.student_tok, t, probe) for t in P.teacher_toks]
    P.layer_maps = [layer_map(P.K, c.num_hidden_layers) for c in P.teacher_cfgs]
    return P


# --------------------------------------------------------------------------------------- teachers
def _teacher_fp(cfg: RunConfig, P: Prepared) -> str:
    def wsize(p):
        return sum(f.stat().st_size for f in Path(p).glob("*.safetensors"))

    return fingerprint({
        "teachers": [[n, str(P.teacher_cfgs[i].to_dict()), wsize(P.teacher_paths[i])] for i, n in enumerate(cfg.teachers)],
        "data": P.ds.source, "labels": P.ds.label_names,
        "train": fingerprint([P.ds.ids[i] for i in P.split.train]),
        "train_labels": fingerprint([P.ds.labels[i] for i in P.split.train]),
        "settings": [cfg.max_length, cfg.teacher_mode, cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_train_layers,
                     cfg.teacher_batch_size, cfg.head_lr, P.head_dim, cfg.pooling, cfg.query_dim, cfg.seed,
                     cfg.weight_decay, cfg.warmup],
    })


def build_teachers(cfg: RunConfig, P: Prepared) -> list[EncoderClassifier]:
    """Pre-trained teacher encoders with the shared (``joint``) or own (``independent``) heads."""
    torch.manual_seed(cfg.seed)
    C = len(P.ds.label_names)
    shared = ClassificationHead(P.head_dim, C, cfg.query_dim, pooling=cfg.pooling)
    out = []
    for p in P.teacher_paths:
        head = shared if cfg.teacher_mode == "joint" else ClassificationHead(P.head_dim, C, cfg.query_dim, pooling=cfg.pooling)
        out.append(EncoderClassifier(load_encoder(p, trust_remote_code=cfg.trust_remote_code), head, P.head_dim))
    return out


def get_teachers(cfg: RunConfig, P: Prepared, toks: list[Tokenized], store: Path, device: str, precision: str,
                 timer: Timer) -> tuple[list[EncoderClassifier], dict]:
    """Co-finetune (or reuse from ``store``) the teachers. Returns the teachers and the store record."""
    done = store / "teachers.json"
    if done.is_file():
        log.info("reusing finetuned teachers from %s", store)
        rec = json.loads(done.read_text())
        rec["reused"] = True
        return [load_classifier(store / f"teacher_{i}", device)[0] for i in range(len(cfg.teachers))], rec
    teachers = build_teachers(cfg, P)
    ckpt = store / ".cofinetune.ckpt"
    resume = load_checkpoint(ckpt) if ckpt.is_file() else None
    if resume is not None:
        log.info("resuming teacher co-finetuning after epoch %d", len(resume["logs"]))
    log.info("co-finetuning %d teacher(s) (%s, top %s layers trainable) on %d examples, %d epoch(s)",
             len(teachers), cfg.teacher_mode, cfg.teacher_train_layers or "all", len(P.split.train), cfg.teacher_epochs)
    t0 = time.perf_counter()
    logs = []
    if cfg.teacher_epochs > 0:
        logs = cofinetune(teachers, toks, P.ds.labels, P.split.train, epochs=cfg.teacher_epochs,
                          batch_size=cfg.teacher_batch_size, lr=cfg.teacher_lr, head_lr=cfg.head_lr,
                          train_layers=cfg.teacher_train_layers, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
                          seed=cfg.seed, device=device, precision=precision,
                          checkpoint=lambda st: save_checkpoint(ckpt, st), resume_state=resume,
                          joint=cfg.teacher_mode == "joint")
    else:
        for t in teachers:
            t.to(device).eval()
    seconds = time.perf_counter() - t0
    timer.times["teachers_finetune"] = seconds
    for i, (t, name) in enumerate(zip(teachers, cfg.teachers)):
        with atomic_dir(store / f"teacher_{i}") as tmp:
            save_classifier(t, P.teacher_toks[i], tmp, {"label_names": P.ds.label_names, "max_length": cfg.max_length,
                                                        "source_model": name, "role": "teacher"})
    rec = {"epochs": [vars(e) for e in logs], "seconds": seconds, "mode": cfg.teacher_mode,
           "train_layers": cfg.teacher_train_layers, "reused": False}
    atomic_write_json(done, rec)
    ckpt.unlink(missing_ok=True)
    return teachers, rec


def get_teacher_outputs(cfg: RunConfig, P: Prepared, teachers, toks, store: Path, needs_hidden: bool, device: str,
                        precision: str) -> tuple[list[dict], dict]:
    """Teacher logits on dev/test and the training-split cache (loaded from the store if present).

    Returns ``(cache per teacher or None entries, info)``; info has the cache size (MB) and mode.
    """
    from safetensors.torch import load_file, save_file

    n = len(P.split.train)
    C = len(P.ds.label_names)
    est = estimate_cache_mb(n, teachers, P.K, P.token_level, cfg.max_length, C, needs_hidden)
    use_cache = cfg.teacher_cache and est <= cfg.cache_max_mb
    if cfg.teacher_cache and not use_cache:
        log.warning("teacher-output cache would take %.0f MB > --cache-max-mb %.0f: teachers run at every "
                    "student step instead (slower, same result)", est, cfg.cache_max_mb)
    key = fingerprint([P.K, P.token_level, P.layer_maps, needs_hidden and use_cache, use_cache,
                       P.split.dev, P.split.test, cfg.eval_batch_size > 0])
    path = store / f"outputs-{key}.safetensors"
    reused = path.is_file()
    if reused:
        log.info("loading cached teacher outputs from %s", path.name)
        flat = load_file(str(path))
    else:
        flat = {}
        for i, (t, tk) in enumerate(zip(teachers, toks)):
            name = cfg.teachers[i]
            for part in ("dev", "test"):
                rows = getattr(P.split, part)
                flat[f"t{i}.{part}.logits"] = teacher_outputs(t, tk, rows, None, False, device, cfg.eval_batch_size,
                                                              precision, f"teacher {i} {part}")["logits"]
            if use_cache:
                o = teacher_outputs(t, tk, P.split.train, P.layer_maps[i] if needs_hidden else None,
                                    P.token_level[i], device, cfg.eval_batch_size, precision, f"teacher {i} cache")
                flat[f"t{i}.train.logits"] = o["logits"]
                for k, h in enumerate(o["layers"]):
                    flat[f"t{i}.train.layer{k}"] = h.contiguous()
            log.info("teacher %d (%s) outputs computed", i, name)
        tmp = path.with_name("." + path.name + ".tmp")
        save_file(flat, str(tmp))
        tmp.replace(path)
    per = []
    for i in range(len(teachers)):
        d = {part: flat[f"t{i}.{part}.logits"].numpy() for part in ("dev", "test")}
        if use_cache:
            d["logits"] = flat[f"t{i}.train.logits"]
            d["layers"] = [flat[f"t{i}.train.layer{k}"] for k in range(P.K) if f"t{i}.train.layer{k}" in flat]
        per.append(d)
    info = {"mode": "cache" if use_cache else "online", "estimated_mb": round(est, 1),
            "file_mb": round(path.stat().st_size / 1e6, 1), "limit_mb": cfg.cache_max_mb, "reused": reused}
    return per, info


# ---------------------------------------------------------------------------------------- student
def build_student(cfg: RunConfig, P: Prepared, teachers: list[EncoderClassifier], seed: int) -> EncoderClassifier:
    """Student encoder (teacher prefix, checkpoint or config) + head (from the shared head when sizes allow)."""
    torch.manual_seed(seed)
    src = P.student_source
    if src["kind"] == "teacher-prefix":
        enc = load_encoder(src["path"], num_layers=P.K)
    elif src["kind"] == "config":
        enc = encoder_from_config(src["config"])
    else:
        enc = load_encoder(src["path"], num_layers=P.K)
    d = enc.config.hidden_size
    head = ClassificationHead(d, len(P.ds.label_names), cfg.query_dim, pooling=cfg.pooling)
    if cfg.student_head_init == "shared" and cfg.teacher_mode == "joint" and d == P.head_dim:
        head.load_state_dict(teachers[0].head.state_dict())
    return EncoderClassifier(enc, head, d)


def _mean_std(vals: list[float]) -> dict:
    return {"mean": float(np.mean(vals)), "std": float(statistics.stdev(vals)) if len(vals) > 1 else 0.0,
            "values": [float(v) for v in vals]}


# -------------------------------------------------------------------------------------------- run
def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, verbose: bool = False) -> Path:
    """Run the whole job; returns the run folder.

    Raises:
        DistillError: bad input or settings (before any long work), or an existing run folder
            without ``--resume``/``--overwrite``.
    """
    run_dir = Path(cfg.out)
    check_writable(run_dir)
    saved = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume and saved.is_file():
            old = RunConfig.from_dict(json.loads(saved.read_text()))
            if old.to_dict() != cfg.to_dict():
                diff = sorted(k for k, v in cfg.to_dict().items() if old.to_dict()[k] != v and k not in ("device", "precision", "threads"))
                if diff:
                    log.warning("--resume: using the saved config of %s (ignoring changed options %s)", run_dir, diff)
                old.device, old.precision, old.threads = cfg.device, cfg.precision, cfg.threads
                cfg = old
        elif overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise DistillError(f"output folder {run_dir} already holds a run. Pass --resume to continue it, "
                               "--overwrite to replace it, or choose another --out.")
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, verbose)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    state = RunState(run_dir)
    timer = Timer(state.get("timer") or {})
    t_start = time.perf_counter()

    with timer("prepare"):
        P = prepare(cfg)
    atomic_write_json(saved, cfg.to_dict())
    atomic_write_json(run_dir / "split.json", {
        "seed": cfg.seed, "fractions": P.split.fractions, "train_cap": cfg.train_cap, "sizes": P.split.sizes(),
        "source": P.ds.source, "label_names": P.ds.label_names,
        "class_counts": {part: P.ds.subset(getattr(P.split, part)).class_counts() for part in ("train", "dev", "test")},
        "ids": {part: [P.ds.ids[i] for i in getattr(P.split, part)] for part in ("train", "dev", "test")}})
    atomic_write_json(run_dir / "labels.json", {"label_names": P.ds.label_names})
    log.info("data: %s, %d rows, %d classes; split %s (seed %d)", P.ds.source, len(P.ds), len(P.ds.label_names),
             P.split.sizes(), cfg.seed)
    log.info("device %s, precision %s, %d threads", device, precision, torch.get_num_threads())

    with timer("tokenize"):
        toks = [Tokenized(t, P.ds.texts, cfg.max_length) for t in P.teacher_toks]
        stok = next((toks[i] for i, t in enumerate(P.teacher_toks) if t is P.student_tok), None) \
            or Tokenized(P.student_tok, P.ds.texts, cfg.max_length)

    store = Path(cfg.teacher_store) if cfg.teacher_store else run_dir.resolve().parent / ".teacher-store"
    store = store / _teacher_fp(cfg, P)
    store.mkdir(parents=True, exist_ok=True)
    teachers, teacher_rec = get_teachers(cfg, P, toks, store, device, precision, timer)
    state.mark("teachers", str(store))
    for i in range(len(teachers)):
        link_or_copy_tree(store / f"teacher_{i}", run_dir / "teachers" / f"teacher_{i}")

    strategies = [cfg.strategy] + [b for b in cfg.baselines if b != cfg.strategy]
    scfg = cfg.strategy_config()
    tspecs = [TeacherSpec(n, c.hidden_size, c.num_hidden_layers, lm, tl)
              for n, c, lm, tl in zip(cfg.teachers, P.teacher_cfgs, P.layer_maps, P.token_level)]
    sspec = StudentSpec(P.student_source["hidden_size"], P.K)
    needs_hidden = any(build_strategy(s, scfg, tspecs, sspec).needs_hidden for s in strategies)

    t0 = time.perf_counter()
    outs, cache_info = get_teacher_outputs(cfg, P, teachers, toks, store, needs_hidden, device, precision)
    timer.times["teacher_outputs"] = timer.times.get("teacher_outputs", 0.0) + time.perf_counter() - t0

    # teacher and ensemble metrics
    C = len(P.ds.label_names)
    y = {part: [P.ds.labels[i] for i in getattr(P.split, part)] for part in ("dev", "test")}
    teacher_metrics = []
    for i, t in enumerate(teachers):
        folder = run_dir / "teachers" / f"teacher_{i}"
        teacher_metrics.append({
            "name": cfg.teachers[i], "model_type": P.teacher_cfgs[i].model_type,
            "layers": P.teacher_cfgs[i].num_hidden_layers, "hidden_size": P.teacher_cfgs[i].hidden_size,
            "params": count_params(t), "file_mb": round(weights_size_mb(folder), 2),
            "token_level_hidden_loss": P.token_level[i], "layer_map": P.layer_maps[i],
            "dev": classification_metrics(outs[i]["dev"], y["dev"], C),
            "test": classification_metrics(outs[i]["test"], y["test"], C)})
    ens = {part: classification_metrics(np.mean([softmax_np(o[part]) for o in outs], 0), y[part], C)
           for part in ("dev", "test")}
    # ensemble parameters; joint teachers share one head (loaded from the store as copies): count it once
    ens_params = sum(m["params"] for m in teacher_metrics)
    if cfg.teacher_mode == "joint":
        ens_params -= (len(teachers) - 1) * count_params(teachers[0].head)
    for m in teacher_metrics:
        log.info("teacher %s: test acc %.2f macro-F1 %.2f", m["name"], m["test"]["accuracy"], m["test"]["macro_f1"])
    log.info("ensemble: test acc %.2f macro-F1 %.2f", ens["test"]["accuracy"], ens["test"]["macro_f1"])
    best_teacher = max(range(len(teachers)), key=lambda i: teacher_metrics[i]["dev"]["macro_f1"])
    if scfg.teacher_index is None:
        scfg.teacher_index = best_teacher

    provider = None
    if any(STRATEGIES[s].uses_teachers for s in strategies):
        if cache_info["mode"] == "cache":
            provider = TeacherProvider(P.split.train, cached=outs, token_level=P.token_level,
                                       needs_hidden=needs_hidden, device=device)
        else:
            provider = TeacherProvider(P.split.train, teachers=teachers, toks=toks, layer_maps=P.layer_maps,
                                       token_level=P.token_level, needs_hidden=needs_hidden, device=device,
                                       precision=precision)

    seeds = [cfg.seed + k for k in range(cfg.repeats)]
    results: dict[str, list[dict]] = {}
    student_params = None
    for strat in strategies:
        results[strat] = []
        for seed in seeds:
            phase = f"student/{strat}/seed{seed}"
            sdir = run_dir / "students" / f"{strat}-seed{seed}"
            if state.done(phase):
                results[strat].append(state.get(phase))
                continue
            student = build_student(cfg, P, teachers, seed)
            strategy = build_strategy(strat, scfg, tspecs, sspec)
            student_params = count_params(student)
            ckpt = run_dir / "checkpoints" / f"{strat}-seed{seed}.ckpt"
            resume_state = load_checkpoint(ckpt) if ckpt.is_file() else None
            if resume_state is not None:
                log.info("resuming %s after epoch %d", phase, len(resume_state["logs"]))
            t0 = time.perf_counter()
            logs = train_student(student, strategy, stok, P.ds.labels, P.split.train, provider,
                                 epochs=cfg.student_epochs, batch_size=cfg.student_batch_size, lr=cfg.student_lr,
                                 head_lr=cfg.head_lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup, seed=seed,
                                 device=device, precision=precision,
                                 checkpoint=lambda st, c=ckpt: save_checkpoint(c, st), resume_state=resume_state)
            train_s = time.perf_counter() - t0
            dev_logits = predict_logits(student, stok, P.split.dev, device, cfg.eval_batch_size, precision, "eval dev")
            test_logits = predict_logits(student, stok, P.split.test, device, cfg.eval_batch_size, precision, "eval test")
            res = {"strategy": strat, "seed": seed, "description": strategy.describe(),
                   "dev": classification_metrics(dev_logits, y["dev"], C),
                   "test": classification_metrics(test_logits, y["test"], C),
                   "epochs": [vars(e) for e in logs], "train_seconds": train_s, "params": student_params,
                   "teacher_signal": provider.mode if (strategy.uses_teachers and provider) else "none"}
            if strat == cfg.strategy:
                with atomic_dir(sdir / "model") as tmp:
                    save_classifier(student, P.student_tok, tmp, {
                        "label_names": P.ds.label_names, "max_length": cfg.max_length, "role": "student",
                        "strategy": strat, "seed": seed, "source": P.student_source})
                res["file_mb"] = round(weights_size_mb(sdir / "model"), 2)
                res["model_dir"] = str((sdir / "model").relative_to(run_dir))
            atomic_write_json(sdir / "metrics.json", res)
            state.mark(phase, res)
            ckpt.unlink(missing_ok=True)
            log.info("%s seed %d: test acc %.2f macro-F1 %.2f (%.0f s)", strat, seed, res["test"]["accuracy"],
                     res["test"]["macro_f1"], train_s)
            results[strat].append(res)
    timer.times["students"] = sum(r["train_seconds"] for rs in results.values() for r in rs)

    # the run's student: the main strategy's seed with the best dev macro-F1
    best = max(results[cfg.strategy], key=lambda r: r["dev"]["macro_f1"])
    link_or_copy_tree(run_dir / best["model_dir"], run_dir / "student")
    student_params = best["params"]
    timer.times["total_this_invocation"] = time.perf_counter() - t_start
    state.mark("timer", timer.times)

    report = build_report(cfg, P, teacher_metrics, ens, ens_params, results, best, student_params, teacher_rec,
                          cache_info, timer.times, device, precision, store)
    atomic_write_json(run_dir / "report.json", report)
    from .report import render_markdown

    atomic_write_text(run_dir / "report.md", render_markdown(report))
    state.mark("report")
    log.info("run folder: %s (report.md)", run_dir)
    return run_dir


def build_report(cfg, P, teacher_metrics, ens, ens_params, results, best, student_params, teacher_rec, cache_info,
                 times, device, precision, store) -> dict:
    """Assemble ``report.json`` (all measurements; see :mod:`distill.report` for the markdown)."""
    import transformers

    mean_teacher = float(np.mean([m["params"] for m in teacher_metrics]))
    summary = {}
    for strat, rs in results.items():
        summary[strat] = {part: {m: _mean_std([r[part][m] for r in rs]) for m in ("accuracy", "macro_f1")}
                          for part in ("dev", "test")}
        ep = [e for r in rs for e in r["epochs"]]
        summary[strat]["epoch_seconds"] = _mean_std([e["seconds"] for e in ep])
        summary[strat]["samples_per_s"] = _mean_std([e["samples_per_s"] for e in ep])
        summary[strat]["description"] = rs[0]["description"]
        summary[strat]["teacher_signal"] = rs[0]["teacher_signal"]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "version": __version__,
        "config": cfg.to_dict(),
        "data": {"source": P.ds.source, "rows": len(P.ds), "label_names": P.ds.label_names,
                 "split": {"seed": cfg.seed, "sizes": P.split.sizes(), "fractions": P.split.fractions,
                           "train_cap": cfg.train_cap}},
        "teachers": teacher_metrics,
        "teacher_training": teacher_rec,
        "teacher_store": str(store),
        "ensemble": {**ens, "params": ens_params, "file_mb": round(sum(m["file_mb"] for m in teacher_metrics), 2)},
        "student": {"source": P.student_source, "layers": P.K, "params": student_params,
                    "file_mb": best.get("file_mb"), "strategy": cfg.strategy, "seed": best["seed"],
                    "dev": best["dev"], "test": best["test"],
                    "tokenizer_rule": ("teachers whose tokenizer equals the student's: token-level hidden MSE; "
                                       "others: MSE of masked-mean pooled states of the mapped layers")},
        "compression": {"ensemble_over_student": ens_params / student_params,
                        "mean_teacher_over_student": mean_teacher / student_params,
                        "student_share_of_ensemble": student_params / ens_params},
        "strategies": summary,
        "runs": results,
        "cache": cache_info,
        "times_s": times,
        "system": {"device": device, "precision": precision, "threads": torch.get_num_threads(), "cpu": cpu,
                   "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                   "torch": torch.__version__, "transformers": transformers.__version__,
                   "python": platform.python_version()},
    }


def load_run_data(run_dir: str | Path) -> tuple[TextDataset, dict[str, list[int]], RunConfig]:
    """Reload a finished run's dataset and split (for export parity, serving checks and benchmarks).

    Returns:
        ``(dataset, {"train"|"dev"|"test": row indices}, config)``; the rows are those recorded in
        ``split.json`` (matched by id), so the result does not depend on re-running the split.

    Raises:
        DistillError: missing ``config.json``/``split.json`` or ids that no longer exist in the data.
    """
    run_dir = Path(run_dir)
    for f in ("config.json", "split.json"):
        if not (run_dir / f).is_file():
            raise DistillError(f"{run_dir}: missing {f}; not a distill run folder (or the run did not start).")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    ds = load_dataset(cfg.data, cfg.data_format, cfg.text_cols, cfg.label_col, cfg.id_col)
    split = json.loads((run_dir / "split.json").read_text())
    pos = {i: k for k, i in enumerate(ds.ids)}
    parts = {}
    for part, ids in split["ids"].items():
        missing = [i for i in ids if i not in pos]
        if missing:
            raise DistillError(f"{run_dir}/split.json: id {missing[0]!r} is not in {ds.source}; the data changed.")
        parts[part] = [pos[i] for i in ids]
    return ds, parts, cfg
