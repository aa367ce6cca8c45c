"""Inference backends behind one interface, chosen from the line config through a plain dict."""

from __future__ import annotations

from pathlib import Path

from rtvp_edge.backends.base import Backend, InferCallback, load_embeddings
from rtvp_edge.backends.onnxruntime import OnnxRuntimeBackend
from rtvp_edge.backends.openvino import OpenVINOBackend
from rtvp_edge.backends.tensorrt import TensorRTBackend
from rtvp_edge.bundle import Artifact, BundleError, BundleManifest

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


__all__ = ["BACKENDS", "Backend", "InferCallback", "load_backend", "load_embeddings"]
