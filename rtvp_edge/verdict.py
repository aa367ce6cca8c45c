"""From the (already filtered, ``rtvp_edge.detection_filter``) detections of a part to its verdict. OK only
when every view arrived and no rule fired; a missing view is INCOMPLETE, whatever the other views show."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rtvp_edge.config import VerdictConfig
from rtvp_edge.messages import Frame, PartVerdict, ViewResult


class VerdictRules:
    """The line's verdict rules, bound to the bundle's vocabulary.

    Args:
        verdict: the line file's ``verdict:`` section.
        class_names: the bundle's C class names.
    Raises:
        ValueError: a rule names a class the bundle does not know (message names it).
    """

    def __init__(self, verdict: VerdictConfig, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        known = set(self.class_names)
        for i, r in enumerate(verdict.rules):
            if r.class_name != "*" and r.class_name not in known:
                raise ValueError(
                    f"verdict.rules.{i}.class: class {r.class_name!r} is not in the bundle's vocabulary "
                    f"{self.class_names}"
                )
        self.rules = verdict.rules

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
