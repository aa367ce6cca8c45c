"""From detections to a decision per part: filters (per-class thresholds, minimum size, ROIs per camera)
then verdict rules. OK only when every view arrived and no rule fired; a missing view is INCOMPLETE,
whatever the other views show."""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np

from rtvp_edge.config import DetectionConfig, VerdictConfig
from rtvp_edge.messages import Detection, Frame, PartVerdict, ViewResult


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


class VerdictPolicy:
    """The line's detection filters and verdict rules, bound to the bundle's vocabulary.

    Args:
        detection: the line file's ``detection:`` section.
        verdict: the line file's ``verdict:`` section.
        class_names: the bundle's C class names.
        default_score: the bundle's default score threshold (used when the line sets none).
        default_class_scores: the bundle's per-class defaults (``thresholds.class_scores``, chosen on held-out
            data at export). Precedence per class: the line's ``class_thresholds``, then the line's
            ``score_threshold``, then these, then ``default_score``.
    Raises:
        ValueError: a threshold or rule names a class the bundle does not know (message names it).
    """

    def __init__(
        self,
        detection: DetectionConfig,
        verdict: VerdictConfig,
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
        for i, r in enumerate(verdict.rules):
            if r.class_name != "*" and r.class_name not in known:
                raise ValueError(
                    f"verdict.rules.{i}.class: class {r.class_name!r} is not in the bundle's vocabulary "
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
        self.rules = verdict.rules

    def describe_thresholds(self) -> list[str]:
        """``"<class> <threshold> (<where it comes from>)"`` per class."""
        return [
            f"{n} {t:.3f} ({src})"
            for n, t, src in zip(self.class_names, self.class_thresholds, self.threshold_sources, strict=True)
        ]

    def filter_view(self, camera_id: str, detections: Sequence[Detection]) -> tuple[Detection, ...]:
        """Keep detections above their class threshold, at least ``min_box_px`` on the shorter side and
        (when the camera has ROIs) with their centre inside one ROI."""
        out = []
        rois = self.rois.get(camera_id)
        for d in detections:
            if d.score < self.class_thresholds[d.class_id]:
                continue
            x1, y1, x2, y2 = d.box
            if min(x2 - x1, y2 - y1) < self.min_box_px:
                continue
            if rois:
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                if not any(cv2.pointPolygonTest(r, (cx, cy), False) >= 0 for r in rois):
                    continue
            out.append(d)
        return tuple(out)

    def decide(
        self,
        part_id: str,
        trigger_seq: int,
        views: Sequence[ViewResult],
        missing_views: Sequence[int] = (),
        first_capture_time: float = 0.0,
        latency_ms: dict[str, float] | None = None,
        extra_reasons: Sequence[str] = (),
    ) -> PartVerdict:
        """Apply the rules to the (already filtered) views of one part.

        Args:
            views: one ``ViewResult`` per view that arrived.
            missing_views: views that did not arrive (-> INCOMPLETE).
            extra_reasons: problems found upstream (e.g. an inference failure) -> INCOMPLETE.
        """
        reasons: list[str] = []
        fired = False
        dets = [(v.camera_id, d) for v in views for d in v.detections]
        for r in self.rules:
            hits = [
                (cam, d)
                for cam, d in dets
                if (r.class_name == "*" or d.class_name == r.class_name) and d.score >= r.min_score
            ]
            if len(hits) >= r.min_count:
                fired = True
                cam, best = max(hits, key=lambda h: h[1].score)
                what = "defect" if r.class_name == "*" else r.class_name
                count = f"{len(hits)} x " if r.min_count > 1 else ""
                reasons.append(
                    f"{count}{what} (best {best.class_name} {best.score:.2f} on {cam}) "
                    f">= score {r.min_score:.2f}, count {r.min_count}"
                )
        if missing_views or extra_reasons:
            verdict = "INCOMPLETE"
            if missing_views:
                reasons.insert(0, f"views {list(missing_views)} missing")
            reasons[0:0] = list(extra_reasons)
        else:
            verdict = "NG" if fired else "OK"
        return PartVerdict(
            part_id=part_id,
            trigger_seq=trigger_seq,
            verdict=verdict,
            views=tuple(sorted(views, key=lambda v: v.view_index)),
            missing_views=tuple(missing_views),
            reasons=tuple(reasons),
            first_capture_time=first_capture_time,
            decided_time=time.time(),
            latency_ms=dict(latency_ms or {}),
        )


def verdict_record(verdict: PartVerdict, frames: Sequence[Frame] = ()) -> dict:
    """A JSON-ready dict of a verdict with every view's detections (for ``--jsonl`` and logs; the MQTT
    events have their own versioned schema). With the part's ``frames`` from the simulated rig, each view
    also carries the rig's ``ground_truth`` (class, box, clear) to compare detections against."""
    truth = {f.view_index: f.ground_truth for f in frames if f.ground_truth is not None}
    record = {
        "part_id": verdict.part_id,
        "trigger_seq": verdict.trigger_seq,
        "verdict": verdict.verdict,
        "missing_views": list(verdict.missing_views),
        "reasons": list(verdict.reasons),
        "first_capture_time": verdict.first_capture_time,
        "decided_time": verdict.decided_time,
        "latency_ms": verdict.latency_ms,
        "views": [
            {
                "camera_id": v.camera_id,
                "view_index": v.view_index,
                "evidence_path": v.evidence_path,
                "detections": [
                    {
                        "class_id": d.class_id,
                        "class_name": d.class_name,
                        "score": round(d.score, 4),
                        "box": [round(c, 1) for c in d.box],
                    }
                    for d in v.detections
                ],  # fmt: skip
            }
            for v in verdict.views
        ],
    }
    for view in record["views"]:
        gts = truth.get(view["view_index"])
        if gts is not None:
            view["ground_truth"] = [
                {
                    "class_name": g.class_name,
                    "box": [round(c, 1) for c in g.box],
                    "clear": g.clear,
                    "defect_id": g.defect_id,
                }
                for g in gts
            ]
    return record
