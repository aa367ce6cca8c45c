"""TensorRT backend (TensorRT 10/11 Python API + cuda-python, both from wheels).

Engines are specific to the GPU model and the TensorRT version. The bundle's own engine (``tensorrt``
artifact) is used when it was built for this GPU (``device``) and this TensorRT version
(``properties["tensorrt"]``); otherwise the runtime builds one from the bundle's ONNX at first start, with the
artifact's precision (INT8: from the bundle's explicit Q/DQ graph on TensorRT >= 11, or with the shipped
calibration cache on TensorRT 10; FP16 when neither exists), and caches it under ``$RTVP_EDGE_CACHE``
(default ``~/.cache/rtvp-edge/tensorrt``) keyed by the source graph's sha256, the GPU name, the TensorRT
version and the precision. The cache lives outside the bundle because a verified bundle refuses files it
does not list. File conventions follow ``export/tensorrt.py`` (which builds the bundle's engine).

``build_serialized_engine`` and ``EngineRunner`` are shared with ``rtvp-export`` (``export/tensorrt.py``).

NOT RUN in this repository (no GPU, no TensorRT on the development machines): written against the
TensorRT 10/11 Python API and tested against an emulation of it (``tests/fake_tensorrt.py``); the test with
real TensorRT skips with the reason. Validate on a GPU before trusting it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

from rtvp_edge.backends.base import Backend, artifact_bytes
from rtvp_edge.backends.cuda_runtime import INSTALL_HINT, Cuda, CudaError
from rtvp_edge.bundle import BundleError, BundleManifest, read_verified

log = logging.getLogger(__name__)


def engine_cache_dir() -> Path:
    return Path(os.environ.get("RTVP_EDGE_CACHE", Path.home() / ".cache" / "rtvp-edge")) / "tensorrt"


class TensorRTError(RuntimeError):
    """TensorRT could not parse, build or run a graph; the message names the file."""


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def built_precision(trt_version: str, precision: str) -> str:
    """The precision an engine asked for ``precision`` really has on this TensorRT version.

    TensorRT >= 11 is strongly typed: an FP32 graph builds FP32 whatever is asked (FP16 needs a mixed-precision
    graph from ModelOpt AutoCast, which this project does not make); INT8 comes from the Q/DQ graph's types.
    """
    return "fp32" if trt_major(trt_version) >= 11 and precision == "fp16" else precision


def build_serialized_engine(
    trt,
    onnx_path: str | os.PathLike,
    precision: str,
    *,
    calibrator=None,
    embeddings_input: str | None = "text_embeddings",
    max_batch: int = 8,
    opt_batch: int = 6,
    max_classes: int = 64,
    workspace_bytes: int = 1 << 30,
    onnx_bytes: bytes | None = None,
) -> bytes:
    """Parse an ONNX file and build a serialized engine; shared by ``rtvp-export`` and the runtime.

    Precision, by TensorRT version:
    - 10.x (weakly typed): ``fp16`` and ``int8`` set the FP16 flag (layers kept out of INT8 run in FP16);
      ``int8`` sets the INT8 flag and uses ``calibrator`` (an ``IInt8EntropyCalibrator2``) when given, or the
      graph's own Q/DQ nodes.
    - >= 11 (strongly typed, no precision flags, no calibrators): the graph's types decide. INT8 comes from a
      Q/DQ graph; an FP32 graph asked for ``fp16`` builds FP32 (TensorRT 11 wants a mixed-precision graph from
      ModelOpt AutoCast, which this project does not make) and says so in the log.

    Dynamic axes get one optimisation profile: the batch axis ``[1, opt_batch, max_batch]`` and, for graphs in
    vocabulary mode ``input``, the class axis of ``embeddings_input`` ``[1, min(8, max_classes), max_classes]``.

    ``onnx_bytes``: the graph, already read (and hashed) by the caller; ``onnx_path`` then only names it.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    major = trt_major(trt.__version__)
    if calibrator is not None and (major >= 11 or precision != "int8"):
        raise ValueError(
            f"an INT8 calibrator needs precision int8 on TensorRT 10 (asked {precision} on TensorRT "
            f"{trt.__version__}); TensorRT >= 11 builds INT8 from a Q/DQ graph"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes if onnx_bytes is not None else Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if major < 11:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if calibrator is not None:
                config.int8_calibrator = calibrator
    elif built_precision(trt.__version__, precision) != precision:
        log.warning("TensorRT %s is strongly typed: %s builds with the graph's own types (FP32), not FP16",
                    trt.__version__, Path(onnx_path).name)  # fmt: skip
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if shape[0] != -1:
            continue
        if embeddings_input and tensor.name == embeddings_input:  # (C, D): the vocabulary may grow
            d = shape[1]
            profile.set_shape(tensor.name, [1, d], [max(1, min(8, max_classes)), d], [max_classes, d])
        else:
            rest = shape[1:]
            profile.set_shape(tensor.name, [1, *rest], [min(opt_batch, max_batch), *rest], [max_batch, *rest])
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.set_calibration_profile(profile)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise TensorRTError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    return bytes(data)


class EngineRunner:
    """Runs one deserialized engine: ``run({input: array}, [outputs]) -> [arrays]``.

    ``cuda`` is a ``rtvp_edge.backends.cuda_runtime.Cuda`` for the GPU the engine runs on; each ``run`` makes
    it current for the calling thread (the runtime API's current device is per thread), so the runner may be
    called from any one thread at a time. Device buffers live for one call and are freed before it returns;
    the stream lives until ``close``.
    """

    def __init__(self, trt, cuda, engine_bytes: bytes, source: str | os.PathLike):
        self.trt, self.cuda = trt, cuda
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise TensorRTError(
                f"{source}: TensorRT cannot deserialize the engine (other GPU or TensorRT version?)"
            )
        self.context = self.engine.create_execution_context()
        cuda.use()
        self.stream: int | None = cuda.create_stream()

    def _other_outputs(self, outputs: list[str] | tuple[str, ...]) -> list[str]:
        """The engine's output tensors not in ``outputs``."""
        engine, trt = self.engine, self.trt
        if not hasattr(engine, "num_io_tensors"):
            return []
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT and n not in outputs]

    def _output_array(self, name: str) -> np.ndarray:
        shape = tuple(self.context.get_tensor_shape(name))
        return np.empty(shape, self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | tuple[str, ...]) -> list[np.ndarray]:
        if self.stream is None:
            raise TensorRTError("the TensorRT runner is closed")
        cuda = self.cuda
        cuda.use()
        buffers, host_out, host_in = [], [], []
        try:
            for name, arr in feeds.items():
                arr = np.ascontiguousarray(arr, np.float32)
                host_in.append(arr)  # alive until the stream is synchronized
                self.context.set_input_shape(name, arr.shape)
                d = cuda.malloc(arr.nbytes)
                buffers.append(d)
                cuda.to_device(d, arr, self.stream)
                self.context.set_tensor_address(name, d)
            for name in outputs:
                host = self._output_array(name)
                d = cuda.malloc(host.nbytes)
                buffers.append(d)
                self.context.set_tensor_address(name, d)
                host_out.append((host, d))
            for name in self._other_outputs(outputs):
                # every output needs an address (an input-mode graph also has region_embeddings): bound,
                # computed, not copied back
                d = cuda.malloc(self._output_array(name).nbytes)
                buffers.append(d)
                self.context.set_tensor_address(name, d)
            if not self.context.execute_async_v3(self.stream):
                raise TensorRTError("TensorRT execute_async_v3 failed")
            for host, d in host_out:
                cuda.to_host(host, d, self.stream)
            cuda.synchronize(self.stream)
            return [host.astype(np.float32, copy=False) for host, _ in host_out]
        finally:
            for d in buffers:
                cuda.free(d)

    def close(self) -> None:
        if self.stream is not None:
            self.cuda.use()
            self.cuda.destroy_stream(self.stream)
            self.stream = None


