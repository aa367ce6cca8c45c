"""The hard-sample folder (issue 16): raw frames of NG parts, of parts with a detection near its threshold
and of a seeded share of OK parts, with the predictions as a COCO file pycocotools (and so CVAT / Label
Studio) reads; bounded; names that survive a new run; a failing disk never stops the line's verdicts."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_backends import make_toy_bundle
from test_pipeline import line_file, recorded_line

from rtvp_edge.config import DetectionConfig, load_line_config
from rtvp_edge.detection_filter import DetectionFilter
from rtvp_edge.hard_samples import COCO_FILE, HardSampleWriter
from rtvp_edge.messages import Detection, Frame, PartVerdict, ViewResult
from rtvp_edge.pipeline import build_pipeline

pytestmark = pytest.mark.timeout(60)
CLASSES = ["oil", "black spot", "bubble"]


def wait_until(check, what: str, timeout: float = 20.0):
    """Poll ``check()`` until it returns something truthy (the state waited for); fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def frames(part: int, views: int = 2, seed: int = 0) -> tuple[Frame, ...]:
    rng = np.random.default_rng(seed * 1000 + part)
    return tuple(
        Frame(f"C{v}", v, part, 1_700_000_000.0 + part, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        for v in range(views)
    )


def verdict(part: int, kind: str, near=(), dets=None, decided: float | None = None) -> PartVerdict:
    """A part of two views; ``kind`` OK/NG/INCOMPLETE; NG has one oil detection on view 0."""
    if dets is None:
        dets = (Detection(0, "oil", 0.9, (10.0, 5.0, 30.0, 25.0)),) if kind == "NG" else ()
    views = (
        ViewResult("C0", 0, part, 0.0, dets, None, tuple(near)),
        ViewResult("C1", 1, part, 0.0, ()),
    )
    return PartVerdict(f"P{part:04d}", part, kind, views, decided_time=decided or time.time())


def writer(tmp_path, **kw) -> HardSampleWriter:
    kw.setdefault("ok_share", 0.0)
    return HardSampleWriter(tmp_path / "hs", CLASSES, {"name": "tiny", "bundle_sha256": "ab" * 32}, **kw)


def load_coco(root: Path):
    from pycocotools.coco import COCO

    return COCO(str(root / COCO_FILE))


def test_ng_and_near_threshold_parts_are_kept_raw_with_their_predictions_as_coco(tmp_path):
    w = writer(tmp_path)
    near = Detection(2, "bubble", 0.22, (40.0, 10.0, 50.0, 20.0))  # below its threshold: not reported
    parts = {
        0: (verdict(0, "NG"), frames(0)),
        1: (verdict(1, "OK"), frames(1)),  # ok_share 0: not kept
        2: (verdict(2, "OK", near=[near]), frames(2)),
        3: (verdict(3, "INCOMPLETE", near=[near]), frames(3)),  # never kept
    }
    for v, f in parts.values():
        w(v, f)
    w.close()
    assert w.errors == 0 and w.written == 4
    coco = load_coco(w.root)  # pycocotools reads it: images, annotations, categories indexed
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    imgs = coco.loadImgs(coco.getImgIds())
    assert sorted({i["part_id"] for i in imgs}) == ["P0000", "P0002"]
    for img in imgs:  # raw: the frame as captured, bit for bit
        (f,) = [f for f in parts[img["trigger_seq"]][1] if f.camera_id == img["camera_id"]]
        got = cv2.imread(str(w.root / img["file_name"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, f.image)
        assert (img["width"], img["height"]) == (64, 48)
    ng0 = next(i for i in imgs if i["part_id"] == "P0000" and i["camera_id"] == "C0")
    assert ng0["verdict"] == "NG" and ng0["kept_because"] == ["NG"]
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[ng0["id"]]))
    assert ann["bbox"] == [10.0, 5.0, 20.0, 20.0] and ann["score"] == 0.9 and not ann["below_threshold"]
    assert coco.loadCats([ann["category_id"]])[0]["name"] == "oil"
    near0 = next(i for i in imgs if i["part_id"] == "P0002" and i["camera_id"] == "C0")
    assert near0["kept_because"] == ["near_threshold"]
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[near0["id"]]))
    assert ann["below_threshold"] and ann["score"] == 0.22 and ann["attributes"]["below_threshold"]
    raw = json.loads((w.root / COCO_FILE).read_text())
    assert raw["info"]["model"] == "tiny"  # what rtvp-edge enroll checks against the bundle


