"""Each RTVPNet component's math on small tensors, and every ablation switch changing the computation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from training.model import ModelConfig, build_model
from training.model.domain_projection import random_patch_mask
from training.model.head import dfl_decode, make_anchors
from training.model.interaction import VisualTextUpdate, max_sigmoid_attention
from training.model.loss import DetectionLoss, TaskAlignedAssigner, dfl_loss, pad_targets
from training.model.visual_prompt import (
    RefinedVisualPrompt,
    energy_activation,
    rvp_box_loss,
    sparse_candidates,
)


def test_energy_activation_matches_hand_computation():
    vals = [1.0, 2.0, 4.0, 9.0]
    x = torch.tensor(vals).view(1, 1, 2, 2)
    lam = 0.5
    mu = sum(vals) / 4  # 4.0
    var = sum((v - mu) ** 2 for v in vals) / 3  # unbiased over the n - 1 = 3 other positions
    expected = [v / (1 + math.exp(-((v - mu) ** 2 / (4 * (var + lam)) + 0.5))) for v in vals]
    out = energy_activation(x, lam)
    assert torch.allclose(out.flatten(), torch.tensor(expected), atol=1e-6)
    # Channels are independent: a second channel does not change the first one's activation.
    x2 = torch.cat([x, torch.randn(1, 1, 2, 2) * 100], 1)
    assert torch.allclose(energy_activation(x2, lam)[:, :1], out)


def test_max_sigmoid_attention_matches_loops():
    torch.manual_seed(0)
    b, nh, hc, h, w, c = 2, 2, 3, 2, 3, 4
    embed, guide, bias = torch.randn(b, nh, hc, h, w), torch.randn(b, c, nh, hc), torch.randn(nh)
    out = max_sigmoid_attention(embed, guide, bias)
    ref = torch.empty(b, nh, h, w)
    for i in range(b):
        for m in range(nh):
            for y in range(h):
                for x in range(w):
                    dots = [float(embed[i, m, :, y, x] @ guide[i, k, m]) for k in range(c)]
                    ref[i, m, y, x] = 1 / (1 + math.exp(-(max(dots) / math.sqrt(hc) + float(bias[m]))))
    assert torch.allclose(out, ref, atol=1e-5)


def test_visual_text_update_matches_hand_computation():
    torch.manual_seed(0)
    e = 4  # image channels = embedding width = text width, so every projection can be the identity
    vt = VisualTextUpdate([e, e], text_dim=e, embed=e, scale_init=1.0)
    with torch.no_grad():
        for lin in [*vt.embed, vt.query, vt.out]:
            lin.weight.copy_(torch.eye(e).view_as(lin.weight))
            lin.bias.zero_()
    feats = [torch.randn(1, e, 2, 2), torch.randn(1, e, 1, 1)]
    text = torch.randn(1, 3, e)
    pixels = torch.cat([f.flatten(2) for f in feats], 2)[0].T  # (5 positions, e)
    expected = text.clone()
    for c in range(3):
        sims = [
            float(torch.nn.functional.cosine_similarity(text[0, c], p, dim=0)) * math.sqrt(e) for p in pixels
        ]
        weights = torch.softmax(torch.tensor(sims), 0)  # similarity weights over all pixels of all levels
        expected[0, c] += (weights[:, None] * pixels).sum(0)
    assert torch.allclose(vt(feats, text), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "cells", "ratio", "n_masked"), [((8, 8), 2, 0.25, 4), ((5, 5), 2, 0.2, 2), ((4, 4), 1, 0.2, 3)]
)
def test_random_patch_mask_ratio(size, cells, ratio, n_masked):
    torch.manual_seed(0)
    keep = random_patch_mask(16, size, cells, ratio, torch.device("cpu"))
    assert keep.shape == (16, 1, *size)
    # Count masked patches: a patch is masked iff its top-left cell is 0, and then the whole patch is 0.
    corners = keep[:, 0, ::cells, ::cells]
    assert ((corners == 0).flatten(1).sum(1) == n_masked).all()
    for img in range(16):
        for py in range(corners.shape[1]):
            for px in range(corners.shape[2]):
                patch = keep[img, 0, py * cells : (py + 1) * cells, px * cells : (px + 1) * cells]
                assert (patch == corners[img, py, px]).all()
    # Uniformly random per image: not all images mask the same patches.
    assert not (corners == corners[:1]).all()
    assert random_patch_mask(2, size, cells, 0.0, torch.device("cpu")).all()


def test_sparse_selection_keeps_positions_above_patch_mean():
    score = torch.tensor(
        [[0.1, 0.9, 0.5, 0.5], [0.2, 0.4, 0.1, 0.9], [0.3, 0.3, 0.0, 0.0], [0.3, 0.3, 0.0, 1.0]]
    )
    cand = sparse_candidates(score.view(1, 1, 4, 4), cells=2)[0, 0]
    # Patch means: 0.4, 0.5, 0.3, 0.25.
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.float)
    assert torch.equal(cand, expected)
    assert sparse_candidates(score.view(1, 1, 4, 4), cells=1).all()  # a one-cell patch keeps its position


def test_rvp_bernoulli_in_training_deterministic_in_eval():
    torch.manual_seed(0)
    rvp = RefinedVisualPrompt(channels=8, stride=8, patch=16)
    prompt = torch.randn(4, 8, 8, 8)
    rvp.train()
    out = rvp(prompt)
    cand = sparse_candidates(out["score"], 2)
    sel = out["selected"]
    assert set(sel.unique().tolist()) <= {0.0, 1.0} and (sel <= cand).all()  # sampled among candidates
    assert 0 < sel.sum() < cand.sum()  # a real sample: not all candidates
    assert out["boxes"].shape == (4, 4, 8, 8) and (out["boxes"] >= 0).all()
    rvp.eval()
    a, b = rvp(prompt), rvp(prompt)
    assert torch.equal(a["refined"], b["refined"]) and "boxes" not in a
    assert torch.allclose(a["selected"], sparse_candidates(a["score"], 2) * a["score"])


def _rvp_out(score: torch.Tensor, ltrb: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"score": score, "logit": torch.logit(score), "selected": torch.ones_like(score), "boxes": ltrb}


def test_rvp_box_loss_prefers_scores_inside_well_regressed_boxes():
    stride, h = 8, 4
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])  # covers the 2x2 top-left cells
    valid = torch.ones(1, 1, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(h) * 8 + 4.0, torch.arange(h) * 8 + 4.0, indexing="ij")
    # Perfect auxiliary boxes: the distances from each cell centre to the GT box sides.
    perfect = torch.stack([xs - 0, ys - 0, 16 - xs, 16 - ys]).unsqueeze(0)
    inside = torch.zeros(1, 1, h, h)
    inside[..., :2, :2] = 1
    on_object, on_background = inside * 0.9 + 0.05, (1 - inside) * 0.9 + 0.05
    good = rvp_box_loss([_rvp_out(on_object, perfect)], [stride], gt, valid)
    bad = rvp_box_loss([_rvp_out(on_background, perfect)], [stride], gt, valid)
    assert good < 0.1 and bad > 2.5  # BCE of the score against the CIoU quality (1 inside, 0 outside)
    # A badly regressed auxiliary box costs CIoU and lowers the quality target inside the object.
    poor = rvp_box_loss([_rvp_out(on_object, perfect * 0.3)], [stride], gt, valid)
    assert poor > good + 0.5
    # Without any box every position's target is 0: low scores cost little, high scores a lot.
    none, none_valid = torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool)
    low = rvp_box_loss([_rvp_out(torch.full((1, 1, h, h), 0.05), perfect)], [stride], none, none_valid)
    high = rvp_box_loss([_rvp_out(torch.full((1, 1, h, h), 0.95), perfect)], [stride], none, none_valid)
    assert low == pytest.approx(-math.log(0.95), rel=1e-4) and high > 2.5


def test_task_aligned_assigner_toy_case():
    anchors, strides = make_anchors(
        [(4, 4)], [8], torch.device("cpu"), torch.float32
    )  # centres 4, 12, 20, 28
    n = len(anchors)
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 0.0, 0.0]]])  # second row is padding
    gt_cls = torch.tensor([[1, 0]])
    valid = torch.tensor([[True, False]])
    # Predicted boxes: the anchor at (4, 4) predicts the GT exactly, the others predict shifted boxes.
    pred = torch.cat([anchors - 6.0, anchors + 6.0], -1).unsqueeze(0)
    pred[0, 0] = torch.tensor([0.0, 0.0, 16.0, 16.0])
    scores = torch.full((1, n, 2), 0.5)
    tb, ts, fg = TaskAlignedAssigner(topk=2, alpha=0.5, beta=6.0)(scores, pred, anchors, gt, gt_cls, valid)
    inside = (anchors < 16).all(-1)  # anchors (4,4), (12,4), (4,12), (12,12)
    assert fg[0].sum() == 2 and (fg[0] <= inside).all() and fg[0, 0]
    assert torch.equal(tb[0, fg[0]], gt[0, :1].expand(2, 4))
    assert (ts[0, fg[0], 0] == 0).all() and ts[0, 0, 1] == pytest.approx(1.0)  # best IoU is 1 -> score 1
    assert (ts[0, ~fg[0]] == 0).all()

    # An anchor inside two boxes goes to the one its prediction overlaps most.
    gt2 = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]]])
    _, ts2, fg2 = TaskAlignedAssigner(topk=1)(
        scores, pred, anchors, gt2, torch.tensor([[1, 0]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert fg2[0, 0] and ts2[0, 0, 1] > 0 and ts2[0, 0, 0] == 0


def test_min_cell_gives_a_thin_box_between_anchor_centres_a_candidate():
    anchors, strides = make_anchors([(4, 4)], [8], torch.device("cpu"), torch.float32)  # centres 4, 12, ..
    gt = torch.tensor([[[13.0, 2.0, 18.0, 30.0]]])  # 5 px wide: contains no anchor column (12, 20)
    pred = torch.cat([anchors - 4.0, anchors + 4.0], -1).unsqueeze(0)
    scores = torch.full((1, len(anchors), 2), 0.5)
    args = (scores, pred, anchors, gt, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool))
    _, _, fg_strict = TaskAlignedAssigner(topk=4)(*args, strides)
    _, ts, fg = TaskAlignedAssigner(topk=4, min_cell=True)(*args, strides)
    assert not fg_strict.any()  # YOLOv8's rule: never a positive, never learned
    assert fg.any() and (anchors[fg[0], 0] == 12).all()  # the column whose cell holds x = 15.5
    assert (ts[0, fg[0], 1] > 0).all()
    # Boxes larger than a cell get exactly the strict candidates.
    big = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    a = TaskAlignedAssigner(topk=4)(scores, pred, anchors, big, torch.tensor([[1]]), args[-1], strides)[2]
    b = TaskAlignedAssigner(topk=4, min_cell=True)(
        scores, pred, anchors, big, torch.tensor([[1]]), args[-1], strides
    )[2]
    assert torch.equal(a, b)


def test_dfl_decode_and_loss():
    anchors = torch.tensor([[20.0, 20.0]])
    strides = torch.tensor([[8.0]])
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # l, t, r, b in strides
    dist = torch.full((1, 1, 4, 16), -20.0)
    for i, v in enumerate(target[0].long()):
        dist[0, 0, i, v] = 20.0
    boxes = dfl_decode(dist.view(1, 1, 64), anchors, strides)
    assert torch.allclose(boxes, torch.tensor([[[12.0, 4.0, 44.0, 52.0]]]), atol=1e-3)
    assert dfl_loss(dist.view(1, 4, 16), target) < 1e-3
    assert dfl_loss(dist.view(1, 4, 16), target + 0.5) > 1.0  # half-way targets are far from the peaked bins


def test_detection_loss_without_boxes_is_classification_only():
    anchors, strides = make_anchors([(4, 4)], [8], torch.device("cpu"), torch.float32)
    dist = torch.randn(2, 16, 64, requires_grad=True)
    logits = torch.randn(2, 16, 3, requires_grad=True)
    gt, cls, valid = pad_targets(
        {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "boxes": torch.zeros(0, 4)}, 2
    )
    assert gt.shape == (2, 0, 4)
    out = DetectionLoss()(dist, logits, anchors, strides, gt, cls, valid)
    assert out["loss_box"] == 0 and out["loss_dfl"] == 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="sum"
    )
    assert out["loss_cls"].item() == pytest.approx(expected.item() * 0.5)


# ---------------------------------------------------------------- ablation switches
IMG = 128


def _build(**kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_model(ModelConfig(variant="rtvpnet_tiny", img_size=IMG, sam_img_size=64, **kw))


@pytest.fixture(scope="module")
def full_model():
    model = _build()
    model.set_text_center(torch.nn.functional.normalize(torch.randn(3, 512), dim=-1))  # as training does
    return model


def _outputs(model, images, text):
    model.eval()
    with torch.no_grad():
        return model.forward_inference(images, text)


@pytest.mark.parametrize("switch", ["edp", "projection", "rvp", "tv", "vt", "objectness", "text_center"])
def test_each_switch_changes_the_computation(full_model, switch):
    torch.manual_seed(3)
    images, text = torch.randn(1, 3, IMG, IMG), torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    off = _build(**{switch: False})
    missing, unexpected = off.load_state_dict(full_model.state_dict(), strict=False)
    assert not missing  # every weight of the reduced model comes from the full one...
    assert unexpected  # ...and the full model has weights the reduced one lacks
    _, s_full = _outputs(full_model, images, text)
    _, s_off = _outputs(off, images, text)
    assert not torch.allclose(s_full, s_off, atol=1e-6)
    targets = {
        "batch_idx": torch.tensor([0]),
        "cls": torch.tensor([1]),
        "boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]),
    }
    losses = off.train().forward_training(images, targets, text)
    if switch in ("edp", "projection"):
        assert losses["loss_align"] == 0
    if switch == "rvp":
        assert losses["loss_rvp"] == 0
    if switch == "edp":
        assert off.sam is None and off.projection is None


def test_mask_ratio_and_patch_reach_the_modules():
    model = _build(mask_ratio=0.3, patch=64, pretrain=False)
    assert model.projection.mask_ratio == 0.3 and model.projection.patch == 64
    assert [m.cells for m in model.rvp] == [8, 4, 2]  # 64 px at strides 8, 16, 32
    assert model.config.pretrain is False  # read by the training loop (skip the pretrain stage)
    # The masking happens in training only: eval is deterministic, training is not.
    model.eval()
    sam = model.sam(torch.randn(1, 3, IMG, IMG))
    e = model.expert(torch.randn(1, 3, IMG, IMG))
    a, _ = model.projection(sam, e)
    b, _ = model.projection(sam, e)
    assert torch.equal(a[0], b[0])
    model.projection.train()
    torch.manual_seed(0)
    c, loss = model.projection(sam, e)
    assert loss is not None and not torch.allclose(a[0], c[0])


def test_rvp_loss_has_finite_gradients_when_an_image_has_no_box():
    """Regression: padded all-zero targets made CIoU's aspect-term gradient NaN (found training on the rig)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="rtvpnet_tiny", img_size=160, sam_img_size=64, rvp=True))
    model.train()
    targets = {
        "batch_idx": torch.tensor([0, 0, 0]),  # image 1 has no box: its targets are all padding
        "cls": torch.tensor([0, 1, 2]),
        "boxes": torch.tensor([[10.0, 10, 40, 30], [60, 60, 90, 100], [100, 20, 130, 50]]),
    }
    emb = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    losses = model.forward_training(torch.randn(2, 3, 160, 160), targets, emb)
    losses["loss"].backward()
    assert float(losses["loss_rvp"]) > 0
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []


