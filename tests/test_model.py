"""RTVPNet end to end: every variant trains (forward/backward), infers, and respects its frozen parts."""

from __future__ import annotations

import warnings

import pytest
import torch

from training.model import MODEL_REGISTRY, ModelConfig, RTVPNet, build_model
from training.model.text_encoder import build_text_encoder

IMG = 128
VARIANTS = sorted(MODEL_REGISTRY)


def small_config(variant: str, **kw) -> ModelConfig:
    # Tiny inputs keep the CPU tests fast; the SAM branch at 64 px exercises the derived TinyViT grid.
    return ModelConfig(variant=variant, img_size=IMG, sam_img_size=64, **kw)


def build(variant: str = "rtvpnet_tiny", seed: int = 0, **kw) -> RTVPNet:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random-SAM warning, tested separately
        return build_model(small_config(variant, **kw))


@pytest.fixture(scope="module")
def text():
    return build_text_encoder("random:512").encode(["oil", "black spot", "bubble"])


def batch(b: int = 2):
    torch.manual_seed(1)
    images = torch.randn(b, 3, IMG, IMG)
    targets = {
        "batch_idx": torch.tensor([0, 0, 1]),
        "cls": torch.tensor([0, 2, 1]),
        "boxes": torch.tensor(
            [[10.0, 12.0, 50.0, 60.0], [70.0, 64.0, 110.0, 120.0], [4.0, 4.0, 120.0, 100.0]]
        ),
    }
    return images, targets


