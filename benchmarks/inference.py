"""Inference benchmark: latency (p50/p95/p99, ms), throughput (texts/s), file size (MB) and test
accuracy / macro-F1 of every model variant of a run, measured in one process.

Variants: each teacher and the teacher ensemble (PyTorch fp32), the student (PyTorch fp32), the
student exported to ONNX fp32 and ONNX INT8 (ONNX Runtime, CPU provider); with a GPU also the
PyTorch models on CUDA and ONNX fp32/fp16 on the CUDA execution provider.

Inputs are real test texts, tokenised beforehand (tokenisation is not timed) and padded/truncated
to exactly ``seq_len`` (128) tokens; batch ``k`` holds test texts ``k*B .. k*B+B-1`` (cycling).
Accuracy and macro-F1 come from the same fixed-length passes over the whole test split at the
largest batch size (the timed passes at that size are reused; the rest of the split is run
untimed). Teachers are timed inside the ensemble's runs: one ensemble run = teacher 0 forward,
teacher 1 forward, ..., mean of the softmax probabilities; each teacher's latency is its own
forward inside that run, the ensemble's latency the whole run (so the teachers are not run twice).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.errors import DistillError
from serve.runtime import ort_session

from .common import file_mb, percentiles_ms, timed_runs

log = logging.getLogger("distill.bench")


@dataclass
class Settings:
    """Repetition settings of the latency measurement.

    Attributes:
        batch_sizes: batch sizes to time (texts per forward call).
        seq_len: tokens per text (padding/truncation to exactly this length).
        min_reps / max_reps: bounds on the number of timed runs per (variant, batch size).
        target_s: wanted timing seconds per (variant, batch size); the run count is adapted to it.
        warmup: most warm-up runs (fewer for slow models, see :func:`benchmarks.common.timed_runs`).
    """

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_len: int = 128
    min_reps: int = 20
    max_reps: int = 200
    target_s: float = 5.0
    warmup: int = 5
    warmup_budget_s: float = 3.0

    @classmethod
    def for_mode(cls, quick: bool) -> "Settings":
        """Full settings (>= 20 timed runs, batches 1/8/32) or quick ones (>= 5 runs, batches 1/8)."""
        if quick:
            return cls(batch_sizes=(1, 8), min_reps=5, max_reps=30, target_s=0.3, warmup=2, warmup_budget_s=0.5)
        return cls()


@dataclass
class Stage:
    """One model forward: ``fn(rows) -> logits`` (numpy float32, (len(rows), C))."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]


@dataclass
class VariantSpec:
    """A variant to measure. ``combine`` maps the stages' logits to class scores (default: the one
    stage's logits); ``record_stages`` also reports each stage as its own variant (the teachers)."""

    name: str
    stages: list[Stage]
    meta: dict
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = None
    stage_meta: dict = field(default_factory=dict)


