"""Shared helpers of the benchmarks: run-folder checks, timing statistics, machine description.

Units used throughout the benchmark results: latency in milliseconds (ms), sizes in MB
(10^6 bytes, from the files on disk), throughput in texts/s (inference), samples/s (training)
and requests/s (serving); accuracy and macro-F1 in percent.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from distill.device import cpu_model
from distill.errors import DistillError

#: Files a finished run folder must hold for the benchmarks.
REQUIRED_FILES = ("config.json", "split.json", "report.json", "labels.json")


def check_run_dir(run_dir: str | Path) -> dict:
    """Check that ``run_dir`` is a finished ``distill run`` folder and return its ``report.json``.

    Returns:
        The parsed ``report.json`` (dict).

    Raises:
        DistillError: the folder, one of :data:`REQUIRED_FILES`, ``student/`` or a
            ``teachers/teacher_i`` folder is missing; the message says how to fix it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"{run_dir}: no such run folder. Train one first: `distill run --out {run_dir}`.")
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise DistillError(f"{run_dir}: missing {', '.join(missing)}; the run is not finished. "
                           f"Finish it with `distill run --out {run_dir} --resume` (or train it first).")
    report = json.loads((run_dir / "report.json").read_text())
    need = [run_dir / "student" / "model.safetensors"]
    need += [run_dir / "teachers" / f"teacher_{i}" / "model.safetensors" for i in range(len(report["teachers"]))]
    absent = [str(p.parent.relative_to(run_dir)) for p in need if not p.is_file()]
    if absent:
        raise DistillError(f"{run_dir}: incomplete run folder (missing {', '.join(absent)}). "
                           f"Rerun `distill run --out {run_dir} --resume` to finish it.")
    return report


def percentiles_ms(times_s: list[float]) -> dict:
    """p50/p95/p99/mean/min latency in ms of a list of run times in seconds (``n`` = number of runs)."""
    a = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "n": int(a.size)}


def timed_runs(fn: Callable[[int], None], min_reps: int, max_reps: int, target_s: float,
               warmup: int, warmup_budget_s: float = 3.0) -> tuple[list[float], int]:
    """Warm up, then time an adaptive number of runs of ``fn(k)``.

    Warm-up: at least one untimed run, at most ``warmup`` runs, stopping early once the warm-up
    runs took ``warmup_budget_s`` seconds in total (slow models get 1-2 warm-up runs). The number
    of timed runs is ``clamp(ceil(target_s / t_warm), min_reps, max_reps)`` where ``t_warm`` is
    the last warm-up run's time (s), so cheap variants get more runs and slow ones ``min_reps``.

    Args:
        fn: called with the run index (``k >= 0`` for timed runs, negative for warm-up runs).

    Returns:
        ``(seconds of each timed run, number of warm-up runs)``.
    """
    t_warm, spent, n_warm = 0.0, 0.0, 0
    while n_warm < max(1, warmup):
        t0 = time.perf_counter()
        fn(-1 - n_warm)
        t_warm = time.perf_counter() - t0
        spent += t_warm
        n_warm += 1
        if spent >= warmup_budget_s:
            break
    reps = max(min_reps, min(max_reps, math.ceil(target_s / max(t_warm, 1e-6))))
    out = []
    for k in range(reps):
        t0 = time.perf_counter()
        fn(k)
        out.append(time.perf_counter() - t0)
    return out, n_warm


def file_mb(path: str | Path) -> float:
    """Size of a file (plus an ONNX external-data file ``<name>.data`` next to it) in MB (10^6 bytes)."""
    p = Path(path)
    size = p.stat().st_size
    ext = p.with_name(p.name + ".data")
    if ext.is_file():
        size += ext.stat().st_size
    return size / 1e6


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def machine_info() -> dict:
    """Machine and software description: CPU model, logical cores, CPUs usable by this process,
    PyTorch threads, GPU (if any), load average, and versions of the packages the benchmark uses."""
    import torch

    from serve.settings import usable_cores

    usable = usable_cores()
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)}
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(), "gpu": gpu, "os": platform.platform(),
        "load_average_1_5_15": load,
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     **{m: _version(m) for m in ("transformers", "onnxruntime", "onnx", "bentoml", "numpy",
                                                 "scikit-learn", "textbrewer", "distill-news")}},
    }


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (tmp file + rename)."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable))
    tmp.replace(path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
