"""Graph export: the student as an fp32 ONNX graph, ONNX Runtime's transformer optimisation, fp16.

1. ``torch.onnx.export(..., dynamo=False)``: the legacy TorchScript exporter traces a thin wrapper
   ``(input_ids, attention_mask) -> logits`` around the student. A transformer student's encoder is
   rebuilt with eager attention first, because the SDPA path traces into a pattern ONNX Runtime's
   attention fusion does not recognise.
2. ``onnxruntime.transformers.optimizer.optimize_model``: ONNX Runtime's transformer graph optimizer
   (``model_type="bert"`` for BERT-like encoders with ``num_heads``/``hidden_size`` from the config;
   attention mask kept raw so any padding side works). Architectures it does not know get ONNX
   Runtime's basic graph optimizations only. Students that are not transformers (``classifier.json``
   ``"architecture"`` other than ``"transformer"``, e.g. a TextCNN) skip it: their graph is kept as
   exported (ONNX Runtime still applies its generic optimizations when a session loads it).
3. optional ``onnxruntime.transformers`` float16 conversion (``keep_io_types=True``) for the CUDA provider.

Graph I/O: ``input_ids``, ``attention_mask`` int64 (batch, sequence) -> ``logits`` float32 (batch, classes).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from pathlib import Path

from distill.errors import DistillError

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"

#: Hugging Face ``model_type`` values whose graphs ONNX Runtime's ``bert`` fusion handles.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "ernie", "xlm",
             "mobilebert", "layoutlm", "splinter", "data2vec-text", "rembert"}


@contextlib.contextmanager
def quiet():
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


def is_transformer(model, meta: dict) -> bool:
    """True for a Hugging Face encoder student (``meta["architecture"]`` absent or ``"transformer"``,
    and the model has an ``encoder`` with a config)."""
    return (meta.get("architecture", "transformer") == "transformer"
            and getattr(getattr(model, "encoder", None), "config", None) is not None)


def vocab_size(model, tokenizer) -> int:
    """Token ids the model accepts: the encoder config's ``vocab_size``, else ``len(tokenizer)``."""
    cfg = getattr(getattr(model, "encoder", None), "config", None)
    return int(getattr(cfg, "vocab_size", 0) or len(tokenizer))


def _logits_only(model):
    """``nn.Module`` wrapper ``(input_ids, attention_mask) -> logits`` (built here so that importing
    this module does not import torch)."""
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


def export_fp32(model, path: Path, opset: int = 17, pad_id: int = 0, vocab: int | None = None,
                name: str | None = None) -> None:
    """Trace ``model`` (``model(input_ids, attention_mask).logits``) to an fp32 ONNX graph at ``path``.

    Graph I/O as in the module docstring, batch and sequence axes dynamic. The trace inputs are
    random ids below ``vocab`` (default: :func:`vocab_size` of an encoder's config), shape (2, 16),
    the second row padded. Uses the TorchScript exporter (``dynamo=False``).

    Raises:
        DistillError: the exporter fails (unsupported operator, custom code...), naming ``name``.
    """
    import torch

    wrapper = _logits_only(model)
    if vocab is None:
        vocab = int(model.encoder.config.vocab_size)
    name = name or getattr(getattr(getattr(model, "encoder", None), "config", None), "model_type", "student")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    ids[1, 11:] = pad_id
    dyn = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    dyn[OUTPUT_NAME] = {0: "batch"}
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(wrapper, (ids, mask), str(path), dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=dyn,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001
        raise DistillError(f"the student ({name}) cannot be exported to ONNX opset "
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
            with quiet():
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
        with quiet():
            opt = optimize_model(str(src), model_type="bert", opt_level=1, only_onnxruntime=True, use_gpu=False)
            opt.save_model_to_file(str(dst))
        info.update({"opt_level": 1, "note": "ONNX Runtime basic graph optimizations only"})
    except Exception as e:  # noqa: BLE001
        shutil.copyfile(src, dst)
        info.update({"opt_level": 0, "note": f"graph left as exported ({type(e).__name__})"})
    return info


def build_fp32(model, tokenizer, meta: dict, raw: Path, dst: Path, opset: int = 17) -> dict:
    """Export ``model`` to ``raw`` (as traced) and write the optimized fp32 graph to ``dst``.

    Transformer students (:func:`is_transformer`) are traced with eager attention and optimized by
    :func:`optimize_onnx`; other students are traced as they are and ``dst`` is a copy of ``raw``
    (optimizer recorded as ``"skipped: not a transformer"``).

    Returns:
        the manifest's ``optimizer`` dict (with ``exporter``).

    Raises:
        DistillError: the export fails (see :func:`export_fp32`).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    arch = meta.get("architecture", "transformer")
    if is_transformer(model, meta):
        from distill.modeling import EncoderClassifier

        cfg = model.encoder.config
        export_model = model
        eager = _eager_copy(model.encoder)
        if eager is not model.encoder:
            export_model = EncoderClassifier(eager, model.head, model.head.classifier.in_features)
            export_model.proj = model.proj
            export_model.eval()
        export_fp32(export_model, raw, opset=opset, pad_id=pad_id, vocab=vocab_size(model, tokenizer))
        del export_model, eager
        info = optimize_onnx(raw, dst, cfg.model_type, int(getattr(cfg, "num_attention_heads", 0) or 0),
                             int(cfg.hidden_size))
    else:
        export_fp32(model, raw, opset=opset, pad_id=pad_id, vocab=vocab_size(model, tokenizer), name=arch)
        shutil.copyfile(raw, dst)
        info = {"tool": None, "source_model_type": arch, "fusion": "skipped", "model_type": None,
                "reason": "skipped: not a transformer", "opt_level": 0,
                "note": "graph left as exported (ONNX Runtime applies its generic optimizations at load)"}
    info["exporter"] = f"torch.onnx.export (TorchScript, dynamo=False), opset {opset}"
    return info


def convert_fp16(src: Path, dst: Path) -> dict:
    """fp16 copy of an (optimized) fp32 graph for the CUDA provider; inputs/outputs stay int64/float32.

    Uses ``onnxruntime.transformers`` ``OnnxModel.convert_float_to_float16(keep_io_types=True)``.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    with quiet():
        m = OnnxModel(onnx.load(str(src)))
        m.convert_float_to_float16(keep_io_types=True)
        m.save_model_to_file(str(dst))
    return {"tool": "onnxruntime.transformers OnnxModel.convert_float_to_float16", "keep_io_types": True,
            "provider": "CUDAExecutionProvider"}
