import numpy as np
import pytest

from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import Letterbox

LB = Letterbox(scale=0.5, pad_x=10.0, pad_y=0.0, image_size=(200, 300))


def test_nms_is_per_class_and_boxes_map_back():
    boxes = np.array([[10, 0, 60, 50], [12, 2, 62, 52], [10, 0, 60, 50], [100, 50, 120, 70]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.1, 0.05]], np.float32)
    dets = decode_detections(boxes, scores, LB, ["oil", "bubble"], score_threshold=0.25, iou_threshold=0.5)
    # box 1 suppressed by box 0 (same class, IoU > 0.5); box 2 kept (other class); box 3 under threshold
    assert [(d.class_name, round(d.score, 2)) for d in dets] == [("oil", 0.9), ("bubble", 0.7)]
    assert dets[0].box == pytest.approx((0.0, 0.0, 100.0, 100.0))


def test_class_thresholds_and_empty():
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    scores = np.array([[0.4, 0.0]], np.float32)
    assert decode_detections(boxes, scores, LB, ["a", "b"], class_thresholds=np.array([0.5, 0.1])) == []
    assert len(decode_detections(boxes, scores, LB, ["a", "b"], class_thresholds=np.array([0.3, 0.1]))) == 1
    with pytest.raises(ValueError, match="vocabulary has 3"):
        decode_detections(boxes, scores, LB, ["a", "b", "c"])
