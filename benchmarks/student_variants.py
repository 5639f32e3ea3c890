"""The student variants of ``distill bench``: a run's student in PyTorch fp32 and its ONNX exports,
and the students of other runs on the same test split (``--student-run``, e.g. the transformer
student beside a TextCNN run), for :func:`benchmarks.inference.run_inference`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from distill.errors import DistillError

from .common import file_mb
from .inference import Settings, VariantSpec, encode, ort_session, ort_stage, torch_stage

log = logging.getLogger("distill.bench")


def find_export(run_dir: Path, allow_export: bool = True) -> tuple[Path | None, dict | None, str | None]:
    """Locate ``RUN_DIR/export`` (running ``export.onnx_export.export_run`` when it is absent).

    Returns:
        ``(export dir, manifest, None)`` or ``(None, None, reason)`` when no export can be had.
    """
    exp = run_dir / "export"
    note = None
    if not (exp / "manifest.json").is_file():
        if not allow_export:
            return None, None, f"no {exp}/manifest.json (run `distill export {run_dir}`)"
        try:
            from export.onnx_export import export_run
        except ImportError as e:
            return None, None, f"no export in {exp} and the export module is not available ({e})"
        log.info("no export found: running export_run(%s)", run_dir)
        try:
            ok = export_run(run_dir)
        except Exception as e:  # the export is another component: record its failure, benchmark the rest
            log.warning("export_run failed: %s", e)
            return None, None, f"export_run failed: {type(e).__name__}: {e}"
        if not ok:
            note = "export_run reported missed parity targets"
        if not (exp / "manifest.json").is_file():
            return None, None, f"export_run did not write {exp}/manifest.json"
    return exp, json.loads((exp / "manifest.json").read_text()), note


def onnx_model_path(exp: Path, manifest: dict, kind: str) -> Path | None:
    """Path of the ``kind`` (fp32/int8/fp16) model listed in the export manifest, if the file exists."""
    m = (manifest.get("models") or {}).get(kind)
    if not m or not m.get("file"):
        return None
    p = Path(m["file"])
    p = p if p.is_absolute() else exp / p
    return p if p.is_file() else None


def student_specs(run_dir: Path, report: dict, texts: list[str], st: Settings, res: dict, allow_export: bool,
                  tag: str | None = None):
    """The variants of one run's student: PyTorch fp32 and its ONNX fp32 / INT8 export (when present).

    Args:
        tag: None for the benchmarked run (variant names ``student``, ``onnx_fp32``, ``onnx_int8``);
            a label for another run's student shown beside it (names ``<tag>/student`` ...).

    Returns:
        ``(student model, ids, mask, MB, params, export dir, manifest, [VariantSpec])``; missing exports
        are recorded in ``res["skipped"]``.
    """
    from distill.modeling import count_params, load_classifier, weights_size_mb

    pre, who = (f"{tag}/", f"{tag} ") if tag else ("", "")
    student, stok, meta = load_classifier(run_dir / "student")
    arch = meta.get("architecture", "transformer")
    kind_label = f"student ({arch}, {meta.get('strategy', '?')})" if tag else "student"
    s_ids, s_mask = encode(stok, texts, st.seq_len)
    s_mb = weights_size_mb(run_dir / "student")
    s_params = count_params(student)
    specs = [VariantSpec(f"{pre}student", [torch_stage(f"{pre}student", student, s_ids, s_mask, "cpu")],
                         {"label": f"{who}{kind_label} PyTorch fp32", "framework": "pytorch", "precision": "fp32",
                          "device": "cpu", "size_mb": s_mb, "params": s_params, "architecture": arch,
                          "size_files": f"{run_dir.name if tag else ''}{'/' if tag else ''}student/*.safetensors",
                          "run_report_test": (report.get("student") or {}).get("test")})]
    exp, manifest, note = find_export(run_dir, allow_export)
    if exp is None:
        res["skipped"].append({"variant": f"{pre}onnx", "reason": note})
        return student, s_ids, s_mask, s_mb, s_params, exp, manifest, specs
    if not tag:
        res["export"] = {"dir": str(exp), "note": note}
    threads = torch.get_num_threads()
    for kind in ("fp32", "int8"):
        p = onnx_model_path(exp, manifest, kind)
        if p is None:
            res["skipped"].append({"variant": f"{pre}onnx_{kind}", "reason": f"not in {exp}/manifest.json"})
            continue
        entry = manifest["models"][kind]
        method = ((manifest.get("parity") or {}).get("int8") or {}).get("method") if kind == "int8" else None
        meta_v = {"label": f"{who}{kind_label} ONNX {kind.upper() if kind == 'int8' else kind}"
                           f"{f' ({method})' if method else ''}",
                  "framework": "onnxruntime", "precision": kind, "device": "cpu", "provider": "CPUExecutionProvider",
                  "size_mb": file_mb(p), "params": s_params, "architecture": arch,
                  "size_files": str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p),
                  "bytes": p.stat().st_size, "manifest_bytes": entry.get("bytes"), "manifest_mb": entry.get("mb")}
        if entry.get("sha256"):
            from distill.runio import sha256_file

            meta_v["sha256_matches_manifest"] = sha256_file(p) == entry["sha256"]
        if entry.get("bytes") is not None and int(entry["bytes"]) != meta_v["bytes"]:
            meta_v["size_note"] = (f"manifest says {entry['bytes']} bytes, the file has {meta_v['bytes']} "
                                   "(the file's size is used)")
        if meta_v.get("sha256_matches_manifest") is False:
            meta_v["size_note"] = (meta_v.get("size_note", "") + " sha256 differs from the manifest").strip()
        try:
            sess = ort_session(p, threads)
        except Exception as e:  # e.g. an operator this onnxruntime build lacks
            res["skipped"].append({"variant": f"{pre}onnx_{kind}", "reason": f"{type(e).__name__}: {e}"})
            continue
        specs.append(VariantSpec(f"{pre}onnx_{kind}", [ort_stage(f"{pre}onnx_{kind}", sess, s_ids, s_mask)], meta_v))
    return student, s_ids, s_mask, s_mb, s_params, exp, manifest, specs


def check_same_test_split(run_dir: Path, other: Path) -> dict:
    """``other``'s report, after checking that it is a finished run with the same test texts as ``run_dir``.

    Raises:
        DistillError: not a finished run, or another test split (its students cannot share a table).
    """
    from .common import check_run_dir

    rep = check_run_dir(other)
    a, b = (json.loads((d / "split.json").read_text())["ids"]["test"] for d in (run_dir, other))
    if a != b:
        raise DistillError(f"--student-run {other}: its test split differs from {run_dir}'s ({len(b)} vs {len(a)} "
                           "texts, or other ids); compare runs made on the same data, seed and fractions.")
    return rep


def tokenizer_check(exp: Path, texts: list[str], s_ids: np.ndarray, seq_len: int) -> dict:
    """Compare the export's ``tokenizer.json`` with the student tokenizer on the test texts."""
    p = exp / "tokenizer.json"
    if not p.is_file():
        return {"checked": False, "reason": "no tokenizer.json in the export"}
    try:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(str(p))
        tk.enable_truncation(seq_len)
        tk.no_padding()
        same = 0
        for t, row in zip(texts, s_ids):
            ids = tk.encode(t).ids
            same += ids == [int(x) for x in row[:len(ids)]]
        return {"checked": True, "texts": len(texts), "identical_ids": same}
    except Exception as e:  # pragma: no cover - informative only
        return {"checked": False, "reason": str(e)}


