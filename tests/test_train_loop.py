"""The training loop on the stand-in detector: it learns, logs, checkpoints, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_train_helpers import (
    DoubleConfig,
    HashTextEncoder,
    build_double,
    double_overrides,
    load_shapes_split,
    make_shapes_dataset,
)
from training.checkpoint import build_from_checkpoint, load_checkpoint
from training.config import load_config
from training.datasets import DetectionDataset
from training.evaluate import evaluate_dataset
from training.train import run_training


def train(root, out, **extra):
    cfg = load_config(None, double_overrides(root, out, **extra), model_config_cls=DoubleConfig)
    return run_training(
        cfg, build_model=build_double, load_split=load_shapes_split, build_text_encoder=HashTextEncoder
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=48, n_val=16)


def ap50(model, root, text_embeds):
    split = load_shapes_split(root, "val")
    ds = DetectionDataset(split, split.class_names, _spec())
    result, _ = evaluate_dataset(model.eval(), ds, text_embeds, batch_size=8)
    return result["metrics"]["AP50"]


def _spec():
    from rtvp_edge.preprocess import PreprocessSpec

    return PreprocessSpec(input_size=(128, 128))


def test_training_raises_ap_far_above_untrained(shapes, tmp_path):
    run = train(
        shapes, tmp_path, name="learn", **{"schedule.epochs": 8, "eval.every": 4, "output.plots": "true"}
    )
    model, info = build_from_checkpoint(
        run / "last.pt", model_config_cls=DoubleConfig, build_model=build_double
    )
    emb = info["text_embeddings"]
    torch.manual_seed(0)
    untrained = ap50(build_double(DoubleConfig()), shapes, emb)
    trained = ap50(model, shapes, emb)
    assert trained > untrained + 0.3, (untrained, trained)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert {"train/loss", "train/loss_cls", "train/loss_box", "train/lr", "train/images_per_s"} <= set(
        rows[0]
    )
    assert "val/AP50" in rows[3] and "val/AP50" in rows[7] and "val/AP50" not in rows[0]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert abs(rows[7]["val/AP50"] - trained) < 1e-6  # the logged metric is the EMA model's, as checkpointed
    assert (run / "best.pt").is_file() and (run / "config.yaml").is_file()
    assert all((run / "plots" / f).stat().st_size > 1000 for f in ("losses.png", "ap.png", "lr.png"))
    assert load_config(run / "config.yaml", model_config_cls=DoubleConfig).schedule.epochs == 8
    assert info["weights"] == "ema" and info["class_names"] == ["red", "green", "blue"]
    prov = info["provenance"]
    assert prov["epoch"] == 8 and len(prov["dataset_hash"]) == 64 and prov["metrics"]["val/AP50"] == trained


def test_training_on_windows_learns_and_evaluates_whole_inputs(shapes, tmp_path):
    """``data.patch``: the loop trains on windows of the input and still evaluates (and checkpoints the
    statistics of) the whole input; a window larger than the input is refused naming both keys."""
    from training.config import ConfigError

    run = train(
        shapes,
        tmp_path,
        name="windows",
        **{"schedule.epochs": 8, "eval.every": 8, "data.patch": "[64,96]", "data.patch_on_defect": 0.9},
    )
    model, info = build_from_checkpoint(
        run / "last.pt", model_config_cls=DoubleConfig, build_model=build_double
    )
    emb = info["text_embeddings"]
    torch.manual_seed(0)
    untrained = ap50(build_double(DoubleConfig()), shapes, emb)
    trained = ap50(model, shapes, emb)
    assert trained > untrained + 0.2, (untrained, trained)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[-1]["val/AP50"] - trained) < 1e-6  # evaluated on whole 128x128 inputs
    assert load_config(run / "config.yaml", model_config_cls=DoubleConfig).data.patch == [64, 96]
    with pytest.raises(
        ConfigError, match=r"data.patch: \[160, 64\] \(height, width\) is larger than the model input"
    ):
        train(shapes, tmp_path, name="too_big", **{"data.patch": "[160,64]"})


def test_resume_equals_uninterrupted_run(shapes, tmp_path):
    """Stop after epoch 1 of 3, resume: weights, EMA, optimizer and logged losses equal the straight run."""
    straight = train(
        shapes,
        tmp_path,
        name="straight",
        **{
            "schedule.epochs": 3,
            "output.keep_every": 1,
            "data.hsv": "[0.015,0.5,0.3]",
            "data.scale_jitter": 0.1,
        },
    )
    resumed = train(
        shapes,
        tmp_path,
        name="resumed",
        resume=str(straight / "epoch_001.pt"),
        **{"schedule.epochs": 3, "data.hsv": "[0.015,0.5,0.3]", "data.scale_jitter": 0.1},
    )
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert a["trainer"]["step"] == b["trainer"]["step"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    rows_a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [2, 3]
    assert [r["train/loss"] for r in rows_a[1:]] == [r["train/loss"] for r in rows_b]


def test_pretrain_phase_then_joint(shapes, tmp_path):
    run = train(shapes, tmp_path, name="phases", **{"schedule.epochs": 2, "schedule.pretrain_epochs": 1})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val/AP50" not in rows[0] and "val/AP50" in rows[1]  # no evaluation of the half-built model
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["trainer"]["optimizer_phase"] == "joint"


def test_existing_run_is_not_overwritten(shapes, tmp_path):
    train(shapes, tmp_path, name="once", **{"schedule.epochs": 1})
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        train(shapes, tmp_path, name="once", **{"schedule.epochs": 1})
    run = train(shapes, tmp_path, name="once", **{"schedule.epochs": 2, "output.overwrite": "true"})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # the replaced run's rows are gone


def test_open_protocol_trains_on_seen_and_evaluates_unseen(shapes, tmp_path):
    run = train(shapes, tmp_path, name="open", protocol="open", **{
        "data.train_classes": "[red,green]", "data.eval_classes": "[blue]", "schedule.epochs": 1, "output.progress": "true"})  # fmt: skip
    ckpt = load_checkpoint(run / "last.pt")
    assert [v["name"] for v in ckpt["vocabulary"]] == [
        "red",
        "green",
    ]  # the model only learned the seen classes
    assert ckpt["provenance"]["eval_classes"] == ["blue"]
    split = load_shapes_split(shapes, "train")
    with_blue = sum(1 for r in split.images if (r.class_ids == 2).any())
    assert (
        ckpt["provenance"]["train_images"] == len(split.images) - with_blue
    )  # images showing "blue" left out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(k for k in rows[0] if k.startswith("val_class/")) == {"val_class/blue/AP50"}
