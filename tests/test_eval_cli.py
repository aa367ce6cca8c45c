"""``rtvp-eval`` and ``rtvp-train`` command lines on the real RTVPNet-tiny and a generated rig data set:
COCO JSON with every metric, open-protocol evaluation on unseen classes, clear errors with exit status 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rtvp_edge.rig import RigConfig
from tests.test_train_helpers import make_tiny_checkpoint
from training.coco_eval import METRIC_NAMES
from training.data.generate import generate_dataset

SEEN = ["oil", "black spot", "bubble", "plastering thread", "quenched grain"]
UNSEEN = ["crack", "stone", "scratch"]


@pytest.fixture(scope="module")
def rig_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("rig")
    cfg = RigConfig(seed=0, defect_free_share=0.0, defect_size_scale=3.0)
    return generate_dataset(out, containers=6, protocol="both", config=cfg, progress=False)


@pytest.fixture(scope="module")
def seen_checkpoint(tmp_path_factory):
    """An (untrained) RTVPNet-tiny checkpoint whose vocabulary is the five seen classes."""
    from rtvp_edge.vocabulary import GLASS_DEFECTS

    vocab = [{"name": c.name, "prompt": c.prompt} for c in GLASS_DEFECTS if c.seen]
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "best.pt", vocab)


def _eval(args, capsys):
    from training.evaluate import main

    code = main(args)
    return code, capsys.readouterr()


def test_eval_writes_all_coco_metrics(rig_data, seen_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    code, cap = _eval(
        [
            "--checkpoint",
            str(seen_checkpoint),
            "--data",
            str(rig_data["closed"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--samples",
            "2",
            "--text-cache",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert code == 0, cap.err
    report = json.loads((out / "eval.json").read_text())
    assert set(report["metrics"]) == set(METRIC_NAMES)
    assert report["classes"] == SEEN and set(report["per_class"]) == set(SEEN)
    assert all(set(v) == {"AP", "AP50", "AP75", "n_gt"} for v in report["per_class"].values())
    assert report["n_images"] > 0 and report["text_encoder"] == "random:512"
    assert (out / "pr_curves.png").stat().st_size > 1000
    assert len(list((out / "samples").glob("*.jpg"))) == 2
    assert "AP50" in cap.out


def test_open_protocol_evaluates_unseen_classes_from_prompts(rig_data, seen_checkpoint, tmp_path, capsys):
    out = tmp_path / "open"
    code, cap = _eval(
        [
            "--checkpoint",
            str(seen_checkpoint),
            "--data",
            str(rig_data["open"]),
            "--classes",
            "unseen",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--samples",
            "0",
            "--text-cache",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert code == 0, cap.err
    report = json.loads((out / "eval.json").read_text())
    assert report["classes"] == UNSEEN and report["trained_classes"] == SEEN
    assert set(report["per_class"]) == set(UNSEEN)
    assert sum(v["n_gt"] for v in report["per_class"].values()) > 0
    assert all(v["AP50"] is not None for v in report["per_class"].values() if v["n_gt"])
    assert report["prompts"][0] == "a sharp crack in the glass wall"  # the data set's prompt for "crack"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "{data}/closed", "--checkpoint", "{tmp}/none.pt"], "none.pt: checkpoint file not found"),
        (["--data", "{tmp}/nodata", "--checkpoint", "{ckpt}"], "nodata: data set directory not found"),
        (
            ["--data", "{data}/closed", "--checkpoint", "{ckpt}", "--classes", "purple"],
            "['purple'] not in the data set",
        ),
        (["--data", "{data}/closed", "--checkpoint", "{ckpt}", "--split", "test"], "test"),
    ],
)
def test_eval_errors_exit_2_with_a_message(rig_data, seen_checkpoint, tmp_path, capsys, args, needle):
    fmt = {"data": rig_data["closed"].parent, "tmp": tmp_path, "ckpt": seen_checkpoint}
    code, cap = _eval([a.format(**fmt) for a in args] + ["--device", "cpu"], capsys)
    assert code == 2
    assert cap.err.startswith("rtvp-eval: error:") and needle in cap.err
    assert "Traceback" not in cap.err


def _train_main(args, capsys):
    from training.train import main

    code = main(args)
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["optim.lrr=1"], "command line (optim.lrr=1): optim.lrr: unknown key"),
        (["model.variant=rtvpnet_xl"], "model.variant"),
        (["data.batch_size=many"], "data.batch_size: Input should be a valid integer (got 'many')"),
        (["data.root={tmp}/missing"], "data set directory"),
        (["data.train_classes=[purple]"], "data.train_classes: ['purple']"),
    ],
)
def test_train_config_errors_exit_2_naming_the_key(rig_data, tmp_path, capsys, overrides, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"data": {"root": str(rig_data["closed"])}, "output": {"dir": str(tmp_path)}, "device": "cpu"}
        )
    )
    code, cap = _train_main(["--config", str(cfg), *[o.format(tmp=tmp_path) for o in overrides]], capsys)
    assert code == 2, cap.err
    assert cap.err.startswith("rtvp-train: error:") and needle in cap.err


def test_train_names_the_broken_annotation_file(rig_data, tmp_path, capsys):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(rig_data["closed"], root)
    ann = root / "annotations" / "train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [10, 10, -5, 3]  # negative width
    ann.write_text(json.dumps(data))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"data": {"root": str(root)}, "output": {"dir": str(tmp_path)}, "device": "cpu"})
    )
    code, cap = _train_main(["--config", str(cfg)], capsys)
    assert code == 2 and "train.json" in cap.err


class _FixedBoxes(torch.nn.Module):
    """Two boxes per image: the first best in class 1 (0.9), the second best in class 2 (0.8)."""

    def forward_inference(self, images, text_embeds):
        b, c = images.shape[0], text_embeds.shape[0]
        boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0]]).expand(b, 2, 4)
        scores = torch.full((b, 2, c), 0.05)
        scores[:, 0, 1], scores[:, 1, 2] = 0.9, 0.8
        return boxes, scores


def test_class_agnostic_detection_scores_each_box_by_its_best_class(rig_data):
    from rtvp_edge.preprocess import PreprocessSpec
    from training.data.coco import load_coco_split
    from training.datasets import DetectionDataset
    from training.evaluate import ANY_CLASS, detect_dataset

    split = load_coco_split(rig_data["closed"], "val")
    dataset = DetectionDataset(split, SEEN, PreprocessSpec((64, 64)))
    emb = torch.zeros(len(SEEN), 4)
    agnostic = {}
    aware = detect_dataset(_FixedBoxes(), dataset, emb, indices=[0, 1], agnostic_out=agnostic)
    assert detect_dataset(_FixedBoxes(), dataset, emb, indices=[0, 1]) == aware  # the same class-aware result
    assert [d.class_name for d in aware[0]] == [SEEN[1], SEEN[2]]
    assert [(d.class_name, d.class_id, round(d.score, 3)) for d in agnostic[0]] == [
        (ANY_CLASS, 0, 0.9),
        (ANY_CLASS, 0, 0.8),
    ]
    assert [d.box for d in agnostic[1]] == [d.box for d in aware[1]]
    from training.evaluate import evaluate_dataset

    both, _ = evaluate_dataset(_FixedBoxes(), dataset, emb, class_agnostic=True)
    plain, _ = evaluate_dataset(_FixedBoxes(), dataset, emb)
    assert both["metrics"] == plain["metrics"] and "class_agnostic" not in plain
    assert both["class_agnostic"]["n_detections"] == 2 * len(dataset)


def test_eval_class_agnostic_reports_both(rig_data, seen_checkpoint, tmp_path, capsys):
    out = tmp_path / "agn"
    args = ["--checkpoint", str(seen_checkpoint), "--data", str(rig_data["closed"]), "--out", str(out),
            "--device", "cpu", "--samples", "0", "--text-cache", str(tmp_path / "c"), "--class-agnostic"]  # fmt: skip
    code, cap = _eval(args, capsys)
    assert code == 0, cap.err
    report = json.loads((out / "eval.json").read_text())
    assert set(report["class_agnostic"]["metrics"]) == set(METRIC_NAMES)
    assert set(report["per_class"]) == set(SEEN)  # the class-aware result is still the main one
    assert "class-agnostic AP" in cap.out
