"""Decoding of the model's outputs into detections: score threshold, class-wise NMS (OpenCV), mapping back
to camera pixels. Used by the runtime and by export (to write the golden outputs the runtime self-tests
against), so both produce the same detections from the same tensors."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from rtvp_edge.messages import Detection
from rtvp_edge.preprocess import Letterbox, boxes_to_image


def decode_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    letterbox: Letterbox,
    class_names: Sequence[str],
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    class_thresholds: np.ndarray | None = None,
) -> list[Detection]:
    """Decode one image's raw outputs.

    Args:
        boxes: (N, 4) float xyxy in model-input pixels.
        scores: (N, C) float class probabilities in [0, 1].
        letterbox: geometry used to preprocess this image.
        class_names: C names.
        score_threshold: global minimum score.
        iou_threshold: NMS IoU threshold, applied per class (cv2.dnn.NMSBoxesBatched).
        max_detections: keep at most this many, highest score first.
        class_thresholds: optional (C,) per-class minimum scores (replaces ``score_threshold`` per class).
    Returns:
        Detections in camera-image pixels, sorted by descending score.
    """
    if scores.ndim != 2 or boxes.shape != (scores.shape[0], 4):
        raise ValueError(f"expected boxes (N,4) and scores (N,C), got {boxes.shape} and {scores.shape}")
    if scores.shape[1] != len(class_names):
        raise ValueError(f"scores have {scores.shape[1]} classes, the vocabulary has {len(class_names)}")
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    thr = class_thresholds[cls] if class_thresholds is not None else score_threshold
    keep = best >= thr
    if not keep.any():
        return []
    b, s, c = boxes[keep].astype(np.float32), best[keep].astype(np.float32), cls[keep]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), s.tolist(), c.tolist(), 0.0, iou_threshold)
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    idx = idx[np.argsort(-s[idx], kind="stable")][:max_detections]
    img_boxes = boxes_to_image(b[idx], letterbox)
    return [
        Detection(int(c[i]), class_names[int(c[i])], float(s[i]), tuple(float(v) for v in img_boxes[k]))
        for k, i in enumerate(idx)
    ]