def test_random_ok_share_is_seeded(tmp_path):
    def kept(seed, sub):
        w = HardSampleWriter(tmp_path / sub, CLASSES, ok_share=0.2, seed=seed)
        picked = [k for k in range(200) if w.select(verdict(k, "OK"))]
        w.close()
        return picked

    a, b = kept(3, "a"), kept(3, "b")
    assert a == b and 20 <= len(a) <= 60  # the same parts for the same seed; about a fifth
    assert kept(4, "c") != a


def test_split_view_reports_detections_near_their_threshold_on_both_sides():
    f = DetectionFilter(DetectionConfig(class_thresholds={"oil": 0.5}, score_threshold=0.3), CLASSES)
    dets = [Detection(0, "oil", s, (0.0, 0.0, 10.0, 10.0)) for s in (0.44, 0.46, 0.5, 0.54, 0.56)] + [
        Detection(2, "bubble", 0.27, (0.0, 0.0, 10.0, 10.0))
    ]
    kept, near = f.split_view("cam", dets, near_band=0.05)
    assert [d.score for d in kept] == [0.5, 0.54, 0.56]
    assert [(d.class_name, d.score) for d in near] == [
        ("oil", 0.46),
        ("oil", 0.5),
        ("oil", 0.54),
        ("bubble", 0.27),
    ]
    assert f.split_view("cam", dets)[1] == ()  # no band: nothing is near


def test_bounded_by_count_and_size_oldest_first_and_coco_follows(tmp_path):
    w = writer(tmp_path, max_files=5)
    for k in range(6):
        w(verdict(k, "NG"), frames(k))  # 2 images a part: 12 written, the 5 newest kept
    w.close()
    coco = load_coco(w.root)
    pngs = sorted(p.relative_to(w.root).as_posix() for p in w.root.glob("*/*.png"))
    assert len(pngs) == 5 and w.pruned == 7
    assert sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds())) == pngs
    assert {i["trigger_seq"] for i in coco.loadImgs(coco.getImgIds())} == {3, 4, 5}  # the newest parts
    assert {a["image_id"] for a in coco.loadAnns(coco.getAnnIds())} <= set(coco.getImgIds())
    size = max(p.stat().st_size for p in w.root.glob("*/*.png"))
    w2 = writer(tmp_path, max_bytes=3 * size)  # a restart with a smaller budget prunes what is there
    w2.close()
    assert len(list(w.root.glob("*/*.png"))) <= 3
    assert len(load_coco(w.root).getImgIds()) == len(list(w.root.glob("*/*.png")))


def test_a_new_run_neither_overwrites_nor_forgets_the_last_one(tmp_path):
    decided = time.time()
    w = writer(tmp_path)
    w(verdict(0, "NG", decided=decided), frames(0, seed=1))
    w.close()
    first = load_coco(w.root)
    w2 = writer(tmp_path)  # a new run: part ids start again, same decision millisecond even
    w2(verdict(0, "NG", decided=decided), frames(0, seed=2))
    w2.close()
    coco = load_coco(w.root)
    imgs = coco.loadImgs(coco.getImgIds())
    assert len(imgs) == 4 and len({i["file_name"] for i in imgs}) == 4 and len(set(coco.getImgIds())) == 4
    assert set(first.getImgIds()) < set(coco.getImgIds())  # the first run's records kept, ids not reused
    for img in imgs:
        seed = 1 if img["id"] in first.getImgIds() else 2
        (f,) = [f for f in frames(0, seed=seed) if f.camera_id == img["camera_id"]]
        np.testing.assert_array_equal(cv2.imread(str(w.root / img["file_name"])), f.image)