LOSS_KEYS = {"loss", "loss_box", "loss_cls", "loss_dfl", "loss_align", "loss_rvp"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_inference(variant, text):
    model = build(variant).train()
    images, targets = batch()
    losses = model.forward_training(images, targets, text)
    assert set(losses) == LOSS_KEYS
    for k, v in losses.items():
        assert v.ndim == 0 and torch.isfinite(v), k
    assert losses["loss"] > 0 and losses["loss_align"] > 0 and losses["loss_rvp"] > 0
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        boxes, scores = model.forward_inference(images, text)
    n = sum((IMG // s) ** 2 for s in (8, 16, 32))
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, 3)
    assert torch.isfinite(boxes).all() and ((scores >= 0) & (scores <= 1)).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all()  # xyxy with non-negative size


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_without_boxes_and_pretrain_stage(variant, text):
    model = build(variant).train()
    images, _ = batch()
    empty = {
        "batch_idx": torch.zeros(0, dtype=torch.long),
        "cls": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 4),
    }
    for stage in ("joint", "pretrain"):
        losses = model.forward_training(images, empty, text, stage=stage)
        assert torch.isfinite(losses["loss"])
        assert losses["loss_box"] == 0 and losses["loss_dfl"] == 0 and losses["loss_cls"] > 0
        losses["loss"].backward()
    # Pretrain (Eq. 1) is the expert + head alone: no alignment / prompt terms.
    _, targets = batch()
    losses = model.forward_training(images, targets, text, stage="pretrain")
    assert losses["loss_align"] == 0 and losses["loss_rvp"] == 0 and losses["loss_box"] > 0


def test_gradients_reach_expert_and_projection_not_frozen_encoders(text):
    model = build().train()
    images, targets = batch()
    text_in = text.clone().requires_grad_(False)
    model.forward_training(images, targets, text_in)["loss"].backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(model.expert)
    assert has_grad(model.projection)
    assert has_grad(model.rvp) and has_grad(model.tv) and has_grad(model.vt) and has_grad(model.head)
    assert all(not p.requires_grad and p.grad is None for p in model.sam.parameters())
    assert text_in.grad is None
    # The frozen SAM stays in eval mode whatever the parent does (its BN/attention caches stay fixed).
    assert model.training and not model.sam.training and not any(m.training for m in model.sam.modules())


def test_update_off_freezes_expert_in_joint_stage(text):
    model = build(update=False).train()
    images, targets = batch()
    bn = next(m for m in model.expert.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    model.forward_training(images, targets, text)["loss"].backward()
    assert all(p.grad is None for p in model.expert.parameters())
    assert torch.equal(bn.running_mean, stats)  # BatchNorm statistics untouched too
    assert not any(g["name"].startswith("expert") for g in model.param_groups(1e-3, 0.025))
    # ...but the pretrain stage still trains it.
    model.forward_training(images, targets, text, stage="pretrain")["loss"].backward()
    assert any(p.grad is not None for p in model.expert.parameters())


def test_param_groups_coupled_expert_lr():
    model = build(expert_lr_scale=0.25)
    groups = model.param_groups(lr=2e-3, weight_decay=0.025)
    by_name = {g["name"]: g for g in groups}
    assert by_name["expert"]["lr"] == pytest.approx(5e-4) and by_name["expert"]["lr_scale"] == 0.25
    assert by_name["prompt"]["lr"] == pytest.approx(2e-3)
    assert by_name["expert_no_decay"]["weight_decay"] == 0.0 and by_name["prompt"]["weight_decay"] == 0.025
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable  # each once, none frozen
    pre = model.param_groups(lr=2e-3, weight_decay=0.025, stage="pretrain")
    assert {g["name"] for g in pre} == {"expert", "expert_no_decay", "head", "head_no_decay"}
    assert all(g["lr"] == pytest.approx(2e-3) for g in pre)
    torch.optim.AdamW(groups)  # the groups are accepted as they are


def test_a_few_steps_lower_the_loss(text):
    torch.set_num_threads(1)
    model = build().train()
    images, targets = batch()
    opt = torch.optim.AdamW(model.param_groups(lr=2e-3, weight_decay=0.0))
    first = None
    for _ in range(8):
        loss = model.forward_training(images, targets, text)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_bad_inputs_are_named(text):
    model = build().train()
    images, targets = batch()
    with pytest.raises(ValueError, match="multiples of 32"):
        model.forward_training(torch.randn(1, 3, 100, 128), targets, text)
    with pytest.raises(ValueError, match=r"text_embeds must be \(C,512\)"):
        model.forward_training(images, targets, torch.randn(3, 384))
    with pytest.raises(ValueError, match="target class 5 out of range"):
        model.forward_training(images, {**targets, "cls": torch.tensor([0, 5, 1])}, text)
    with pytest.raises(ValueError, match="target class -1 out of range"):
        model.forward_training(images, {**targets, "cls": torch.tensor([0, -1, 1])}, text)
    bad = targets["boxes"].clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        model.forward_training(images, {**targets, "boxes": bad}, text)
    with pytest.raises(ValueError, match="x2>=x1"):
        model.forward_training(images, {**targets, "boxes": targets["boxes"][:, [2, 3, 0, 1]]}, text)
    with pytest.raises(KeyError, match="boxes"):
        model.forward_training(images, {"batch_idx": targets["batch_idx"], "cls": targets["cls"]}, text)
    with pytest.raises(ValueError, match="stage must be one of"):
        model.forward_training(images, targets, text, stage="finetune")


def test_config_errors_name_the_field():
    # pydantic names the field on the line before the problem: "<field>\n  <problem>"
    with pytest.raises(ValueError, match=r"mask_ration\n  Extra inputs are not permitted"):
        ModelConfig.model_validate({"mask_ration": 0.2})
    with pytest.raises(
        ValueError,
        match=r"mask_ratio\n  Value error, must be in \[0, 1\) \[type=value_error, input_value=1.5",
    ):
        ModelConfig(mask_ratio=1.5)
    with pytest.raises(ValueError, match=r"edp\n  Input should be a valid boolean"):
        ModelConfig(edp="yes")
    with pytest.raises(ValueError, match=r"img_size\n  Value error, each side must be a multiple of 32"):
        ModelConfig(img_size=100)
    with pytest.raises(ValueError, match=r"patch\n  Value error, must be a power of two"):
        ModelConfig(patch=24)
    with pytest.raises(ValueError, match=r"variant\n  Value error, unknown variant 'rtvpnet_xxl'"):
        ModelConfig(variant="rtvpnet_xxl")
    with pytest.raises(ValueError, match="frozen"):
        ModelConfig().edp = False  # validated once: a config cannot change afterwards
    cfg = ModelConfig.model_validate({"variant": "rtvpnet_s", "rvp": False})
    assert ModelConfig.model_validate(cfg.model_dump()) == cfg
    assert cfg.resolved().img_size == 640 and cfg.resolved().sam_img_size == 256


def test_model_keeps_resolved_config():
    model = build("rtvpnet_s")
    assert model.config.width == 0.5 and model.config.img_size == IMG and model.config.sam_img_size == 64
    rebuilt = build_model(ModelConfig.model_validate(model.config.model_dump()))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("encoder", ["mobile_sam_t", "efficientnet_lite0"])
def test_random_encoder_only_by_name_and_warned_loudly(encoder):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_model(small_config("rtvpnet_tiny", encoder=encoder, encoder_weights="random"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the offline default loads real weights, silently
        build_model(small_config("rtvpnet_tiny"))


def test_deepcopy_and_pickle_for_ema_and_checkpoints(tmp_path, text):
    import copy

    model = build().eval()
    images, _ = batch(1)
    ema = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")  # whole-module pickling works (no lambdas inside)
    with torch.no_grad():
        a, b = model.forward_inference(images, text), ema.forward_inference(images, text)
    assert torch.equal(a[1], b[1])


def test_bf16_autocast_training_step(text):
    model = build().train()
    images, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.forward_training(images, targets, text)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    losses["loss"].backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_autocast_training_step(text):
    model = build("rtvpnet_s").cuda().train()
    images, targets = batch()
    images, targets = images.cuda(), {k: v.cuda() for k, v in targets.items()}
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model.forward_training(images, targets, text.cuda())
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
