"""Evidence images for NG parts: annotated, written atomically, pruned by age and by count; the live line."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np

from rtvp_edge.evidence import EvidenceWriter
from rtvp_edge.live import format_line
from rtvp_edge.messages import Detection, Frame, PartVerdict, ViewResult


def part(part_id: str, verdict: str = "NG") -> tuple[PartVerdict, tuple[Frame, ...]]:
    img = np.full((60, 50, 3), 200, np.uint8)
    frames = (Frame("L1", 0, 1, time.time(), img), Frame("L2", 1, 1, time.time(), img))
    dets = (Detection(0, "oil", 0.9, (10.0, 10.0, 30.0, 30.0)),) if verdict == "NG" else ()
    views = (ViewResult("L1", 0, 1, 0.0, dets), ViewResult("L2", 1, 1, 0.0, ()))
    return PartVerdict(part_id, 1, verdict, views, decided_time=time.time()), frames


def test_ng_part_gets_an_annotated_image_per_view_with_defects(tmp_path):
    w = EvidenceWriter(tmp_path / "ev")
    v, frames = part("C000001")
    out = w.write(v, frames)
    assert out.views[1].evidence_path is None  # no defect on L2: no image
    path = out.views[0].evidence_path
    img = cv2.imread(path)
    assert img is not None and img.shape == (60, 50, 3)
    assert (img[10:31, 10, 2] > 200).all() and (img[10:31, 10, 0] < 60).all()  # red box drawn on the defect
    assert not list((tmp_path / "ev").rglob("*.tmp.jpg"))
    ok, frames = part("C000002", "OK")
    assert w.write(ok, frames) is ok  # nothing written for OK parts


def test_retention_by_count_and_age(tmp_path):
    w = EvidenceWriter(tmp_path / "ev", retention_days=1.0, max_files=3)
    paths = [w.write(*part(f"C{i:06d}")).views[0].evidence_path for i in range(5)]
    kept = sorted(str(p) for p in (tmp_path / "ev").rglob("*.jpg"))
    assert kept == sorted(paths[2:])  # the 3 newest
    old = time.time() - 2 * 86400
    for p in paths[2:4]:
        os.utime(p, (old, old))
    w2 = EvidenceWriter(tmp_path / "ev", retention_days=1.0, max_files=3)  # a restart re-reads the tree
    assert sorted(str(p) for p in (tmp_path / "ev").rglob("*.jpg")) == [paths[4]]
    assert w2.prune() == 0


def test_live_line_shows_counts_latency_and_broker():
    snap = {
        "parts": 12,
        "parts_per_s": 1.5,
        "verdicts": {"OK": 9, "NG": 2, "INCOMPLETE": 1},
        "latency_ms": {"trigger_to_verdict": {"p50": 210.0, "p99": 480.0}, "inference": {"p50": 150.0}},
        "cameras": {"L1": {"state": "STREAMING", "dropped": 2}, "R2": {"state": "BACKOFF", "dropped": 0}},
    }
    line = format_line(snap, "connected")
    assert "parts 12 (1.50/s)" in line and "OK 9 NG 2 INCOMPLETE 1" in line
    assert "p50 210 p99 480 ms" in line and "cameras down R2" in line and "broker connected" in line
    assert "dropped 2" in line


def test_a_new_run_does_not_overwrite_the_evidence_of_an_earlier_one(tmp_path):
    import dataclasses

    w = EvidenceWriter(tmp_path / "ev")
    v, frames = part("C000000")
    first = w.write(v, frames).views[0].evidence_path
    # the next run starts its part ids at C000000 again, a few seconds later
    again = dataclasses.replace(v, decided_time=v.decided_time + 5.0)
    second = EvidenceWriter(tmp_path / "ev").write(again, frames).views[0].evidence_path
    assert first != second and os.path.exists(first) and os.path.exists(second)
    assert os.path.basename(first).endswith("_C000000_1_L1.jpg")


def test_labels_of_many_defects_at_one_place_do_not_cover_one_another():
    from rtvp_edge.evidence import _label

    img = np.zeros((400, 300, 3), np.uint8)
    placed = [(0, 0, 10_000, 28)]
    for k in range(8):  # eight detections with the same top-left corner
        _label(img, f"bubble 0.{k}9", 40, 60, placed)
    rects = placed[1:]
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert all(r[1] >= 0 and r[3] <= 400 for r in rects)
