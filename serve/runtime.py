"""ONNX Runtime inference on an export folder: the one copy of the session, tokenize-and-pad and
logits helpers, used by the BentoML service (:mod:`serve.service`), ``distill predict``, ``distill
export`` (parity, latency) and the benchmarks. Needs only onnxruntime, tokenizers and numpy (it is
packed into the bento): it must never import torch, transformers or distill.

Shapes: token ids and attention masks are int64 (batch, sequence); logits float32 (batch, classes).
"""

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
    from .settings import usable_cores

    return max(1, usable_cores() // max(1, workers))


def import_ort():
    """``onnxruntime``, or an ImportError that says which extra installs it. Warns (once per process) when
    both ``onnxruntime`` and ``onnxruntime-gpu`` are installed: they ship the same module, so whichever
    was installed last wins and the CUDA execution provider may be missing."""
    from importlib import metadata

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("onnxruntime is not installed: pip install 'distill-news[cpu]' (or "
                          "'distill-news[gpu]' for onnxruntime-gpu on a CUDA machine); `make install` does it") from e
    global _ORT_CHECKED
    if not _ORT_CHECKED:
        _ORT_CHECKED = True
        found = []
        for dist in ("onnxruntime", "onnxruntime-gpu"):
            try:
                metadata.version(dist)
                found.append(dist)
            except metadata.PackageNotFoundError:
                pass
        if len(found) == 2:
            import warnings

            warnings.warn("both onnxruntime and onnxruntime-gpu are installed; they provide the same module and "
                          "the one installed last wins (providers now: " + ", ".join(ort.get_available_providers())
                          + "). Keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
                          "(or ORT=gpu make install).", RuntimeWarning, stacklevel=2)
    return ort


_ORT_CHECKED = False


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                spinning: bool = False):
    """An ``onnxruntime.InferenceSession`` with the project's settings: ``threads`` intra-op threads
    (default :func:`default_threads`), 1 inter-op thread, sequential execution, every graph
    optimization, errors-only logging, intra-op spin-wait only when ``spinning``.

    Args:
        path: an ``.onnx`` file.
        providers: execution providers in order (default CPU only).

    Raises:
        onnxruntime's own errors for a missing or invalid model file.
    """
    ort = import_ort()

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"])


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (special tokens included), truncated to ``max_length``, unpadded.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (its padding is switched off and its truncation set to
            ``max_length``) or a ``transformers`` tokenizer (called with ``truncation=True``).
    """
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        return [e.ids for e in tokenizer.encode_batch(texts)]
    return list(tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"])


def pad_ids(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``input_ids`` and ``attention_mask``, int64 (len(seqs), L).

    ``L`` is ``length`` (longer sequences are cut to it) or, when None, the longest sequence.
    """
    L = int(length) if length is not None else max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), L), dtype=np.int64)
    for k, s in enumerate(seqs):
        s = s[:L]
        ids[k, :len(s)] = s
        mask[k, :len(s)] = 1
    return ids, mask


