"""``distill export``: the run's student as ONNX fp32 / INT8 (and optionally fp16), with a parity proof.

Pipeline (the field's standard tools, in order):

1. ``torch.onnx.export(..., dynamo=False)``: the legacy TorchScript exporter traces a thin wrapper
   ``(input_ids, attention_mask) -> logits`` around the student (HF encoder + attentive-pooling
   head). The encoder is rebuilt with eager attention first, because the SDPA path traces into a
   pattern ONNX Runtime's attention fusion does not recognise.
2. ``onnxruntime.transformers.optimizer.optimize_model``: ONNX Runtime's transformer graph optimizer
   (``model_type="bert"`` for BERT-like encoders with ``num_heads``/``hidden_size`` from the config;
   attention mask kept raw so any padding side works). Architectures it does not know get ONNX
   Runtime's basic graph optimizations only; the manifest says which.
3. ``onnxruntime.quantization.quantize_dynamic``: INT8 weights (QInt8), UInt8 dynamic activations;
   the default op set includes ``Gather``/``EmbedLayerNormalization``, so the word-embedding table
   (most of a small student's bytes) is quantized too.
4. optional ``onnxruntime.transformers`` float16 conversion (``keep_io_types=True``) for the CUDA provider.

The parity proof compares PyTorch and ONNX Runtime on the run's test split; a model that misses a
target is still written, but :func:`export_run` returns ``False``.

Export folder (default ``RUN_DIR/export``, written to a temporary folder and renamed into place):
``model.onnx``, ``model.int8.onnx``, [``model.fp16.onnx``], tokenizer files (``tokenizer.json`` with
truncation and padding preset), ``labels.json``, ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from distill.errors import DistillError

FORMAT = "distill-onnx-export/1"
FP32_FILE, INT8_FILE, FP16_FILE = "model.onnx", "model.int8.onnx", "model.fp16.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"

#: Parity targets (INT8 differences in percentage points of accuracy / macro-F1).
TARGETS = {
    "fp32_max_abs_logit_diff": 1e-4,
    "int8_agreement_pct": 99.0,
    "int8_accuracy_diff_pts": 0.5,
    "int8_macro_f1_diff_pts": 0.5,
}

#: Hugging Face ``model_type`` values whose graphs ONNX Runtime's ``bert`` fusion handles.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "ernie", "xlm",
             "mobilebert", "layoutlm", "splinter", "data2vec-text", "rembert"}

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
                   "added_tokens.json", "sentencepiece.bpe.model", "spm.model", "tokenizer.model")

USAGE = """\
Needs only onnxruntime, tokenizers and numpy:

    import json, numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer
    m = json.load(open("manifest.json"))
    tok = Tokenizer.from_file("tokenizer.json")   # truncation (max_length) and padding preset
    sess = ort.InferenceSession("model.int8.onnx", providers=["CPUExecutionProvider"])
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]   # (batch, num_labels) float32
    labels = [m["label_names"][i] for i in logits.argmax(-1)]

INT8 logits depend slightly on what shares a call (dynamic quantization ranges are per call); the
reported INT8 parity was measured one text per call. model.onnx is the fp32 graph; model.fp16.onnx
(when present) is for the CUDAExecutionProvider (fp32 inputs/outputs)."""

INT8_PROTOCOL = ("one text per call, unpadded (dynamic quantization takes activation ranges per call, so "
                 "batched or padded calls can give slightly different INT8 logits)")

log = logging.getLogger("distill")


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _quiet():
    """Silence the exporters' tracer/deprecation warnings and ONNX Runtime's python-side logging."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "onnxruntime.transformers", "root", "")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _file_info(path: Path) -> dict:
    from distill.runio import sha256_file

    n = path.stat().st_size
    return {"file": path.name, "bytes": n, "mb": round(n / 1e6, 3), "sha256": sha256_file(path)}


