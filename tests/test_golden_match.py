"""The one golden comparison (``rtvp_edge.selftest.golden_differences``), used by the runtime's start-up
self-test and by export's check of a finished bundle, at the boundary of its threshold band."""

from __future__ import annotations

import numpy as np

from rtvp_edge.messages import Detection
from rtvp_edge.selftest import golden_differences

NAMES = ["oil", "bubble"]
THR, ATOL, BOX_ATOL = 0.25, 0.125, 2.0  # binary-exact, so THR + ATOL is exactly 0.375
MARGIN = THR + ATOL
BOX = (10.0, 20.0, 30.0, 40.0)


def exp(score: float, box=BOX, class_id: int = 1) -> dict:
    return {"class_id": class_id, "score": score, "box": list(box)}


def det(score: float, box=BOX, class_id: int = 1) -> Detection:
    return Detection(class_id, NAMES[class_id], score, box)


def diff(expected, actual) -> list[str]:
    return golden_differences(expected, actual, ATOL, BOX_ATOL, THR, NAMES)


def test_an_expected_detection_at_threshold_plus_tolerance_must_be_found():
    assert MARGIN == 0.375
    problems = diff([exp(MARGIN)], [])
    assert len(problems) == 1 and problems[0].startswith("expected bubble score 0.375")
    # just below the band's edge it may vanish: the other side could score it under the threshold
    assert diff([exp(float(np.nextafter(MARGIN, 0.0)))], []) == []


def test_an_unexpected_detection_at_threshold_plus_tolerance_is_a_difference():
    problems = diff([], [det(MARGIN)])
    assert problems == ["unexpected bubble score 0.375 box [10.0, 20.0, 30.0, 40.0]"]
    assert diff([], [det(float(np.nextafter(MARGIN, 0.0)))]) == []


def test_score_and_box_tolerances_are_inclusive():
    assert diff([exp(0.5)], [det(0.5 + ATOL, (12.0, 18.0, 30.0, 40.0))]) == []
    # one step past the score tolerance: not a match, so both sides report it
    off = diff([exp(0.5)], [det(float(np.nextafter(0.5 + ATOL, 1.0)))])
    assert len(off) == 2 and off[0].startswith("expected bubble") and off[1].startswith("unexpected bubble")
    # a box coordinate past box_atol, or another class, is not a match either
    assert len(diff([exp(0.5)], [det(0.5, (12.5, 20.0, 30.0, 40.0))])) == 2
    assert len(diff([exp(0.5)], [det(0.5, class_id=0)])) == 2


def test_each_actual_detection_matches_one_expected_detection():
    assert len(diff([exp(0.5), exp(0.5)], [det(0.5)])) == 1
    assert diff([exp(0.5), exp(0.6)], [det(0.6), det(0.5)]) == []


def test_export_checks_golden_samples_with_the_runtime_comparison():
    """Export records and checks golden outputs with the runtime's own self-test, which compares with
    ``golden_differences``: no comparison of its own."""
    import export.golden
    import export.pipeline
    import export.verify
    import rtvp_edge.selftest as selftest

    assert selftest.run_golden_selftest.__globals__["golden_differences"] is golden_differences
    assert export.verify.selftest_artifacts is selftest.selftest_artifacts
    assert export.pipeline.record_golden is selftest.record_golden
    for name in ("match_golden", "check_golden", "golden_differences", "decode"):
        assert not hasattr(export.golden, name), name
