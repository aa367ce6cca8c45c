"""Target ``openvino``: OpenVINO IR (FP32 / FP16 weights) and INT8 by NNCF post-training quantization.

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
from export.targets import BuildContext, Built, Target
from rtvp_edge.bundle import Artifact

log = logging.getLogger("rtvp_export")

# IR batch unless --batch says otherwise: one part of the reference rig (six views), the batch the runtime
# infers per part. Static shapes: bf16 1.08x, INT8 1.6x faster than the dynamic graph on this CPU.
DEFAULT_STATIC_BATCH = 6
IR = "openvino/model.xml"
FP32_IR = "openvino/model_fp32.xml"


class OpenVINOTarget(Target):
    """IR with FP32 or FP16 weights, or INT8 (NNCF) with optionally the FP32 IR beside it (``--keep-fp32``).

    Each IR records the compile properties its golden outputs and accuracy were measured with
    (``INFERENCE_PRECISION_HINT``: what this CPU runs float layers in), so the runtime compiles it the same way.
    """

    name = "openvino"
    backend = "openvino"
    half = True
    static_batch = True
    no_onnx = True
    keep_fp32 = True
    accuracy_control = True

    def build(self, ctx: BuildContext) -> Built:
        batch = ctx.options.batch if ctx.options.batch is not None else DEFAULT_STATIC_BATCH
        xml = ctx.root / IR
        if ctx.int8 is None:
            convert_ir(ctx.onnx_path, xml, half=ctx.options.half)
            if batch > 0:
                set_static_batch(xml, batch)
            precision = "fp16" if ctx.options.half else "fp32"
            art = Artifact(backend="openvino", path=IR, precision=precision)
            # bf16 execution differs from f32 by ~1e-2 relative; parity is checked at f32.
            ctx.check_parity(
                art.model_copy(update={"properties": {"INFERENCE_PRECISION_HINT": "f32"}}),
                "openvino",
                "OpenVINO IR (f32)",
                score_atol=5e-3 if ctx.options.half else 1e-3,
                box_atol=0.5 if ctx.options.half else 0.05,
                boxes_of_scored=ctx.options.half,
            )
            exec_prec = self._execution_precision(ctx, art)
            art = art.model_copy(
                update={
                    "properties": {"INFERENCE_PRECISION_HINT": exec_prec},
                    "notes": f"weights {precision}; runs in {exec_prec} on the export CPU",
                }
            )
            return Built([ctx.onnx, art], golden=[art], batch=batch)

        q = ctx.int8
        import onnx

        keep = keep_float_policy(
            onnx.load(str(ctx.onnx_path), load_external_data=False),
            [n for n, _ in ctx.model.named_children()],
            q.float_blocks,
            list(q.keep_float),
        )
        control = accuracy_control_validation(ctx) if q.accuracy_control else None
        xml, info = quantize_int8(ctx.onnx_path, xml, ctx.calibration, keep, ctx.embeddings, control)
        if ctx.options.half:
            recompress_fp16(xml)
        if batch > 0:
            set_static_batch(xml, batch)
        art = Artifact(backend="openvino", path=IR, precision="int8", kept_float=keep.reasons)
        exec_prec = self._execution_precision(ctx, art)
        art = art.model_copy(
            update={
                "properties": {"INFERENCE_PRECISION_HINT": exec_prec},
                "notes": f"INT8 by NNCF PTQ; float layers run in {exec_prec} on the export CPU",
            }
        )
        artifacts, golden = [ctx.onnx, art], [art]
        if q.keep_fp32:
            fp32 = self._fp32_ir(ctx, batch)
            artifacts.append(fp32)
            golden.append(fp32)
        return Built(artifacts, golden=golden, measured=art, calibration=info, batch=batch)

    @staticmethod
    def _execution_precision(ctx: BuildContext, art: Artifact) -> str:
        """What this CPU runs the IR's float layers in when compiled without a hint (``bf16`` on CPUs
        with bf16 units, else ``f32``), asked of the runtime backend."""
        with ctx.bundle.run(art) as backend:
            return backend.describe()["precision_hint"]

    @staticmethod
    def _fp32_ir(ctx: BuildContext, batch: int) -> Artifact:
        """``--keep-fp32``: the FP32 IR beside the INT8 one (same static batch), compiled at f32 so it is the
        FP32 reference on every CPU, parity-checked against PyTorch."""
        xml = convert_ir(ctx.onnx_path, ctx.root / FP32_IR, half=False)
        if batch > 0:
            set_static_batch(xml, batch)
        art = Artifact(
            backend="openvino",
            path=FP32_IR,
            precision="fp32",
            properties={"INFERENCE_PRECISION_HINT": "f32"},
            notes="FP32 IR kept beside INT8 (--keep-fp32): the runtime runs whichever is faster on its CPU",
        )
        ctx.check_parity(art, "openvino_fp32", "OpenVINO FP32 IR (f32)")
        return art


def recompress_fp16(xml: Path) -> None:
    """Store the float (kept-out-of-INT8) weights of an INT8 IR as FP16 (``--int8 --half``)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    tmp = xml.with_name("fp16_tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=True)
    del model
    os.replace(tmp, xml)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))


class _NNCFCompiled:
    """A model NNCF compiled during accuracy-controlled quantization, called like a runtime backend so the
    accuracy stage's own ``predict`` measures it."""

    fixed_batch = -1

    def __init__(self, compiled_model):
        self.compiled = compiled_model
        self.boxes, self.scores = compiled_model.output("boxes"), compiled_model.output("scores")

    def infer(self, batch: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        res = self.compiled(_transform(embeddings)(batch))
        return res[self.boxes], res[self.scores]


def accuracy_control_validation(ctx: BuildContext) -> tuple[list[np.ndarray], Callable, float]:
    """Validation samples and function for ``nncf.quantize_with_accuracy_control`` (AP50 in [0, 1]),
    computed exactly like the accuracy guard (``export.accuracy``)."""
    import cv2

    from export.accuracy import coco_metrics, predict
    from rtvp_edge.preprocess import preprocess

    eval_set = ctx.eval_set
    if eval_set is None:
        raise ExportError("--accuracy-control needs held-out annotated images: pass --eval-data DATASET")
    samples = [
        preprocess([cv2.imread(str(rec.path), cv2.IMREAD_COLOR)], ctx.spec)[0][0] for rec in eval_set.images
    ]

    def validate(compiled_model, data) -> float:  # noqa: ARG001 - ``data`` holds the same images as eval_set
        model = _NNCFCompiled(compiled_model)
        detections = predict(
            model,
            eval_set,
            ctx.spec,
            ctx.class_names,
            ctx.embeddings,
            "accuracy control",
            ctx.options.progress,
        )
        return coco_metrics(eval_set, detections, ctx.class_names)["AP50"] / 100.0

    return samples, validate, ctx.int8.accuracy.max_ap_drop / 100.0


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
