"""Inference backends behind one interface, chosen from the line config through a plain dict."""

from __future__ import annotations

from pathlib import Path

from rtvp_edge.backends.base import Backend, InferCallback, load_embeddings
from rtvp_edge.backends.onnxruntime import OnnxRuntimeBackend
from rtvp_edge.backends.openvino import OpenVINOBackend
from rtvp_edge.backends.tensorrt import TensorRTBackend
from rtvp_edge.bundle import Artifact, BundleError, BundleManifest, IOInfo

BACKENDS: dict[str, type[Backend]] = {
    "openvino": OpenVINOBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "tensorrt": TensorRTBackend,
}


def load_backend(
    name: str,
    bundle_dir: str | Path,
    manifest: BundleManifest,
    device: str = "CPU",
    threads: int = 0,
    infer_requests: int = 2,
    artifact: Artifact | None = None,
) -> Backend:
    """Build and load the named backend for a verified bundle.

    Args:
        artifact: which of the bundle's artifacts to run (``rtvp_edge.artifact_choice``); None: the
            backend's first one (OpenVINO without an IR: the ONNX).

    Raises:
        BundleError: unknown backend, artifact missing, or the runtime cannot load it.
    """
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    backend = OpenVINOBackend(infer_requests) if name == "openvino" else BACKENDS[name]()
    backend.artifact = artifact
    backend.load(bundle_dir, manifest, device, threads)
    return backend


def open_model(
    name: str,
    path: str | Path,
    io: IOInfo | None = None,
    properties: dict[str, str] | None = None,
    device: str = "CPU",
    threads: int = 0,
) -> Backend:
    """The named backend over a model file that is not in a bundle: to time or compare a candidate
    artifact (benchmarks) with the same code a line runs. A line itself only runs verified bundles.

    Args:
        name: ``openvino`` (an IR ``.xml`` with its ``.bin``, or an ONNX file) or ``onnxruntime`` (ONNX).
        io: the graph's input/output names (default: the bundle contract's, folded vocabulary).
        properties: backend compile properties (OpenVINO, e.g. ``INFERENCE_PRECISION_HINT``).

    Raises:
        BundleError: unknown backend, one that runs bundle artifacts only (TensorRT), or a file it
            cannot load (the message names it).
    """
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    backend = BACKENDS[name]()
    backend.open_file(path, io or IOInfo(), properties, device, threads)
    return backend


__all__ = ["BACKENDS", "Backend", "InferCallback", "load_backend", "load_embeddings", "open_model"]
