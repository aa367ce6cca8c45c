"""Which detections a line keeps: per-class score thresholds, a minimum box size and ROIs per camera.

Applied by inference to every view (``rtvp_edge.inference``) before the verdict rules
(``rtvp_edge.verdict``) judge the part."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from rtvp_edge.config import DetectionConfig
from rtvp_edge.messages import Detection


def _contour(region) -> np.ndarray:
    """A ROI (rectangle (x1, y1, x2, y2) or polygon [(x, y), ...]) as a (K, 1, 2) float32 contour."""
    if isinstance(region, tuple) and len(region) == 4 and not isinstance(region[0], (tuple, list)):
        x1, y1, x2, y2 = region
        pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    else:
        pts = region
    return np.asarray(pts, dtype=np.float32).reshape(-1, 1, 2)


def _threshold_of(
    name: str, detection: DetectionConfig, bundle_scores: dict[str, float], score: float
) -> tuple[float, str]:
    if name in detection.class_thresholds:
        return detection.class_thresholds[name], "line class_thresholds"
    if name in bundle_scores:
        return bundle_scores[name], "bundle, chosen on held-out data"
    if detection.score_threshold is not None:
        return score, "line score_threshold"
    return score, "bundle default"


class DetectionFilter:
    """The line's detection filters, bound to the bundle's vocabulary.

    Args:
        detection: the line file's ``detection:`` section.
        class_names: the bundle's C class names.
        default_score: the bundle's default score threshold (used when the line sets none).
        default_class_scores: the bundle's per-class defaults (``thresholds.class_scores``, chosen on held-out
            data at export). Precedence per class: the line's ``class_thresholds``, then the line's
            ``score_threshold``, then these, then ``default_score``.
    Raises:
        ValueError: a threshold names a class the bundle does not know (message names it).
    """

    def __init__(
        self,
        detection: DetectionConfig,
        class_names: Sequence[str],
        default_score: float = 0.25,
        default_class_scores: dict[str, float] | None = None,
    ) -> None:
        self.class_names = list(class_names)
        known = set(self.class_names)
        for name in detection.class_thresholds:
            if name not in known:
                raise ValueError(
                    f"detection.class_thresholds: class {name!r} is not in the bundle's vocabulary "
                    f"{self.class_names}"
                )
        line_score = detection.score_threshold
        self.score = line_score if line_score is not None else default_score
        bundle_scores = {} if line_score is not None else dict(default_class_scores or {})
        # (C,) per-class minimum score, handed to decode_detections, and where each one comes from
        chosen = [_threshold_of(n, detection, bundle_scores, self.score) for n in self.class_names]
        self.class_thresholds = np.array([t for t, _ in chosen], dtype=np.float32)
        self.threshold_sources = [src for _, src in chosen]
        self.min_box_px = detection.min_box_px
        # every region as an OpenCV contour (K, 1, 2) float32: rectangles become 4-point polygons
        self.rois = {
            cam: [_contour(r) for r in regions] for cam, regions in detection.rois.items() if regions
        }

    def describe_thresholds(self) -> list[str]:
        """``"<class> <threshold> (<where it comes from>)"`` per class."""
        return [
            f"{n} {t:.3f} ({src})"
            for n, t, src in zip(self.class_names, self.class_thresholds, self.threshold_sources, strict=True)
        ]

    def filter_view(self, camera_id: str, detections: Sequence[Detection]) -> tuple[Detection, ...]:
        """Keep detections above their class threshold, at least ``min_box_px`` on the shorter side and
        (when the camera has ROIs) with their centre inside one ROI."""
        return self.split_view(camera_id, detections)[0]

    def split_view(
        self, camera_id: str, detections: Sequence[Detection], near_band: float = 0.0
    ) -> tuple[tuple[Detection, ...], tuple[Detection, ...]]:
        """(kept, near threshold) of one view's detections.

        kept: as ``filter_view``. near threshold (only when ``near_band`` > 0): the detections inside the
        size and ROI filters whose score is within ``near_band`` of their class threshold, on either side
        (``threshold - near_band <= score < threshold + near_band``); those below the threshold are not in
        kept. The hard-sample folder keeps the parts that have any (``rtvp_edge.hard_samples``).
        """
        kept, near = [], []
        rois = self.rois.get(camera_id)
        for d in detections:
            x1, y1, x2, y2 = d.box
            if min(x2 - x1, y2 - y1) < self.min_box_px:
                continue
            if rois:
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                if not any(cv2.pointPolygonTest(r, (cx, cy), False) >= 0 for r in rois):
                    continue
            thr = float(self.class_thresholds[d.class_id])
            if d.score >= thr:
                kept.append(d)
            if near_band > 0 and thr - near_band <= d.score < thr + near_band:
                near.append(d)
        return tuple(kept), tuple(near)
