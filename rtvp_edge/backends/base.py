"""One interface for every inference runtime (load, describe inputs, infer), one small class per runtime.

The model contract (bundle ``io``): input ``images`` (B, 3, H, W) float32 preprocessed per the manifest,
optional ``embeddings`` (C, D) float32 in vocabulary mode ``input``; outputs ``boxes`` (B, N, 4) xyxy in
model-input pixels and ``scores`` (B, N, C) class probabilities in [0, 1].
"""

from __future__ import annotations

import abc
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rtvp_edge.bundle import Artifact, BundleError, BundleManifest, IOInfo, bundle_path, read_verified

# callback(boxes (B,N,4), scores (B,N,C), error) -- exactly one of (outputs, error) is set.
InferCallback = Callable[[np.ndarray | None, np.ndarray | None, BaseException | None], None]


class Backend(abc.ABC):
    """An inference runtime running one bundle artifact.

    Lifecycle: ``load`` once, then ``infer`` (synchronous) or ``submit`` + ``wait_all`` (asynchronous:
    several batches in flight; OpenVINO implements it with an ``AsyncInferQueue``, the others run the
    request synchronously and call back at once). ``close`` releases the runtime.
    """

    name: str = "base"

    def __init__(self) -> None:
        self.manifest: BundleManifest | None = None
        self.fixed_batch: int = -1  # > 0 when the compiled artifact only accepts this batch size
        # Which of the bundle's artifacts to load (set before ``load``; None: the backend's first one).
        self.artifact: Artifact | None = None
        self._io: IOInfo | None = None  # the graph's names when opened from a file (``open_file``)

    @property
    def io(self) -> IOInfo:
        """The graph's input and output names: the bundle's ``io``, or those given to ``open_file``."""
        return self._io if self._io is not None else self.manifest.io

    @abc.abstractmethod
    def load(self, bundle_dir: str | Path, manifest: BundleManifest, device: str, threads: int) -> None:
        """Compile/load the bundle's artifact for this backend.

        Args:
            bundle_dir: the (already verified) bundle directory.
            manifest: its manifest.
            device: runtime device name (OpenVINO "CPU"/"GPU", ONNX Runtime "cpu"/"cuda", TensorRT GPU index).
            threads: CPU threads for inference, 0 for the runtime's default.
        Raises:
            BundleError: the artifact is missing or cannot be loaded (message names the file).
        """

    def open_file(
        self,
        path: str | Path,
        io: IOInfo,
        properties: dict[str, str] | None = None,
        device: str = "CPU",
        threads: int = 0,
    ) -> None:
        """Compile a model file that is not in a bundle (``rtvp_edge.backends.open_model``): to time or
        compare a candidate artifact. Nothing is hash-checked: a line runs bundles only (``load``).

        Args:
            path: the model file (an OpenVINO IR ``.xml`` is read with the ``.bin`` beside it).
            io: the graph's input/output names.
            properties: backend compile properties (e.g. OpenVINO ``INFERENCE_PRECISION_HINT``).
        Raises:
            BundleError: the backend runs bundle artifacts only, or cannot load the file (names it).
        """
        path = Path(path)
        self._io = io
        try:
            model = path.read_bytes()
            weights = path.with_suffix(".bin").read_bytes() if path.suffix == ".xml" else None
        except OSError as e:
            raise BundleError(f"{path}: cannot read the model file ({e})") from None
        self._open_bytes(path, model, weights, dict(properties or {}), device, threads)

    def _open_bytes(
        self, path: Path, model: bytes, weights: bytes | None, properties: dict, device: str, threads: int
    ) -> None:
        """Compile a model read from ``path`` (``open_file``)."""
        raise BundleError(f"backend {self.name} runs bundle artifacts only, not the file {path}")

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray, embeddings: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch whose size the artifact accepts."""

    def infer(self, batch: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the model.

        Args:
            batch: (B, 3, H, W) float32 preprocessed images.
            embeddings: (C, D) float32 class embeddings, only for bundles in vocabulary mode ``input``.
        Returns:
            boxes (B, N, 4) float32 xyxy in model-input pixels, scores (B, N, C) float32 in [0, 1].
        """
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise ValueError(f"expected a (B,3,H,W) float32 batch, got {batch.shape} {batch.dtype}")
        boxes, scores = self._chunked(batch, lambda chunk: self._infer(chunk, embeddings))
        self._check_outputs(batch.shape[0], boxes, scores, embeddings)
        return boxes, scores

    def infer_regions(
        self, batch: np.ndarray, embeddings: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the model and also return its region embeddings (what enrolment from example boxes needs).

        Args:
            batch: (B, 3, H, W) float32 preprocessed images.
            embeddings: (C, D) float32 class embeddings (vocabulary mode ``input``).
        Returns:
            boxes (B, N, 4), scores (B, N, C), regions (B, N, D) float32 L2-normalised region embeddings.
        Raises:
            BundleError: the bundle's graph has no region-embedding output (``io.region_output``), e.g. a
                folded bundle or one exported before it existed: re-export with ``--vocab-mode input``.
        """
        io = self.io
        if io.region_output is None:
            raise BundleError(
                f"{self.name}: the bundle's graph has no region-embedding output (io.region_output): "
                "re-export it with `rtvp-export --vocab-mode input`"
            )
        names = [io.boxes_output, io.scores_output, io.region_output]
        boxes, scores, regions = self._chunked(
            batch, lambda chunk: self._run_outputs(chunk, embeddings, names)
        )
        self._check_outputs(batch.shape[0], boxes, scores, embeddings)
        if regions.shape[:2] != boxes.shape[:2]:
            raise BundleError(f"{self.name}: region output has shape {regions.shape}, boxes {boxes.shape}")
        return boxes, scores, regions

    def _chunked(self, batch: np.ndarray, run) -> list[np.ndarray]:
        """``run(batch) -> outputs`` over batches the artifact accepts: a static-batch artifact runs in chunks
        of its batch, the last padded with zeros; each output is cut back and concatenated."""
        fb = self.fixed_batch
        if fb <= 0 or batch.shape[0] == fb:
            return list(run(np.ascontiguousarray(batch)))
        parts: list[list[np.ndarray]] = []
        for i in range(0, batch.shape[0], fb):
            chunk = batch[i : i + fb]
            n = chunk.shape[0]
            if n < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), np.float32)])
            parts.append([o[:n] for o in run(np.ascontiguousarray(chunk))])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _run_outputs(
        self, batch: np.ndarray, embeddings: np.ndarray | None, names: list[str]
    ) -> list[np.ndarray]:
        """The named graph outputs for one batch the artifact accepts."""
        raise BundleError(f"backend {self.name} cannot return extra graph outputs")

    def submit(self, batch: np.ndarray, embeddings: np.ndarray | None, callback: InferCallback) -> None:
        """Start inference of ``batch``; ``callback`` is called (possibly from another thread) when done.
        The default runs synchronously."""
        try:
            boxes, scores = self.infer(batch, embeddings)
        except Exception as e:  # noqa: BLE001 - handed to the caller's callback
            callback(None, None, e)
            return
        callback(boxes, scores, None)

    def wait_all(self) -> None:
        """Block until every submitted batch has called back."""
        return None  # synchronous backends have nothing in flight

    def close(self) -> None:
        """Release the runtime."""
        return None  # nothing to release for runtimes freed by garbage collection

    def describe(self) -> dict[str, Any]:
        """Backend name, device and input layout, for logs and the metrics event."""
        return {"backend": self.name, "fixed_batch": self.fixed_batch}

    def _check_outputs(
        self, n: int, boxes: np.ndarray, scores: np.ndarray, embeddings: np.ndarray | None = None
    ) -> None:
        if embeddings is not None:  # input mode: one score per class embedding given
            c = embeddings.shape[0]
        else:
            c = len(self.manifest.vocabulary.classes) if self.manifest else scores.shape[-1]
        if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise BundleError(f"{self.name}: boxes output has shape {boxes.shape}, expected ({n}, N, 4)")
        if scores.shape[:2] != boxes.shape[:2] or scores.shape[2] != c:
            raise BundleError(
                f"{self.name}: scores output has shape {scores.shape}, expected ({n}, {boxes.shape[1]}, {c})"
            )


def artifact_path(
    bundle_dir: str | Path, manifest: BundleManifest, backend: str, art: Artifact | None = None
) -> Path:
    """Where the backend's artifact (``art``, default its first) is, for messages and cache keys. Load
    ``artifact_bytes``, not this path."""
    art = art or manifest.artifact(backend)
    root = Path(bundle_dir).resolve()
    bundle_path(root, art.path, f"{backend} artifact path")
    p = Path(bundle_dir) / art.path
    if not p.is_file():
        raise BundleError(f"{p}: the {backend} artifact named in the manifest is missing")
    return p


def artifact_bytes(
    bundle_dir: str | Path, manifest: BundleManifest, backend: str, art: Artifact | None = None
) -> tuple[Path, bytes]:
    """The backend's artifact (``art``, default its first), read once and checked against the manifest's
    sha256: ``(path, bytes)``. Backends compile these bytes, never the path, so what runs is what was hashed."""
    art = art or manifest.artifact(backend)
    path = artifact_path(bundle_dir, manifest, backend, art)
    return path, read_verified(bundle_dir, manifest, art.path, f"{backend} artifact")


def load_embeddings(bundle_dir: str | Path, manifest: BundleManifest) -> np.ndarray | None:
    """The (C, D) float32 class embeddings for vocabulary mode ``input``; None when folded. The file is read
    once and checked against the manifest's sha256 (and ``vocabulary.embeddings_sha256``) before use."""
    voc = manifest.vocabulary
    if voc.mode != "input":
        return None
    p = Path(bundle_dir) / voc.embeddings_file
    data = read_verified(bundle_dir, manifest, voc.embeddings_file, "text embeddings file")
    if hashlib.sha256(data).hexdigest() != voc.embeddings_sha256:
        raise BundleError(f"{p}: sha256 differs from vocabulary.embeddings_sha256 in the manifest")
    try:
        emb = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"{p}: cannot read the text embeddings ({e})") from None
    if emb.shape != (len(voc.classes), voc.embedding_dim):
        raise BundleError(
            f"{p}: embeddings have shape {emb.shape}, the manifest says "
            f"({len(voc.classes)}, {voc.embedding_dim})"
        )
    return emb.astype(np.float32, copy=False)
