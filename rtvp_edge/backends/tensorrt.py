"""TensorRT backend (TensorRT 10/11 Python API + pycuda).

Engines are specific to the GPU model and the TensorRT version, so a bundle ships the ONNX graph and the
runtime builds the engine at first start, caching it under ``$RTVP_EDGE_CACHE`` (default
``~/.cache/rtvp-edge/tensorrt``) keyed by the ONNX sha256, the GPU name and the TensorRT version. The cache
lives outside the bundle because a verified bundle refuses files it does not list.

Not exercised in this repository's CI (no GPU/TensorRT there): its tests skip with a reason.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from rtvp_edge.backends.base import Backend, artifact_path
from rtvp_edge.bundle import BundleError, BundleManifest, sha256_file


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
        onnx_path = artifact_path(bundle_dir, manifest, "onnxruntime")
        cuda.init()
        gpu = int(device) if str(device).isdigit() else 0
        dev = cuda.Device(gpu)
        # A pycuda context is current on one thread only; infer() pushes/pops it around each call.
        self._ctx = dev.make_context()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            key = f"{sha256_file(onnx_path)[:16]}-{dev.name().replace(' ', '_')}-trt{trt.__version__}"
            engine_path = engine_cache_dir() / f"{key}.engine"
            if not engine_path.is_file():
                engine_path.parent.mkdir(parents=True, exist_ok=True)
                data = self._build(onnx_path, manifest)
                tmp = engine_path.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, engine_path)  # atomic: a crash mid-build never leaves a half engine
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise BundleError(f"{engine_path}: TensorRT could not deserialize the cached engine")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            self.engine_path = engine_path
        finally:
            self._ctx.pop()

    def _build(self, onnx_path: Path, manifest: BundleManifest) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BundleError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        precision = manifest.artifact("onnxruntime").precision
        if (
            precision in ("fp16", "mixed")
            or manifest.artifacts
            and any(a.backend == "tensorrt" and a.precision == "fp16" for a in manifest.artifacts)
        ):
            config.set_flag(trt.BuilderFlag.FP16)
        # INT8 bundles carry Q/DQ nodes in the ONNX (explicit quantization): no calibrator needed.
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = list(t.shape)
            if shape[0] == -1:
                lo, opt, hi = [1, *shape[1:]], [6, *shape[1:]], [self.max_batch, *shape[1:]]
                profile.set_shape(t.name, lo, opt, hi)
        config.add_optimization_profile(profile)
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
