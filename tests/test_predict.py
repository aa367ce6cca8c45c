"""``rtvp-predict``: annotated images + JSON for trained classes, other names and free-text prompts."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.test_train_helpers import make_tiny_checkpoint

VOCAB = [
    {"name": "oil", "prompt": "a smear of oil on the glass container"},
    {"name": "bubble", "prompt": "a bubble"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("pred") / "run" / "best.pt", VOCAB)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    (d / "sub").mkdir()
    for name, (h, w) in (("a.png", (200, 160)), ("sub/b.jpg", (120, 300)), ("sub/a.png", (90, 90))):
        cv2.imwrite(str(d / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    return d


def run(args, capsys):
    from training.predict import main

    code = main([*args, "--device", "cpu"])
    return code, capsys.readouterr()


def test_folder_with_trained_classes(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, cap = run(
        [
            "--checkpoint",
            str(checkpoint),
            "--source",
            str(images),
            "--out",
            str(out),
            "--score-threshold",
            "0",
            "--max-detections",
            "5",
            "--text-cache",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, cap.err
    report = json.loads((out / "predictions.json").read_text())
    assert [v["name"] for v in report["vocabulary"]] == ["oil", "bubble"]
    assert len(report["images"]) == 3  # notes.txt skipped, sub/ searched
    assert len({r["annotated"] for r in report["images"]}) == 3  # two a.png do not overwrite each other
    for r in report["images"]:
        assert cv2.imread(r["annotated"]).shape[:2] == (r["height"], r["width"])
        assert len(r["detections"]) == 5
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert (
                0 <= x1 <= x2 <= r["width"]
                and 0 <= y1 <= y2 <= r["height"]
                and d["class"] in ("oil", "bubble")
            )


def test_free_text_prompt_and_other_class_names(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "p"
    code, cap = run(
        [
            "--checkpoint",
            str(checkpoint),
            "--source",
            str(images / "a.png"),
            "--out",
            str(out),
            "--prompt",
            "thin thread inside the glass",
            "--score-threshold",
            "0",
            "--max-detections",
            "3",
            "--text-cache",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, cap.err
    report = json.loads((out / "predictions.json").read_text())
    assert report["vocabulary"] == [
        {"name": "thin thread inside the glass", "prompt": "thin thread inside the glass"}
    ]
    assert {d["class"] for d in report["images"][0]["detections"]} == {"thin thread inside the glass"}
    out2 = tmp_path / "c"
    code, cap = run(
        [
            "--checkpoint",
            str(checkpoint),
            "--source",
            str(images / "a.png"),
            "--out",
            str(out2),
            "--classes",
            "stone, oil",
            "--text-cache",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, cap.err
    vocab = json.loads((out2 / "predictions.json").read_text())["vocabulary"]
    assert vocab == [{"name": "stone", "prompt": "an opaque stone inclusion in the glass"}, VOCAB[0]]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--source", "{tmp}/nothing"], "no such image file or folder"),
        (["--source", "{tmp}/empty"], "no images"),
        (["--source", "{imgs}", "--classes", "a", "--prompt", "b"], "either --classes or --prompt"),
        (["--source", "{imgs}/notes.txt"], "not a readable image"),
    ],
)
def test_errors_exit_2(checkpoint, images, tmp_path, capsys, extra, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, imgs=images) for a in extra]
    code, cap = run(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 2 and cap.err.startswith("rtvp-predict: error:") and needle in cap.err
