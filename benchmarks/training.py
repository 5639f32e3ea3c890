"""Training-cost benchmark: the run's recorded wall times, plus a fresh, step-capped measurement of
distillation throughput (samples/s) with and without the teacher-output cache, the student-only
floor (``nokd``), and the TextBrewer ``MultiTeacherDistiller`` comparison.

Every measurement reuses the project code: :func:`distill.pipeline.prepare` and
:func:`~distill.students.build_student` (same student initialisation as the run),
:func:`distill.trainer.fit` with ``max_steps`` (the run's training loop, optimiser and
schedule) and :class:`distill.cache.TeacherProvider` in ``cache`` (teacher outputs read from the
run's teacher-output cache) or ``online`` mode (frozen teachers run at every step). All
measurements use the same seed, so the same student initialisation and the same batches.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import DistillError

log = logging.getLogger("distill.bench")


def recorded_costs(report: dict) -> dict:
    """Wall times (s) recorded by the run in ``report.json``: per phase, per teacher co-finetuning
    epoch and per student epoch of each strategy (mean over epochs and seeds), with samples/s."""
    tt = report.get("teacher_training") or {}
    strategies = {}
    for name, s in (report.get("strategies") or {}).items():
        strategies[name] = {"epoch_seconds": s["epoch_seconds"]["mean"],
                            "epoch_seconds_std": s["epoch_seconds"]["std"],
                            "samples_per_s": s["samples_per_s"]["mean"],
                            "epochs_measured": len(s["epoch_seconds"].get("values", [])),
                            "teacher_signal": s.get("teacher_signal")}
    return {"phases_s": report.get("times_s", {}),
            "teacher_epochs": tt.get("epochs", []), "teachers_reused_from_store": bool(tt.get("reused")),
            "strategies": strategies, "cache": report.get("cache"),
            "device": (report.get("system") or {}).get("device"),
            "threads": (report.get("system") or {}).get("threads")}


@dataclass
class TrainContext:
    """Everything a step-capped training measurement needs (built once by :func:`setup`)."""

    cfg: object
    P: object
    teachers: list
    toks: list
    stok: object
    tspecs: list
    sspec: object
    store: Path
    device: str
    precision: str
    run_needs_layers: bool
    setup_s: float


def setup(run_dir: Path, report: dict) -> TrainContext:
    """Load the run's config, data (with the run's recorded split), finetuned teachers and tokenisations.

    Raises:
        DistillError: the data or the teachers cannot be loaded.
    """
    from distill.config import RunConfig
    from distill.device import resolve_device, resolve_precision
    from distill.modeling import load_classifier
    from distill.pipeline import prepare, student_tokenization
    from distill.students import specs
    from distill.tokens import Tokenized

    t0 = time.perf_counter()
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    cfg.device = "auto"
    P = prepare(cfg)
    split = json.loads((run_dir / "split.json").read_text())
    pos = {i: k for k, i in enumerate(P.ds.ids)}
    for part in ("train", "dev", "test"):
        try:
            setattr(P.split, part, [pos[i] for i in split["ids"][part]])
        except KeyError as e:
            raise DistillError(f"{run_dir}/split.json: id {e.args[0]!r} is not in the data; the data changed.") from None
    device = resolve_device("auto")
    precision = resolve_precision(device, "auto" if cfg.precision == "auto" else cfg.precision)
    teachers = [load_classifier(run_dir / "teachers" / f"teacher_{i}", device)[0] for i in range(len(cfg.teachers))]
    for t in teachers:
        for p in t.parameters():
            p.requires_grad = False
    toks = [Tokenized(t, P.ds.texts, cfg.max_length) for t in P.teacher_toks]
    stok = student_tokenization(P, toks, cfg.max_length)
    tspecs, sspec = specs(cfg, P, [t["dev"]["macro_f1"] for t in report.get("teachers", [])] or None)
    run_needs_layers = P.needs_layers
    store = Path(report.get("teacher_store") or (run_dir / "teachers"))
    return TrainContext(cfg, P, teachers, toks, stok, tspecs, sspec, store, device, precision,
                        run_needs_layers, time.perf_counter() - t0)


def cached_outputs(ctx: TrainContext) -> tuple[list[dict], dict]:
    """The run's teacher-output cache (logits, pooled features and, when the run's strategies need
    them, mapped-layer states of the training split), via :func:`distill.teachers.teacher_outputs_phase`.

    The cache file in the run's teacher store is reused when present (``info["reused"]``);
    otherwise it is computed (one teacher pass over the training split; its time is ``load_s``).

    Returns:
        ``(per-teacher outputs, info)``; info has the cache mode, size (MB) and ``load_s`` (s).
    """
    from distill.teachers import teacher_outputs_phase

    ctx.store.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outs, info = teacher_outputs_phase(ctx.cfg, ctx.P, ctx.teachers, ctx.toks, ctx.store, ctx.run_needs_layers,
                                       ctx.device, ctx.precision)
    return outs, dict(info, load_s=time.perf_counter() - t0)


def cached_provider(ctx: TrainContext, outs: list[dict], needs_layers: bool):
    """A cache-mode :class:`~distill.cache.TeacherProvider` over ``outs`` (None if they lack what is needed)."""
    from distill.cache import TeacherProvider

    if any("logits" not in o for o in outs) or (needs_layers and not all(o.get("layers") for o in outs)):
        return None
    return TeacherProvider(ctx.P.split.train, cached=outs, token_level=ctx.P.token_level, needs_layers=needs_layers,
                           device=ctx.device)


def online_provider(ctx: TrainContext, needs_layers: bool):
    """An online-mode :class:`~distill.cache.TeacherProvider` (teachers run at every step)."""
    from distill.cache import TeacherProvider

    return TeacherProvider(ctx.P.split.train, teachers=ctx.teachers, toks=ctx.toks, layer_maps=ctx.P.layer_maps,
                           token_level=ctx.P.token_level, needs_layers=needs_layers, device=ctx.device,
                           precision=ctx.precision)


def evaluate(ctx: TrainContext, student) -> dict:
    """Test accuracy / macro-F1 (%) of a student on the run's test split (dynamic padding, run max length)."""
    from distill.metrics import classification_metrics, predict_logits

    rows = ctx.P.split.test
    logits = predict_logits(student, ctx.stok, rows, ctx.device, ctx.cfg.eval_batch_size, ctx.precision, "eval test")
    return classification_metrics(logits, [ctx.P.ds.labels[r] for r in rows], len(ctx.P.ds.label_names))


