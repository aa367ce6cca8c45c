"""Stage check: parity of an artifact with its PyTorch source on real (generated glass) images, on raw
outputs and on decoded detections. Used after ONNX export and after every float backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from export.errors import ExportError
from rtvp_edge.bundle import Thresholds
from rtvp_edge.messages import Detection
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def parity(
    reference: Runner,
    candidate: Runner,
    images_bgr: Sequence[np.ndarray],
    spec: PreprocessSpec,
    class_names: Sequence[str],
    thresholds: Thresholds,
    name: str,
    score_atol: float = 1e-3,
    box_atol: float = 0.05,
    min_agreement: float = 0.9,
    boxes_of_scored: bool = False,
) -> dict:
    """Compare ``candidate`` against ``reference`` on one batch of all images (so a dynamic batch is
    exercised), raw outputs and decoded detections.

    Args:
        images_bgr: camera images, each (H, W, 3) uint8 BGR.
        score_atol: allowed absolute score difference (raw and decoded).
        box_atol: allowed absolute box difference in model-input pixels (raw outputs).
        min_agreement: least share of decoded detections matched one-to-one (``match_detections``). Raw
            outputs are the strict check; near-tied boxes of an untrained model can swap under NMS.
        boxes_of_scored: compare raw boxes only where the reference scores some class at or above
            ``thresholds.score`` (the anchors that can become detections). For FP16 weights: a background
            anchor's box distribution is flat, so a weight rounding moves its (never used) box by pixels.
    Returns:
        ``{"images", "max_score_diff", "max_box_diff", "detections", "detection_agreement"}``.
    Raises:
        ExportError naming the artifact when a tolerance is exceeded.
    """
    batch, lbs = preprocess(list(images_bgr), spec)
    rb, rs = reference(batch)
    cb, cs = candidate(batch)
    if rb.shape != cb.shape or rs.shape != cs.shape:
        raise ExportError(
            f"{name}: output shapes {cb.shape}, {cs.shape} differ from PyTorch {rb.shape}, {rs.shape}"
        )
    ds = float(np.abs(rs - cs).max())
    box_diff = np.abs(rb - cb).max(-1)  # (B, N)
    if boxes_of_scored:
        box_diff = box_diff[rs.max(-1) >= thresholds.score]
    db = float(box_diff.max()) if box_diff.size else 0.0
    if ds > score_atol or db > box_atol:
        raise ExportError(
            f"{name}: outputs differ from PyTorch (max score diff {ds:.2e} > {score_atol:g} or "
            f"max box diff {db:.2e} px > {box_atol:g}"
            f"{f' on anchors scored >= {thresholds.score:g}' if boxes_of_scored else ''})"
        )
    matched = total = 0
    for i, lb in enumerate(lbs):
        ref = decode_detections(
            rb[i], rs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        got = decode_detections(
            cb[i], cs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        m = match_detections(ref, got)
        matched += m
        total += max(len(ref), len(got))
    agreement = matched / total if total else 1.0
    if agreement < min_agreement:
        raise ExportError(
            f"{name}: decoded detections agree with PyTorch's on only {matched} of {total} "
            f"({agreement:.0%} < {min_agreement:.0%})"
        )
    return {
        "images": len(images_bgr),
        "max_score_diff": ds,
        "max_box_diff": db,
        "detections": total,
        "detection_agreement": round(agreement, 4),
    }


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(reference: Sequence[Detection], candidate: Sequence[Detection], iou: float = 0.5) -> int:
    """Greedy one-to-one matches (same class, IoU >= ``iou``), highest reference score first.

    IoU rather than exact coordinates: when two overlapping boxes score almost the same, a difference in the
    last bits decides which one NMS keeps; either is the same detection of the same defect.
    """
    free = list(candidate)
    n = 0
    for r in sorted(reference, key=lambda d: -d.score):
        best, best_iou = None, iou
        for c in free:
            if c.class_id == r.class_id and (v := box_iou(r.box, c.box)) >= best_iou:
                best, best_iou = c, v
        if best is not None:
            free.remove(best)
            n += 1
    return n