def encode(tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask (int64, (n, seq_len)), every text padded/truncated to ``seq_len``
    (the tokenize-and-pad helpers of :mod:`serve.runtime`)."""
    from serve.runtime import pad_ids, token_ids

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return pad_ids(token_ids(tokenizer, texts, seq_len), pad, length=seq_len)


def batch_rows(k: int, B: int, n: int) -> np.ndarray:
    """Test-set positions of batch ``k`` at batch size ``B`` (cycling over ``n`` texts; warm-up k < 0 -> batch 0)."""
    k = max(k, 0)
    return (np.arange(B) + k * B) % n


def _metrics(scores: np.ndarray, labels: list[int], C: int) -> dict:
    from distill.metrics import classification_metrics

    return classification_metrics(scores, labels, C)


def _ensemble_combine(outs: list[np.ndarray]) -> np.ndarray:
    from distill.metrics import softmax_np

    return np.mean([softmax_np(o) for o in outs], 0)


def measure(spec: VariantSpec, n: int, labels: list[int], C: int, st: Settings) -> list[dict]:
    """Time ``spec`` at every batch size and score it on the test split.

    Returns:
        One result dict per reported variant (the spec itself, then its stages when it has
        ``stage_meta``), each with ``latency`` per batch size (ms percentiles, texts/s) and ``test``.
    """
    combine = spec.combine or (lambda outs: outs[0])
    acc_B = max(st.batch_sizes)
    names = [spec.name] + [s.name for s in spec.stages if s.name in spec.stage_meta]
    lat: dict[str, dict] = {nm: {} for nm in names}
    nb = math.ceil(n / acc_B)
    store: dict[str, list] = {nm: [None] * nb for nm in names}
    for B in st.batch_sizes:
        stage_times: dict[str, list[float]] = {s.name: [] for s in spec.stages}

        def run(k: int, B=B, stage_times=stage_times, timed=True) -> None:
            rows = batch_rows(k, B, n)
            outs = []
            for s in spec.stages:
                t0 = time.perf_counter()
                outs.append(s.fn(rows))
                if timed and k >= 0:
                    stage_times[s.name].append(time.perf_counter() - t0)
            scores = combine(outs)
            if B == acc_B and 0 <= k < nb:
                store[spec.name][k] = scores
                for s, o in zip(spec.stages, outs):
                    if s.name in store:
                        store[s.name][k] = o

        times, n_warm = timed_runs(run, st.min_reps, st.max_reps, st.target_s, st.warmup, st.warmup_budget_s)
        for nm in names:
            t = times if nm == spec.name else stage_times[nm]
            p = percentiles_ms(t)
            p.update({"batch_size": B, "seq_len": st.seq_len, "warmup_runs": n_warm,
                      "throughput_texts_per_s": B / (p["p50_ms"] / 1000.0)})
            lat[nm][str(B)] = p
        log.info("%s batch %d: p50 %.2f ms (%d runs)", spec.name, B, lat[spec.name][str(B)]["p50_ms"], len(times))
        if B == acc_B:  # complete the test split untimed
            for k in range(nb):
                if store[spec.name][k] is None:
                    run(k, timed=False)
    out = []
    for nm in names:
        rows_scores = np.concatenate(store[nm], 0)[:n]
        meta = spec.meta if nm == spec.name else spec.stage_meta[nm]
        out.append({"name": nm, **meta, "latency": lat[nm], "test": _metrics(rows_scores, labels, C)})
    return out


# ------------------------------------------------------------------------------------ variants
def torch_stage(name: str, model, ids: np.ndarray, mask: np.ndarray, device: str) -> Stage:
    """A PyTorch classifier forward on pre-tokenised rows (host->device copy included on CUDA)."""
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)

    @torch.inference_mode()
    def fn(rows: np.ndarray) -> np.ndarray:
        r = torch.from_numpy(rows)
        return model(ids_t[r].to(device), mask_t[r].to(device)).logits.float().cpu().numpy()

    return Stage(name, fn)


def ort_stage(name: str, sess, ids: np.ndarray, mask: np.ndarray) -> Stage:
    """An ONNX Runtime forward (inputs ``input_ids``/``attention_mask`` int64, output ``logits``)."""
    from serve.runtime import ort_feeds

    feeds = [i.name for i in sess.get_inputs()]
    out_name = next((o.name for o in sess.get_outputs() if o.name == "logits"), sess.get_outputs()[0].name)

    def fn(rows: np.ndarray) -> np.ndarray:
        return sess.run([out_name], ort_feeds(feeds, ids[rows], mask[rows]))[0].astype(np.float32)

    return Stage(name, fn)


def run_inference(run_dir: Path, report: dict, st: Settings, allow_export: bool = True,
                  extra_students: tuple = (), extra_specs=None) -> dict:
    """Measure every variant of ``run_dir`` (see the module docstring).

    Args:
        extra_students: other run folders with the same test split whose students are measured
            beside this run's (e.g. the transformer student beside a TextCNN run).
        extra_specs: ``fn(test texts, test labels) -> [VariantSpec]`` of more variants measured in the
            same loop (the reference models, :mod:`benchmarks.reference_variants`).

    Returns:
        ``{"settings", "threads", "variants": [...], "ratios": {...}, "skipped": [...], "export": {...}}``;
        latencies in ms, throughput in texts/s, sizes in MB (10^6 bytes of the files on disk).

    Raises:
        DistillError: the run's data, split or models cannot be loaded.
    """
    from distill.modeling import count_params, load_classifier, weights_size_mb
    from distill.runfolder import load_run_data

    ds, parts, cfg = load_run_data(run_dir)
    test = parts["test"]
    texts = [ds.texts[i] for i in test]
    labels = [ds.labels[i] for i in test]
    C, n = len(ds.label_names), len(test)
    threads = torch.get_num_threads()
    gpu = torch.cuda.is_available()
    res: dict = {"settings": {**vars(st), "batch_sizes": list(st.batch_sizes)}, "test_texts": n,
                 "run_max_length": cfg.max_length, "threads": {"torch_intra_op": threads, "ort_intra_op": threads,
                                                                "ort_inter_op": 1},
                 "variants": [], "skipped": []}
    if cfg.max_length != st.seq_len:
        res["note"] = (f"the run was trained with max_length {cfg.max_length}; the benchmark feeds {st.seq_len} "
                       "tokens, so accuracies can differ slightly from report.json")

    # ---- student (PyTorch fp32) and its ONNX exports
    from .student_variants import check_same_test_split, student_specs, tokenizer_check

    student, s_ids, s_mask, s_mb, s_params, exp, manifest, specs = student_specs(
        run_dir, report, texts, st, res, allow_export)
    if exp is not None:
        res["export"]["tokenizer_check"] = tokenizer_check(exp, texts, s_ids, st.seq_len)
    for extra in extra_students:
        specs += student_specs(Path(extra), check_same_test_split(run_dir, Path(extra)), texts, st, res, False,
                               tag=Path(extra).name)[-1]

    # ---- teachers and the ensemble (PyTorch fp32)
    teachers, tinputs, tstages, tmeta, t_mb = [], [], [], {}, 0.0
    for i, tr in enumerate(report["teachers"]):
        folder = run_dir / "teachers" / f"teacher_{i}"
        model, tok, _ = load_classifier(folder)
        ids, mask = encode(tok, texts, st.seq_len)
        teachers.append(model)
        tinputs.append((ids, mask))
        mb = weights_size_mb(folder)
        t_mb += mb
        tstages.append(torch_stage(f"teacher_{i}", model, ids, mask, "cpu"))
        tmeta[f"teacher_{i}"] = {"label": f"teacher {i} {Path(tr['name']).name} PyTorch fp32", "framework": "pytorch",
                                 "precision": "fp32", "device": "cpu", "size_mb": mb, "params": count_params(model),
                                 "size_files": f"teachers/teacher_{i}/*.safetensors", "timed_inside": "ensemble",
                                 "run_report_test": tr.get("test")}
    specs.append(VariantSpec("ensemble", tstages, {
        "label": "teacher ensemble PyTorch fp32", "framework": "pytorch", "precision": "fp32", "device": "cpu",
        "size_mb": t_mb, "params": report["ensemble"]["params"], "size_files": "teachers/teacher_*/*.safetensors",
        "combine": "mean of the teachers' softmax probabilities",
        "run_report_test": (report.get("ensemble") or {}).get("test")}, _ensemble_combine, tmeta))

    # ---- GPU variants
    if gpu:
        try:
            specs += _gpu_specs(student, teachers, tinputs, report, s_ids, s_mask, exp, manifest, res, s_mb, t_mb,
                                s_params)
        except Exception as e:  # pragma: no cover - depends on the GPU stack
            res["skipped"].append({"variant": "cuda", "reason": f"{type(e).__name__}: {e}"})

    if extra_specs is not None:
        specs += extra_specs(texts, labels)
    for spec in specs:
        try:
            res["variants"].extend(measure(spec, n, labels, C, st))
        except Exception as e:  # a variant that fails is recorded, the others still run
            if isinstance(e, DistillError):
                raise
            log.warning("variant %s failed: %s", spec.name, e)
            res["skipped"].append({"variant": spec.name, "reason": f"{type(e).__name__}: {e}"})
    for v in res["variants"]:
        v["threads"] = threads if v["device"] == "cpu" else None
    res["ratios"] = ratios(res["variants"])
    return res


def _gpu_specs(student, teachers, tinputs, report, s_ids, s_mask, exp, manifest, res, s_mb, t_mb,
               s_params) -> list[VariantSpec]:
    """CUDA variants: PyTorch student/ensemble fp32 on CUDA; ONNX fp32/fp16 on the CUDA provider."""
    import copy

    import onnxruntime as ort

    from .student_variants import onnx_model_path

    specs = []
    dev = "cuda"
    s_gpu = copy.deepcopy(student).to(dev).eval()
    specs.append(VariantSpec("student_cuda", [torch_stage("student_cuda", s_gpu, s_ids, s_mask, dev)],
                             {"label": "student PyTorch fp32 CUDA", "framework": "pytorch", "precision": "fp32",
                              "device": dev, "size_mb": s_mb, "params": s_params}))
    gstages = [torch_stage(f"teacher_{i}_cuda", copy.deepcopy(t).to(dev).eval(), ids, mask, dev)
               for i, (t, (ids, mask)) in enumerate(zip(teachers, tinputs))]
    specs.append(VariantSpec("ensemble_cuda", gstages, {
        "label": "teacher ensemble PyTorch fp32 CUDA", "framework": "pytorch", "precision": "fp32", "device": dev,
        "size_mb": t_mb, "params": report["ensemble"]["params"]}, _ensemble_combine))
    if exp is None:
        return specs
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        res["skipped"].append({"variant": "onnx_cuda", "reason": "onnxruntime has no CUDAExecutionProvider "
                                                                 "(install onnxruntime-gpu)"})
        return specs
    for kind in ("fp32", "fp16"):
        p = onnx_model_path(exp, manifest, kind)
        if p is None:
            res["skipped"].append({"variant": f"onnx_{kind}_cuda", "reason": f"no {kind} model in the export"
                                   + (" (run `distill export --fp16`)" if kind == "fp16" else "")})
            continue
        sess = ort_session(p, torch.get_num_threads(), ["CUDAExecutionProvider"])
        specs.append(VariantSpec(f"onnx_{kind}_cuda", [ort_stage(f"onnx_{kind}_cuda", sess, s_ids, s_mask)], {
            "label": f"student ONNX {kind} CUDA", "framework": "onnxruntime", "precision": kind, "device": dev,
            "provider": "CUDAExecutionProvider", "size_mb": file_mb(p), "params": s_params}))
    return specs


def ratios(variants: list[dict]) -> dict:
    """Per variant, ratios against the CPU ensemble and the CPU fp32 student measured in the same run.

    ``speedup_p50[B]`` = reference p50 latency / variant p50 latency at batch B (also the
    throughput ratio); ``size_x_smaller`` = reference MB / variant MB; ``*_delta_pp`` = variant
    minus reference, in percentage points.
    """
    by = {v["name"]: v for v in variants}
    out = {}
    for v in variants:
        r = {}
        for ref_name, key in (("ensemble", "vs_ensemble"), ("student", "vs_student_fp32")):
            ref = by.get(ref_name)
            if ref is None:
                continue
            r[key] = {
                "speedup_p50": {B: ref["latency"][B]["p50_ms"] / v["latency"][B]["p50_ms"]
                                for B in v["latency"] if B in ref["latency"]},
                "size_x_smaller": ref["size_mb"] / v["size_mb"] if v.get("size_mb") else None,
                "accuracy_delta_pp": v["test"]["accuracy"] - ref["test"]["accuracy"],
                "macro_f1_delta_pp": v["test"]["macro_f1"] - ref["test"]["macro_f1"],
            }
        out[v["name"]] = r
    return out
