"""``distill bench RUN_DIR``: inference, serving, training-cost and TextBrewer benchmarks of one run.

Writes ``RUN_DIR/bench/results.json`` (every measurement), ``RUN_DIR/bench/REPORT.md`` and PNG plots.
Units: latency ms, size MB (10^6 bytes of the files), throughput texts/s (inference), samples/s
(training), requests/s (serving), accuracy / macro-F1 in percent.

Sections (each one that cannot run is recorded as skipped, with the reason):

1. inference (:mod:`benchmarks.inference`): teachers, ensemble, student, ONNX fp32/INT8 (+ CUDA);
2. serving (:mod:`benchmarks.serving`): the BentoML service at 1, 4 and 16 concurrent clients;
3. training (:mod:`benchmarks.training`): recorded wall times, step-capped samples/s with/without
   the teacher-output cache, the ``nokd`` floor, and TextBrewer's MultiTeacherDistiller.

Budget on the default BBC run on a 2-core CPU: about 10-15 minutes (inference ~4-5, serving ~1,
training + TextBrewer ~5-6); ``--quick`` is a smoke test (fewer runs, batch sizes 1 and 8, 10 steps).
"""

from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .common import check_run_dir, machine_info, write_json

log = logging.getLogger("distill.bench")


def _setup_logging() -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    for noisy in ("transformers", "huggingface_hub", "Distillation"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:  # "Some weights of the model checkpoint were not used" when the student is cut from a teacher
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _section(name: str, fn, results: dict, times: dict):
    """Run one section; an unexpected error is recorded (with the reason) and the others still run."""
    from distill.errors import DistillError

    t0 = time.perf_counter()
    log.info("section %s ...", name)
    try:
        results[name] = fn()
    except DistillError:
        raise
    except Exception as e:
        log.error("section %s failed: %s\n%s", name, e, traceback.format_exc())
        results[name] = {"skipped": True, "reason": f"error: {type(e).__name__}: {e}"}
    times[name] = time.perf_counter() - t0
    gc.collect()


def main(run_dir: str | Path, quick: bool = False, textbrewer: bool = True, serving: bool = True,
         training: bool = True, out: str | Path | None = None, train_steps: int | None = None,
         allow_export: bool = True, budget_s: float | None = None, extra_students: tuple = (),
         reference: tuple[str, ...] = (), setfit_steps: int = 100) -> dict:
    """Benchmark the finished run ``run_dir`` and write ``results.json``, ``REPORT.md`` and PNG plots.

    Args:
        quick: smoke-test settings (>= 5 timed runs, batch sizes 1 and 8, 10 training steps, 2 s
            per serving level) instead of the full ones (>= 20 runs, batches 1/8/32, 30 steps, 8 s).
        textbrewer: include the TextBrewer comparison (skipped with a reason when not installed).
        serving: include the BentoML serving section.
        training: include the fresh training measurements (the recorded costs are always reported).
        out: output folder (default ``RUN_DIR/bench``).
        train_steps: optimisation steps of each training measurement (default 30, quick 10).
        allow_export: export the student (``export.onnx_export.export_run``) when ``RUN_DIR/export``
            is missing.
        extra_students: other run folders (same test split) whose students are measured beside this one's.
        reference: reference models (:mod:`benchmarks.reference_variants`) trained on the run's split and
            measured in the inference loop; ``()`` = none.
        setfit_steps: SetFit's contrastive steps when ``reference`` has ``setfit``.
        budget_s: wall-clock budget of the whole command in seconds (default 840 s in full mode,
            none in quick mode); the last training measurement (the main strategy online) is shortened
            when needed to stay within it. The other measurements keep their minimum run counts.

    Returns:
        The results dict written to ``results.json``.

    Raises:
        DistillError: ``run_dir`` is missing or not a finished run (the message says how to fix it).
    """
    from .inference import Settings, run_inference
    from .student_variants import find_export
    from .plots import make_plots
    from .report import render
    from .serving import run_serving, titles_from_texts
    from .training import recorded_costs, run_training

    _setup_logging()
    run_dir = Path(run_dir)
    report = check_run_dir(run_dir)
    out_dir = Path(out) if out else run_dir / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    steps = train_steps or (10 if quick else 30)
    if budget_s is None and not quick:
        budget_s = 840.0
    deadline = t_start + budget_s - 20.0 if budget_s else None
    st = Settings.for_mode(quick)
    results: dict = {"run_dir": str(run_dir.resolve()), "quick": quick, "budget_s": budget_s,
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": machine_info(),
                     "units": {"latency": "ms", "size": "MB (10^6 bytes, files on disk)",
                               "inference_throughput": "texts/s", "training_throughput": "samples/s",
                               "serving_throughput": "requests/s", "accuracy": "%", "macro_f1": "%"}}
    times: dict[str, float] = {}
    extra = None
    if reference:
        from .reference_variants import reference_specs

        extra = reference_specs(run_dir, out_dir / "reference", tuple(reference), setfit_steps)
    _section("inference", lambda: run_inference(run_dir, report, st, allow_export, tuple(extra_students), extra),
             results, times)

    if serving:
        def _serve():
            from distill.runfolder import load_run_data

            ds, parts, _ = load_run_data(run_dir)
            exp, _, note = find_export(run_dir, allow_export=False)
            if exp is None:
                return {"skipped": True, "reason": note}
            titles = titles_from_texts([ds.texts[i] for i in parts["test"]])
            return run_serving(run_dir, exp, titles, clients=(1, 4, 16), duration_s=2.0 if quick else 8.0)

        _section("serving", _serve, results, times)
    else:
        results["serving"] = {"skipped": True, "reason": "disabled (serving=False)"}

    if training:
        _section("training", lambda: run_training(run_dir, report, steps, textbrewer, deadline=deadline), results, times)
    else:
        results["training"] = {"recorded": recorded_costs(report), "skipped_fresh": "disabled (training=False)"}

    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    results["section_s"] = times
    results["total_s"] = time.perf_counter() - t_start
    plots = make_plots(results, out_dir)
    results["plots"] = plots
    write_json(out_dir / "results.json", results)
    (out_dir / "REPORT.md").write_text(render(results, plots))
    log.info("wrote %s (%.0f s)", out_dir / "REPORT.md", results["total_s"])
    return results