def test_a_failing_disk_is_counted_and_reported_and_the_writer_recovers(tmp_path):
    states = []
    w = writer(tmp_path, status=lambda *s: states.append(s))
    shutil.rmtree(w.root)
    w.root.write_text("not a folder")  # every write below it fails, whoever runs the test (root too)
    for k in range(3):
        w(verdict(k, "NG"), frames(k))  # never raises, never blocks
    wait_until(lambda: w.errors >= 3, "three failed parts")
    assert [s[:2] for s in states] == [("hard_samples", "ERROR")]  # reported once per failure spell
    assert str(w.root) in states[0][2]
    w.root.unlink()
    w.root.mkdir()
    w(verdict(9, "NG"), frames(9))
    w.close()
    assert states[-1][:2] == ("hard_samples", "OK")
    assert [i["trigger_seq"] for i in load_coco(w.root).loadImgs(load_coco(w.root).getImgIds())] == [9, 9]


def test_a_full_queue_skips_parts_instead_of_waiting(tmp_path):
    w = writer(tmp_path, queue_parts=1)
    gate, busy = threading.Event(), threading.Event()

    def stuck_disk(item):  # the writer thread hangs on the disk until the gate opens
        busy.set()
        assert gate.wait(30)

    w._write = stuck_disk
    w(verdict(0, "NG"), frames(0))
    assert busy.wait(10)  # part 0 is with the writer thread
    w(verdict(1, "NG"), frames(1))  # waits in the queue
    w(verdict(2, "NG"), frames(2))  # no room: skipped at once, not waited for
    assert (w.kept, w.skipped) == (2, 1)
    gate.set()
    w.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("hs") / "bundle")


def hard_sample_line(tmp_path, bundle, rec, hs_dir) -> Path:
    p = line_file(tmp_path, bundle, rec)
    p.write_text(
        p.read_text() + f"hard_samples: {{enabled: true, dir: {hs_dir}, ok_share: 1.0, max_files: 100}}\n"
    )
    return p


def test_the_line_keeps_hard_samples_and_a_dead_disk_does_not_stop_its_verdicts(tmp_path, bundle):
    rec = recorded_line(tmp_path, 8, ng_parts={2, 5})
    hs = tmp_path / "hs"
    cfg = load_line_config(hard_sample_line(tmp_path, bundle, rec, hs))
    got = []
    p = build_pipeline(cfg, sinks=[got.append], use_mqtt=False)
    p.run()
    p.close()
    assert sorted(v.trigger_seq for v in got) == list(range(8))
    coco = load_coco(hs)
    imgs = coco.loadImgs(coco.getImgIds())
    assert {i["trigger_seq"] for i in imgs} == set(range(8))  # NG parts and (ok_share 1) every OK part
    assert len(imgs) == 8 * 3
    ng = [i for i in imgs if i["verdict"] == "NG"]
    assert {i["trigger_seq"] for i in ng} == {2, 5}
    spot = [a for i in ng for a in coco.loadAnns(coco.getAnnIds(imgIds=[i["id"]]))]
    assert spot and {coco.loadCats([a["category_id"]])[0]["name"] for a in spot} == {"black spot"}
    assert p.snapshot()["hard_samples"]["written"] == 24

    # the same line with its hard-sample folder unusable: every part still gets its one verdict
    got.clear()
    statuses = []
    hs2 = tmp_path / "hs2"
    cfg = load_line_config(hard_sample_line(tmp_path, bundle, rec, hs2))
    p = build_pipeline(cfg, sinks=[got.append], status_sinks=[lambda *s: statuses.append(s)], use_mqtt=False)
    shutil.rmtree(hs2)
    hs2.write_text("the disk went away")
    p.run()
    p.close()
    assert sorted(v.trigger_seq for v in got) == list(range(8))
    assert {v.trigger_seq for v in got if v.verdict == "NG"} == {2, 5}
    assert p.hard_samples.errors >= 1 and p.hard_samples.written == 0
    assert ("hard_samples", "ERROR") in [s[:2] for s in statuses]
