"""export.verify.parity: raw outputs compared everywhere (FP32), or only where a detection can come from
(FP16 weights, ``boxes_of_scored``); a box that moves under a scored anchor fails either way."""

from __future__ import annotations

import numpy as np
import pytest

from export.errors import ExportError
from export.verify import parity
from rtvp_edge.bundle import Thresholds
from rtvp_edge.preprocess import PreprocessSpec

SPEC = PreprocessSpec(input_size=(64, 64))
THR = Thresholds(score=0.3)
N, C = 6, 2


class Fixed:
    """A model that returns the same outputs for any batch (called like a runtime backend)."""

    fixed_batch = -1

    def __init__(self, boxes: np.ndarray, scores: np.ndarray):
        self.boxes, self.scores = boxes, scores

    def infer(self, batch: np.ndarray, embeddings: np.ndarray | None = None):
        b = batch.shape[0]
        return np.repeat(self.boxes[None], b, 0), np.repeat(self.scores[None], b, 0)


def outputs() -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([[4.0 + 8 * i, 4.0, 12.0 + 8 * i, 20.0] for i in range(N)], np.float32)
    scores = np.full((N, C), 0.01, np.float32)
    scores[0, 1] = 0.9  # anchor 0 is a detection; the others are background
    return boxes, scores


IMAGES = [np.full((64, 64, 3), 100, np.uint8)]


def test_a_background_box_that_moves_fails_the_strict_check_and_passes_the_scored_one():
    boxes, scores = outputs()
    moved = boxes.copy()
    moved[3] += 3.7  # background anchor (score 0.01 < 0.3)
    with pytest.raises(ExportError, match="max box diff 3.70e\\+00 px > 0.5"):
        parity(Fixed(boxes, scores), Fixed(moved, scores), IMAGES, SPEC, ["a", "b"], THR, "IR", box_atol=0.5)
    info = parity(
        Fixed(boxes, scores), Fixed(moved, scores), IMAGES, SPEC, ["a", "b"], THR, "IR",
        box_atol=0.5, boxes_of_scored=True,
    )  # fmt: skip
    assert info["max_box_diff"] == 0.0 and info["detection_agreement"] == 1.0


def test_a_scored_box_that_moves_fails_both_checks():
    boxes, scores = outputs()
    moved = boxes.copy()
    moved[0, 2] += 0.8  # the detection's anchor
    for scored in (False, True):
        with pytest.raises(ExportError, match="max box diff 8.00e-01 px"):
            parity(
                Fixed(boxes, scores), Fixed(moved, scores), IMAGES, SPEC, ["a", "b"], THR, "IR",
                box_atol=0.5, boxes_of_scored=scored,
            )  # fmt: skip


def test_an_anchor_whose_score_crosses_the_threshold_counts_as_scored():
    boxes, scores = outputs()
    scores[5, 0] = THR.score  # exactly at the threshold: can be a detection
    moved = boxes.copy()
    moved[5] += 2.0
    with pytest.raises(ExportError, match="on anchors scored >= 0.3"):
        parity(
            Fixed(boxes, scores), Fixed(moved, scores), IMAGES, SPEC, ["a", "b"], THR, "IR",
            box_atol=0.5, boxes_of_scored=True,
        )  # fmt: skip
