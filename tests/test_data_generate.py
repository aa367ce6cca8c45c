"""rtvp-data generate / show: layout, protocols, manifest counts read back with the COCO reader."""

import json

import cv2
import numpy as np
import pytest

from rtvp_edge.rig import RigConfig
from rtvp_edge.vocabulary import GLASS_DEFECTS, seen_classes, unseen_classes
from training.data.cli import main
from training.data.coco import load_coco_split
from training.data.generate import generate_dataset

N = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("glass")
    # a high defect share so that both protocols have boxes of every kind in 12 containers
    cfg = RigConfig(seed=11, defect_free_share=0.15, mean_defects=3.0)
    roots = generate_dataset(out, containers=N, protocol="both", config=cfg, progress=False)
    return out, roots


def test_layout_and_manifest_counts_match_the_reader(dataset):
    out, roots = dataset
    assert set(roots) == {"closed", "open"}
    for proto, root in roots.items():
        m = json.loads((root / "manifest.json").read_text())
        assert m["protocol"] == proto and m["seed"] == 11 and m["generator_version"]
        assert m["names"] == [c.name for c in GLASS_DEFECTS]
        assert m["prompts"] == {c.name: c.prompt for c in GLASS_DEFECTS}
        total = 0
        for split in ("train", "val"):
            ds = load_coco_split(root, split)
            sm = m["splits"][split]
            assert len(ds.images) == sm["images"] == 6 * sm["containers"]
            assert ds.num_boxes == sm["annotations"]
            assert ds.class_counts() == sm["class_counts"]
            assert ds.class_names == sm["classes"]
            total += sm["containers"]
            for rec in ds.images:
                assert rec.path.is_file() and rec.path.suffix == ".jpg"
                assert (rec.width, rec.height) == (700, 820)
                # YOLO label next to it: same boxes, global class index
                label = root / "labels" / split / (rec.path.stem + ".txt")
                lines = label.read_text().splitlines()
                rows = np.array([[float(v) for v in ln.split()] for ln in lines]).reshape(-1, 5)
                assert len(rows) == len(rec.boxes)
                if len(rows):
                    cxcy = (rec.boxes[:, :2] + rec.boxes[:, 2:]) / 2 / [700, 820]
                    np.testing.assert_allclose(rows[:, 1:3], cxcy, atol=2e-3)
                    names = [ds.class_names[k] for k in rec.class_ids]
                    assert [m["names"][int(k)] for k in rows[:, 0]] == names
        assert total == N
    # closed: 80/20 by container, the six views of a part together
    closed = roots["closed"]
    parts = {s: {r.meta["part_id"] for r in load_coco_split(closed, s).images} for s in ("train", "val")}
    assert not parts["train"] & parts["val"]
    assert len(parts["val"]) == round(0.2 * N)


def test_open_protocol_keeps_unseen_classes_out_of_train(dataset):
    out, roots = dataset
    root = roots["open"]
    train, val = load_coco_split(root, "train"), load_coco_split(root, "val")
    assert train.class_names == [c.name for c in seen_classes()]
    assert val.class_names == [c.name for c in unseen_classes()]
    assert val.num_boxes > 0 and train.num_boxes > 0
    # not even unlabelled: no train container carries an unseen defect in the closed annotations
    closed = {
        r.meta["part_id"]: r for s in ("train", "val") for r in load_coco_split(roots["closed"], s).images
    }
    closed_names = load_coco_split(roots["closed"], "train").class_names
    unseen = {c.name for c in unseen_classes()}
    train_parts = {r.meta["part_id"] for r in train.images}
    for key, rec in closed.items():
        if key in train_parts:
            assert not {closed_names[k] for k in rec.class_ids} & unseen
    val_parts = {r.meta["part_id"] for r in val.images}
    assert not train_parts & val_parts
    assert len(train_parts) + len(val_parts) == N


def test_deterministic_and_refuses_to_overwrite(dataset, tmp_path):
    out, roots = dataset
    cfg = RigConfig(seed=11, defect_free_share=0.15, mean_defects=3.0)
    again = generate_dataset(tmp_path, containers=N, protocol="closed", config=cfg, progress=False)
    a = json.loads((roots["closed"] / "annotations" / "val.json").read_text())
    b = json.loads((again["closed"] / "annotations" / "val.json").read_text())
    assert a == b
    name = a["images"][0]["file_name"]
    assert (roots["closed"] / "Images/val" / name).read_bytes() == (
        again["closed"] / "Images/val" / name
    ).read_bytes()
    with pytest.raises(FileExistsError, match="closed"):
        generate_dataset(tmp_path, containers=2, protocol="closed", config=cfg, progress=False)
    # the refused run left nothing behind, the existing set is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["closed"]
    assert json.loads((again["closed"] / "annotations" / "val.json").read_text()) == a


