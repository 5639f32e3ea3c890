"""``distill run``: the end-to-end job (data -> co-finetuned teachers -> distilled students -> report).

Phases (each recorded in ``state.json``; ``--resume`` skips finished ones and continues an
interrupted training phase from its last finished epoch):

1. ``prepare``: load and validate data, split, resolve teachers and student (all errors surface here,
   before any long work);
2. ``teachers``: co-finetune the teachers, or reuse them from the teacher store when a previous run
   asked for the same teachers, data, split and settings;
3. ``teacher_outputs``: one inference pass of the frozen teachers (dev/test logits for the metrics,
   and the teacher-output cache over the training split);
4. ``student/<strategy>/seed<k>``: one phase per strategy (main + baselines) and seed, seed-major;
5. ``report``: ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from . import cache as teacher_cache
from . import distributed as D
from .config import RunConfig
from .data import TextDataset, load_dataset
from .device import resolve_device, resolve_precision
from .errors import DistillError
from .guards import choose_student, select_teachers
from .hub import check_safetensors, is_encoder, resolve_model
from .modeling import layer_map
from .report import build_report, render_markdown
from .runio import (RunState, atomic_write_json, atomic_write_text, check_writable, link_or_copy_tree, sweep_partials)
from .split import stratified_split
from .strategies import build_strategy
from .students import quiz_rows, specs, student_phase
from .teachers import (get_teachers, given_head_dim, given_teacher_meta, teacher_fingerprint, teacher_outputs_phase,
                       teacher_report, teacher_store_root)
from .tokens import Tokenized, same_tokenization
from .transfer import TransferSet, build_transfer, masked_labels

log = logging.getLogger("distill")


def setup_logging(run_dir: Path | None = None, verbose: bool = False, rank: int = 0) -> None:
    """Concise console log; full log in ``run_dir/log.txt``. Ranks other than 0 of a launched job log
    errors only (their warnings repeat rank 0's), prefixed with their rank."""
    root = logging.getLogger("distill")
    root.setLevel(logging.ERROR if rank else logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    ch = logging.StreamHandler()
    ch.setFormatter(logging.Formatter(("%(asctime)s " + (f"[rank {rank}] " if rank else "")) + "%(message)s", "%H:%M:%S"))
    root.addHandler(ch)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    root.propagate = False
    import transformers

    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


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
    given: list  # per teacher: classifier.json of a finetuned classifier used as given, else None
    student_tok: object
    student_source: dict
    K: int
    token_level: list[bool]
    layer_maps: list[list[int]]
    head_dim: int
    needs_layers: bool
    teacher_selection: object  # guards.TeacherSelection, set after the teachers are evaluated
    student_note: str | None = None
    transfer: TransferSet
    train_labels: list[int]
    quiz: list[int]  # training rows held out as a teacher-updating strategy's quiz set ([] when none)


def prepare(cfg: RunConfig) -> Prepared:
    """Load data, split, resolve teachers/student and check compatibility (fast; before any training).

    Raises:
        DistillError: any problem with data, teachers, student or settings.
    """
    from transformers import AutoConfig, AutoTokenizer

    cfg.validate()
    P = Prepared()
    P.ds = load_dataset(cfg.data, cfg.data_format, cfg.text_cols, cfg.label_col, cfg.id_col, cfg.encoding)
    if len(P.ds.label_names) < 2:
        raise DistillError(f"{P.ds.source}: every row has the label {P.ds.label_names[0]!r} (column "
                           f"{cfg.label_col!r}); a classifier needs at least 2 classes. Check --label-col.")
    P.split = stratified_split(P.ds.labels, P.ds.label_names, cfg.seed, cfg.dev_frac, cfg.test_frac, cfg.train_cap)
    P.ds, P.transfer = build_transfer(P.ds, P.split, cfg.unlabeled, cfg.unlabeled_from_train, cfg.text_cols, cfg.seed,
                                       cfg.augment)
    P.train_labels = masked_labels(P.ds, P.transfer)
    P.quiz = quiz_rows(cfg, P.split, P.ds.labels)
    P.teacher_paths, P.teacher_cfgs, P.teacher_toks = [], [], []
    for name in cfg.teachers:
        p = resolve_model(name, "teacher")
        check_safetensors(p, "teacher", name)
        c = AutoConfig.from_pretrained(str(p), trust_remote_code=cfg.trust_remote_code)
        if not hasattr(c, "num_hidden_layers") or not hasattr(c, "hidden_size") or not is_encoder(c):
            raise DistillError(f"teacher {name!r}: {c.model_type} is not a Transformer encoder (BERT-like: bert, "
                               "roberta, mpnet, deberta, electra, ...); decoder-only and encoder-decoder models are "
                               "not supported as teachers. Pass an encoder with --teacher.")
        P.teacher_paths.append(p)
        P.teacher_cfgs.append(c)
        P.teacher_toks.append(AutoTokenizer.from_pretrained(str(p), trust_remote_code=cfg.trust_remote_code))
    P.given = [given_teacher_meta(p, n, P.ds.label_names) for p, n in zip(P.teacher_paths, cfg.teachers)]
    P.head_dim = given_head_dim(cfg, P)
    # student
    # the smallest teacher by (hidden size^2 * depth): the default source of the student and its tokenizer
    smallest = min(range(len(P.teacher_cfgs)),
                   key=lambda i: P.teacher_cfgs[i].hidden_size ** 2 * P.teacher_cfgs[i].num_hidden_layers)
    if cfg.textcnn:
        idx = cfg.student_from if cfg.student_from is not None else smallest
        settings = cfg.textcnn_settings()
        P.K, hidden = 0, settings.feature_size
        P.student_tok = P.teacher_toks[idx]
        P.student_source = {"kind": "textcnn", "tokenizer_from": cfg.teachers[idx], "teacher_index": idx,
                            "settings": settings.model_dump()}
    elif cfg.student is None:
        idx = cfg.student_from if cfg.student_from is not None else smallest
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
    # build every strategy once: checks that need the teachers and the student (e.g. aekd's C >= 1/N)
    # fail here, before any training; and what the teacher-output cache must hold
    tspecs, sspec = specs(cfg, P)
    built = {s: build_strategy(s, cfg.strategy_settings(s), tspecs, sspec) for s in cfg.strategies}
    layered = [s for s, b in built.items() if b.needs.layers]
    if layered and cfg.textcnn:
        raise DistillError(f"--student textcnn: strategy {layered[0]!r} needs the student's Transformer layers "
                           f"(hidden-state loss), which a TextCNN has none of. Use --strategy camkd (paper 003), avg, "
                           f"hinton, ebkd, aekd or rl, or turn the layer loss off (--set mtbert.w_hid=0).")
    P.needs_layers = bool(layered)
    if D.world().size > 1:
        solo = [s for s, b in built.items() if not b.distributed]
        if solo:
            raise DistillError(f"strategy {solo[0]!r} owns its training step (a second optimiser / policy update) and "
                               f"does not run under a launcher (world size {D.world().size}); run it as one process, "
                               "or leave it out of --strategy/--baselines.")
    return P


# -------------------------------------------------------------------------------------------- run
RESUMABLE_CHANGES = frozenset({"repeats", "baselines"})


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, verbose: bool = False,
        resume_changes: set[str] | frozenset[str] = frozenset()) -> Path:
    """Run the whole job; returns the run folder.

    With ``resume`` the saved config of the run folder wins, except for device, precision, threads
    and the fields named in ``resume_changes`` (a subset of :data:`RESUMABLE_CHANGES`): a larger
    ``repeats`` trains the extra seeds, a smaller one reports the first seeds only; new ``baselines``
    are trained beside the finished students (which are reused), dropped ones leave the report.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this; rank 0 alone checks and writes the
    run folder (:mod:`distill.distributed`). The caller ends the process group (``distributed.shutdown``).

    Raises:
        DistillError: bad input or settings (before any long work), or an existing run folder
            without ``--resume``/``--overwrite``.
    """
    W = D.init(resolve_device(cfg.device))
    run_dir, err, fresh = Path(cfg.out), None, False
    if W.main:
        try:
            cfg, fresh = open_run_folder(cfg, resume, overwrite, resume_changes)
        except DistillError as e:
            err = e
    if W.size > 1:  # every rank continues with rank 0's (possibly saved) config, or fails with its error
        msg, cfg_d = D.broadcast((str(err) if err else None, cfg.to_dict()))
        if msg and err is None:
            err = DistillError(msg)
        cfg = RunConfig.from_dict(cfg_d)
    if err is not None:
        raise err
    setup_logging(run_dir if W.main else None, verbose, W.rank)
    if W.main:
        for line in sweep_partials(run_dir):
            log.warning("resume: %s (left by a killed run)", line)
    D.barrier()  # the folder is ready before any rank reads it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = D.local_device(resolve_device(cfg.device))
    precision = resolve_precision(device, cfg.precision)
    state = RunState(run_dir)
    timer = Timer(state.get("timer") or {})
    t_start = time.perf_counter()

    try:
        with timer("prepare"):
            P = prepare(cfg)
    except DistillError:
        if fresh:  # nothing worth keeping: the corrected rerun must not find "a run" here
            setup_logging(None, verbose)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if W.main:
        write_run_metadata(cfg, P, run_dir)
    log.info("data: %s, %d labelled rows, %d classes; split %s (seed %d)", P.ds.source,
             P.transfer.labelled_rows(P.ds), len(P.ds.label_names),
             P.split.sizes(), cfg.seed)
    if P.transfer.rows:
        log.info("transfer set: %d unlabelled texts (%d from the training part%s)", len(P.transfer.rows),
                 P.transfer.from_train, "".join(f", {n} from {f}" for f, n in P.transfer.files.items())
                 + (f", {P.transfer.augmented} augmented copies" if P.transfer.augmented else ""))
    log.info("device %s, precision %s, %d threads%s", device, precision, torch.get_num_threads(),
             f"; {W.size} processes ({W.backend})" if W.size > 1 else "")
    return _train_and_report(cfg, P, run_dir, state, timer, t_start, device, precision)


def open_run_folder(cfg: RunConfig, resume: bool, overwrite: bool, resume_changes) -> tuple[RunConfig, bool]:
    """Check and create the run folder (rank 0): ``--resume`` takes the saved config (see :func:`run`),
    ``--overwrite`` empties the folder. Returns ``(config to run, whether the folder was new)``.

    Raises:
        DistillError: the folder is not writable, or holds a run and neither flag was given.
    """
    run_dir = Path(cfg.out)
    check_writable(run_dir)
    saved = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume and saved.is_file():
            raw = json.loads(saved.read_text())
            old = RunConfig.from_dict(raw)
            taken = {"device", "precision", "threads"} | (set(resume_changes) & RESUMABLE_CHANGES)
            was, now = old.to_dict(), cfg.to_dict()
            # the defaults pinned for an older config_version are not a change the user made
            given = RunConfig.from_dict(raw, pin_old_defaults=False).settings
            diff = sorted(k for k, v in now.items()
                          if was[k] != v and k not in taken and not (k == "settings" and v == given))
            if diff:
                log.warning("--resume: using the saved config of %s (ignoring changed options %s)", run_dir, diff)
            for k in taken:
                setattr(old, k, getattr(cfg, k))
            cfg = old
        elif overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise DistillError(f"output folder {run_dir} already holds a run. Pass --resume to continue it, "
                               "--overwrite to replace it, or choose another --out.")
    fresh = not run_dir.exists() or not any(run_dir.iterdir())
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, fresh


def write_run_metadata(cfg: RunConfig, P: Prepared, run_dir: Path) -> None:
    """``config.json``, ``split.json`` (sizes, class counts, ids of every part, transfer and quiz sets)
    and ``labels.json`` (rank 0)."""
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    atomic_write_json(run_dir / "split.json", {
        "seed": cfg.seed, "fractions": P.split.fractions, "train_cap": cfg.train_cap, "sizes": P.split.sizes(),
        "source": P.ds.source, "label_names": P.ds.label_names,
        "class_counts": {part: P.ds.subset(getattr(P.split, part)).class_counts() for part in ("train", "dev", "test")},
        "ids": {part: [P.ds.ids[i] for i in getattr(P.split, part)] for part in ("train", "dev", "test")},
        "transfer": dict(P.transfer.describe(), ids=[P.ds.ids[i] for i in P.transfer.rows]),
        **({"quiz": {"size": len(P.quiz), "ids": [P.ds.ids[i] for i in P.quiz]}} if P.quiz else {})})
    atomic_write_json(run_dir / "labels.json", {"label_names": P.ds.label_names})


def _train_and_report(cfg: RunConfig, P: Prepared, run_dir: Path, state: RunState, timer: Timer, t_start: float,
                      device: str, precision: str) -> Path:
    """Phases 2-5 of :func:`run` (teachers, teacher outputs, students, report)."""
    W = D.world()
    with timer("tokenize"):
        toks = [Tokenized(t, P.ds.texts, cfg.max_length) for t in P.teacher_toks]
        stok = student_tokenization(P, toks, cfg.max_length)

    store = teacher_store_root(cfg.teacher_store, run_dir)
    log.info("teacher store: %s", store)
    for line in sweep_partials(store) if W.main else []:
        log.warning("teacher store: %s (left by a killed run)", line)
    store = store / teacher_fingerprint(cfg, P)  # created by its first file (no empty entry after a kill)
    teachers, teacher_rec = get_teachers(cfg, P, toks, store, device, precision)
    if not teacher_rec.get("reused"):
        timer.times["teachers_finetune"] = teacher_rec["seconds"]
    state.mark("teachers", str(store))
    for i in range(len(teachers)) if W.main else []:
        link_or_copy_tree(store / f"teacher_{i}", run_dir / "teachers" / f"teacher_{i}")
    D.barrier()  # the run folder's teachers exist before any rank reports their size

    t0 = time.perf_counter()
    outs, cache_info = teacher_outputs_phase(cfg, P, teachers, toks, store, P.needs_layers, device, precision)
    timer.times["teacher_outputs"] = timer.times.get("teacher_outputs", 0.0) + time.perf_counter() - t0

    teacher_metrics, ens, ens_params = teacher_report(cfg, P, teachers, outs, run_dir)
    tspecs, sspec = specs(cfg, P, [m["dev"]["macro_f1"] for m in teacher_metrics])
    P.teacher_selection = sel = select_teachers(teacher_metrics, cfg.weak_teacher_margin)
    for note in sel.notes:
        log.warning(note)
    tspecs = [tspecs[i] for i in sel.active]  # the students learn from the active teachers only
    cache_rows = P.split.train + P.transfer.rows
    token_level = [P.token_level[i] for i in sel.active]
    if cache_info["mode"] == "cache":
        provider = teacher_cache.TeacherProvider(cache_rows, cached=[outs[i] for i in sel.active],
                                                 token_level=token_level, needs_layers=P.needs_layers, device=device)
    else:
        provider = teacher_cache.TeacherProvider(cache_rows, teachers=[teachers[i] for i in sel.active],
                                                 toks=[toks[i] for i in sel.active],
                                                 layer_maps=[P.layer_maps[i] for i in sel.active],
                                                 token_level=token_level, needs_layers=P.needs_layers, device=device,
                                                 precision=precision)

    # seed-major order: a run stopped part-way has every strategy at its first seeds, not some
    # strategies at all seeds and the rest at none (each student depends only on its own seed)
    results: dict[str, list[dict]] = {strat: [] for strat in cfg.strategies}
    for seed in [cfg.seed + k for k in range(cfg.repeats)]:
        for strat in cfg.strategies:
            results[strat].append(student_phase(cfg, P, strat, seed, teachers, toks, tspecs, sspec, stok, provider,
                                                state, run_dir, device, precision))
    timer.times["students"] = sum(r["train_seconds"] for rs in results.values() for r in rs)
    if not W.main:  # rank 0 chooses the student and writes the report
        D.barrier()
        return run_dir

    # the run's student: the best dev seed of the main strategy, or of nokd when KD did not pay on dev
    chosen, P.student_note = choose_student({k: [r["dev"]["macro_f1"] for r in v] for k, v in results.items()},
                                            cfg.strategy, cfg.select_student)
    if any("model_dir" not in r for r in results[chosen]):  # nokd students of older runs have no saved model
        chosen, P.student_note = cfg.strategy, None
    if P.student_note:
        log.warning(P.student_note)
    best = max(results[chosen], key=lambda r: r["dev"]["macro_f1"])
    link_or_copy_tree(run_dir / best["model_dir"], run_dir / "student")
    timer.times["total_this_invocation"] = time.perf_counter() - t_start
    state.mark("timer", timer.times)

    report = build_report(cfg, P, teacher_metrics, ens, ens_params, results, best, teacher_rec, cache_info,
                          timer.times, device, precision, store, previous=run_dir / "report.json")
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    state.mark("report")
    log.info("run folder: %s (report.md)", run_dir)
    D.barrier()
    return run_dir


def student_tokenization(P: Prepared, toks: list[Tokenized], max_length: int) -> Tokenized:
    """The student's tokenisation (shared with the teacher whose tokenizer it uses)."""
    return next((toks[i] for i, t in enumerate(P.teacher_toks) if t is P.student_tok), None) \
        or Tokenized(P.student_tok, P.ds.texts, max_length)