def fresh_student(ctx: TrainContext, seed: int):
    """The run's student initialisation for ``seed`` (a TextCNN gets the run's vocabulary: the ids of
    the training texts and of the transfer set)."""
    from distill.students import build_student

    return build_student(ctx.cfg, ctx.P, ctx.teachers, seed, ctx.stok)


def measure_ours(ctx: TrainContext, strategy: str, provider, steps: int, seed: int, score: bool = False) -> dict:
    """Train a fresh student (the run's initialisation) for ``steps`` optimisation steps with
    :func:`distill.students.train_student` (i.e. :func:`distill.trainer.fit`) and time it.

    Returns:
        ``samples_per_s`` (samples / wall seconds of the whole call, optimiser set-up included),
        ``loop_samples_per_s`` (the training loop's own figure), ``wall_s``, ``samples``, ``steps``,
        ``projected_epoch_s`` (training-split size / samples_per_s) and, with ``score``, ``test``.
    """
    from distill.strategies import build_strategy
    from distill.students import fit_settings, train_student

    cfg = ctx.cfg
    student = fresh_student(ctx, seed)
    strat = build_strategy(strategy, cfg.strategy_settings(strategy), ctx.tspecs, ctx.sspec)
    t0 = time.perf_counter()
    logs = train_student(student, strat, ctx.stok, ctx.P.ds.labels, ctx.P.split.train, provider,
                         fit_settings(cfg, seed, max_steps=steps), device=ctx.device, precision=ctx.precision).logs
    wall = time.perf_counter() - t0
    samples = int(round(sum(e.samples_per_s * e.seconds for e in logs)))
    loop_s = sum(e.seconds for e in logs)
    out = {"strategy": strategy, "teacher_signal": provider.mode if (strat.needs.teachers and provider) else "none",
           "steps": steps, "batch_size": cfg.student_batch_size, "samples": samples, "wall_s": wall,
           "samples_per_s": samples / wall, "loop_samples_per_s": samples / loop_s if loop_s else None,
           "projected_epoch_s": len(ctx.P.split.train) / (samples / wall), "final_loss": logs[-1].loss}
    if score:
        out["test"] = evaluate(ctx, student)
    log.info("train %s/%s: %d steps, %.1f samples/s", strategy, out["teacher_signal"], steps, out["samples_per_s"])
    return out


