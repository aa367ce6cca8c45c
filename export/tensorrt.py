"""TensorRT engines from the exported ONNX, through the TensorRT Python API and cuda-python.

Deliberately torch-free (numpy, tensorrt, cuda-python only) so the same engine-building code can run on an edge box
that has no torch; the runtime builds its own engine from the shipped ONNX at first start
(``rtvp_edge/backends/tensorrt.py``), because engines are tied to the GPU model and the TensorRT version.

INT8, by TensorRT version:
- TensorRT 10.x: implicit quantization with an ``IInt8EntropyCalibrator2`` fed from the shared calibration
  set; the calibration cache is written next to the engine and reused by later builds (same graph, same
  calibration set) so a rebuild for another GPU does not need the images again.
- TensorRT >= 11 removed implicit quantization and calibrators: the INT8 engine is built from an explicit
  Q/DQ ONNX (``export.onnxruntime_backend.quantize_qdq`` with symmetric int8 activations, which TensorRT requires).

Engines are named and recorded with the GPU name and TensorRT version:
``tensorrt/model.<gpu>.trt<version>.<precision>.engine``.

The engine build is the runtime's (``rtvp_edge.backends.tensorrt``): one code path for an engine made here and
one the edge box makes from the bundle's ONNX; the engine is run (golden outputs, accuracy guard) by the
runtime's TensorRT backend from the staged bundle.

NOT RUN in this repository: no GPU and no TensorRT on the development machines. The pieces that do not need
TensorRT (calibration batching, cache handling, naming, the Q/DQ ONNX) are tested, and the calls into TensorRT
are tested against an emulation of its 10.x/11.x API (``tests/fake_tensorrt.py``); TensorRT itself must be
validated on a GPU before this is trusted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.targets import BuildContext, Built, Target
from rtvp_edge.backends.cuda_runtime import Cuda, cuda_usable
from rtvp_edge.backends.tensorrt import build_serialized_engine, built_precision, trt_major

log = logging.getLogger("rtvp_export")

MAX_BATCH = 8  # optimisation-profile upper bound (rig: six views per part)
OPT_BATCH = 6


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when TensorRT, cuda-python and a CUDA GPU are usable here, else (False, why)."""
    try:
        import tensorrt as trt
    except ImportError:
        return (
            False,
            "TensorRT is not installed (pip install 'rtvp-edge[tensorrt]' on a machine with an NVIDIA GPU)",
        )
    usable, why = cuda_usable(0)
    if not usable:
        return False, why
    return True, trt.__version__


def engine_filename(gpu_name: str, trt_version: str, precision: str) -> str:
    """``model.<gpu>.trt<version>.<precision>.engine`` with the GPU name made file-safe."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_") or "gpu"
    return f"model.{gpu}.trt{trt_version}.{precision}.engine"


class CalibrationBatches:
    """Fixed-size, contiguous float32 batches for a TensorRT calibrator.

    TensorRT's calibrator asks for batches of exactly ``get_batch_size()`` images; the incomplete last batch is
    dropped rather than padded (padding with repeated images would bias the entropy histograms).

    Args:
        samples: N model inputs, each (3, H, W) float32 (``CalibrationSet.sample(i)[0]``).
        batch_size: images per batch.
    """

    def __init__(self, samples: Sequence[np.ndarray], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(samples) < batch_size:
            raise ValueError(f"{len(samples)} calibration images, fewer than one batch of {batch_size}")
        self.samples = samples
        self.batch_size = batch_size
        self.index = 0

    def __len__(self) -> int:
        return len(self.samples) // self.batch_size

    def next_batch(self) -> np.ndarray | None:
        """The next (B, 3, H, W) C-contiguous float32 batch, or None when exhausted."""
        if self.index + self.batch_size > len(self.samples):
            return None
        batch = np.stack(
            [np.asarray(s, np.float32) for s in self.samples[self.index : self.index + self.batch_size]]
        )
        self.index += self.batch_size
        return np.ascontiguousarray(batch)

    def reset(self) -> None:
        self.index = 0


class CalibrationCache:
    """The calibration cache file: read when present (no images needed), written after calibration."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> bytes | None:
        return self.path.read_bytes() if self.path.is_file() and self.path.stat().st_size > 0 else None

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, self.path)


