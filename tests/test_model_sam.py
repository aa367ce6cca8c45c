"""Frozen MobileSAM-T encoder: size-derived grid, strict loading of the 1024 px checkpoint, clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from training.model.sam_encoder import SamImageEncoder, remap_mobile_sam_checkpoint


def _encoder(size: int, checkpoint=None) -> SamImageEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SamImageEncoder(size, checkpoint)


@pytest.fixture(scope="module")
def sam_1024_checkpoint(tmp_path_factory):
    """A random 1024 px MobileSAM-T saved like the official mobile_sam.pt (a full Sam state dict)."""
    torch.manual_seed(7)
    enc = _encoder(1024)
    state = {f"image_encoder.{k}": v for k, v in enc.vit.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)  # other Sam parts are dropped on load
    state["prompt_encoder.not_a_point_embed.weight"] = torch.zeros(1, 256)
    path = tmp_path_factory.mktemp("sam") / "mobile_sam.pt"
    torch.save(state, path)
    return path, enc


@pytest.mark.parametrize("size", [64, 128, 160])
def test_grid_derived_from_input_size(size):
    enc = _encoder(size)
    feats = enc(torch.randn(1, 3, size, size))
    spec = enc.output_shape()
    for name, f in feats.items():
        assert f.shape == (1, spec[name].channels, size // spec[name].stride, size // spec[name].stride)


def test_1024_checkpoint_loads_strictly_into_smaller_builds(sam_1024_checkpoint):
    path, src = sam_1024_checkpoint
    enc = _encoder(128, path)  # strict=True inside: any missing/unexpected key would raise
    for (k, a), b in zip(src.vit.state_dict().items(), enc.vit.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    random_enc = _encoder(128)
    x = torch.randn(1, 3, 128, 128)
    assert not torch.allclose(enc(x)["neck"], random_enc(x)["neck"])
    # The eval-time attention-bias cache of TinyViT was rebuilt from the loaded weights.
    for m in enc.vit.modules():
        if hasattr(m, "ab"):
            assert torch.equal(m.ab, m.attention_biases[:, m.attention_bias_idxs])


def test_bias_cache_follows_load_state_dict():
    a, b = _encoder(64), _encoder(64)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    b._refresh_bias_cache()  # b's weights were edited in place, not loaded
    a.load_state_dict(b.state_dict())  # e.g. a checkpoint restored into an eval-mode model
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a(x)["neck"], b(x)["neck"])


def test_frozen_and_always_eval():
    enc = _encoder(64)
    enc.train()
    assert not enc.training and not enc.vit.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_remap_accepts_wrapped_and_bare_state_dicts():
    bare = {"patch_embed.seq.0.c.weight": torch.zeros(1)}
    assert remap_mobile_sam_checkpoint(bare) == bare
    assert remap_mobile_sam_checkpoint({"model": {"image_encoder.patch_embed.x": torch.ones(1)}}).keys() == {
        "patch_embed.x"
    }
    with pytest.raises(ValueError, match="no MobileSAM image-encoder weights"):
        remap_mobile_sam_checkpoint({"mask_decoder.x": torch.ones(1)})


def test_bad_checkpoints_are_named(tmp_path, sam_1024_checkpoint):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _encoder(64, missing)
    path, src = sam_1024_checkpoint
    state = torch.load(path, weights_only=True)
    state.pop(next(k for k in state if k.startswith("image_encoder.layers.2")))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(RuntimeError, match="broken.pt"):
        _encoder(64, broken)
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt"):
        _encoder(64, other)
    with pytest.raises(ValueError, match="multiple of 32"):
        _encoder(100)


@pytest.mark.slow
def test_same_features_as_mobile_sam_at_1024(sam_1024_checkpoint):
    """At 1024 px our forward must equal mobile_sam's own TinyViT forward (its hard-coded 64x64 grid)."""
    torch.set_num_threads(1)
    _, enc = sam_1024_checkpoint
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        assert torch.equal(enc(x)["neck"], enc.vit.forward_features(x))


def test_rebuild_from_state_dict_needs_no_sam_file(tmp_path, sam_1024_checkpoint):
    """A checkpoint's model config may name a mobile_sam.pt that the export machine does not have."""
    from training.model import ModelConfig, build_model

    path, _ = sam_1024_checkpoint
    cfg = ModelConfig(
        variant="rtvpnet_tiny",
        img_size=128,
        sam_img_size=64,
        encoder="mobile_sam_t",
        sam_checkpoint=str(path),
    )
    trained = build_model(cfg)
    gone = ModelConfig(
        **{**cfg.model_dump(), "sam_checkpoint": str(tmp_path / "elsewhere" / "mobile_sam.pt")}
    )
    with pytest.raises(FileNotFoundError, match="load_weights=False"):
        build_model(gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "RANDOM weights" warning either: the weights follow
        rebuilt = build_model(gone, load_weights=False)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 3, 128, 128)
    text = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    with torch.no_grad():
        assert torch.equal(trained.eval()(x, text)[1], rebuilt.eval()(x, text)[1])