def padded_batches(seqs: list[list[int]], pad_id: int,
                   batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Length-sorted batches ``(input_ids, attention_mask, row positions)``, each padded to its longest
    row (int64 (B, L)); ``batch_size=1`` gives one unpadded text per batch."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = []
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        out.append((*pad_ids([seqs[i] for i in rows], pad_id), rows))
    return out


def ort_feeds(input_names: list[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The feeds a session with ``input_names`` takes: ``input_ids``, ``attention_mask`` and zero
    ``token_type_ids`` where the graph has that input."""
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return {k: v for k, v in feeds.items() if k in input_names}


def ort_logits(session, batches, n: int) -> np.ndarray:
    """Logits (n, C) float32 of ``session`` over the batches of :func:`padded_batches` (rows put back
    in input order)."""
    names = [i.name for i in session.get_inputs()]
    out_name = next((o.name for o in session.get_outputs() if o.name == "logits"), session.get_outputs()[0].name)
    out = None
    for ids, mask, rows in batches:
        lg = session.run([out_name], ort_feeds(names, ids, mask))[0].astype(np.float32)
        if out is None:
            out = np.zeros((n, lg.shape[1]), np.float32)
        out[rows] = lg
    return out if out is not None else np.zeros((0, 0), np.float32)


def parity_problem(manifest: dict) -> str | None:
    """One line naming the parity checks an export missed (``manifest["parity"]``), or None when
    its targets were met or parity was not checked."""
    p = manifest.get("parity") or {}
    if not p.get("checked", bool(p)) or p.get("passed", True) is not False:
        return None
    failures = p.get("failures") or ["parity targets missed (no details in the manifest)"]
    return "; ".join(str(f) for f in failures)


def check_export(export_dir: str | Path, model: str = "int8", verify: bool = True) -> tuple[dict, dict, Path, Path]:
    """Check an export folder before loading it: the manifest parses, it lists ``model``, the model file
    and the tokenizer file exist, and (``verify``) the model file's sha256 is the manifest's.

    Returns:
        ``(manifest, model info, model path, tokenizer path)``.

    Raises:
        FileNotFoundError: no manifest (a half-written or wrong folder), a missing model or tokenizer file.
        ValueError: a manifest that does not parse, an unknown model kind, a sha256 mismatch. Every
            message names the file and ends with the fix (export again).
    """
    export_dir = Path(export_dir)
    fix = "Export again with `distill export RUN_DIR`."
    mf = export_dir / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"{mf}: missing; the folder is not a finished export. {fix}")
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{mf}: damaged, not valid JSON ({e}). {fix}") from None
    if model not in MODEL_KINDS:
        raise ValueError(f"DISTILL_MODEL must be one of {MODEL_KINDS}, not {model!r}")
    models = manifest.get("models", {})
    if model not in models:
        raise FileNotFoundError(f"{export_dir}: the export has no {model} model (has: {', '.join(models) or 'none'})")
    info = dict(models[model])
    path = export_dir / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file missing. {fix}")
    if verify and info.get("sha256"):
        got = sha256_file(path)
        if got != info["sha256"]:
            raise ValueError(f"{path}: sha256 {got} does not match the manifest ({info['sha256']}); the file was "
                             f"cut short or altered after the export. {fix}")
    tok_path = export_dir / manifest.get("tokenizer", {}).get("file", "tokenizer.json")
    if not tok_path.is_file():
        raise FileNotFoundError(f"{tok_path}: tokenizer file missing. {fix}")
    return manifest, info, path, tok_path


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
        from tokenizers import Tokenizer

        ort = import_ort()

        self.export_dir = Path(export_dir)
        self.manifest, self.model_info, self.model_path, tok_path = check_export(self.export_dir, model, verify)
        self.model_kind = model
        self.labels: list[str] = list(self.manifest["label_names"])
        self.max_length = int(self.manifest["max_length"])
        tok_info = self.manifest.get("tokenizer", {})
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.pad_id = int(tok_info.get("pad_id", 0))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()  # padded by pad_ids, to the longest text of each call

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif model == "fp16":
            raise ValueError("the fp16 model needs onnxruntime-gpu with a CUDA GPU; use DISTILL_MODEL=int8 or fp32")
        self.threads = int(threads or default_threads())
        self.spinning = spinning
        self.session = ort_session(self.model_path, self.threads, providers, spinning)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def encode(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool], list[int]]:
        """Tokenize a batch: (ORT feeds, truncated flags, token counts). Right-padded to the longest text."""
        encs = self.tokenizer.encode_batch(texts)
        ids, mask = pad_ids([e.ids for e in encs], self.pad_id)
        return ort_feeds(self.input_names, ids, mask), [bool(e.overflowing) for e in encs], [len(e.ids) for e in encs]

    def predict_proba(self, texts: list[str]) -> tuple[np.ndarray, list[bool], list[int]]:
        """Class probabilities (N, C) float64, truncated flags and token counts for ``texts`` (one model call)."""
        feeds, truncated, ntok = self.encode(texts)
        return self._probs(feeds), truncated, ntok

    def predict_proba_batched(self, texts: list[str], batch_size: int = 64, progress=None) -> np.ndarray:
        """Class probabilities (N, C) float64 of many texts, at most ``batch_size`` texts per model call,
        grouped by token count (less padding). ``progress`` optionally wraps the list of batches."""
        out = np.zeros((len(texts), len(self.labels)))
        batches = padded_batches(token_ids(self.tokenizer, texts, self.max_length), self.pad_id, batch_size)
        for ids, mask, rows in (progress(batches) if progress else batches):
            out[rows] = self._probs(ort_feeds(self.input_names, ids, mask))
        return out

    def _probs(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        logits = self.session.run([self.output_name], feeds)[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p
