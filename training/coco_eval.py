"""COCO box metrics with pycocotools, on ground truth and detections held in memory.

Boxes are in pixels of the original (camera) images on both sides, so the figures are those a user of the
runtime would measure. Category ids are vocabulary index + 1 (COCO reserves 0).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet():
    # pycocotools prints progress to stdout; keep the CLI's output (and JSON piped from it) clean.
    return contextlib.redirect_stdout(io.StringIO())


def coco_ground_truth(
    image_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[np.ndarray],
    class_ids: Sequence[np.ndarray],
    class_names: Sequence[str],
):
    """A ``pycocotools.coco.COCO`` index of the ground truth.

    Args:
        image_sizes: (height, width) per image; image ids are positions in this list.
        boxes: per image, (N_i, 4) xyxy image pixels.
        class_ids: per image, (N_i,) vocabulary indices.
        class_names: the C evaluated classes.
    """
    from pycocotools.coco import COCO

    images, annotations = [], []
    for img_id, ((h, w), b, c) in enumerate(zip(image_sizes, boxes, class_ids, strict=False)):
        images.append({"id": img_id, "height": int(h), "width": int(w)})
        for box, cls in zip(
            np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(c).reshape(-1), strict=False
        ):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), bw, bh],
                    "area": bw * bh,  # no masks: the box area decides small/medium/large
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }
    with _quiet():
        gt.createIndex()
    return gt


def coco_evaluate(gt, detections: list[dict], class_names: Sequence[str]) -> dict:
    """Run COCOeval (bbox).

    Args:
        gt: from ``coco_ground_truth``.
        detections: ``{"image_id", "category_id" (index+1), "bbox" [x, y, w, h] image px, "score"}``.
        class_names: the C evaluated classes.
    Returns:
        ``{"metrics": {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl},
        "per_class": {name: {"AP", "AP50", "AP75", "n_gt"}}, "pr_curve_50": {name: [precision at 101 recall
        points]}, "operating_points_50": {name: {"score", "precision", "recall", "f1"}}}``. Values are in
        [0, 1]; a metric without any ground truth is None (COCO's -1). The operating point of a class is the
        score threshold with the best F1 on COCOeval's own precision/score-per-recall table (IoU 0.5, all
        areas, 100 detections); None when the class has no ground truth or no true positive.
    """
    from pycocotools.cocoeval import COCOeval

    n_gt = {n: len(gt.getAnnIds(catIds=[i + 1])) for i, n in enumerate(class_names)}
    if not detections or not gt.dataset["annotations"]:
        metrics = {k: (0.0 if gt.dataset["annotations"] else None) for k in METRIC_NAMES}
        per_class = {
            n: {
                "AP": 0.0 if n_gt[n] else None,
                "AP50": 0.0 if n_gt[n] else None,
                "AP75": 0.0 if n_gt[n] else None,
                "n_gt": n_gt[n],
            }
            for n in class_names
        }
        return {
            "metrics": metrics,
            "per_class": per_class,
            "pr_curve_50": {n: [0.0] * 101 for n in class_names},
            "operating_points_50": {n: None for n in class_names},
        }
    with _quiet():
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: (None if v < 0 else float(v)) for k, v in zip(METRIC_NAMES, ev.stats, strict=False)}
    # precision: (T IoU thresholds, R=101 recall points, K classes, A areas, M max-dets); area "all", maxDets 100.
    prec = ev.eval["precision"][:, :, :, 0, -1]

    def ap(p: np.ndarray) -> float | None:
        p = p[p > -1]
        return float(p.mean()) if p.size else None

    scores = ev.eval["scores"][0, :, :, 0, -1]  # (R, K): score of the detection reaching each recall
    recalls = np.asarray(ev.params.recThrs)
    per_class, curves, points = {}, {}, {}
    for k, name in enumerate(class_names):
        points[name] = _best_f1(prec[0, :, k], scores[:, k], recalls) if n_gt[name] else None
        if n_gt[name] == 0:
            per_class[name] = {"AP": None, "AP50": None, "AP75": None, "n_gt": 0}
        else:
            per_class[name] = {
                "AP": ap(prec[:, :, k]),
                "AP50": ap(prec[0, :, k]),
                "AP75": ap(prec[5, :, k]),
                "n_gt": n_gt[name],
            }
        curves[name] = [float(max(v, 0.0)) for v in prec[0, :, k]]
    return {"metrics": metrics, "per_class": per_class, "pr_curve_50": curves, "operating_points_50": points}


def _best_f1(precision: np.ndarray, scores: np.ndarray, recalls: np.ndarray) -> dict[str, float] | None:
    """The recall point of best F1 on one class's interpolated PR table, with the score reaching it."""
    ok = (precision > 0) & (scores > 0)
    if not ok.any():
        return None
    p, r, s = precision[ok], recalls[ok], scores[ok]
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    i = int(np.argmax(f1))  # first maximum: the highest score threshold among equally good ones
    return {"score": float(s[i]), "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i])}
