"""``from rtvp_edge import Detector`` and ``rtvp-edge predict`` give the line's detections for the same
frames (boxes in camera pixels, class names); ``predict`` writes annotated images and COCO results."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from plc_helpers import CAMS, recorded_line
from test_backends import TOY_CLASSES, make_toy_bundle

from rtvp_edge import Detector, cli
from rtvp_edge.config import load_line_config
from rtvp_edge.pipeline import build_pipeline

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("api") / "bundle")


def plain_line(tmp_path, bundle, rec):
    cams = "\n".join(
        f"  - {{id: {c}, source: {rec / c}, view: {i}, overflow: block}}" for i, c in enumerate(CAMS)
    )
    p = tmp_path / "line.yaml"
    p.write_text(
        f"line: {{site: s, line: l, station: st}}\ncameras:\n{cams}\nassembly: {{views_per_part: 3}}\n"
        f"model: {{bundle: {bundle}, backend: openvino, threads: 1}}\nevidence: {{enabled: false}}\n"
    )
    return p


def as_tuples(dets):
    return sorted((d.class_name, round(d.score, 4), tuple(round(c, 2) for c in d.box)) for d in dets)


def test_detector_and_predict_cli_match_the_line(tmp_path, bundle, capsys):
    n, ng = 4, {1, 2}
    rec = recorded_line(tmp_path, n, ng)
    # camera B's NG spot moved per part, so equal results cannot come from one fixed answer
    for k in ng:
        img = np.full((80, 80, 3), 210, np.uint8)
        img[8 + 8 * k : 24 + 8 * k, 16:40] = 5
        cv2.imwrite(str(rec / "B" / f"{k:04d}.png"), img)
    line = plain_line(tmp_path, bundle, rec)
    got = []
    p = build_pipeline(load_line_config(line), sinks=[got.append], use_mqtt=False)
    p.run()
    p.close()
    assert len(got) == n
    line_dets = {(v.camera_id, part.trigger_seq): as_tuples(v.detections) for part in got for v in part.views}
    assert sum(bool(d) for d in line_dets.values()) == len(ng)  # the line found the spots, on B only

    with Detector.from_line(line) as det:
        assert det.class_names == list(TOY_CLASSES)
        for k in range(n):
            paths = [rec / c / f"{k:04d}.png" for c in CAMS]
            for cam, dets in zip(CAMS, det.predict(paths), strict=True):
                assert as_tuples(dets) == line_dets[(cam, k)]
        # one image at a time, as an array, gives the same
        img = cv2.imread(str(rec / "B" / "0001.png"))
        assert as_tuples(det.predict(img)[0]) == line_dets[("B", 1)]

    out = tmp_path / "pred"
    assert cli.main(["predict", "--line", str(line), "--source", str(rec / "B"), "--out", str(out)]) == 0
    assert f"{n} images" in capsys.readouterr().out
    meta = json.loads((out / "coco_images.json").read_text())
    results = json.loads((out / "coco_results.json").read_text())
    assert [i["file_name"] for i in meta["images"]] == [f"{k:04d}.png" for k in range(n)]
    assert [c["name"] for c in meta["categories"]] == list(TOY_CLASSES)
    for im in meta["images"]:
        k = int(im["file_name"][:4])
        annotated = cv2.imread(str(out / im["file_name"]))
        assert annotated is not None and annotated.shape == (80, 80, 3)
        mine = sorted(
            (TOY_CLASSES[r["category_id"] - 1], round(r["score"], 4),
             (r["bbox"][0], r["bbox"][1], round(r["bbox"][0] + r["bbox"][2], 2), round(r["bbox"][1] + r["bbox"][3], 2)))
            for r in results if r["image_id"] == im["id"]
        )  # fmt: skip
        expected = [(c, s, b) for c, s, b in line_dets[("B", k)]]
        assert [(c, s) for c, s, _ in mine] == [(c, s) for c, s, _ in expected]
        for (_, _, b1), (_, _, b2) in zip(mine, expected, strict=True):
            assert np.allclose(b1, b2, atol=0.02)


def test_predict_bad_source_is_exit_2(tmp_path, bundle, capsys):
    code = cli.main(
        ["predict", "--bundle", str(bundle), "--source", str(tmp_path / "none"), "--out", str(tmp_path)]
    )
    assert code == 2 and "--source" in capsys.readouterr().err


def test_predict_on_a_video_file(tmp_path, bundle, capsys):
    n, spots = 6, {1, 4}
    video = tmp_path / "conveyor.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 80))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for k in range(n):
        img = np.full((80, 80, 3), 210, np.uint8)
        if k in spots:
            img[10 + 6 * k : 30 + 6 * k, 40:60] = 5  # a black spot, moved per frame
        writer.write(img)
    writer.release()
    cap = cv2.VideoCapture(str(video))  # the frames as decoded (MJPG is lossy)
    frames = [f for ok, f in iter(cap.read, (False, None)) if ok]
    cap.release()
    assert len(frames) == n

    out = tmp_path / "pred"
    args = ["predict", "--bundle", str(bundle), "--source", str(video), "--out", str(out), "--score", "0.5"]
    assert cli.main(args) == 0
    assert f"{n} images" in capsys.readouterr().out
    meta = json.loads((out / "coco_images.json").read_text())
    results = json.loads((out / "coco_results.json").read_text())
    names = [f"conveyor_{k:06d}.jpg" for k in range(n)]
    assert [i["file_name"] for i in meta["images"]] == names
    assert all(cv2.imread(str(out / name)).shape == (80, 80, 3) for name in names)
    from rtvp_edge.config import DetectionConfig

    with Detector(bundle, "openvino", detection=DetectionConfig(score_threshold=0.5)) as det:
        expected = det.predict(frames)
    for k, (im, dets) in enumerate(zip(meta["images"], expected, strict=True)):
        mine = sorted(
            (r["category_id"] - 1, round(r["score"], 4)) for r in results if r["image_id"] == im["id"]
        )
        assert mine == sorted((d.class_id, round(d.score, 4)) for d in dets)
        assert bool(mine) == (k in spots), (k, mine)  # the spots are found in the right frames only
