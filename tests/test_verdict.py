"""Detection filters (per-class thresholds, minimum size, ROIs) and verdict rules (count rules,
INCOMPLETE whenever a view is missing)."""

from __future__ import annotations

import pytest

from rtvp_edge.config import DetectionConfig, VerdictConfig, VerdictRule
from rtvp_edge.detection_filter import DetectionFilter
from rtvp_edge.messages import Detection, ViewResult
from rtvp_edge.verdict import VerdictRules

NAMES = ["oil", "black spot", "bubble"]


def det(cls: str, score: float, box=(10.0, 10.0, 30.0, 30.0)) -> Detection:
    return Detection(NAMES.index(cls), cls, score, box)


def view(cam: str, idx: int, *dets: Detection) -> ViewResult:
    return ViewResult(cam, idx, 1, 0.0, tuple(dets))


def rules(rules=None) -> VerdictRules:
    v = VerdictConfig(rules=[VerdictRule.model_validate(r) for r in rules]) if rules else VerdictConfig()
    return VerdictRules(v, NAMES)


def filters(**kw) -> DetectionFilter:
    return DetectionFilter(DetectionConfig(**kw), NAMES, default_score=0.25)


def test_ok_only_when_no_rule_fires_and_all_views_present():
    p = rules()
    assert p.decide("P1", 1, [view("A", 0), view("B", 1)]).verdict == "OK"
    v = p.decide("P1", 1, [view("A", 0), view("B", 1, det("oil", 0.9))])
    assert v.verdict == "NG" and "oil 0.90 on B" in v.reasons[0]


def test_missing_view_is_incomplete_even_without_defects():
    v = rules().decide("P1", 1, [view("A", 0)], missing_views=[1])
    assert v.verdict == "INCOMPLETE" and v.missing_views == (1,) and "views [1] missing" in v.reasons[0]


def test_upstream_failure_is_incomplete():
    v = rules().decide("P1", 1, [view("A", 0)], extra_reasons=["inference failed: boom"])
    assert v.verdict == "INCOMPLETE" and v.reasons[0] == "inference failed: boom"


def test_class_thresholds_and_min_size_and_roi():
    p = filters(class_thresholds={"bubble": 0.6}, min_box_px=5, rois={"A": [(0, 0, 50, 50)]})
    kept = p.filter_view(
        "A",
        [
            det("bubble", 0.5),  # below its class threshold
            det("bubble", 0.7),  # kept
            det("oil", 0.3, (10, 10, 13, 40)),  # 3 px wide: too small
            det("oil", 0.3, (60, 60, 80, 80)),  # centre outside the ROI
            det("black spot", 0.3),  # kept (global threshold 0.25)
        ],
    )
    assert [(d.class_name, d.score) for d in kept] == [("bubble", 0.7), ("black spot", 0.3)]
    # a camera without ROIs keeps boxes anywhere
    assert len(p.filter_view("B", [det("oil", 0.3, (60, 60, 80, 80))])) == 1


def test_count_rule_and_class_rule():
    p = rules([{"class": "bubble", "min_score": 0.3, "min_count": 2}, {"class": "oil", "min_score": 0.8}])
    one_bubble = [view("A", 0, det("bubble", 0.9)), view("B", 1, det("oil", 0.5))]
    assert p.decide("P", 1, one_bubble).verdict == "OK"
    two_bubbles = [view("A", 0, det("bubble", 0.9)), view("B", 1, det("bubble", 0.4))]
    v = p.decide("P", 1, two_bubbles)
    assert v.verdict == "NG" and v.reasons[0].startswith("2 x bubble")
    assert p.decide("P", 1, [view("A", 0, det("oil", 0.85))]).verdict == "NG"


def test_unknown_class_names_are_refused():
    with pytest.raises(ValueError, match="class_thresholds: class 'bubbel'"):
        filters(class_thresholds={"bubbel": 0.5})
    with pytest.raises(ValueError, match=r"verdict.rules.0.class: class 'crack'"):
        rules([{"class": "crack"}])


def test_polygon_roi():
    # a triangle: (0,0) (100,0) (0,100); box centres at (20,20) inside, (70,70) outside
    p = filters(rois={"A": [[(0, 0), (100, 0), (0, 100)]]})
    kept = p.filter_view("A", [det("oil", 0.5, (10, 10, 30, 30)), det("oil", 0.5, (60, 60, 80, 80))])
    assert [d.box for d in kept] == [(10, 10, 30, 30)]
    with pytest.raises(ValueError, match="at least 3 points"):
        filters(rois={"A": [[(0, 0), (1, 1)]]})


def test_bundle_class_scores_apply_unless_the_line_overrides_them():
    bundle = {"oil": 0.1, "bubble": 0.5}
    p = DetectionFilter(DetectionConfig(), NAMES, default_score=0.25, default_class_scores=bundle)
    assert p.class_thresholds.tolist() == pytest.approx([0.1, 0.25, 0.5])
    # a line's class threshold wins for its class; the bundle's defaults still hold for the others
    p = DetectionFilter(
        DetectionConfig(class_thresholds={"bubble": 0.3}), NAMES, 0.25, default_class_scores=bundle
    )
    assert p.class_thresholds.tolist() == pytest.approx([0.1, 0.25, 0.3])
    assert p.describe_thresholds() == [
        "oil 0.100 (bundle, chosen on held-out data)",
        "black spot 0.250 (bundle default)",
        "bubble 0.300 (line class_thresholds)",
    ]
    # a line's global score threshold replaces every bundle default
    p = DetectionFilter(DetectionConfig(score_threshold=0.4), NAMES, 0.25, default_class_scores=bundle)
    assert p.class_thresholds.tolist() == pytest.approx([0.4, 0.4, 0.4])
    assert p.describe_thresholds()[0] == "oil 0.400 (line score_threshold)"
    assert [d.class_name for d in p.filter_view("A", [det("oil", 0.2), det("oil", 0.45)])] == ["oil"]