def _session(path: Path, threads: int = 2, providers: list[str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


class _LogitsOnly:
    """Factory for the export wrapper: ``(input_ids, attention_mask) -> logits``.

    Kept as a function-local ``nn.Module`` subclass so importing this module does not import torch.
    """

    @staticmethod
    def wrap(model):
        from torch import nn

        class LogitsOnly(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, input_ids, attention_mask):  # (B, L) int64 x2 -> (B, C) float32
                return self.model(input_ids, attention_mask).logits

        return LogitsOnly(model).eval()


def _eager_copy(encoder):
    """The same encoder rebuilt with eager attention (traces into the pattern ORT fuses); the
    original when the architecture has no ``attn_implementation`` switch."""
    from transformers import AutoModel

    if getattr(encoder.config, "_attn_implementation", "eager") == "eager":
        return encoder
    cfg = encoder.config.__class__.from_dict(encoder.config.to_dict())
    try:
        try:
            new = AutoModel.from_config(cfg, attn_implementation="eager", add_pooling_layer=False)
        except TypeError:
            new = AutoModel.from_config(cfg, attn_implementation="eager")
        new.load_state_dict(encoder.state_dict(), strict=True)
    except Exception:  # noqa: BLE001 - any failure: keep the model as loaded
        return encoder
    return new.eval()


# ----------------------------------------------------------------------------------------------- steps
def export_fp32(model, path: Path, opset: int = 17, pad_id: int = 0) -> None:
    """Trace ``model`` (an :class:`distill.modeling.EncoderClassifier`) to an fp32 ONNX graph.

    Graph I/O: ``input_ids`` and ``attention_mask`` int64 (batch, sequence) -> ``logits`` float32
    (batch, num_labels), batch and sequence axes dynamic. Uses the TorchScript exporter (``dynamo=False``).

    Raises:
        DistillError: the exporter fails (unsupported operator, custom code...).
    """
    import torch

    wrapper = _LogitsOnly.wrap(model)
    vocab = int(model.encoder.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    ids[1, 11:] = pad_id
    axes = {"batch": 0, "sequence": 1}
    dyn = {n: {v: k for k, v in axes.items()} for n in INPUT_NAMES}
    dyn[OUTPUT_NAME] = {0: "batch"}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(wrapper, (ids, mask), str(path), dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=dyn,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001
        raise DistillError(f"the student ({model.encoder.config.model_type}) cannot be exported to ONNX opset "
                           f"{opset}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Try another "
                           "--opset (14-18), or a student architecture supported by torch.onnx.") from None


def optimize_onnx(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int) -> dict:
    """Run ONNX Runtime's transformer optimizer on ``src`` and save the result to ``dst``.

    BERT-like ``model_type`` values (:data:`BERT_LIKE`) get the ``bert`` fusions (EmbedLayerNormalization,
    Attention with a raw 2-D mask, SkipLayerNormalization, BiasGelu); other architectures get ONNX
    Runtime's basic (level 1) graph optimizations only; if even that fails the graph is copied as is.

    Returns:
        the manifest's ``optimizer`` dict (tool, model_type, fusion applied or skipped and why, fused op counts).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    info = {"tool": "onnxruntime.transformers.optimizer.optimize_model", "source_model_type": model_type,
            "num_heads": num_heads, "hidden_size": hidden_size}
    if model_type in BERT_LIKE:
        opts = FusionOptions("bert")
        opts.use_raw_attention_mask(True)  # correct for any padding side (MaskIndexEnd needs right padding)
        try:
            with _quiet():
                opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                     optimization_options=opts, opt_level=1, use_gpu=False)
                stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                full = bool(opt.is_fully_optimized())
                opt.save_model_to_file(str(dst))
            info.update({"fusion": "bert", "model_type": "bert", "opt_level": 1, "attention_mask": "raw 2-D",
                         "fused_ops": stats, "fully_fused": full})
            return info
        except Exception as e:  # noqa: BLE001
            info["fusion_error"] = f"{type(e).__name__}: {e}"[:300]
    info.update({"fusion": "skipped", "model_type": None,
                 "reason": info.get("fusion_error") and "bert fusion failed" or
                 f"onnxruntime.transformers has no fusion for model_type {model_type!r}"})
    try:
        with _quiet():
            opt = optimize_model(str(src), model_type="bert", opt_level=1, only_onnxruntime=True, use_gpu=False)
            opt.save_model_to_file(str(dst))
        info.update({"opt_level": 1, "note": "ONNX Runtime basic graph optimizations only"})
    except Exception as e:  # noqa: BLE001
        shutil.copyfile(src, dst)
        info.update({"opt_level": 0, "note": f"graph left as exported ({type(e).__name__})"})
    return info


def quantize_int8(src: Path, dst: Path, per_channel: bool) -> None:
    """Dynamic INT8 quantization (``onnxruntime.quantization.quantize_dynamic``, QInt8 weights).

    All supported op types are quantized (MatMul, Attention, Gather and EmbedLayerNormalization, so the
    embedding tables shrink too); ``per_channel`` picks per-output-channel weight scales.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        # fused contrib ops (Attention, SkipLayerNormalization...) have no ONNX type inference: say float32
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=False,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def convert_fp16(src: Path, dst: Path) -> dict:
    """fp16 copy of an (optimized) fp32 graph for the CUDA provider; inputs/outputs stay int64/float32.

    Uses ``onnxruntime.transformers`` ``OnnxModel.convert_float_to_float16(keep_io_types=True)``.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    with _quiet():
        m = OnnxModel(onnx.load(str(src)))
        m.convert_float_to_float16(keep_io_types=True)
        m.save_model_to_file(str(dst))
    return {"tool": "onnxruntime.transformers OnnxModel.convert_float_to_float16", "keep_io_types": True,
            "provider": "CUDAExecutionProvider"}


def _encode(tok, texts: list[str], max_length: int,
            batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Length-sorted, right-padded batches ``(input_ids, attention_mask, row positions)``, int64 (B, L)."""
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = []
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        L = max(len(enc[i]) for i in rows)
        ids = np.full((len(rows), L), pad, dtype=np.int64)
        mask = np.zeros((len(rows), L), dtype=np.int64)
        for k, i in enumerate(rows):
            ids[k, :len(enc[i])] = enc[i]
            mask[k, :len(enc[i])] = 1
        out.append((ids, mask, rows))
    return out


def predict_torch(model, batches, n: int) -> np.ndarray:
    """PyTorch logits (n, C) float32 for the batches of :func:`_encode`."""
    import torch

    out = None
    with torch.inference_mode():
        for ids, mask, rows in batches:
            lg = model(torch.from_numpy(ids), torch.from_numpy(mask)).logits.float().numpy()
            if out is None:
                out = np.zeros((n, lg.shape[1]), np.float32)
            out[rows] = lg
    return out


def predict_onnx(session, batches, n: int) -> np.ndarray:
    """ONNX Runtime logits (n, C) float32 for the batches of :func:`_encode`."""
    out = None
    for ids, mask, rows in batches:
        lg = session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0].astype(np.float32)
        if out is None:
            out = np.zeros((n, lg.shape[1]), np.float32)
        out[rows] = lg
    return out


def _compare(ref: np.ndarray, got: np.ndarray, labels: list[int], C: int) -> dict:
    from distill.metrics import classification_metrics

    mr, mg = classification_metrics(ref, labels, C), classification_metrics(got, labels, C)
    return {"max_abs_logit_diff": float(np.abs(ref - got).max()) if len(ref) else 0.0,
            "agreement_pct": 100.0 * float((ref.argmax(-1) == got.argmax(-1)).mean()) if len(ref) else 100.0,
            "accuracy_diff_pts": mg["accuracy"] - mr["accuracy"],
            "macro_f1_diff_pts": mg["macro_f1"] - mr["macro_f1"], "metrics": mg}


def _int8_failures(c: dict) -> list[str]:
    f = []
    if c["agreement_pct"] < TARGETS["int8_agreement_pct"]:
        f.append(f"INT8 prediction agreement {c['agreement_pct']:.2f}% < {TARGETS['int8_agreement_pct']}%")
    if abs(c["accuracy_diff_pts"]) > TARGETS["int8_accuracy_diff_pts"]:
        f.append(f"INT8 accuracy differs by {c['accuracy_diff_pts']:+.2f} points (target within "
                 f"{TARGETS['int8_accuracy_diff_pts']})")
    if abs(c["macro_f1_diff_pts"]) > TARGETS["int8_macro_f1_diff_pts"]:
        f.append(f"INT8 macro-F1 differs by {c['macro_f1_diff_pts']:+.2f} points (target within "
                 f"{TARGETS['int8_macro_f1_diff_pts']})")
    return f


def measure_latency(model, sessions: dict, vocab_size: int, threads: int = 2, runs: int = 20, seq_len: int = 128,
                    batch_sizes: tuple[int, ...] = (1, 32)) -> dict:
    """Median wall-clock latency in ms per call (after 2 warm-up calls) of PyTorch fp32 and each ONNX
    Runtime session, on random token ids (batch, ``seq_len``) with a full attention mask, ``threads`` threads.

    Returns:
        ``{"threads", "seq_len", "runs", "pytorch_fp32": {"batch_1": ms, "batch_32": ms}, "<session name>": {...}}``.
    """
    import torch

    rng = np.random.default_rng(0)
    res = {"threads": threads, "seq_len": seq_len, "runs": runs, "cpu_count": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = {b: (rng.integers(5, max(6, vocab_size), (b, seq_len)).astype(np.int64),
                      np.ones((b, seq_len), np.int64)) for b in batch_sizes}

        def med(fn) -> float:
            for _ in range(2):
                fn()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return round(1000.0 * statistics.median(ts), 3)

        with torch.inference_mode():
            res["pytorch_fp32"] = {f"batch_{b}": med(lambda i=torch.from_numpy(x), m=torch.from_numpy(y): model(i, m))
                                   for b, (x, y) in inputs.items()}
        for name, s in sessions.items():
            res[name] = {f"batch_{b}": med(lambda x=x, y=y: s.run([OUTPUT_NAME], {"input_ids": x, "attention_mask": y}))
                         for b, (x, y) in inputs.items()}
    finally:
        torch.set_num_threads(old)
    return res


def _write_tokenizer(tok, student: Path, out: Path, max_length: int) -> dict:
    """Copy the tokenizer files and write ``tokenizer.json`` with truncation/padding preset."""
    if not getattr(tok, "is_fast", False):
        raise DistillError(f"{student}: the student's tokenizer has no fast (tokenizers) version, so no "
                           "tokenizer.json can be written for serving without transformers.")
    for f in TOKENIZER_FILES:
        if (student / f).is_file():
            shutil.copy2(student / f, out / f)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pad_tok = tok.pad_token or tok.convert_ids_to_tokens(pad_id)
    bt = tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str())
    bt.enable_truncation(max_length=max_length)
    bt.enable_padding(pad_id=pad_id, pad_token=pad_tok, direction="right")
    bt.save(str(out / "tokenizer.json"))
    return {"file": "tokenizer.json", "pad_id": int(pad_id), "pad_token": pad_tok, "truncation": True,
            "max_length": max_length, "padding": "longest, right"}


# ----------------------------------------------------------------------------------------------- main
def export_run(run_dir: str | Path, out: str | Path | None = None, fp16: bool = False,
               per_channel: bool | None = None, opset: int = 17, *, parity: bool = True,
               latency_runs: int = 20, threads: int = 2, quiet: bool = False) -> bool:
    """Export ``run_dir``'s student to ONNX (fp32 + INT8 [+ fp16]) with a parity proof and size/latency table.

    Writes ``out`` (default ``run_dir/export``) atomically: ``model.onnx`` (fp32, optimized),
    ``model.int8.onnx`` (dynamic INT8), ``model.fp16.onnx`` when ``fp16``, tokenizer files,
    ``labels.json`` and ``manifest.json``; then adds ``report["export"]`` to ``run_dir/report.json``
    and re-renders ``report.md``.

    Args:
        run_dir: a finished run folder (``student/``, ``config.json``, ``split.json``).
        out: export folder; replaced only when the whole export succeeded.
        fp16: also write ``model.fp16.onnx`` (for the CUDA execution provider).
        per_channel: INT8 weight scales per output channel (True), per tensor (False), or ``None``:
            per-channel, falling back to per-tensor when per-channel misses a parity target.
        opset: ONNX opset of the export.
        parity: run the parity proof on the test split (needs the run's data; default on).
        latency_runs: timed calls per latency measurement (median; 0 skips latency).
        threads: CPU threads for the latency measurement (ONNX Runtime intra-op and PyTorch).
        quiet: do not print the summary.

    Returns:
        ``True`` when every parity target is met (or parity was skipped), ``False`` otherwise
        (the models are written in both cases).

    Raises:
        DistillError: missing/incomplete run folder, a student that cannot be exported, an unwritable ``out``.
    """
    import torch

    from distill.modeling import load_classifier
    from distill.runio import atomic_dir, atomic_write_json, sha256_file

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run folder {run_dir} does not exist; pass a folder written by `distill run --out ...`.")
    student = run_dir / "student"
    if not student.is_dir():
        raise DistillError(f"{run_dir}: no student/ folder, so the run did not finish. Finish it with "
                           f"`distill run --out {run_dir} --resume` and export again.")
    out = Path(out) if out is not None else run_dir / "export"
    _check_out(run_dir, out)

    model, tok, meta = load_classifier(student)
    max_length = int(meta.get("max_length") or 128)
    label_names = list(meta["label_names"])
    C = int(meta["num_labels"])
    enc_cfg = model.encoder.config
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    data = None
    if parity:
        from distill.pipeline import load_run_data

        try:
            ds, parts, _ = load_run_data(run_dir)
        except DistillError as e:
            raise DistillError(f"{e} (the parity proof of the export needs the run's test split: restore the "
                               "run's data at the path in its config.json)") from None
        rows = parts["test"]
        if not rows:
            raise DistillError(f"{run_dir}/split.json: the test split is empty, so parity cannot be checked.")
        labels = [ds.labels[i] for i in rows]
        texts = [ds.texts[i] for i in rows]
        # PyTorch / fp32: length-sorted padded batches (padding-invariant); INT8: one unpadded text per call,
        # because dynamic quantization takes activation ranges per call (batch and padding change them).
        data = (_encode(tok, texts, max_length), labels, len(rows), _encode(tok, texts, max_length, batch_size=1))

    manifest: dict = {}
    times: dict[str, float] = {}
    failures: list[str] = []
    try:
        with atomic_dir(out) as tmp:
            work = tmp / "_work"
            work.mkdir()
            # 1. fp32 export + 2. transformer graph optimizer
            t0 = time.perf_counter()
            export_model = model
            eager = _eager_copy(model.encoder)
            if eager is not model.encoder:
                from distill.modeling import EncoderClassifier

                export_model = EncoderClassifier(eager, model.head, model.head.classifier.in_features)
                export_model.proj = model.proj
                export_model.eval()
            export_fp32(export_model, work / "raw.onnx", opset=opset, pad_id=pad_id)
            del export_model, eager
            optimizer = optimize_onnx(work / "raw.onnx", tmp / FP32_FILE, enc_cfg.model_type,
                                      int(getattr(enc_cfg, "num_attention_heads", 0) or 0), int(enc_cfg.hidden_size))
            optimizer["exporter"] = f"torch.onnx.export (TorchScript, dynamo=False), opset {opset}"
            (work / "raw.onnx").unlink()
            times["export_optimize_s"] = time.perf_counter() - t0

            parity_rec: dict = {"checked": parity, "targets": TARGETS}
            metrics: dict = {}
            ref = None
            sess32 = _session(tmp / FP32_FILE, threads)
            if data is not None:
                batches, labels, n, _ = data
                t0 = time.perf_counter()
                with torch.inference_mode():
                    ref = predict_torch(model, batches, n)
                from distill.metrics import classification_metrics

                metrics["pytorch"] = classification_metrics(ref, labels, C)
                c32 = _compare(ref, predict_onnx(sess32, batches, n), labels, C)
                metrics["onnx_fp32"] = c32.pop("metrics")
                parity_rec.update({"split": "test", "n": n, "max_length": max_length, "fp32": c32})
                if c32["max_abs_logit_diff"] > TARGETS["fp32_max_abs_logit_diff"]:
                    failures.append(f"fp32 max |logit diff| {c32['max_abs_logit_diff']:.2e} > "
                                    f"{TARGETS['fp32_max_abs_logit_diff']:.0e}")
                times["parity_fp32_s"] = time.perf_counter() - t0

            # 3. INT8 dynamic quantization (per-channel first unless told otherwise)
            t0 = time.perf_counter()
            candidates = [per_channel] if per_channel is not None else [True, False]
            tried = []
            chosen = None
            for pc in candidates:
                path = work / f"int8-{'pc' if pc else 'pt'}.onnx"
                try:
                    quantize_int8(tmp / FP32_FILE, path, pc)
                except Exception as e:  # noqa: BLE001
                    raise DistillError(f"INT8 quantization ({'per-channel' if pc else 'per-tensor'}) of the student "
                                       f"failed: {type(e).__name__}: {e}. Try --per-tensor/--per-channel or another "
                                       "--opset; no export was written.") from None
                rec = {"per_channel": pc, "path": path}
                if data is not None:
                    _, labels, n, singles = data
                    c8 = _compare(ref, predict_onnx(_session(path, threads), singles, n), labels, C)
                    rec.update(c8)
                    rec["failures"] = _int8_failures(c8)
                tried.append(rec)
                if not rec.get("failures"):
                    chosen = rec
                    break
            if chosen is None:  # all missed a target: keep the one that agrees best with PyTorch
                chosen = max(tried, key=lambda r: (r["agreement_pct"], -abs(r["accuracy_diff_pts"])))
            os.replace(chosen["path"], tmp / INT8_FILE)
            times["quantize_parity_int8_s"] = time.perf_counter() - t0
            if data is not None:
                metrics["onnx_int8"] = chosen["metrics"]
                failures += chosen["failures"]
                parity_rec["int8"] = {k: chosen[k] for k in ("per_channel", "max_abs_logit_diff", "agreement_pct",
                                                              "accuracy_diff_pts", "macro_f1_diff_pts")}
                parity_rec["int8"]["protocol"] = INT8_PROTOCOL
                parity_rec["int8_candidates"] = [
                    {k: r[k] for k in ("per_channel", "max_abs_logit_diff", "agreement_pct", "accuracy_diff_pts",
                                       "macro_f1_diff_pts", "failures")} for r in tried]
            parity_rec["passed"] = not failures
            parity_rec["failures"] = failures

            models = {"fp32": _file_info(tmp / FP32_FILE),
                      "int8": {**_file_info(tmp / INT8_FILE), "per_channel": bool(chosen["per_channel"]),
                               "weight_type": "QInt8", "activations": "UInt8 (dynamic)",
                               "tool": "onnxruntime.quantization.quantize_dynamic",
                               "quantized_ops": _quantized_ops(tmp / INT8_FILE)}}
            # 4. optional fp16
            if fp16:
                t0 = time.perf_counter()
                try:
                    fp16_info = convert_fp16(tmp / FP32_FILE, tmp / FP16_FILE)
                except Exception as e:  # noqa: BLE001
                    raise DistillError(f"fp16 conversion failed ({type(e).__name__}: {e}); "
                                       "export without --fp16.") from None
                models["fp16"] = {**_file_info(tmp / FP16_FILE), **fp16_info}
                if data is not None:  # informational: the fp16 graph targets CUDA, the CPU provider runs it via casts
                    batches, labels, n, _ = data
                    try:
                        c16 = _compare(ref, predict_onnx(_session(tmp / FP16_FILE, threads), batches, n), labels, C)
                        c16.pop("metrics")
                        parity_rec["fp16_cpu_informational"] = c16
                    except Exception as e:  # noqa: BLE001
                        parity_rec["fp16_cpu_informational"] = {"error": f"{type(e).__name__}: {e}"[:200]}
                times["fp16_s"] = time.perf_counter() - t0

            # tokenizer + labels
            tok_info = _write_tokenizer(tok, student, tmp, max_length)
            atomic_write_json(tmp / "labels.json", {"label_names": label_names,
                                                    "id2label": {str(i): n for i, n in enumerate(label_names)}})

            # latency + sizes
            latency = {}
            if latency_runs > 0:
                t0 = time.perf_counter()
                latency = measure_latency(model, {"ort_fp32": sess32, "ort_int8": _session(tmp / INT8_FILE, threads)},
                                          int(enc_cfg.vocab_size), threads=threads, runs=latency_runs,
                                          seq_len=min(128, int(getattr(enc_cfg, "max_position_embeddings", 512)) - 2))
                times["latency_s"] = time.perf_counter() - t0
            del sess32
            sizes = _sizes(run_dir, student, models)
            shutil.rmtree(work)
            _make_readable(tmp)

            import onnx
            import onnxruntime
            import tokenizers
            import transformers

            times["total_s"] = time.perf_counter() - t_start
            manifest = {
                "format": FORMAT,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "source_run": str(run_dir.resolve()),
                "student_sha256": sha256_file(student / "model.safetensors"),
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
                "sizes_mb": sizes,
                "student": {"model_type": enc_cfg.model_type, "layers": meta.get("num_layers"),
                            "hidden_size": meta.get("hidden_size"), "pooling": meta.get("pooling")},
                "times_s": {k: round(v, 2) for k, v in times.items()},
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__},
                "usage": USAGE,
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            _make_readable(tmp)
    except DistillError:
        raise
    except OSError as e:
        raise DistillError(f"cannot write the export folder {out}: {e}. "
                           "Choose another --out or free disk space.") from None

    md = render_export_markdown(manifest, out)
    _update_report(run_dir, out, manifest, md)
    if not quiet:
        _print_summary(manifest, out)
    return not failures


def _check_out(run_dir: Path, out: Path) -> None:
    """Refuse export folders that would replace something that is not an export (the folder is
    replaced as a whole), and unwritable locations."""
    from distill.runio import check_writable

    if out.exists() and not out.is_dir():
        raise DistillError(f"export folder {out} exists and is not a folder; choose another --out.")
    o, r = out.resolve(), run_dir.resolve()
    if o == r or o in r.parents or any(o == r / p or (r / p) in o.parents for p in ("student", "teachers")):
        raise DistillError(f"--out {out} would replace the run folder or its models; use e.g. {run_dir / 'export'}.")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DistillError(f"--out {out} is a non-empty folder that is not an export (no manifest.json) and would be "
                           "replaced; choose a new or empty folder.")
    check_writable(out.parent)


def _quantized_ops(path: Path) -> dict:
    """Counts of the quantized operators in an INT8 graph (shows what the quantizer covered)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    q = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "QGemm",
         "DynamicQuantizeLinear", "ConvInteger", "DequantizeLinear"}
    counts: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type in q:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _make_readable(folder: Path) -> None:
    """The temporary folder and its files are private (0700/0600); give the export the usual
    umask-based modes so a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _sizes(run_dir: Path, student: Path, models: dict) -> dict:
    from distill.modeling import weights_size_mb

    teachers = {}
    names = []
    rep = run_dir / "report.json"
    if rep.is_file():
        with contextlib.suppress(Exception):
            names = [t["name"] for t in json.loads(rep.read_text()).get("teachers", [])]
    for i, t in enumerate(sorted((run_dir / "teachers").glob("teacher_*"), key=lambda p: p.name)):
        teachers[names[i] if i < len(names) else t.name] = round(weights_size_mb(t), 3)
    s = {"teachers": teachers, "teachers_total": round(sum(teachers.values()), 3),
         "student_safetensors": round(weights_size_mb(student), 3)}
    for k, v in models.items():
        s[f"onnx_{k}"] = v["mb"]
    int8 = s["onnx_int8"]
    s["ratios"] = {"onnx_fp32_over_int8": round(s["onnx_fp32"] / int8, 2),
                   "student_over_onnx_int8": round(s["student_safetensors"] / int8, 2)}
    if s["teachers_total"]:
        s["ratios"]["teachers_over_onnx_int8"] = round(s["teachers_total"] / int8, 2)
        s["ratios"]["teachers_over_student"] = round(s["teachers_total"] / s["student_safetensors"], 2)
    return s


def render_export_markdown(m: dict, out: Path | None = None) -> str:
    """Markdown of the export: files, parity proof, size table (MB) and latency (ms)."""
    L = []
    L.append(f"Export `{m['export_id']}`{f' in `{out}`' if out else ''} ({m['created']}); "
             f"{m['optimizer']['exporter']}; graph optimizer: {_opt_text(m['optimizer'])}; INT8: ONNX Runtime "
             f"dynamic quantization, QInt8 weights "
             f"({'per-channel' if m['models']['int8']['per_channel'] else 'per-tensor'}).\n")
    p = m["parity"]
    if p.get("checked") and "fp32" in p:
        t, f32, i8 = p["targets"], p["fp32"], p["int8"]
        L.append(f"**Parity** on the test split ({p['n']} texts, max length {p['max_length']}): "
                 f"{'all targets met' if p['passed'] else 'TARGETS MISSED: ' + '; '.join(p['failures'])}.\n")
        L.append("| model | max abs logit diff vs PyTorch | agreement (%) | accuracy | macro-F1 |")
        L.append("|---|---:|---:|---:|---:|")
        tm = m["test_metrics"]
        L.append(f"| PyTorch fp32 | - | - | {tm['pytorch']['accuracy']:.2f} | {tm['pytorch']['macro_f1']:.2f} |")
        L.append(f"| ONNX fp32 | {f32['max_abs_logit_diff']:.2e} (target <= {t['fp32_max_abs_logit_diff']:.0e}) | "
                 f"{f32['agreement_pct']:.2f} | {tm['onnx_fp32']['accuracy']:.2f} | "
                 f"{tm['onnx_fp32']['macro_f1']:.2f} |")
        L.append(f"| ONNX INT8 | {i8['max_abs_logit_diff']:.2e} | {i8['agreement_pct']:.2f} (target >= "
                 f"{t['int8_agreement_pct']:g}) | {tm['onnx_int8']['accuracy']:.2f} ({i8['accuracy_diff_pts']:+.2f}) | "
                 f"{tm['onnx_int8']['macro_f1']:.2f} ({i8['macro_f1_diff_pts']:+.2f}) |")
        L.append("")
    else:
        L.append("**Parity:** not checked.\n")
    s = m["sizes_mb"]
    int8 = s["onnx_int8"]
    L.append("| artefact | MB | x INT8 size |")
    L.append("|---|---:|---:|")
    for name, mb in s["teachers"].items():
        L.append(f"| teacher {name} (safetensors) | {mb:.1f} | {mb / int8:.2f} |")
    if len(s["teachers"]) > 1:
        L.append(f"| all teachers | {s['teachers_total']:.1f} | {s['teachers_total'] / int8:.2f} |")
    L.append(f"| student (safetensors) | {s['student_safetensors']:.1f} | {s['student_safetensors'] / int8:.2f} |")
    L.append(f"| ONNX fp32 | {s['onnx_fp32']:.1f} | {s['onnx_fp32'] / int8:.2f} |")
    if "onnx_fp16" in s:
        L.append(f"| ONNX fp16 | {s['onnx_fp16']:.1f} | {s['onnx_fp16'] / int8:.2f} |")
    L.append(f"| ONNX INT8 | {int8:.1f} | 1.00 |")
    L.append("\nMB = 10^6 bytes.\n")
    lat = m.get("latency_ms") or {}
    if lat:
        bs = [k for k in lat.get("pytorch_fp32", {})]
        L.append(f"Latency (ms per call, median of {lat['runs']} after warm-up, sequence length {lat['seq_len']}, "
                 f"{lat['threads']} threads, CPU):\n")
        L.append("| runtime | " + " | ".join(b.replace("_", " ") for b in bs) + " |")
        L.append("|---|" + "---:|" * len(bs))
        for k, label in (("pytorch_fp32", "PyTorch fp32"), ("ort_fp32", "ONNX Runtime fp32"),
                         ("ort_int8", "ONNX Runtime INT8")):
            if k in lat:
                L.append(f"| {label} | " + " | ".join(f"{lat[k][b]:.1f}" for b in bs) + " |")
        L.append("")
    return "\n".join(L)


def _opt_text(o: dict) -> str:
    if o.get("fusion") == "bert":
        ops = ", ".join(f"{k} x{v}" for k, v in o["fused_ops"].items())
        return f"onnxruntime.transformers `bert` fusion ({ops})"
    return f"fusion skipped ({o.get('reason')}); {o.get('note')}"


def _update_report(run_dir: Path, out: Path, manifest: dict, md: str) -> None:
    """Add ``report["export"]`` to ``run_dir/report.json`` and re-render ``report.md`` (skipped with a
    warning when the run has no report or it cannot be written)."""
    from distill.report import render_markdown
    from distill.runio import atomic_write_json, atomic_write_text

    rep = run_dir / "report.json"
    if not rep.is_file():
        log.warning("%s has no report.json; the export summary is only in %s/manifest.json", run_dir, out)
        return
    try:
        report = json.loads(rep.read_text())
        try:
            folder = str(out.resolve().relative_to(run_dir.resolve()))
        except ValueError:
            folder = str(out.resolve())
        report["export"] = {"folder": folder, "export_id": manifest["export_id"], "created": manifest["created"],
                            "passed": manifest["parity"].get("passed"), "parity": manifest["parity"],
                            "test_metrics": manifest["test_metrics"], "sizes_mb": manifest["sizes_mb"],
                            "latency_ms": manifest["latency_ms"], "optimizer": manifest["optimizer"],
                            "markdown": md}
        atomic_write_json(rep, report)
        atomic_write_text(run_dir / "report.md", render_markdown(report))
    except (OSError, ValueError, KeyError) as e:
        log.warning("could not update %s with the export summary (%s); see %s/manifest.json", rep, e, out)


def _print_summary(m: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(120, Console().width))
    p, s, lat = m["parity"], m["sizes_mb"], m.get("latency_ms") or {}
    t = Table(title=f"ONNX export {m['export_id']} -> {out}", show_header=True)
    for c in ("model", "MB", "max |dlogit|", "agree %", "acc", "macro-F1", "ms b1", "ms b32"):
        t.add_column(c, justify="right" if c != "model" else "left", no_wrap=True)
    tm = m["test_metrics"]

    def row(name, key, pk, mk, lk):
        pr = p.get(pk, {}) if pk else {}
        mt = tm.get(mk, {})
        lt = lat.get(lk, {})
        t.add_row(name, f"{s[key]:.1f}" if key in s else "-",
                  f"{pr['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in pr else "-",
                  f"{pr['agreement_pct']:.2f}" if "agreement_pct" in pr else "-",
                  f"{mt['accuracy']:.2f}" if mt else "-", f"{mt['macro_f1']:.2f}" if mt else "-",
                  f"{lt['batch_1']:.1f}" if "batch_1" in lt else "-",
                  f"{lt['batch_32']:.1f}" if "batch_32" in lt else "-")

    row("PyTorch fp32", "student_safetensors", None, "pytorch", "pytorch_fp32")
    row("ONNX fp32", "onnx_fp32", "fp32", "onnx_fp32", "ort_fp32")
    row(f"ONNX INT8 ({'per-ch' if m['models']['int8']['per_channel'] else 'per-tensor'})", "onnx_int8", "int8",
        "onnx_int8", "ort_int8")
    if "fp16" in m["models"]:
        row("ONNX fp16", "onnx_fp16", None, None, None)
    con.print(t)
    r = s["ratios"]
    con.print(f"sizes: fp32/INT8 {r['onnx_fp32_over_int8']:.2f}x"
              + (f", teachers/INT8 {r['teachers_over_onnx_int8']:.2f}x" if "teachers_over_onnx_int8" in r else "")
              + f"; optimizer: {_opt_text(m['optimizer'])}; total {m['times_s'].get('total_s', 0):.1f} s")
    if not p.get("checked"):
        con.print("parity: not checked")
    elif p["passed"]:
        con.print("[green]parity: all targets met[/green]")
    else:
        con.print("[red]parity targets missed:[/red] " + "; ".join(p["failures"]))
