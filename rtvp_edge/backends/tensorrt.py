"""TensorRT backend (TensorRT 10/11 Python API + pycuda).

Engines are specific to the GPU model and the TensorRT version. The bundle's own engine (``tensorrt``
artifact) is used when it was built for this GPU (``device``) and this TensorRT version
(``properties["tensorrt"]``); otherwise the runtime builds one from the bundle's ONNX at first start, with the
artifact's precision (INT8: from the bundle's explicit Q/DQ graph on TensorRT >= 11, or with the shipped
calibration cache on TensorRT 10; FP16 when neither exists), and caches it under ``$RTVP_EDGE_CACHE``
(default ``~/.cache/rtvp-edge/tensorrt``) keyed by the source graph's sha256, the GPU name, the TensorRT
version and the precision. The cache lives outside the bundle because a verified bundle refuses files it
does not list. File conventions follow ``export/tensorrt.py`` (which builds the bundle's engine).

NOT RUN in this repository (no GPU, no TensorRT on the development machines): written against the
TensorRT 10/11 Python API; its test skips with the reason. Validate on a GPU before trusting it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

from rtvp_edge.backends.base import Backend, artifact_path
from rtvp_edge.bundle import BundleError, BundleManifest, sha256_file

log = logging.getLogger(__name__)


def engine_cache_dir() -> Path:
    return Path(os.environ.get("RTVP_EDGE_CACHE", Path.home() / ".cache" / "rtvp-edge")) / "tensorrt"


class TensorRTBackend(Backend):
    name = "tensorrt"

    max_batch = 8  # optimisation profile upper bound for dynamic-batch graphs (rig: 6 views per part)

    def load(self, bundle_dir: str | Path, manifest: BundleManifest, device: str, threads: int) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise BundleError(
                f"backend tensorrt needs TensorRT and pycuda ({e}); pip install 'rtvp-edge[tensorrt]'"
            ) from None
        self.manifest = manifest
        self._trt, self._cuda = trt, cuda
        self._lock = threading.Lock()
        self.bundle_dir = Path(bundle_dir)
        cuda.init()
        gpu = int(device) if str(device).isdigit() else 0
        dev = cuda.Device(gpu)
        self.gpu_name = dev.name()
        # A pycuda context is current on one thread only; infer() pushes/pops it around each call.
        self._ctx = dev.make_context()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            engine_path = self._shipped_engine() or self._cached_engine()
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise BundleError(f"{engine_path}: TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            self.engine_path = engine_path
        finally:
            self._ctx.pop()

    def _trt_artifact(self):
        return next((a for a in self.manifest.artifacts if a.backend == "tensorrt"), None)

    def _shipped_engine(self) -> Path | None:
        """The bundle's own engine when it was built for this GPU model and this TensorRT version."""
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
        return artifact_path(self.bundle_dir, self.manifest, "tensorrt")

    def _cached_engine(self) -> Path:
        """Build (once) an engine from the bundle's ONNX for this GPU/TensorRT, cached outside the bundle."""
        trt = self._trt
        onnx_path = artifact_path(self.bundle_dir, self.manifest, "onnxruntime")
        art = self._trt_artifact()
        precision = art.precision if art is not None else "fp16"  # fp16: the usual choice on a GPU
        source, calibration_cache = onnx_path, None
        if precision == "int8":
            qdq = (
                self.bundle_dir / "model_qdq.onnx"
            )  # explicit Q/DQ graph (TensorRT >= 11 has no calibrators)
            cache = self.bundle_dir / "tensorrt" / "calibration.cache"  # TensorRT 10 implicit INT8
            if int(trt.__version__.split(".")[0]) >= 11 and qdq.is_file():
                source = qdq
            elif cache.is_file():
                calibration_cache = cache.read_bytes()
            else:
                log.warning(
                    "INT8 bundle without Q/DQ graph or calibration cache for TensorRT %s: FP16 engine",
                    trt.__version__,
                )
                precision = "fp16"
        key = f"{sha256_file(source)[:16]}-{re.sub(r'[^A-Za-z0-9]+', '_', self.gpu_name)}-trt{trt.__version__}-{precision}"
        engine_path = engine_cache_dir() / f"{key}.engine"
        if not engine_path.is_file():
            log.info(
                "building a TensorRT engine for %s from %s (first start; minutes)", self.gpu_name, source.name
            )
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            data = self._build(source, precision, calibration_cache)
            tmp = engine_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, engine_path)  # atomic: a crash mid-build never leaves a half engine
        return engine_path

    def _build(self, onnx_path: Path, precision: str, calibration_cache: bytes | None) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BundleError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        if precision in ("fp16", "int8", "mixed"):
            config.set_flag(trt.BuilderFlag.FP16)  # layers kept out of INT8 run in FP16
        if calibration_cache is not None:
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _cache_only_calibrator(trt, calibration_cache)
        profile = builder.create_optimization_profile()
        emb_name = self.manifest.io.embeddings_input
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = list(t.shape)
            if t.name == emb_name and shape[0] == -1:  # (C, D): the vocabulary may grow without a rebuild
                profile.set_shape(t.name, [1, shape[1]], [8, shape[1]], [64, shape[1]])
            elif shape[0] == -1:
                lo, opt, hi = [1, *shape[1:]], [6, *shape[1:]], [self.max_batch, *shape[1:]]
                profile.set_shape(t.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        if calibration_cache is not None:
            config.set_calibration_profile(profile)
        data = builder.build_serialized_network(network, config)
        if data is None:
            raise BundleError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
        return bytes(data)

    def _infer(self, batch: np.ndarray, embeddings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        trt, cuda = self._trt, self._cuda
        io = self.manifest.io
        feeds = {io.image_input: batch}
        if io.embeddings_input:
            feeds[io.embeddings_input] = embeddings
        with self._lock:
            self._ctx.push()
            try:
                buffers = []
                for name, arr in feeds.items():
                    self.context.set_input_shape(name, arr.shape)
                    d = cuda.mem_alloc(arr.nbytes)
                    cuda.memcpy_htod_async(d, np.ascontiguousarray(arr), self.stream)
                    self.context.set_tensor_address(name, int(d))
                    buffers.append(d)
                outs = {}
                for name in (io.boxes_output, io.scores_output):
                    shape = tuple(self.context.get_tensor_shape(name))
                    dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                    host = cuda.pagelocked_empty(shape, dtype)
                    d = cuda.mem_alloc(host.nbytes)
                    self.context.set_tensor_address(name, int(d))
                    buffers.append(d)
                    outs[name] = (host, d)
                if not self.context.execute_async_v3(self.stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                for host, d in outs.values():
                    cuda.memcpy_dtoh_async(host, d, self.stream)
                self.stream.synchronize()
                boxes = np.array(outs[io.boxes_output][0], dtype=np.float32)
                scores = np.array(outs[io.scores_output][0], dtype=np.float32)
            finally:
                for d in buffers:
                    d.free()
                self._ctx.pop()
        return boxes, scores

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.detach()
            self._ctx = None


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