def test_rvp_loss_has_finite_gradients_when_the_auxiliary_box_collapses():
    """Regression: a very negative auxiliary-box output made softplus underflow to 0 (a zero-height box),
    and CIoU's aspect term atan(w / h) a NaN gradient (found at epoch 6 of the demo model's training)."""
    torch.manual_seed(0)
    rvp = RefinedVisualPrompt(16, 8)
    rvp.train()
    with torch.no_grad():
        rvp.box[-1].bias.fill_(-200.0)  # softplus(-200) == 0.0 in float32
    prompt = torch.randn(1, 16, 8, 8)
    out = rvp(prompt)
    assert float(out["boxes"].min()) > 0  # every auxiliary box keeps a positive width and height
    boxes = torch.tensor([[[4.0, 4.0, 60.0, 60.0]]])
    loss = rvp_box_loss([out], [8], boxes, torch.ones(1, 1, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss)
    bad = [n for n, p in rvp.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []


def test_text_centre_is_the_training_vocabulary_mean_and_travels_with_the_weights():
    torch.manual_seed(0)
    cfg = ModelConfig(variant="rtvpnet_tiny", img_size=96, sam_img_size=64, rvp=False)
    model = build_model(cfg).eval()
    common = torch.nn.functional.normalize(torch.randn(512), dim=0)
    emb = torch.nn.functional.normalize(
        common + 0.8 * torch.nn.functional.normalize(torch.randn(4, 512), dim=-1), dim=-1
    )
    assert float((emb @ emb.T)[0, 1]) > 0.4  # correlated prompts, as a real text encoder gives
    model.set_text_center(emb)
    assert torch.allclose(model.text_center, emb.mean(0))
    centred = torch.nn.functional.normalize(emb - emb.mean(0), dim=-1)
    assert float((centred @ centred.T)[0, 1]) < 0.1  # the common direction is gone
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        got = model.forward_inference(images, emb)
        model.text_center.zero_()
        ref = model.forward_inference(images, centred)  # centring by hand == the model's own
    torch.testing.assert_close(got, ref)
    # the centre is a buffer: saved and loaded with the weights (exported graphs fold it)
    model.set_text_center(emb)
    other = build_model(cfg).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.text_center, model.text_center)
    # one class has no class-specific part: the centre stays zero
    single = build_model(cfg)
    single.set_text_center(emb[:1])
    assert float(single.text_center.abs().sum()) == 0.0
    # switched off: no buffer, embeddings used as given
    assert build_model(ModelConfig(variant="rtvpnet_tiny", text_center=False)).text_center is None
