"""The loop with the real RTVPNet-tiny on a generated rig data set: exact resume (random patch masks, batch
norms, EMA included)."""

from __future__ import annotations

import pytest
import torch

from rtvp_edge.rig import RigConfig
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.data.generate import generate_dataset
from training.train import run_training


@pytest.fixture(scope="module")
def rig_closed(tmp_path_factory):
    cfg = RigConfig(seed=2, defect_free_share=0.0, defect_size_scale=3.0)
    out = tmp_path_factory.mktemp("rig")
    return generate_dataset(out, containers=3, protocol="closed", config=cfg, progress=False)["closed"]


def _overrides(root, out, **extra):
    base = {
        "model.variant": "rtvpnet_tiny", "model.img_size": 128, "model.sam_img_size": 64,
        # rvp off: its auxiliary CIoU loss yields NaN gradients on padded boxes (model issue, docs/training.md)
        "model.rvp": "false",
        "data.root": str(root), "data.batch_size": 4, "data.workers": 0, "data.max_images": 8,
        "data.val_split": "", "schedule.epochs": 2, "schedule.warmup_epochs": 0.5, "ema.tau": 5,
        "text.encoder": "random:512", "text.cache_dir": str(out / "cache"), "output.dir": str(out),
        "output.progress": "false", "output.plots": "false", "device": "cpu", "threads": 1,
        "eval.precise_bn_batches": 1,
    }  # fmt: skip
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_real_model_resume_is_exact(rig_closed, tmp_path):
    straight = run_training(
        load_config(None, _overrides(rig_closed, tmp_path, name="a", **{"output.keep_every": 1}))
    )
    resumed = run_training(
        load_config(None, _overrides(rig_closed, tmp_path, name="b", resume=str(straight / "epoch_001.pt")))
    )
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["trainer"]["step"] == b["trainer"]["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    # a fresh run centres the text on its vocabulary's mean; the resumed one restored the same centre
    centre = a["model"]["text_center"]
    assert float(centre.abs().sum()) > 0
    torch.testing.assert_close(centre, a["text_embeddings"].float().mean(0))
    first = load_checkpoint(straight / "epoch_001.pt")
    assert any(not torch.equal(first["model"][k], a["model"][k]) for k in a["model"])  # epoch 2 did train


@pytest.mark.slow
def test_real_model_ap50_rises_far_above_untrained(tmp_path):
    """RTVPNet-tiny learns a generated data set (coloured squares, 3 classes) within ~100 CPU steps.

    (On the rig's glass defects a CI-sized budget is not enough for this from-scratch detector: see
    benchmarks/results/train.md.)"""
    from tests.test_train_helpers import load_shapes_split, make_shapes_dataset
    from training.checkpoint import build_from_checkpoint
    from training.datasets import DetectionDataset
    from training.evaluate import evaluate_dataset
    from training.model import ModelConfig, build_model

    root = make_shapes_dataset(tmp_path / "shapes", n_train=48, n_val=16)
    overrides = [
        "name=shapes", f"data.root={root}", "data.batch_size=8", "data.workers=0", "data.hsv=[0,0,0]",
        "data.scale_jitter=0", "model.variant=rtvpnet_tiny", "model.img_size=128", "model.sam_img_size=64",
        "model.rvp=false", "text.encoder=random:512", f"text.cache_dir={tmp_path / 'cache'}",
        f"output.dir={tmp_path}", "output.progress=false", "output.plots=false", "device=cpu", "threads=2",
        "schedule.epochs=12", "schedule.warmup_epochs=1", "eval.every=0",
    ]  # fmt: skip
    run = run_training(load_config(None, overrides), load_split=load_shapes_split)
    model, info = build_from_checkpoint(run / "last.pt")
    split = load_shapes_split(root, "val")
    val = DetectionDataset(split, split.class_names, info["preprocess_spec"])
    trained = evaluate_dataset(model, val, info["text_embeddings"])[0]["metrics"]["AP50"]
    torch.manual_seed(0)
    untrained_model = build_model(
        ModelConfig(variant="rtvpnet_tiny", img_size=128, sam_img_size=64, rvp=False)
    )
    untrained = evaluate_dataset(untrained_model.eval(), val, info["text_embeddings"])[0]["metrics"]["AP50"]
    assert trained > untrained + 0.2, (untrained, trained)
