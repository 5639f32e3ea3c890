"""``distill predict``: label a file of texts with a run's student, without standing up the server.

The model is the run's ONNX export when there is one (ONNX Runtime, the session and tokenizer of
:class:`serve.runtime.TextClassifierRuntime`, the same as the service), else the PyTorch student
(``RUN/student``). The output has one row per input text: ``id``, ``label``, ``score`` (its
probability) and ``p_<class>`` for every class, as CSV or JSONL (by the output file's extension),
written atomically. When the input has a label column the accuracy and macro-F1 are computed too.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DistillError
from .metrics import classification_metrics, predict_logits, softmax_np
from .runio import atomic_write_text
from .tokens import progress
from .transfer import read_texts

OUTPUT_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Backend:
    """A loaded student: ``label_names``, ``describe`` (e.g. ``onnx int8``) and ``probabilities``."""

    label_names: list[str]
    describe: str
    probabilities: object  # callable(texts: list[str], batch_size: int) -> (n, C) float64


def load_backend(path: str | Path, model: str = "int8", threads: int | None = None,
                 backend: str = "auto") -> Backend:
    """The student of a run folder or export folder.

    Args:
        path: a run folder (``export/`` is used when present, else ``student/``), an export folder
            (``manifest.json``) or a classifier folder (``classifier.json``).
        model: the exported model to use: ``int8`` | ``fp32`` | ``fp16``.
        backend: ``auto`` (ONNX when an export exists), ``onnx`` or ``torch``.

    Raises:
        DistillError: no export and no student there, or ``backend="onnx"`` without an export.
    """
    p = Path(path)
    export = next((d for d in (p, p / "export") if (d / "manifest.json").is_file()), None)
    student = next((d for d in (p, p / "student") if (d / "classifier.json").is_file()), None)
    if backend == "onnx" and export is None:
        raise DistillError(f"{p}: no ONNX export (manifest.json); run `distill export {p}` or use --backend torch.")
    if export is not None and backend != "torch":
        from serve.runtime import TextClassifierRuntime

        try:
            rt = TextClassifierRuntime(export, model=model, threads=threads)
        except (FileNotFoundError, ValueError) as e:
            raise DistillError(f"{export}: {e}") from None

        def onnx_probs(texts: list[str], batch_size: int) -> np.ndarray:
            return rt.predict_proba_batched(texts, batch_size, progress=lambda b: progress(b, "predict"))

        return Backend(rt.labels, f"onnx {model} ({export})", onnx_probs)
    if student is None:
        raise DistillError(f"{p}: neither an ONNX export (manifest.json) nor a student (classifier.json) is there; "
                           "give a run folder, its export/ or its student/.")
    import torch

    from .modeling import load_classifier
    from .tokens import Tokenized

    if threads:
        torch.set_num_threads(threads)
    net, tok, meta = load_classifier(student)

    def torch_probs(texts: list[str], batch_size: int) -> np.ndarray:
        toks = Tokenized(tok, texts, int(meta["max_length"]))
        return softmax_np(predict_logits(net, toks, list(range(len(texts))), "cpu", batch_size).astype(np.float64))

    return Backend(list(meta["label_names"]), f"pytorch ({student})", torch_probs)


def predict_file(model_path: str | Path, file: str | Path, out: str | Path, *, model: str = "int8",
                 backend: str = "auto", batch_size: int = 64, text_cols=("text",), label_col: str | None = "label",
                 id_col: str | None = None, fmt: str = "auto", threads: int | None = None) -> dict:
    """Label every text of ``file`` and write ``out`` (CSV or JSONL).

    Returns:
        ``{"texts", "seconds", "texts_per_s", "backend", "out"}`` plus ``"metrics"`` (accuracy,
        macro-F1 in %, n) when ``file`` has labels. Seconds are the wall time of the model calls
        including tokenisation (not loading).

    Raises:
        DistillError: unreadable input (naming the row), an output suffix other than .csv/.jsonl,
            or a label that the model does not know (naming it and the row).
    """
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DistillError(f"--out {out}: use a .csv or .jsonl file name.")
    be = load_backend(model_path, model, threads, backend)
    ds = read_texts(file, text_cols, label_col, id_col, fmt)
    y = None
    if ds.label_names:
        known = {n: i for i, n in enumerate(be.label_names)}
        unknown = [(ds.ids[k], ds.label_names[c]) for k, c in enumerate(ds.labels) if ds.label_names[c] not in known]
        if unknown:
            raise DistillError(f"{file}: label {unknown[0][1]!r} (row {unknown[0][0]!r}) is not one of the model's "
                               f"labels {be.label_names}; fix the label or pass --label-col none.")
        y = [known[ds.label_names[c]] for c in ds.labels]
    t0 = time.perf_counter()
    probs = be.probabilities(ds.texts, batch_size)
    seconds = time.perf_counter() - t0
    pred = probs.argmax(1)
    rows = [{"id": ds.ids[k], "label": be.label_names[pred[k]], "score": round(float(probs[k, pred[k]]), 6),
             **{f"p_{n}": round(float(probs[k, c]), 6) for c, n in enumerate(be.label_names)}}
            for k in range(len(ds))]
    if y is not None:
        for r, gold in zip(rows, y):
            r["gold"] = be.label_names[gold]
    atomic_write_text(out, _render(rows, out.suffix.lower()))
    result = {"texts": len(ds), "seconds": round(seconds, 3), "texts_per_s": round(len(ds) / max(seconds, 1e-9), 1),
              "backend": be.describe, "out": str(out)}
    if y is not None:
        result["metrics"] = classification_metrics(probs, y, len(be.label_names))
    return result


def _render(rows: list[dict], suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id", "label", "score"])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
