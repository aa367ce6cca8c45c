"""Stage check: parity of an artifact with its PyTorch source on real (generated glass) images, on raw
outputs and on decoded detections. Used after ONNX export and after every float backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from export.errors import ExportError
from export.golden import match_golden
from rtvp_edge.bundle import Thresholds
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
) -> dict:
    """Compare ``candidate`` against ``reference`` on one batch of all images (so a dynamic batch is
    exercised), raw outputs and decoded detections.

    Args:
        images_bgr: camera images, each (H, W, 3) uint8 BGR.
        score_atol: allowed absolute score difference (raw and decoded).
        box_atol: allowed absolute box difference in model-input pixels (raw); decoded boxes in camera
            pixels get ``box_atol / letterbox scale`` plus a pixel.
    Returns:
        ``{"images", "max_score_diff", "max_box_diff", "detections"}`` for the manifest.
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
    ds, db = float(np.abs(rs - cs).max()), float(np.abs(rb - cb).max())
    if ds > score_atol or db > box_atol:
        raise ExportError(
            f"{name}: outputs differ from PyTorch (max score diff {ds:.2e} > {score_atol:g} or "
            f"max box diff {db:.2e} px > {box_atol:g})"
        )
    n_dets = 0
    for i, lb in enumerate(lbs):
        ref = decode_detections(
            rb[i], rs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        got = decode_detections(
            cb[i], cs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        expected = [
            {"class_id": d.class_id, "class_name": d.class_name, "score": d.score, "box": list(d.box)}
            for d in ref
        ]
        problems = match_golden(expected, got, score_atol, box_atol / lb.scale + 1.0, thresholds.score)
        if problems:
            raise ExportError(
                f"{name}: detections differ from PyTorch on image {i}: " + "; ".join(problems[:3])
            )
        n_dets += len(ref)
    return {"images": len(images_bgr), "max_score_diff": ds, "max_box_diff": db, "detections": n_dets}