def run_training(run_dir: Path, report: dict, steps: int, textbrewer: bool, seed: int | None = None,
                 deadline: float | None = None) -> dict:
    """The training-cost section: recorded costs, fresh step-capped measurements, TextBrewer comparison.

    Measurements (all ``steps`` optimisation steps, the run's batch size, seed and student init),
    in this order: ``nokd`` (student-only floor), the run's main strategy (``mtbert`` by default,
    ``camkd`` for a TextCNN run) and ``avg`` with the teacher-output cache, ``avg`` online (teachers
    run at every step), TextBrewer's ``MultiTeacherDistiller`` (online; the only mode it offers with
    a step cap) and the main strategy online. Students trained with the main strategy (cache),
    ``avg`` (online) and by TextBrewer are scored on the test split.

    Args:
        deadline: ``time.perf_counter()`` value by which the section should end; the last
            measurement (main strategy online, samples/s only) gets fewer steps (at least 5) when
            the per-step time seen so far says it would not fit. None = no limit.

    Returns:
        ``{"recorded", "fresh": {name: result}, "ratios", "textbrewer": {...}, "setup_s", "device",
        "threads", ...}``; samples/s, seconds.

    Raises:
        DistillError: the run cannot be loaded.
    """
    out = {"recorded": recorded_costs(report), "fresh": {}, "steps": steps}
    ctx = setup(run_dir, report)
    seed = ctx.cfg.seed if seed is None else seed
    out.update({"setup_s": ctx.setup_s, "device": ctx.device, "precision": ctx.precision,
                "threads": torch.get_num_threads(), "seed": seed, "batch_size": ctx.cfg.student_batch_size,
                "max_length": ctx.cfg.max_length, "train_examples": len(ctx.P.split.train)})
    F = out["fresh"]
    from distill.strategies import build_strategy

    main = ctx.cfg.strategy
    if main in ("nokd", "avg"):  # avg is measured anyway: take the default method of this student
        main = "camkd" if ctx.cfg.textcnn else "mtbert"
    main_layers = build_strategy(main, ctx.cfg.strategy_settings(main), ctx.tspecs, ctx.sspec).needs.layers
    out["main_strategy"] = main
    F["nokd"] = measure_ours(ctx, "nokd", None, steps, seed)
    outs, info = cached_outputs(ctx)
    out["cache"] = info
    prov_main, prov_logits = cached_provider(ctx, outs, main_layers), cached_provider(ctx, outs, False)
    if prov_main is not None:
        F[f"{main}_cache"] = measure_ours(ctx, main, prov_main, steps, seed, score=True)
    else:
        out.setdefault("cache_skipped", []).append(
            f"{main} with cache: teacher-output cache mode is {info['mode']}"
            + ("" if info["mode"] != "cache" else " but it holds no hidden states (the run needed none)"))
    if prov_logits is not None:
        F["avg_cache"] = measure_ours(ctx, "avg", prov_logits, steps, seed)
    else:
        out.setdefault("cache_skipped", []).append(f"avg with cache: teacher-output cache mode is {info['mode']}")
    del outs, prov_main, prov_logits
    F["avg_online"] = measure_ours(ctx, "avg", online_provider(ctx, False), steps, seed, score=True)
    tb = {"skipped": True, "reason": "disabled with --no-textbrewer"}
    if textbrewer:
        from .textbrewer_cmp import run_textbrewer

        tb = run_textbrewer(ctx, steps, seed)
    mo_steps = steps
    if deadline is not None:
        per_step = F["avg_online"]["wall_s"] / max(F["avg_online"]["steps"], 1) * 1.15  # + hidden states
        fit = int((deadline - time.perf_counter()) / per_step)
        if fit < steps:
            mo_steps = max(5, fit)
            out["note"] = (f"{main} online ran {mo_steps} steps instead of {steps} to keep the benchmark "
                           "within its time budget (samples/s only)")
            log.warning(out["note"])
    F[f"{main}_online"] = measure_ours(ctx, main, online_provider(ctx, main_layers), mo_steps, seed,
                                       score=f"{main}_cache" not in F)
    base = F["nokd"]["samples_per_s"]
    out["ratios"] = {k: {"over_nokd": v["samples_per_s"] / base} for k, v in F.items()}
    if f"{main}_cache" in F:
        out["ratios"][f"cache_speedup_{main}"] = F[f"{main}_cache"]["samples_per_s"] / F[f"{main}_online"]["samples_per_s"]
    if "avg_cache" in F:
        out["ratios"]["cache_speedup_avg"] = F["avg_cache"]["samples_per_s"] / F["avg_online"]["samples_per_s"]
    from .textbrewer_cmp import compare

    out["textbrewer"] = compare(tb, F)
    return out
