"""An export folder loaded for inference: the ONNX Runtime session and fast tokenizer shared by the
BentoML service (:mod:`serve.service`) and ``distill predict``. Needs only onnxruntime, tokenizers
and numpy (it is packed into the bento)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

DEFAULT_EXPORT_DIR = Path(__file__).resolve().parent / "model"
MODEL_KINDS = ("int8", "fp32", "fp16")


def resolve_export_dir(path: str | Path | None = None) -> Path:
    """The export folder: ``path`` (or ``$DISTILL_EXPORT_DIR``, else ``serve/model``), or its ``export/``.

    Raises:
        FileNotFoundError: no ``manifest.json`` there.
    """
    p = Path(path or os.environ.get("DISTILL_EXPORT_DIR") or DEFAULT_EXPORT_DIR).expanduser()
    if not (p / "manifest.json").is_file() and (p / "export" / "manifest.json").is_file():
        p = p / "export"
    if not (p / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{p}: no manifest.json. Set DISTILL_EXPORT_DIR to an export folder (`distill export RUN_DIR` "
            "writes RUN_DIR/export) or copy one into serve/model (`python -m serve.bento RUN_DIR`).")
    return p


def sha256_file(path: Path, chunk: int = 2**20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_threads(workers: int = 1) -> int:
    """ONNX Runtime intra-op threads per worker: usable CPU cores / workers (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


class TextClassifierRuntime:
    """An export folder loaded for inference: ONNX Runtime session + fast tokenizer.

    Args:
        export_dir: the export folder (``manifest.json``, model files, ``tokenizer.json``).
        model: ``int8`` (default) | ``fp32`` | ``fp16``.
        threads: ONNX Runtime intra-op threads (default :func:`default_threads`).
        verify: check the model file's sha256 against the manifest.
        spinning: let ORT's intra-op threads spin-wait (see ``DISTILL_ORT_SPINNING``).

    Raises:
        FileNotFoundError: missing manifest, model or tokenizer file.
        ValueError: unknown model kind, sha256 mismatch, fp16 without CUDA.
    """

    def __init__(self, export_dir: str | Path, model: str = "int8", threads: int | None = None,
                 verify: bool = True, spinning: bool = False):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.export_dir = Path(export_dir)
        self.manifest = json.loads((self.export_dir / "manifest.json").read_text())
        if model not in MODEL_KINDS:
            raise ValueError(f"DISTILL_MODEL must be one of {MODEL_KINDS}, not {model!r}")
        models = self.manifest.get("models", {})
        if model not in models:
            raise FileNotFoundError(f"{self.export_dir}: the export has no {model} model "
                                    f"(has: {', '.join(models) or 'none'})")
        self.model_kind = model
        self.model_info = dict(models[model])
        self.model_path = self.export_dir / self.model_info["file"]
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: model file missing")
        if verify and self.model_info.get("sha256"):
            got = sha256_file(self.model_path)
            if got != self.model_info["sha256"]:
                raise ValueError(f"{self.model_path}: sha256 {got} does not match the manifest "
                                 f"({self.model_info['sha256']}); the export is corrupt or was edited")
        self.labels: list[str] = list(self.manifest["label_names"])
        self.max_length = int(self.manifest["max_length"])

        tok_info = self.manifest.get("tokenizer", {})
        tok_path = self.export_dir / tok_info.get("file", "tokenizer.json")
        if not tok_path.is_file():
            raise FileNotFoundError(f"{tok_path}: tokenizer file missing")
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        pad_id = int(tok_info.get("pad_id", 0))
        pad_token = self.tokenizer.id_to_token(pad_id) or "[PAD]"
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest in the batch

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif model == "fp16":
            raise ValueError("the fp16 model needs onnxruntime-gpu with a CUDA GPU; use DISTILL_MODEL=int8 or fp32")
        self.threads = int(threads or default_threads())
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.spinning = spinning
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def encode(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool], list[int]]:
        """Tokenize a batch: (ORT feeds, truncated flags, token counts)."""
        encs = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return feeds, [bool(e.overflowing) for e in encs], [int(sum(e.attention_mask)) for e in encs]

    def predict_proba(self, texts: list[str]) -> tuple[np.ndarray, list[bool], list[int]]:
        """Class probabilities (N, C) float64, truncated flags and token counts for ``texts``."""
        feeds, truncated, ntok = self.encode(texts)
        logits = self.session.run([self.output_name], feeds)[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p, truncated, ntok
