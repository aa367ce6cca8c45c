"""Batched inference of one part: the frames of every camera of a part go through the bundle's
preprocessing as one batch, run on the backend (asynchronously where it can), and are decoded (OpenCV
NMS) and filtered per view."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    """

    def __init__(
        self,
        backend: Backend,
        manifest: BundleManifest,
        bundle_dir: str | Path,
        detection_filter: DetectionFilter,
        iou_threshold: float | None = None,
        crops: dict[str, tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.backend, self.manifest, self.detection_filter = backend, manifest, detection_filter
        self.crops = dict(crops or {})
        self.spec = manifest.preprocess.spec()
        self.class_names = [c.name for c in manifest.vocabulary.classes]
        self.embeddings = load_embeddings(bundle_dir, manifest)
        self.iou = manifest.thresholds.iou if iou_threshold is None else iou_threshold
        self.max_detections = manifest.thresholds.max_detections
        # decode with the lowest threshold; filter_view applies each class's own
        thresholds = detection_filter.class_thresholds  # (C,)
        self.decode_score = float(np.min(thresholds)) if len(thresholds) else 0.0

    def submit(self, part: AssembledPart, on_done: PartCallback) -> None:
        """Start inference of ``part``; ``on_done`` is called once, possibly from a backend thread."""
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
                        boxes[i], scores[i], lbs[i], self.class_names, self.decode_score, self.iou,
                        self.max_detections, self.detection_filter.class_thresholds,
                    )  # fmt: skip
                    kept = self.detection_filter.filter_view(f.camera_id, dets)
                    views.append(ViewResult(f.camera_id, f.view_index, f.trigger_seq, f.capture_time, kept))
            except Exception as e:  # noqa: BLE001 - becomes an INCOMPLETE verdict upstream
                on_done(part, None, e, timing)
                return
            timing["decode"] = (time.perf_counter() - t2) * 1e3
            on_done(part, views, None, timing)

        self.backend.submit(batch, self.embeddings, done)

    def wait_all(self) -> None:
        self.backend.wait_all()