def make_entropy_calibrator(batches: CalibrationBatches | None, cache: CalibrationCache, input_name: str):
    """An ``IInt8EntropyCalibrator2`` (TensorRT 10.x) over ``batches``, reusing ``cache``.

    With a cache present and ``batches`` None, TensorRT reads the ranges from the cache alone. The device
    buffer TensorRT reads a batch from is allocated on GPU 0 at the first batch and freed by ``close()``.
    """
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = batches
            self.device_input: int | None = None
            self.cuda: Cuda | None = None

        def get_batch_size(self) -> int:
            return batches.batch_size if batches is not None else 1

        def get_batch(self, names):  # noqa: ARG002 - one image input
            if self.batches is None:
                return None
            batch = self.batches.next_batch()
            if batch is None:
                return None
            if self.device_input is None:
                self.cuda = Cuda(0)
                self.device_input = self.cuda.malloc(batch.nbytes)
            self.cuda.use()  # TensorRT may ask from another thread than the one that allocated
            self.cuda.to_device(self.device_input, batch)  # synchronous: TensorRT reads it right after
            return [self.device_input]

        def close(self) -> None:
            if self.device_input is not None:
                self.cuda.use()
                self.cuda.free(self.device_input)
                self.device_input = None

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(bytes(data))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str = "fp32",
    calibrator=None,
    max_batch: int = MAX_BATCH,
    opt_batch: int = OPT_BATCH,
    max_classes: int = 64,
) -> Path:
    """Build and serialize a TensorRT engine from an ONNX file, written atomically to ``engine_path``.

    The build itself is the runtime's (``rtvp_edge.backends.tensorrt.build_serialized_engine``), so an engine
    made here and one the edge box makes from the bundle's ONNX come from the same code.

    Args:
        onnx_path: FP32 ONNX, or an explicit Q/DQ ONNX (INT8 on TensorRT >= 11).
        precision: fp32, fp16 or int8 (TensorRT 10: with ``calibrator`` or from a Q/DQ graph).
        calibrator: from ``make_entropy_calibrator`` (TensorRT 10.x only).
        max_batch, opt_batch: dynamic-batch optimisation profile (min 1).
        max_classes: upper bound of the vocabulary axis for graphs in vocabulary mode ``input``.
    """
    import tensorrt as trt

    data = build_serialized_engine(
        trt, onnx_path, precision, calibrator=calibrator, max_batch=max_batch, opt_batch=opt_batch,
        max_classes=max_classes,
    )  # fmt: skip
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, engine_path)
    return engine_path


def export_tensorrt(
    onnx_path: Path,
    bundle_dir: Path,
    calibration,
    half: bool,
    int8: bool,
    embeddings: np.ndarray | None,
    model=None,
):
    """An engine for this machine's GPU in ``bundle_dir/tensorrt/``.

    Returns its ``rtvp_edge.bundle.Artifact``. The edge box may instead build its own engine from
    ``model.onnx`` at first start (different GPU or TensorRT version).
    """
    import tensorrt as trt

    from rtvp_edge.bundle import Artifact

    gpu = Cuda(0).name
    precision = "int8" if int8 else "fp16" if half else "fp32"
    engine = (
        bundle_dir
        / "tensorrt"
        / engine_filename(gpu, trt.__version__, built_precision(trt.__version__, precision))
    )
    source = onnx_path
    calibrator = None
    notes = f"built for {gpu} with TensorRT {trt.__version__}"
    if int8:
        if trt_major(trt.__version__) >= 11:
            from export.onnxruntime_backend import quantize_qdq

            source, _, _ = quantize_qdq(
                onnx_path,
                bundle_dir / "model_qdq.onnx",
                calibration,
                model,
                embeddings,
                for_tensorrt=True,
            )
            notes += "; explicit Q/DQ ONNX (model_qdq.onnx)"
        else:
            samples = [calibration.sample(i)[0] for i in range(len(calibration))]
            cache = CalibrationCache(bundle_dir / "tensorrt" / "calibration.cache")
            calibrator = make_entropy_calibrator(
                CalibrationBatches(samples, min(8, len(samples))), cache, "images"
            )
            notes += "; IInt8EntropyCalibrator2, cache tensorrt/calibration.cache"
    try:
        build_engine(source, engine, precision, calibrator=calibrator)
    finally:
        if calibrator is not None:
            calibrator.close()  # the calibration batch's device buffer
    precision = built_precision(trt.__version__, precision)  # what the bundle records is what was built
    art = Artifact(
        backend="tensorrt",
        path=engine.relative_to(bundle_dir).as_posix(),
        precision=precision,
        device=gpu,
        notes=notes,
        properties={"tensorrt": trt.__version__},
    )
    return art


class TensorRTTarget(Target):
    """An engine for this machine's GPU (FP32, FP16 or INT8) beside the ONNX the edge box rebuilds from."""

    name = "tensorrt"
    backend = "tensorrt"
    half = True

    def available(self) -> tuple[bool, str]:
        ok, why = tensorrt_available()
        return ok, "" if ok else why

    def build(self, ctx: BuildContext) -> Built:
        int8 = ctx.int8 is not None
        art = export_tensorrt(
            ctx.onnx_path, ctx.root, ctx.calibration, ctx.options.half, int8, ctx.embeddings, ctx.model
        )
        return Built([ctx.onnx, art], golden=[art], measured=art if int8 else None)
