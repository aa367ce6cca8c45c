"""Stage: OpenVINO IR (FP32 / FP16 weights) and INT8 by NNCF post-training quantization.

What the CPU runs is not what the IR stores: on CPUs with bf16 support (AVX512-BF16 or AMX) OpenVINO's
default ``INFERENCE_PRECISION_HINT`` is bf16, so an "FP32" IR runs its float layers in bf16. The manifest
records the IR's weight precision and the compile properties the golden outputs and accuracy were measured
with (``Artifact.properties``), so the runtime compiles it the same way.

INT8 keeps in float (NNCF ``IgnoredScope``) what is known to hurt detection accuracy or not to pay:
- the graph's tail: the final score/box prediction layers, the sigmoid and the in-graph box decoding
  (found from the graph: every node between the outputs and the last weighted layer on each path);
- whole blocks where INT8 is not faster than bf16 on this CPU (by default the MobileSAM image encoder; see
  benchmarks/results/export.md for the figures behind that default).
The kept-float parts are listed in the manifest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.calibration import CalibrationSet
from export.errors import ExportError
from export.int8_policy import DEFAULT_FLOAT_BLOCKS, KeepFloat, keep_float_policy  # noqa: F401 (re-export)
from export.onnx_export import EMBEDDINGS, IMAGES

log = logging.getLogger("rtvp_export")


def convert_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, half: bool = False) -> Path:
    """ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``); ``half`` stores weights as FP16."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    # save_model compresses to FP16 by default; FP32 must be asked for explicitly.
    ov.save_model(model, str(xml_path), compress_to_fp16=half)
    return xml_path


def set_static_batch(xml_path: str | os.PathLike, batch: int) -> Path:
    """Rewrite an IR with a static batch on the image input (other axes unchanged, e.g. the class axis of
    ``text_embeddings`` stays dynamic). OpenVINO's CPU plugin runs static shapes faster, INT8 most of all."""
    import openvino as ov

    xml_path = Path(xml_path)
    model = ov.Core().read_model(str(xml_path))
    shape = model.input(IMAGES).get_partial_shape()
    shape[0] = batch
    model.reshape({IMAGES: shape})
    tmp = xml_path.with_name("static_tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # weights keep their stored precision
    del model
    os.replace(tmp, xml_path)
    os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    return xml_path


def _transform(embeddings: np.ndarray | None) -> Callable[[np.ndarray], dict]:
    def fn(sample: np.ndarray) -> dict:
        feeds = {IMAGES: sample[None] if sample.ndim == 3 else sample}
        if embeddings is not None:
            feeds[EMBEDDINGS] = embeddings
        return feeds

    return fn


def quantize_int8(
    ir_or_onnx: str | os.PathLike,
    xml_path: str | os.PathLike,
    calibration: CalibrationSet,
    keep: KeepFloat,
    embeddings: np.ndarray | None = None,
    accuracy_control: tuple[list[np.ndarray], Callable, float] | None = None,
) -> tuple[Path, dict]:
    """INT8 IR by NNCF post-training quantization.

    Args:
        ir_or_onnx: the FP32 source (ONNX file or IR .xml).
        xml_path: output IR path.
        calibration: the shared calibration set (each image once, batch 1).
        keep: nodes/blocks left in float (``IgnoredScope``).
        embeddings: (C, D) float32, for vocabulary mode ``input``.
        accuracy_control: optional ``(validation samples, validate_fn(compiled_model, samples) -> AP50 in
            [0, 1], max_drop in [0, 1])`` for ``nncf.quantize_with_accuracy_control``.
    Returns:
        (xml_path, info) with the NNCF settings and the time spent.
    """
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # NNCF logs every ignored node at INFO
    source = Path(ir_or_onnx)
    # An ONNX file goes through convert_model, as the FP32 IR does (``convert_ir``): read_model skips its
    # graph transformations (x*sigmoid(x) -> Swish, folding of shape sub-graphs), so NNCF would quantize the
    # Sigmoid and the Multiply of every SiLU apart and the CPU plugin could not fuse the activation into the
    # INT8 convolution (benchmarks/results/peers.md, the INT8 profile).
    model = (
        ov.convert_model(str(source))
        if source.suffix.lower() == ".onnx"
        else ov.Core().read_model(str(source))
    )
    samples = [calibration.sample(i)[0] for i in range(len(calibration))]  # each (3, H, W)
    dataset = nncf.Dataset(samples, _transform(embeddings))
    ignored = nncf.IgnoredScope(patterns=keep.patterns(), validate=False)
    t0 = time.perf_counter()
    # MIXED: symmetric weights, asymmetric activations, the right preset for SiLU/GELU networks.
    common = dict(preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples), ignored_scope=ignored)
    try:
        if accuracy_control is None:
            qmodel = nncf.quantize(model, dataset, fast_bias_correction=True, **common)
            method = "nncf.quantize"
        else:
            val_samples, validate, max_drop = accuracy_control
            qmodel = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(val_samples, _transform(embeddings)),
                validation_fn=validate,
                max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                **common,
            )
            method = "nncf.quantize_with_accuracy_control"
    except Exception as e:
        raise ExportError(f"INT8 quantization (NNCF) failed: {type(e).__name__}: {e}") from None
    seconds = time.perf_counter() - t0
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(qmodel, str(xml_path), compress_to_fp16=False)
    fq = sum(1 for op in qmodel.get_ops() if op.get_type_name() == "FakeQuantize")
    info = {
        "method": method,
        "preset": "mixed",
        "subset_size": len(samples),
        "fake_quantize_ops": fq,
        "seconds": round(seconds, 2),
        "nncf": nncf.__version__,
    }
    if fq == 0:
        raise ExportError("INT8 quantization inserted no quantizers: everything was kept float")
    return xml_path, info
