"""The COCO/MMIOC reader: a good set loads; each kind of broken set gives a DatasetError naming file and item."""

import json

import cv2
import numpy as np
import pytest

from training.data.cli import main
from training.data.coco import DatasetError, load_coco_split


def _make(root, images=None, annotations=None, categories=None, write_images=True):
    (root / "Images/train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
    ]
    if write_images:
        for im in images:
            cv2.imwrite(str(root / "Images/train" / im["file_name"]), np.zeros((48, 64, 3), np.uint8))
    coco = {
        "images": images,
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 64, 48], "iscrowd": 0, "clear": False},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
        ],
        "categories": categories or [{"id": 3, "name": "bubble"}, {"id": 7, "name": "weld spatter"}],
    }
    (root / "annotations/train.json").write_text(json.dumps(coco))
    return coco


def test_good_set_loads_with_contiguous_classes_and_prompts(tmp_path):
    _make(tmp_path)
    ds = load_coco_split(tmp_path, "train")
    assert ds.class_names == ["bubble", "weld spatter"] and ds.category_ids == [3, 7]
    # prompts: the vocabulary's for a known class, a generic one for a foreign class
    assert "bubble" in ds.prompts[0] and ds.prompts[1] == "a weld spatter defect"
    a, b = ds.images
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 15], [0, 0, 64, 48]])
    assert a.boxes.dtype == np.float32 and a.class_ids.tolist() == [0, 1] and a.class_ids.dtype == np.int64
    assert a.clear.tolist() == [True, False]
    assert len(b.boxes) == 0 and b.boxes.shape == (0, 4)  # crowd annotation skipped
    assert ds.class_counts() == {"bubble": 1, "weld spatter": 1}


def test_prompts_from_the_manifest_win(tmp_path):
    _make(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"prompts": {"weld spatter": "molten metal drops"}}))
    assert load_coco_split(tmp_path, "train").prompts[1] == "molten metal drops"


def _broken(tmp_path, **kw):
    _make(tmp_path, **kw)
    with pytest.raises(DatasetError) as e:
        load_coco_split(tmp_path, "train")
    return str(e.value)


def test_missing_annotation_file(tmp_path):
    _make(tmp_path)
    with pytest.raises(DatasetError, match=r"val\.json"):
        load_coco_split(tmp_path, "val")


def test_bad_json(tmp_path):
    _make(tmp_path)
    (tmp_path / "annotations/train.json").write_text('{"images": [,]}')
    with pytest.raises(DatasetError, match=r"train\.json: not valid JSON.*line 1"):
        load_coco_split(tmp_path, "train")


def test_missing_key(tmp_path):
    _make(tmp_path)
    (tmp_path / "annotations/train.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(DatasetError, match="categories"):
        load_coco_split(tmp_path, "train")


def test_missing_image_file(tmp_path):
    _make(tmp_path)
    (tmp_path / "Images/train/b.png").unlink()
    with pytest.raises(DatasetError, match=r"train\.json: image id 2 \('b\.png'\): image file missing"):
        load_coco_split(tmp_path, "train")


def test_image_size_differs_from_the_json(tmp_path):
    msg = _broken(
        tmp_path, images=[{"id": 1, "file_name": "a.png", "width": 65, "height": 48}], annotations=[]
    )
    assert "image id 1 ('a.png')" in msg and "65x48" in msg and "64x48" in msg


def test_box_outside_the_image(tmp_path):
    msg = _broken(
        tmp_path, annotations=[{"id": 9, "image_id": 2, "category_id": 3, "bbox": [50, 40, 20, 10]}]
    )
    assert "train.json: annotation id 9 (image 'b.png')" in msg and "outside the 64x48 image" in msg


def test_degenerate_box(tmp_path):
    msg = _broken(tmp_path, annotations=[{"id": 4, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 3]}])
    assert "annotation id 4 (image 'a.png')" in msg and "degenerate" in msg


def test_bbox_not_four_numbers(tmp_path):
    msg = _broken(tmp_path, annotations=[{"id": 4, "image_id": 1, "category_id": 3, "bbox": [5, 5, "x", 3]}])
    assert "annotation id 4" in msg and "bbox" in msg


def test_unknown_category_id(tmp_path):
    msg = _broken(tmp_path, annotations=[{"id": 5, "image_id": 1, "category_id": 42, "bbox": [1, 1, 2, 2]}])
    assert "annotation id 5 (image 'a.png')" in msg and "unknown category_id 42" in msg and "[3, 7]" in msg


def test_unknown_image_id(tmp_path):
    msg = _broken(tmp_path, annotations=[{"id": 6, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]}])
    assert "annotation id 6" in msg and "unknown image_id 99" in msg


def test_duplicate_image_id(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 1, "file_name": "b.png", "width": 64, "height": 48},
    ]
    msg = _broken(tmp_path, images=images, annotations=[])
    assert "image id 1 ('b.png')" in msg and "duplicate" in msg


def test_duplicate_category(tmp_path):
    msg = _broken(tmp_path, categories=[{"id": 3, "name": "bubble"}, {"id": 3, "name": "stone"}])
    assert "duplicate category id 3" in msg


def test_cli_check_reports_the_broken_file(tmp_path, capsys):
    _make(tmp_path)
    assert main(["check", "--data", str(tmp_path)]) == 0
    assert "2 images, 2 boxes" in capsys.readouterr().out
    (tmp_path / "Images/train/a.png").unlink()
    assert main(["check", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "train.json" in err


def test_rig_and_data_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, rtvp_edge.rig, training.data, training.data.generate, training.data.show, training.data.cli;"
        "print('torch' in sys.modules)"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False"
