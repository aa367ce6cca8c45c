"""Batched inference of one part: the frames of every camera of a part go through the bundle's
preprocessing as one batch, run on the backend (asynchronously where it can), and are decoded (OpenCV
NMS) and filtered per view."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtvp_edge.assembler import AssembledPart
from rtvp_edge.backends.base import Backend, load_embeddings
from rtvp_edge.bundle import BundleManifest
from rtvp_edge.detection_filter import DetectionFilter
from rtvp_edge.messages import ViewResult
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import preprocess

# on_done(part, views or None, error or None, {"preprocess": ms, "inference": ms, "decode": ms})
PartCallback = Callable[[AssembledPart, list[ViewResult] | None, BaseException | None, dict], None]


@dataclass(frozen=True)
class InferenceVocabulary:
    """What inference needs of the running vocabulary, as one immutable value: a reload
    (``rtvp_edge.reload``) builds a new one and swaps it in whole, so a part is decoded with one vocabulary.

    Attributes:
        class_names: the C class names, in the order of the embeddings' rows / score columns.
        embeddings: (C, D) float32 class embeddings (vocabulary mode ``input``), None when folded.
        detection_filter: the line's filters over these classes (per-class thresholds, size, ROIs).
        iou: NMS IoU threshold.
        max_detections: per view.
        near_band: score band around each class threshold the hard-sample folder keeps (0: none).
        decode_thresholds: (C,) float32 per-class minimum scores decoding keeps (thresholds - near_band).
    """

    class_names: tuple[str, ...]
    embeddings: np.ndarray | None
    detection_filter: DetectionFilter
    iou: float
    max_detections: int
    near_band: float
    decode_thresholds: np.ndarray

    @classmethod
    def build(
        cls,
        manifest: BundleManifest,
        embeddings: np.ndarray | None,
        detection_filter: DetectionFilter,
        iou_threshold: float | None = None,
        near_band: float = 0.0,
    ) -> InferenceVocabulary:
        thresholds = detection_filter.class_thresholds  # (C,)
        return cls(
            tuple(c.name for c in manifest.vocabulary.classes),
            embeddings,
            detection_filter,
            manifest.thresholds.iou if iou_threshold is None else iou_threshold,
            manifest.thresholds.max_detections,
            near_band,
            np.clip(thresholds - near_band, 0.0, 1.0).astype(np.float32),
        )


class PartInference:
    """Runs the model on the views of a part.

    Args:
        backend: a loaded backend.
        manifest: the bundle's manifest (preprocessing, vocabulary, default thresholds).
        bundle_dir: the bundle (for the embeddings file in vocabulary mode ``input``).
        detection_filter: the line's detection filters (class thresholds, min size, ROIs).
        iou_threshold: NMS IoU, None for the bundle's default.
        crops: camera id -> (x1, y1, x2, y2) region the model sees, replacing the bundle's crop for that
            camera (line file ``cameras[].crop``).
        near_band: also report, per view, the detections within this score band of their class threshold
            (``ViewResult.near_threshold``; the hard-sample folder); 0: none.
    Attributes:
        vocabulary: the ``InferenceVocabulary`` new parts are decoded with (``swap`` replaces it).
    """

    def __init__(
        self,
        backend: Backend,
        manifest: BundleManifest,
        bundle_dir: str | Path,
        detection_filter: DetectionFilter,
        iou_threshold: float | None = None,
        crops: dict[str, tuple[int, int, int, int]] | None = None,
        near_band: float = 0.0,
    ) -> None:
        self.backend, self.manifest = backend, manifest
        self.crops = dict(crops or {})
        self.spec = manifest.preprocess.spec()
        self.vocabulary = InferenceVocabulary.build(
            manifest, load_embeddings(bundle_dir, manifest), detection_filter, iou_threshold, near_band
        )

    @property
    def class_names(self) -> list[str]:
        return list(self.vocabulary.class_names)

    @property
    def embeddings(self) -> np.ndarray | None:
        return self.vocabulary.embeddings

    @property
    def detection_filter(self) -> DetectionFilter:
        return self.vocabulary.detection_filter

    def swap(self, vocabulary: InferenceVocabulary) -> None:
        """Decode parts submitted from now on with ``vocabulary`` (parts in flight keep theirs)."""
        self.vocabulary = vocabulary

    def submit(
        self, part: AssembledPart, on_done: PartCallback, vocabulary: InferenceVocabulary | None = None
    ) -> None:
        """Start inference of ``part``; ``on_done`` is called once, possibly from a backend thread.

        Args:
            vocabulary: decode with this one (default: ``self.vocabulary`` as it is now); the whole part
                uses the one vocabulary read here, whatever is swapped in meanwhile.
        """
        voc = vocabulary if vocabulary is not None else self.vocabulary
        if not part.frames:
            on_done(part, [], None, {})
            return
        t0 = time.perf_counter()
        crops = [self.crops.get(f.camera_id) for f in part.frames]
        batch, lbs = preprocess([f.image for f in part.frames], self.spec, crops)  # (V, 3, H, W)
        t1 = time.perf_counter()

        def done(boxes: np.ndarray | None, scores: np.ndarray | None, err: BaseException | None) -> None:
            t2 = time.perf_counter()
            timing = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}
            if err is not None:
                on_done(part, None, err, timing)
                return
            try:
                views = []
                for i, f in enumerate(part.frames):
                    dets = decode_detections(
                        boxes[i], scores[i], lbs[i], voc.class_names, 0.0, voc.iou,
                        voc.max_detections, voc.decode_thresholds,
                    )  # fmt: skip
                    kept, near = voc.detection_filter.split_view(f.camera_id, dets, voc.near_band)
                    views.append(
                        ViewResult(f.camera_id, f.view_index, f.trigger_seq, f.capture_time, kept, None, near)
                    )
            except Exception as e:  # noqa: BLE001 - becomes an INCOMPLETE verdict upstream
                on_done(part, None, e, timing)
                return
            timing["decode"] = (time.perf_counter() - t2) * 1e3
            on_done(part, views, None, timing)

        self.backend.submit(batch, voc.embeddings, done)

    def wait_all(self) -> None:
        self.backend.wait_all()
