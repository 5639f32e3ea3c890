"""``distill export``: the run's student as ONNX fp32 / INT8 (and optionally fp16), with a parity proof.

This module only orchestrates; each job has its own module:

* :mod:`export.graph`: torch -> ONNX fp32, ONNX Runtime's transformer optimisation, fp16;
* :mod:`export.quantize`: dynamic INT8 and static (calibrated, QDQ) INT8;
* :mod:`export.parity`: the parity rule (fp32 logits; the INT8 exact McNemar gate);
* :mod:`export.measure`: PyTorch reference logits, the latency table;
* :mod:`export.manifest`: tokenizer, manifest pieces, ``EXPORT.md``, the console summary;
* :mod:`serve.runtime`: the ONNX Runtime sessions and tokenize-and-pad (one copy, shared with serving).

INT8 method (``int8``): ``dynamic``, ``static`` or ``auto`` (default). ``auto`` tries dynamic INT8
first (per-channel, then per-tensor, unless ``per_channel`` fixes one); when no dynamic model passes
the INT8 parity gate, static INT8 is tried and kept if it passes. For a student that is not a
transformer (the TextCNN) ``auto`` tries static first: dynamic quantization turns its convolutions
into ``ConvInteger``, which ONNX Runtime runs slower than fp32 (AG News TextCNN, batch 1, 128 tokens,
2 threads: dynamic 8.1 ms, fp32 2.8 ms, static QDQ 0.8 ms), so dynamic is only the fallback. When nothing passes, the candidate
with the smallest accuracy drop (then the highest agreement) is kept and :func:`export_run` returns
``False``. Without a parity check (``parity=False``) ``auto`` means dynamic. Every candidate tried,
with its gate result, is in ``manifest["parity"]["int8_candidates"]``.

The export writes only its own folder (default ``RUN_DIR/export``; written to a temporary folder and
renamed into place): nothing in the run folder is changed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from pathlib import Path

from distill.errors import DistillError

from . import graph, quantize
from . import parity as _parity
from .graph import INPUT_NAMES, OUTPUT_NAME, convert_fp16
from .manifest import (FORMAT, FP16_FILE, FP32_FILE, INT8_FILE, INT8_PROTOCOL, MARKDOWN_FILE, USAGE, check_out,
                       file_info, make_readable, print_summary, render_export_markdown, sizes, write_tokenizer)
from .measure import measure_latency, predict_torch

INT8_METHODS = ("auto", "dynamic", "static")


def _load_data(run_dir: Path, tok, max_length: int, pad_id: int, test: bool, calibration_size: int | None) -> dict:
    """Tokenised test split (padded batches of 32 for fp32, single texts for INT8) and calibration texts.

    Raises:
        DistillError: the run's data cannot be loaded, or the split part needed is empty.
    """
    from distill.runfolder import load_run_data
    from serve.runtime import padded_batches, token_ids

    try:
        ds, parts, _ = load_run_data(run_dir)
    except DistillError as e:
        raise DistillError(f"{e} (the export's parity proof and static INT8 calibration need the run's data: "
                           "restore it at the path in the run's config.json)") from None
    data: dict = {}
    if test:
        rows = parts["test"]
        if not rows:
            raise DistillError(f"{run_dir}/split.json: the test split is empty, so parity cannot be checked.")
        ids = token_ids(tok, [ds.texts[i] for i in rows], max_length)
        # PyTorch / fp32: length-sorted padded batches (padding-invariant); INT8: one unpadded text per call,
        # because dynamic quantization takes activation ranges per call (batch and padding change them).
        data.update(labels=[ds.labels[i] for i in rows], n=len(rows), batches=padded_batches(ids, pad_id, 32),
                    singles=padded_batches(ids, pad_id, 1))
    if calibration_size:
        rows = quantize.calibration_rows(parts["train"], calibration_size)
        if not rows:
            raise DistillError(f"{run_dir}/split.json: the train split is empty, so static INT8 has no "
                               "calibration texts; use --int8 dynamic.")
        data["calibration"] = padded_batches(token_ids(tok, [ds.texts[i] for i in rows], max_length), pad_id, 1)
    return data


def _int8_plan(int8: str, per_channel: bool | None, gated: bool, static_first: bool = False) -> list[tuple[str, bool]]:
    """``(method, per_channel)`` candidates in the order they are tried (see the module docstring);
    ``static_first`` for students that are not transformers."""
    dyn = ([("dynamic", pc) for pc in ([per_channel] if per_channel is not None else [True, False])]
           if int8 in ("dynamic", "auto") else [])
    sta = [("static", per_channel is not False)] if int8 == "static" or (int8 == "auto" and (gated or static_first)) else []
    return sta + dyn if static_first else dyn + sta


def _quantize_int8(tmp: Path, work: Path, int8: str, per_channel: bool | None, data: dict, ref, C: int,
                   threads: int, calibration_method: str, static_first: bool = False) -> tuple[dict, list[dict]]:
    """Try the INT8 candidates of :func:`_int8_plan`; move the kept one to ``tmp/model.int8.onnx``.

    Returns:
        ``(kept candidate, every candidate tried)``; a candidate holds ``method``, ``per_channel``,
        ``info`` (the quantizer's description) and, with a test split, the :func:`export.parity.compare`
        fields and ``gate`` (:func:`export.parity.int8_gate`).

    Raises:
        DistillError: a quantizer fails (in ``auto`` mode a failed candidate is recorded and the next one
            tried; the error is raised when none is left).
    """
    from serve.runtime import ort_logits, ort_session

    gated = "singles" in data
    tried: list[dict] = []
    chosen = None
    for method, pc in _int8_plan(int8, per_channel, gated, static_first):
        if chosen is not None:
            break
        path = work / f"int8-{method}-{'pc' if pc else 'pt'}.onnx"
        gran = "per-channel" if pc else "per-tensor"
        try:
            if method == "dynamic":
                info = quantize.quantize_dynamic_int8(tmp / FP32_FILE, path, pc)
            else:
                info = quantize.quantize_static_int8(work / "raw.onnx", path, data["calibration"], work, pc,
                                                     calibration_method)
        except Exception as e:  # noqa: BLE001
            msg = f"{method} INT8 quantization ({gran}) of the student failed: {type(e).__name__}: {e}"
            if int8 == "auto":
                tried.append({"method": method, "per_channel": pc, "error": msg[:300]})
                continue
            raise DistillError(f"{msg}. Try --int8 dynamic/static, --per-tensor/--per-channel or another --opset; "
                               "no export was written.") from None
        rec = {"method": method, "per_channel": pc, "path": path, "info": info}
        if gated:
            logits = ort_logits(ort_session(path, threads), data["singles"], data["n"])
            rec.update(_parity.compare(ref, logits, data["labels"], C))
            rec["gate"] = _parity.int8_gate(ref.argmax(-1), logits.argmax(-1), data["labels"])
        tried.append(rec)
        if rec.get("gate", {"passed": True})["passed"]:
            chosen = rec
    if not any("path" in r for r in tried):
        raise DistillError(f"every INT8 candidate failed ({'; '.join(r['error'] for r in tried)}); try another "
                           "--opset; no export was written.")
    if chosen is None:  # every candidate missed the gate: keep the smallest drop, then the best agreement
        chosen = min((r for r in tried if "path" in r),
                     key=lambda r: (r["gate"]["accuracy_drop_pts"], -r["gate"]["agreement_pct"]))
    chosen["kept"] = True
    os.replace(chosen["path"], tmp / INT8_FILE)
    return chosen, tried


def _candidate_record(r: dict) -> dict:
    keys = ("method", "per_channel", "max_abs_logit_diff", "agreement_pct", "accuracy_diff_pts", "macro_f1_diff_pts",
            "gate", "error")
    return {**{k: r[k] for k in keys if k in r}, "kept": bool(r.get("kept"))}


def export_run(run_dir: str | Path, out: str | Path | None = None, fp16: bool = False,
               per_channel: bool | None = None, opset: int = 17, *, int8: str = "auto", calibration_size: int = 256,
               calibration_method: str = "minmax", parity: bool = True, latency_runs: int = 20, threads: int = 2,
               quiet: bool = False) -> bool:
    """Export ``run_dir``'s student to ONNX (fp32 + INT8 [+ fp16]) with a parity proof and size/latency table.

    Writes only ``out`` (default ``run_dir/export``), atomically: ``model.onnx`` (fp32, optimized),
    ``model.int8.onnx`` (dynamic or static INT8, see the module docstring), ``model.fp16.onnx`` when
    ``fp16``, tokenizer files, ``labels.json``, ``manifest.json`` and ``EXPORT.md``.

    Args:
        run_dir: a finished run folder (``student/``, ``config.json``, ``split.json``).
        out: export folder; replaced only when the whole export succeeded.
        fp16: also write ``model.fp16.onnx`` (for the CUDA execution provider).
        per_channel: INT8 weight scales per output channel (True), per tensor (False), or ``None``:
            dynamic tries per-channel then per-tensor; static uses per-channel.
        opset: ONNX opset of the export.
        int8: ``auto`` | ``dynamic`` | ``static``.
        calibration_size: training texts of the run (seeded sample of ``split.json``'s train ids) that
            calibrate static INT8.
        calibration_method: ``minmax`` (default) or ``percentile`` (static INT8 activation ranges).
        parity: run the parity proof on the test split (needs the run's data; default on).
        latency_runs: timed calls per latency measurement (median; 0 skips latency).
        threads: CPU threads for parity and latency (ONNX Runtime intra-op and PyTorch).
        quiet: do not print the summary.

    Returns:
        ``True`` when every parity target is met (or parity was skipped), ``False`` otherwise
        (the models are written in both cases).

    Raises:
        DistillError: missing/incomplete run folder, bad ``int8``/``calibration_size``, a student that
            cannot be exported or quantized, an unwritable ``out``.
    """
    from distill.modeling import load_classifier
    from distill.runio import atomic_dir, atomic_write_json, atomic_write_text, sha256_file, sweep_partials
    from serve.runtime import ort_logits, ort_session

    if int8 not in INT8_METHODS:
        raise DistillError(f"--int8 {int8!r}: use one of {', '.join(INT8_METHODS)}.")
    if calibration_size < 1:
        raise DistillError(f"--calibration-size {calibration_size}: give at least 1 training text.")
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run folder {run_dir} does not exist; pass a folder written by `distill run --out ...`.")
    student = run_dir / "student"
    if not student.is_dir():
        raise DistillError(f"{run_dir}: no student/ folder, so the run did not finish. Finish it with "
                           f"`distill run --out {run_dir} --resume` and export again.")
    out = Path(out) if out is not None else run_dir / "export"
    check_out(run_dir, out)
    for line in sweep_partials(out.parent, only=out.name):
        logging.getLogger("distill").warning("export: %s (left by a killed export)", line)

    model, tok, meta = load_classifier(student)
    arch = meta.get("architecture", "transformer")
    transformer = graph.is_transformer(model, meta)
    max_length = int(meta.get("max_length") or 128)
    label_names = list(meta["label_names"])
    C = int(meta["num_labels"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    static_needed = int8 == "static" or (int8 == "auto" and (parity or not transformer))
    data = (_load_data(run_dir, tok, max_length, pad_id, parity, calibration_size if static_needed else None)
            if parity or static_needed else {})

    times: dict[str, float] = {}
    failures: list[str] = []
    try:
        with atomic_dir(out) as tmp:
            work = tmp / "_work"
            work.mkdir()
            t0 = time.perf_counter()
            optimizer = graph.build_fp32(model, tok, meta, work / "raw.onnx", tmp / FP32_FILE, opset)
            times["export_optimize_s"] = time.perf_counter() - t0

            parity_rec: dict = {"checked": parity, "targets": dict(_parity.TARGETS), "rule": _parity.rule_text()}
            metrics: dict = {}
            ref = None
            sess32 = ort_session(tmp / FP32_FILE, threads)
            if "batches" in data:
                t0 = time.perf_counter()
                from distill.metrics import classification_metrics

                ref = predict_torch(model, data["batches"], data["n"])
                metrics["pytorch"] = classification_metrics(ref, data["labels"], C)
                c32 = _parity.compare(ref, ort_logits(sess32, data["batches"], data["n"]), data["labels"], C)
                metrics["onnx_fp32"] = c32.pop("metrics")
                parity_rec.update({"split": "test", "n": data["n"], "max_length": max_length, "fp32": c32})
                failures += _parity.fp32_failures(c32)
                times["parity_fp32_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            chosen, tried = _quantize_int8(tmp, work, int8, per_channel, data, ref, C, threads, calibration_method,
                                           static_first=not transformer)
            times["quantize_parity_int8_s"] = time.perf_counter() - t0
            if "gate" in chosen:
                metrics["onnx_int8"] = chosen["metrics"]
                if not chosen["gate"]["passed"]:
                    failures.append(f"INT8 ({chosen['method']}) parity gate: {chosen['gate']['reason']}")
                parity_rec["int8"] = {**_candidate_record(chosen), "protocol": INT8_PROTOCOL}
                parity_rec["int8_candidates"] = [_candidate_record(r) for r in tried]
                parity_rec["int8_selection"] = (
                    f"--int8 {int8}: " + "; ".join(
                        f"{r['method']} {'per-channel' if r['per_channel'] else 'per-tensor'} "
                        + ("error" if "error" in r else "pass" if r["gate"]["passed"] else "fail") for r in tried)
                    + f" -> kept {chosen['method']}")
            parity_rec["passed"] = not failures
            parity_rec["failures"] = failures

            models = {"fp32": file_info(tmp / FP32_FILE),
                      "int8": {**file_info(tmp / INT8_FILE), **chosen["info"],
                               "quantized_ops": quantize.quantized_ops(tmp / INT8_FILE)}}
            if fp16:
                t0 = time.perf_counter()
                try:
                    fp16_info = convert_fp16(tmp / FP32_FILE, tmp / FP16_FILE)
                except Exception as e:  # noqa: BLE001
                    raise DistillError(f"fp16 conversion failed ({type(e).__name__}: {e}); "
                                       "export without --fp16.") from None
                models["fp16"] = {**file_info(tmp / FP16_FILE), **fp16_info}
                if ref is not None:  # informational: the fp16 graph targets CUDA, the CPU provider runs it via casts
                    try:
                        c16 = _parity.compare(ref, ort_logits(ort_session(tmp / FP16_FILE, threads), data["batches"],
                                                              data["n"]), data["labels"], C)
                        c16.pop("metrics")
                        parity_rec["fp16_cpu_informational"] = c16
                    except Exception as e:  # noqa: BLE001
                        parity_rec["fp16_cpu_informational"] = {"error": f"{type(e).__name__}: {e}"[:200]}
                times["fp16_s"] = time.perf_counter() - t0

            tok_info = write_tokenizer(tok, student, tmp, max_length)
            atomic_write_json(tmp / "labels.json", {"label_names": label_names,
                                                    "id2label": {str(i): n for i, n in enumerate(label_names)}})
            latency = {}
            if latency_runs > 0:
                t0 = time.perf_counter()
                max_pos = int(getattr(getattr(getattr(model, "encoder", None), "config", None),
                                      "max_position_embeddings", 0) or 130)
                latency = measure_latency(model, {"ort_fp32": sess32, "ort_int8": ort_session(tmp / INT8_FILE, threads)},
                                          graph.vocab_size(model, tok), threads=threads, runs=latency_runs,
                                          seq_len=min(128, max_pos - 2))
                times["latency_s"] = time.perf_counter() - t0
            del sess32
            shutil.rmtree(work)
            times["total_s"] = time.perf_counter() - t_start
            manifest = _manifest(run_dir, student, meta, arch, model if transformer else None, models, label_names, C,
                                 max_length, tok_info, opset, optimizer, parity_rec, metrics, latency, times,
                                 sizes(run_dir, student, models), sha256_file)
            atomic_write_json(tmp / "manifest.json", manifest)
            atomic_write_text(tmp / MARKDOWN_FILE, render_export_markdown(manifest, out))
            make_readable(tmp)
    except DistillError:
        raise
    except OSError as e:
        raise DistillError(f"cannot write the export folder {out}: {e}. "
                           "Choose another --out or free disk space.") from None
    if not quiet:
        print_summary(manifest, out)
    return not failures


def _manifest(run_dir: Path, student: Path, meta: dict, arch: str, transformer_model, models: dict,
              label_names: list[str], C: int, max_length: int, tok_info: dict, opset: int, optimizer: dict,
              parity_rec: dict, metrics: dict, latency: dict, times: dict, size_mb: dict, sha256_file) -> dict:
    """The ``manifest.json`` dict (schema ``distill-onnx-export/1``; keys documented in :mod:`export.manifest`)."""
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    weights = student / "model.safetensors"
    cfg = transformer_model.encoder.config if transformer_model is not None else None
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run_dir.resolve()),
        "student_sha256": sha256_file(weights) if weights.is_file() else None,
        "export_id": models["int8"]["sha256"][:12],
        "models": models,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", C]}],
        "label_names": label_names,
        "max_length": max_length,
        "tokenizer": tok_info,
        "opset": opset,
        "optimizer": optimizer,
        "parity": parity_rec,
        "test_metrics": metrics,
        "latency_ms": latency,
        "sizes_mb": size_mb,
        "student": {"architecture": arch, "model_type": cfg.model_type if cfg is not None else None,
                    "layers": meta.get("num_layers"), "hidden_size": meta.get("hidden_size"),
                    "pooling": meta.get("pooling")},
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "usage": USAGE,
    }
