"""Checkpoints: round trip through ``build_from_checkpoint``, clear errors for bad files."""

from __future__ import annotations

import pytest
import torch

from rtvp_edge.preprocess import PreprocessSpec
from tests.test_train_helpers import DoubleConfig, build_double
from training.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    filter_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from training.ema import ModelEMA


def _save(path, model, ema=None, **kw):
    args = dict(
        model_config=model.config,
        vocabulary=[{"name": "red", "prompt": "a red square"}, {"name": "blue", "prompt": "a blue square"}],
        text_encoder="hash:32",
        preprocess=PreprocessSpec(input_size=(128, 128)),
        provenance={
            "dataset": "/data/x",
            "dataset_hash": "ab" * 32,
            "epoch": 3,
            "metrics": {"val/AP50": 0.5},
        },
        text_embeddings=torch.randn(2, 32),
        ema=ema,
    )
    args.update(kw)
    return save_checkpoint(path, model, **args)


def test_round_trip_rebuilds_model_with_ema_weights(tmp_path):
    torch.manual_seed(0)
    model = build_double(DoubleConfig(width=8))
    ema = ModelEMA(model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)  # EMA weights differ from the raw ones
    path = _save(tmp_path / "sub" / "c.pt", model, ema)
    built, info = build_from_checkpoint(path, model_config_cls=DoubleConfig, build_model=build_double)
    assert not built.training and info["weights"] == "ema"
    assert info["model_config"] == DoubleConfig(width=8)
    assert info["class_names"] == ["red", "blue"] and info["vocabulary"][1]["prompt"] == "a blue square"
    assert info["text_encoder"] == "hash:32" and info["text_embeddings"].shape == (2, 32)
    assert info["preprocess_spec"] == PreprocessSpec(input_size=(128, 128))
    assert info["provenance"]["dataset_hash"] == "ab" * 32
    for k, v in ema.module.state_dict().items():
        assert torch.equal(built.state_dict()[k], v)
    raw, info = build_from_checkpoint(
        path, use_ema=False, model_config_cls=DoubleConfig, build_model=build_double
    )
    assert info["weights"] == "raw"
    for k, v in model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v)
    x = torch.rand(1, 3, 128, 128)
    boxes, scores = built.forward_inference(x, info["text_embeddings"])
    assert boxes.shape == (1, 64, 4) and scores.shape == (1, 64, 2)


def test_loads_with_weights_only_and_no_temp_files_left(tmp_path):
    path = _save(tmp_path / "c.pt", build_double(DoubleConfig()))
    torch.load(path, weights_only=True)  # plain types and tensors only: safe to load
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_ddp_and_compile_prefixes_are_removed():
    sd = {"module.a": 1, "_orig_mod.module.b": 2, "c": 3}
    assert filter_state_dict(sd) == {"a": 1, "b": 2, "c": 3}


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable rtvp checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(
        CheckpointError, match="other.pt: not an rtvp checkpoint, missing entries: format_version"
    ):
        load_checkpoint(other)
    path = _save(tmp_path / "c.pt", build_double(DoubleConfig()))
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["widht"] = 3
    torch.save(ckpt, tmp_path / "typo.pt")
    with pytest.raises(CheckpointError, match=r"typo.pt: model_config.widht: unknown key"):
        build_from_checkpoint(tmp_path / "typo.pt", model_config_cls=DoubleConfig, build_model=build_double)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["width"] = 4  # weights of width 16 do not fit a width-4 model
    torch.save(ckpt, tmp_path / "misfit.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        build_from_checkpoint(tmp_path / "misfit.pt", model_config_cls=DoubleConfig, build_model=build_double)
