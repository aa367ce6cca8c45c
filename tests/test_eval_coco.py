"""COCO metrics through pycocotools: perfect, partial and empty detections; per-class AP."""

from __future__ import annotations

import numpy as np
import pytest

from training.coco_eval import METRIC_NAMES, coco_evaluate, coco_ground_truth

CLASSES = ["oil", "bubble", "crack"]


def _gt():
    sizes = [(100, 120), (100, 120)]
    boxes = [
        np.array([[10, 10, 40, 40], [50, 50, 90, 95]], np.float32),
        np.array([[5, 5, 25, 30]], np.float32),
    ]
    cls = [np.array([0, 1]), np.array([0])]
    return coco_ground_truth(sizes, boxes, cls, CLASSES), boxes, cls


def _dets(boxes, cls, score=0.9, shift=0.0):
    out = []
    for img_id, (b, c) in enumerate(zip(boxes, cls, strict=True)):
        for box, k in zip(b, c, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(
                {
                    "image_id": img_id,
                    "category_id": int(k) + 1,
                    "bbox": [x1 + shift, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return out


def test_perfect_detections_score_one():
    gt, boxes, cls = _gt()
    r = coco_evaluate(gt, _dets(boxes, cls), CLASSES)
    assert set(r["metrics"]) == set(METRIC_NAMES)
    assert r["metrics"]["AP"] == pytest.approx(1.0) and r["metrics"]["AP50"] == pytest.approx(1.0)
    assert r["per_class"]["oil"] == {
        "AP": pytest.approx(1.0),
        "AP50": pytest.approx(1.0),
        "AP75": pytest.approx(1.0),
        "n_gt": 2,
    }
    assert r["per_class"]["crack"]["AP"] is None and r["per_class"]["crack"]["n_gt"] == 0  # no ground truth
    assert len(r["pr_curve_50"]["oil"]) == 101


def test_shifted_and_missing_detections_score_lower():
    gt, boxes, cls = _gt()
    shifted = coco_evaluate(gt, _dets(boxes, cls, shift=4.0), CLASSES)
    assert shifted["metrics"]["AP"] < 0.9 and shifted["metrics"]["AP50"] == pytest.approx(1.0)
    only_oil = [d for d in _dets(boxes, cls) if d["category_id"] == 1]
    r = coco_evaluate(gt, only_oil, CLASSES)
    assert r["per_class"]["bubble"]["AP50"] == 0.0 and r["per_class"]["oil"]["AP50"] == pytest.approx(1.0)
    wrong_class = [dict(d, category_id=2) for d in only_oil]
    assert coco_evaluate(gt, wrong_class, CLASSES)["metrics"]["AP50"] == 0.0


def test_no_detections_is_zero_not_a_crash():
    gt, _, _ = _gt()
    r = coco_evaluate(gt, [], CLASSES)
    assert r["metrics"]["AP50"] == 0.0 and r["per_class"]["oil"]["AP"] == 0.0


def test_operating_point_is_the_best_f1_threshold_of_the_pr_table():
    # 4 oil boxes in one image; detections by score: TP .9, FP .85, TP .8, FP .5, FP .4, TP .3 (one box missed).
    gt_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], np.float32)
    gt = coco_ground_truth([(100, 100)], [gt_boxes], [np.zeros(4, int)], CLASSES)
    far = [0.0, 60.0, 10.0, 10.0]  # overlaps no ground truth

    def det(bbox, score):
        return {"image_id": 0, "category_id": 1, "bbox": bbox, "score": score}

    dets = [
        det([0.0, 0.0, 10.0, 10.0], 0.9),
        det(far, 0.85),
        det([20.0, 0.0, 10.0, 10.0], 0.8),
        det([30.0, 60.0, 10.0, 10.0], 0.5),
        det([50.0, 60.0, 10.0, 10.0], 0.4),
        det([40.0, 0.0, 10.0, 10.0], 0.3),
    ]
    op = coco_evaluate(gt, dets, CLASSES)["operating_points_50"]
    # F1 at 0.9: 0.40, at 0.8: 0.57, at 0.3: precision 3/6, recall 3/4 -> 0.60 (the best)
    assert op["oil"]["score"] == pytest.approx(0.3)
    assert op["oil"]["precision"] == pytest.approx(0.5) and op["oil"]["recall"] == pytest.approx(0.75)
    assert op["oil"]["f1"] == pytest.approx(0.6)
    assert op["bubble"] is None  # no ground truth
    # Drop the last true positive: the best threshold moves up to 0.8.
    op = coco_evaluate(gt, dets[:5], CLASSES)["operating_points_50"]
    assert op["oil"]["score"] == pytest.approx(0.8) and op["oil"]["recall"] == pytest.approx(0.5)