class TensorRTBackend(Backend):
    name = "tensorrt"

    max_batch = 8  # optimisation profile upper bound for dynamic-batch graphs (rig: 6 views per part)

    def load(self, bundle_dir: str | Path, manifest: BundleManifest, device: str, threads: int) -> None:
        try:
            import tensorrt as trt

            from rtvp_edge.backends.cuda_runtime import import_cudart

            cudart = import_cudart()
        except ImportError as e:
            raise BundleError(
                f"backend tensorrt needs TensorRT and cuda-python ({e}); {INSTALL_HINT}"
            ) from None
        self.manifest = manifest
        self._trt = trt
        self._lock = threading.Lock()
        self.bundle_dir = Path(bundle_dir)
        gpu = int(device) if str(device).isdigit() else 0
        try:
            self._cuda = Cuda(gpu, cudart)
        except (
            CudaError,
            RuntimeError,
            OSError,
        ) as e:  # RuntimeError/OSError: the driver library did not load
            raise BundleError(f"backend tensorrt on GPU {gpu}: {e}") from None
        self.gpu_name = self._cuda.name
        engine_path, engine = self._shipped_engine() or self._cached_engine()
        try:
            self.runner = EngineRunner(trt, self._cuda, engine, engine_path)
        except TensorRTError as e:
            hint = (
                "; delete it and the next start rebuilds it"
                if engine_cache_dir() in engine_path.parents
                else ""
            )
            raise BundleError(f"{e}{hint}") from None
        self.engine_path = engine_path

    def _trt_artifact(self):
        return next((a for a in self.manifest.artifacts if a.backend == "tensorrt"), None)

    def _shipped_engine(self) -> tuple[Path, bytes] | None:
        """The bundle's own engine (path, hashed bytes) when it was built for this GPU model and this
        TensorRT version."""
        art = self._trt_artifact()
        if art is None:
            return None
        built_for = (art.device, art.properties.get("tensorrt"))
        if built_for != (self.gpu_name, self._trt.__version__):
            log.info(
                "bundle engine %s was built for %s / TensorRT %s; this is %s / TensorRT %s: building one",
                art.path, built_for[0], built_for[1], self.gpu_name, self._trt.__version__,
            )  # fmt: skip
            return None
        return artifact_bytes(self.bundle_dir, self.manifest, "tensorrt")

    def _cached_engine(self) -> tuple[Path, bytes]:
        """Build (once) an engine from the bundle's ONNX for this GPU/TensorRT, cached outside the bundle and
        keyed by the sha256 of the (hashed) graph bytes it is built from."""
        trt = self._trt
        onnx_path, onnx = artifact_bytes(self.bundle_dir, self.manifest, "onnxruntime")
        files = self.manifest.files
        art = self._trt_artifact()
        precision = art.precision if art is not None else "fp16"  # fp16: the usual choice on a GPU
        source, calibration_cache = onnx_path, None
        if precision == "int8":
            qdq = "model_qdq.onnx"  # explicit Q/DQ graph (TensorRT >= 11 has no calibrators)
            cache = "tensorrt/calibration.cache"  # TensorRT 10 implicit INT8
            if trt_major(trt.__version__) < 11 and cache in files:
                calibration_cache = read_verified(self.bundle_dir, self.manifest, cache, "calibration cache")
            elif qdq in files:  # TensorRT 10 builds explicit Q/DQ graphs too
                source = self.bundle_dir / qdq
                onnx = read_verified(self.bundle_dir, self.manifest, qdq, "Q/DQ graph")
            else:
                log.warning(
                    "INT8 bundle without Q/DQ graph or calibration cache for TensorRT %s: FP16 engine",
                    trt.__version__,
                )
                precision = "fp16"
        precision = built_precision(trt.__version__, precision)  # the cache key names what is built
        key = f"{hashlib.sha256(onnx).hexdigest()[:16]}-{re.sub(r'[^A-Za-z0-9]+', '_', self.gpu_name)}-trt{trt.__version__}-{precision}"
        engine_path = engine_cache_dir() / f"{key}.engine"
        if not engine_path.is_file():
            log.info(
                "building a TensorRT engine for %s from %s (first start; minutes)", self.gpu_name, source.name
            )
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            data = self._build(source, onnx, precision, calibration_cache)
            tmp = engine_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, engine_path)  # atomic: a crash mid-build never leaves a half engine
            return engine_path, data
        return engine_path, engine_path.read_bytes()

    def _build(self, onnx_path: Path, onnx: bytes, precision: str, calibration_cache: bytes | None) -> bytes:
        trt = self._trt
        calibrator = _cache_only_calibrator(trt, calibration_cache) if calibration_cache is not None else None
        try:
            return build_serialized_engine(
                trt, onnx_path, {"mixed": "fp16", "bf16": "fp16"}.get(precision, precision), calibrator=calibrator,
                embeddings_input=self.manifest.io.embeddings_input, max_batch=self.max_batch, onnx_bytes=onnx,
            )  # fmt: skip
        except TensorRTError as e:
            raise BundleError(str(e)) from None

    def _infer(self, batch: np.ndarray, embeddings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        io = self.manifest.io
        boxes, scores = self._run_outputs(batch, embeddings, [io.boxes_output, io.scores_output])
        return boxes, scores

    def _run_outputs(
        self, batch: np.ndarray, embeddings: np.ndarray | None, names: list[str]
    ) -> list[np.ndarray]:
        io = self.manifest.io
        feeds = {io.image_input: batch}
        if io.embeddings_input:
            feeds[io.embeddings_input] = embeddings
        with self._lock:
            return self.runner.run(feeds, names)

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            with self._lock:
                runner.close()


def _cache_only_calibrator(trt, cache: bytes):
    """An ``IInt8EntropyCalibrator2`` that only replays the calibration cache export shipped in the bundle
    (TensorRT 10 implicit INT8): no calibration images are needed on the edge box."""

    class CacheOnly(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ARG002 - never asked for data when the cache is valid
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            return None

    return CacheOnly()
