"""INT8 quantization of the exported graph: dynamic (``quantize_dynamic``) and static (``quantize_static``).

* **dynamic** (:func:`quantize_dynamic_int8`): QInt8 weights, UInt8 activations whose ranges are
  computed per call. Input: the optimized fp32 graph. The default op set includes
  ``Attention``/``Gather``/``EmbedLayerNormalization``, so the fused attention weights and the
  word-embedding table (most of a small student's bytes) are quantized too.
* **static** (:func:`quantize_static_int8`): QDQ format (QuantizeLinear/DequantizeLinear pairs),
  QInt8 weights with per-channel scales, UInt8 activations with ranges fixed by calibration:
  ``MinMax`` over ``calibration_size`` training texts of the run (one unpadded text per call, so
  padding never widens a range). Input: the graph *as traced* (not fused), pre-processed by
  ``quant_pre_process`` (ONNX shape inference + ONNX Runtime basic optimizations), because ONNX
  Runtime's fused transformer ops (``Attention``, ``EmbedLayerNormalization``,
  ``SkipLayerNormalization``) have no QDQ form. Quantized op types: :data:`STATIC_OP_TYPES`
  (weight ``MatMul``/``Gemm``, ``Conv`` and the embedding ``Gather``). Excluded, kept fp32:
  ``MatMul`` nodes with no constant input (attention scores ``Q K^T`` and ``softmax(.) V``, whose
  activation x activation ranges calibrate badly) and every other op type: LayerNormalization,
  Softmax, GELU/Erf, Add/Mul, Tanh... (normalisation and attention are where static ranges hurt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from .graph import quiet

#: Op types :func:`quantize_static_int8` quantizes (weight MatMuls only; see the module docstring).
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather")

#: Operators that show a graph was quantized (counted in the manifest).
QUANT_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization", "QGemm",
             "DynamicQuantizeLinear", "ConvInteger", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
             "QLinearConv"}

CALIBRATION_METHODS = ("minmax", "percentile")


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool) -> dict:
    """Dynamic INT8 quantization (``onnxruntime.quantization.quantize_dynamic``, QInt8 weights).

    All supported op types are quantized; ``per_channel`` picks per-output-channel weight scales.

    Returns:
        the manifest's description of the method (tool, weight/activation types, per_channel).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        # fused contrib ops (Attention, SkipLayerNormalization...) have no ONNX type inference: say float32
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=False,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": "dynamic", "per_channel": bool(per_channel), "weight_type": "QInt8",
            "activations": "UInt8 (dynamic, ranges per call)", "tool": "onnxruntime.quantization.quantize_dynamic",
            "graph": "optimized fp32 graph (model.onnx)"}


class TextCalibrationReader(CalibrationDataReader):
    """``CalibrationDataReader`` over pre-tokenised texts: one feed dict per text.

    Args:
        batches: ``(input_ids, attention_mask, rows)`` tuples, int64 (1, L) each
            (:func:`serve.runtime.padded_batches` with ``batch_size=1``).
    """

    def __init__(self, batches):
        self.feeds = [{"input_ids": ids, "attention_mask": mask} for ids, mask, _ in batches]
        self.pos = 0

    def get_next(self) -> dict | None:
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def activation_matmuls(model) -> list[str]:
    """Names of the ``MatMul`` nodes of an ONNX ``model`` whose inputs are both computed (no
    initializer, no Constant output): the attention products, excluded from static quantization."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def quantize_static_int8(src: Path, dst: Path, batches, work: Path, per_channel: bool = True,
                         method: str = "minmax") -> dict:
    """Static QDQ INT8 quantization of the traced fp32 graph ``src`` calibrated on ``batches``.

    Args:
        src: the fp32 graph as traced (not fused; see the module docstring).
        dst: the INT8 model to write.
        batches: calibration inputs, one text per batch (see :class:`TextCalibrationReader`).
        work: a scratch folder (pre-processed graph).
        per_channel: per-output-channel weight scales (default) or per tensor.
        method: ``minmax`` (default) or ``percentile`` (99.999th percentile of |activation|).

    Returns:
        the manifest's description of the method (tool, format, types, calibration, excluded nodes).

    Raises:
        ValueError: unknown ``method`` or no calibration texts.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    if not batches:
        raise ValueError("static INT8 quantization needs at least one calibration text")
    # ONNX shape inference only: ORT's symbolic shape inference fails on the traced position-id pattern of
    # HF encoders and then saves "sym_shape_infer_temp.onnx" + external data into the working directory.
    pre, preprocess = work / "static-pre.onnx", "quant_pre_process (ONNX shape inference, ORT basic optimizations)"
    try:
        with quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - quantize the graph as traced
        pre, preprocess = src, f"skipped ({type(e).__name__}: {str(e)[:120]}); graph quantized as traced"
    graph = onnx.load(str(pre))
    excluded = activation_matmuls(graph)
    calib = CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with quiet():
        quantize_static(str(pre), str(dst), TextCalibrationReader(batches), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_OP_TYPES), per_channel=per_channel, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=calib, extra_options=extra)
    return {"method": "static", "per_channel": bool(per_channel), "format": "QDQ", "weight_type": "QInt8",
            "activations": "UInt8 (static, calibrated ranges)", "tool": "onnxruntime.quantization.quantize_static",
            "graph": "traced fp32 graph, not fused", "preprocess": preprocess,
            "calibration": {"method": {"minmax": "MinMax", "percentile": "Percentile 99.999"}[method],
                            "texts": len(batches), "protocol": "one unpadded text per call"},
            "op_types": list(STATIC_OP_TYPES),
            "excluded": {"activation_matmuls": len(excluded),
                         "note": "MatMuls without a constant input (attention) and all other op types stay fp32"}}


def quantized_ops(path: Path) -> dict:
    """Counts of the quantization operators in an INT8 graph (shows what the quantizer covered)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type in QUANT_OPS:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def calibration_rows(train_rows: list[int], size: int, seed: int = 0) -> list[int]:
    """``size`` training rows for calibration: a seeded random sample (all rows when fewer)."""
    if size >= len(train_rows):
        return list(train_rows)
    rng = np.random.default_rng(seed)
    return [train_rows[i] for i in sorted(rng.choice(len(train_rows), size=size, replace=False))]
