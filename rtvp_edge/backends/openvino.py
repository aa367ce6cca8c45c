"""OpenVINO backend: compiles the bundle's IR (or its ONNX when no IR is shipped) and runs several parts
in flight with an ``AsyncInferQueue`` (one infer request per part, THROUGHPUT-friendly on many-core CPUs)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

import numpy as np

from rtvp_edge.backends.base import Backend, InferCallback, artifact_bytes
from rtvp_edge.bundle import BundleError, BundleManifest, read_verified

log = logging.getLogger(__name__)


def cpu_float_precision(requested: str | None, capabilities: Collection[str]) -> str:
    """The precision OpenVINO's CPU plugin runs float layers in, for a requested
    ``INFERENCE_PRECISION_HINT`` on a CPU with these ``OPTIMIZATION_CAPABILITIES``.

    A reduced precision is a request, not an order: bf16 runs as bf16 only where the CPU has bf16 units
    (``"BF16"`` listed: AVX512-BF16 or AMX), f16 only where it lists ``"FP16"`` (else bf16 where there
    is bf16, else f32); everything else falls back to f32. No hint is the plugin's default, bf16 where
    available. The runtime compares this with what the compiled model reports (``describe()``) to
    explain a fallback; a bundle exported in bf16 on one machine runs in f32 on a CPU without bf16.

    Args:
        requested: ``"f32"``, ``"bf16"``, ``"f16"`` or None (no hint).
        capabilities: ``core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")``, e.g. ``["FP32", "BF16"]``.
    Returns:
        ``"f32"``, ``"bf16"`` or ``"f16"``.
    """
    caps = {c.upper() for c in capabilities}
    want = (requested or "bf16").lower()
    if want == "f16" and "FP16" not in caps:
        want = "bf16"
    if want == "bf16" and "BF16" not in caps:
        want = "f32"
    return want


def _type_name(value) -> str:
    """An ``ov.Type`` property (e.g. ``<Type: 'bfloat16'>``) as its short name (``bf16``)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, infer_requests: int = 2) -> None:
        super().__init__()
        self.infer_requests = infer_requests
        self._queue = None
        self._lock = threading.Lock()

    def load(self, bundle_dir: str | Path, manifest: BundleManifest, device: str, threads: int) -> None:
        import openvino as ov

        self.manifest = manifest
        if self.artifact is not None or any(a.backend == "openvino" for a in manifest.artifacts):
            art = self.artifact or manifest.artifact("openvino")
            path, model_bytes = artifact_bytes(bundle_dir, manifest, art.backend, art)
            weights_rel = art.path[: -len(".xml")] + ".bin" if art.path.endswith(".xml") else None
            # Compile exactly as export measured it: e.g. INFERENCE_PRECISION_HINT (a CPU with bf16 support
            # otherwise runs an FP32 IR in bf16, and the golden outputs would not match).
            config: dict = dict(art.properties)
        else:
            # OpenVINO reads ONNX directly; a bundle without an IR still runs (after a slower compile),
            # in f32 like the ONNX Runtime it was verified with.
            art = manifest.artifact("onnxruntime")
            path, model_bytes = artifact_bytes(bundle_dir, manifest, "onnxruntime", art)
            weights_rel = None
            config = dict(art.properties) or (
                {"INFERENCE_PRECISION_HINT": "f32"} if art.precision == "fp32" else {}
            )
        # Compile the bytes that were hashed: OpenVINO never opens a bundle path itself (an IR's .bin would
        # otherwise be read after, and apart from, the check).
        weights = (
            read_verified(bundle_dir, manifest, weights_rel, "openvino artifact weights")
            if weights_rel is not None
            else None
        )
        self.artifact = art
        self._compile(ov, path, model_bytes, weights, config, device, threads)

    def _open_bytes(
        self, path: Path, model: bytes, weights: bytes | None, properties: dict, device: str, threads: int
    ) -> None:
        import openvino as ov

        self._compile(ov, path, model, weights, properties, device, threads)

    def _compile(
        self,
        ov,
        path: Path,
        model_bytes: bytes,
        weights: bytes | None,
        config: dict,
        device: str,
        threads: int,
    ) -> None:
        core = ov.Core()
        if threads and device.upper().startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            if weights is not None:
                model = core.read_model(
                    model=model_bytes, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8))
                )
            else:
                model = core.read_model(model=model_bytes)
            self.compiled = core.compile_model(model, device.upper(), config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            raise BundleError(f"{path}: OpenVINO cannot compile the model for {device}: {e}") from None
        io = self.io
        names = {n for p in self.compiled.inputs for n in p.get_names()}
        if io.image_input not in names:
            raise BundleError(f"{path}: no input {io.image_input!r} (inputs: {sorted(names)})")
        pshape = self.compiled.input(io.image_input).get_partial_shape()
        self.fixed_batch = pshape[0].get_length() if pshape[0].is_static else -1
        self._request = self.compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self.compiled, self.infer_requests)
        self._queue.set_callback(self._done)
        self.device = device
        self.properties = config
        requested = config.get("INFERENCE_PRECISION_HINT")
        chosen = self.describe()["precision_hint"]
        if device.upper().startswith("CPU") and requested and str(requested).lower() != chosen:
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            log.warning(
                "%s: the artifact asks OpenVINO for %s, this CPU runs it in %s (its capabilities: %s); "
                "outputs differ slightly from those export measured",
                path,
                requested,
                chosen,
                ", ".join(caps),
            )

    def _feeds(self, batch: np.ndarray, embeddings: np.ndarray | None) -> dict:
        io = self.io
        feeds = {io.image_input: batch}
        if io.embeddings_input:
            feeds[io.embeddings_input] = embeddings
        return feeds

    def _infer(self, batch: np.ndarray, embeddings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        io = self.io
        with self._lock:  # one synchronous request object; async parts use the queue's own requests
            res = self._request.infer(self._feeds(batch, embeddings))
            return (
                np.array(res[self.compiled.output(io.boxes_output)]),
                np.array(res[self.compiled.output(io.scores_output)]),
            )

    def _run_outputs(
        self, batch: np.ndarray, embeddings: np.ndarray | None, names: list[str]
    ) -> list[np.ndarray]:
        with self._lock:
            res = self._request.infer(self._feeds(batch, embeddings))
            return [np.array(res[self.compiled.output(n)]) for n in names]

    def submit(self, batch: np.ndarray, embeddings: np.ndarray | None, callback: InferCallback) -> None:
        n = batch.shape[0]
        if self.fixed_batch > 0 and n > self.fixed_batch:
            super().submit(batch, embeddings, callback)  # chunked: synchronous path
            return
        if self.fixed_batch > 0 and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad])
        # start_async blocks while every request is busy: the bound on parts in flight.
        self._queue.start_async(
            self._feeds(np.ascontiguousarray(batch), embeddings), (callback, n, embeddings)
        )

    def _done(self, request, userdata) -> None:
        callback, n, embeddings = userdata
        io = self.io
        try:
            boxes = np.array(request.get_tensor(self.compiled.output(io.boxes_output)).data[:n])
            scores = np.array(request.get_tensor(self.compiled.output(io.scores_output)).data[:n])
            self._check_outputs(n, boxes, scores, embeddings)
        except Exception as e:  # noqa: BLE001 - reported through the callback
            callback(None, None, e)
            return
        callback(boxes, scores, None)

    def wait_all(self) -> None:
        if self._queue is not None:
            self._queue.wait_all()

    def close(self) -> None:
        self.wait_all()

    def describe(self) -> dict:
        """Adds ``precision_hint``: what the compiled model really runs float layers in (asked of
        OpenVINO, not copied from the request), and ``precision_requested``: what the artifact asked for."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type, e.g. f32 / bf16
        return {
            **super().describe(),
            "device": self.device,
            "infer_requests": self.infer_requests,
            "precision_hint": _type_name(hint),
            "precision_requested": self.properties.get("INFERENCE_PRECISION_HINT"),
        }
