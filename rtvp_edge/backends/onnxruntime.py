"""ONNX Runtime backend: runs the bundle's ``model.onnx`` (CPU, or CUDA when the provider is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtvp_edge.backends.base import Backend, artifact_bytes
from rtvp_edge.bundle import BundleError, BundleManifest


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def load(self, bundle_dir: str | Path, manifest: BundleManifest, device: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError(
                "backend onnxruntime is not installed: pip install 'rtvp-edge[onnxruntime]'"
            ) from None
        self.manifest = manifest
        self.artifact = self.artifact or manifest.artifact("onnxruntime")
        # the hashed bytes, not the path
        path, model = artifact_bytes(bundle_dir, manifest, "onnxruntime", self.artifact)
        self._session(ort, path, model, device, threads)

    def _open_bytes(
        self, path: Path, model: bytes, weights: bytes | None, properties: dict, device: str, threads: int
    ) -> None:
        import onnxruntime as ort

        self._session(ort, path, model, device, threads)

    def _session(self, ort, path: Path, model: bytes, device: str, threads: int) -> None:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.lower().startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BundleError(f"onnxruntime: device {device!r} asked but CUDA provider not available")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: ONNX Runtime cannot load the model ({e})") from None
        io = self.io
        names = {i.name: i for i in self.session.get_inputs()}
        if io.image_input not in names:
            raise BundleError(f"{path}: no input {io.image_input!r} (inputs: {sorted(names)})")
        b = names[io.image_input].shape[0]
        self.fixed_batch = b if isinstance(b, int) and b > 0 else -1

    def _infer(self, batch: np.ndarray, embeddings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        io = self.io
        boxes, scores = self._run_outputs(batch, embeddings, [io.boxes_output, io.scores_output])
        return boxes, scores

    def _run_outputs(
        self, batch: np.ndarray, embeddings: np.ndarray | None, names: list[str]
    ) -> list[np.ndarray]:
        io = self.io
        feeds = {io.image_input: batch}
        if io.embeddings_input:
            feeds[io.embeddings_input] = embeddings
        return self.session.run(names, feeds)

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}