def test_cli_generate_png_and_show(tmp_path, capsys):
    rc = main(["generate", "--out", str(tmp_path / "d"), "--containers", "3", "--protocol", "closed",
               "--seed", "2", "--format", "png", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "closed/train" in capsys.readouterr().out
    pngs = sorted((tmp_path / "d/closed/Images/train").glob("*.png"))
    assert len(pngs) == 12 and cv2.imread(str(pngs[0])).shape == (820, 700, 3)
    rc = main(["show", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--containers", "2"])
    assert rc == 0
    sheets = sorted((tmp_path / "s").glob("contact_closed_*.png"))
    assert len(sheets) == 3  # 2 from train, 1 from val (a single container)
    sheet = cv2.imread(str(sheets[0]))
    assert sheet.shape[0] > 700 and sheet.shape[1] >= 1000  # two rows of three views
    stats = cv2.imread(str(tmp_path / "s/stats_closed.png"))
    assert stats is not None and stats.std() > 5


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["generate", "--out", "{t}", "--containers", "0"], "containers"),
        (["generate", "--out", "{t}", "--containers", "2", "--defect-free-share", "2"], "defect_free_share"),
        (["generate", "--out", "{t}", "--containers", "2", "--val-share", "1.5"], "val_share"),
        (["show", "--data", "{t}/nothing", "--out", "{t}/s"], "no data set"),
    ],
)
def test_cli_errors_exit_2_with_a_named_field(tmp_path, capsys, argv, needle):
    rc = main([a.format(t=tmp_path) for a in argv])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_parallel_workers_write_the_same_data_set(tmp_path):
    cfg = RigConfig(seed=5)
    a = generate_dataset(tmp_path / "a", containers=3, protocol="closed", config=cfg, progress=False)
    b = generate_dataset(
        tmp_path / "b", containers=3, protocol="closed", config=cfg, workers=2, progress=False
    )
    for split in ("train", "val"):
        ja = json.loads((a["closed"] / f"annotations/{split}.json").read_text())
        jb = json.loads((b["closed"] / f"annotations/{split}.json").read_text())
        assert ja == jb
        for im in ja["images"]:
            fa = a["closed"] / "Images" / split / im["file_name"]
            assert fa.read_bytes() == (b["closed"] / "Images" / split / im["file_name"]).read_bytes()


def test_an_interrupted_run_leaves_nothing_half_written(tmp_path, monkeypatch):
    import training.data.generate as gen

    real = gen.render_container

    def failing(config, index):
        if index == 2:
            raise RuntimeError("disk on fire")
        return real(config, index)

    monkeypatch.setattr(gen, "render_container", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_dataset(tmp_path, containers=4, protocol="both", config=RigConfig(seed=1), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_pycocotools_reads_the_annotations(dataset):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    import contextlib
    import io

    out, roots = dataset
    ann = roots["closed"] / "annotations/train.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_mod.COCO(str(ann))
        # the ground truth scored against itself is perfect: the json is well-formed COCO
        dets = [{**a, "score": 1.0} for a in gt.dataset["annotations"]]
        ev = cocoeval.COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP50


def test_generate_from_a_rig_file(tmp_path, capsys):
    rig = tmp_path / "rig.yaml"
    rig.write_text("seed: 3\nclasses: [bubble, stone]\nshapes: [jar]\ndefect_free_share: 0.0\n")
    argv = ["generate", "--out", str(tmp_path / "d"), "--containers", "2", "--protocol", "closed"]
    assert main([*argv, "--rig", str(rig), "--defect-size-scale", "2.0", "--no-progress"]) == 0, (
        capsys.readouterr()
    )
    manifest = json.loads((tmp_path / "d/closed/manifest.json").read_text())
    config = manifest["rig_config"]
    assert (config["seed"], config["classes"], config["shapes"]) == (3, ["bubble", "stone"], ["jar"])
    assert config["defect_size_scale"] == 2.0  # the flag over the file
    assert RigConfig.model_validate(config) == RigConfig(  # the manifest's rig config is a rig file again
        seed=3,
        classes=(GLASS_DEFECTS[2], GLASS_DEFECTS[6]),
        shapes=("jar",),
        defect_free_share=0.0,
        defect_size_scale=2.0,
    )


def test_bad_rig_file_exits_2_naming_file_line_and_key(tmp_path, capsys):
    rig = tmp_path / "rig.yaml"
    rig.write_text("seed: 3\nshapes: [jar, teapot]\n")
    argv = ["generate", "--out", str(tmp_path / "d"), "--containers", "2", "--rig", str(rig)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtvp-data generate: error: {rig}:2: shapes: unknown shape 'teapot'"), err
    assert not (tmp_path / "d").exists()
