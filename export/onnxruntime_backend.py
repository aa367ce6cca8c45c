"""Target ``onnx`` (ONNX Runtime): the FP32 ONNX itself, or INT8 by ONNX Runtime static quantization in
explicit Q/DQ format.

``quantize_qdq`` has two users: ``--target onnx --int8`` (ONNX Runtime CPU), and TensorRT >= 11, which dropped
implicit INT8 calibration and builds INT8 engines only from explicit Q/DQ graphs.

Settings, chosen from measurements on this CPU: unsigned 8-bit activations (asymmetric, so post-SiLU ranges
are not wasted) with per-channel signed 8-bit weights; the graph tail and the default float blocks stay
float (``export.int8_policy``). Per-tensor QDQ came out slower than FP32 here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from export.calibration import CalibrationSet
from export.errors import ExportError
from export.int8_policy import DEFAULT_FLOAT_BLOCKS, keep_float_policy
from export.onnx_export import EMBEDDINGS, IMAGES
from export.targets import BuildContext, Built, Target
from rtvp_edge.bundle import Artifact

INT8_ONNX = "model_int8.onnx"


class OnnxRuntimeTarget(Target):
    """``model.onnx`` as exported and parity-checked (FP32), or its Q/DQ INT8 version (``model_int8.onnx``)."""

    name = "onnx"
    backend = "onnxruntime"

    def no_half_reason(self) -> str:
        return (
            "ONNX Runtime's CPU provider has no fast FP16; use --target openvino --half or --target tensorrt "
            "--half"
        )

    def build(self, ctx: BuildContext) -> Built:
        if ctx.int8 is None:
            return Built([ctx.onnx], golden=[ctx.onnx])
        q = ctx.int8
        _, info, kept = quantize_qdq(
            ctx.onnx_path,
            ctx.root / INT8_ONNX,
            ctx.calibration,
            ctx.model,
            ctx.embeddings,
            list(q.keep_float),
            q.float_blocks,
        )
        art = Artifact(
            backend="onnxruntime",
            path=INT8_ONNX,
            precision="int8",
            kept_float=kept,
            notes="QDQ: u8 activations, per-channel s8 weights",
        )
        return Built([art], golden=[art], measured=art, calibration=info)


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over the shared calibration set (batch 1)."""

    def __init__(self, calibration: CalibrationSet, embeddings: np.ndarray | None):
        self.calibration = calibration
        self.embeddings = embeddings
        self.i = 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.calibration):
            return None
        feeds = {IMAGES: self.calibration.sample(self.i)}
        if self.embeddings is not None:
            feeds[EMBEDDINGS] = self.embeddings
        self.i += 1
        return feeds

    def rewind(self) -> None:
        self.i = 0


def quantize_qdq(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: CalibrationSet,
    model: nn.Module,
    embeddings: np.ndarray | None = None,
    keep_float: list[str] = (),
    float_blocks: str | None = DEFAULT_FLOAT_BLOCKS,
    for_tensorrt: bool = False,
) -> tuple[Path, dict, list[str]]:
    """Q/DQ INT8 ONNX from the FP32 ONNX.

    Args:
        onnx_path: FP32 model from ``export.onnx_export``.
        out_path: output file.
        calibration: the shared calibration set.
        model: the source model (its top-level block names feed the keep-float policy).
        embeddings: (C, D) for vocabulary mode ``input``.
        keep_float: extra blocks to keep float.
        float_blocks: regex of top-level blocks kept float (None: quantize every block).
        for_tensorrt: what TensorRT explicit quantization requires: signed symmetric int8 activations
            (zero point 0) and float biases (no int32 bias quantization).
    Returns:
        (path, calibration info, kept-float reasons for the manifest).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(onnx_path), load_external_data=False)
    keep = keep_float_policy(
        graph,
        [n for n, _ in model.named_children()],
        float_blocks,
        keep_float,
    )
    t0 = time.perf_counter()
    try:
        quantize_static(
            str(onnx_path),
            str(out_path),
            _Reader(calibration, embeddings),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep.onnx_nodes(graph),
            extra_options={
                "ActivationSymmetric": for_tensorrt,
                "WeightSymmetric": True,
                "QuantizeBias": not for_tensorrt,
            },
        )
    except Exception as e:
        raise ExportError(f"ONNX Runtime INT8 quantization failed: {type(e).__name__}: {e}") from None
    q = onnx.load(str(out_path))
    n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    if n_q == 0:
        raise ExportError("ONNX Runtime quantization inserted no QuantizeLinear node")
    onnx.checker.check_model(q)
    import onnxruntime

    info = {
        "method": "onnxruntime.quantization.quantize_static (QDQ, MinMax)",
        "activations": "int8 symmetric per-tensor" if for_tensorrt else "uint8 asymmetric per-tensor",
        "weights": "int8 symmetric per-channel",
        "quantize_linear_nodes": n_q,
        "seconds": round(time.perf_counter() - t0, 2),
        "onnxruntime": onnxruntime.__version__,
    }
    return Path(out_path), info, keep.reasons
