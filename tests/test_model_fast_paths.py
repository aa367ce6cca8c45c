"""The inference-speed rewrites of RTVPNet compute what the straightforward formulas compute.

Each rewrite (benchmarks/results/peers.md, "Profile") is checked against the formula it replaced, on the
module and on the whole model with the same weights: T-V's shared-vocabulary 1x1 conv and 4-D gating, the
head's cosine on the narrower features, the 2x2 transposed conv as conv + pixel shuffle, V-T's division by the
image norms after the similarity.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from training.model import ModelConfig, build_model, interaction
from training.model import domain_projection as dp
from training.model import head as head_mod
from training.model.head import ContrastiveHead
from training.model.interaction import TextVisualAttention, VisualTextUpdate, max_sigmoid_attention


def tv_reference(module: TextVisualAttention, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """T-V as first written: embedding, 5-D max-sigmoid einsum, 5-D gating; text (B,C,D)."""
    b, _, h, w = x.shape
    e = module.embed(x).view(b, module.heads, -1, h, w)
    g = module.guide(text).view(b, text.shape[1], module.heads, -1)
    aw = max_sigmoid_attention(e, g, module.bias)
    return (x.view(b, module.heads, -1, h, w) * aw.unsqueeze(2)).view(b, -1, h, w)


def vt_reference(module: VisualTextUpdate, feats: list[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """V-T as first written: cosine of normalised queries and normalised image features."""
    img = torch.cat([m(f).flatten(2) for m, f in zip(module.embed, feats, strict=True)], dim=2)
    q = module.query(text)
    sim = torch.einsum("bce,ben->bcn", F.normalize(q, dim=-1), F.normalize(img, dim=1))
    weight = torch.softmax(sim * math.sqrt(q.shape[-1]), dim=-1)
    return text + module.scale * module.out(torch.einsum("bcn,ben->bce", weight, img))


@pytest.mark.parametrize(("channels", "heads", "classes"), [(64, 2, 8), (128, 4, 3), (32, 1, 1)])
def test_text_visual_attention_shared_vocabulary_matches_the_5d_formula(channels, heads, classes):
    torch.manual_seed(0)
    tv = TextVisualAttention(channels, text_dim=48, heads=heads)
    with torch.no_grad():
        tv.bias.normal_()  # non-zero head biases, so a misplaced bias would show
    x = torch.randn(2, channels, 5, 7)
    text = F.normalize(torch.randn(classes, 48), dim=-1)
    ref = tv_reference(tv, x, text.unsqueeze(0).expand(2, -1, -1))
    assert torch.allclose(tv(x, text), ref, atol=1e-5, rtol=1e-5)
    # the per-image (B, C, D) path gives the same too
    assert torch.allclose(tv(x, text.unsqueeze(0).expand(2, -1, -1)), ref, atol=1e-5, rtol=1e-5)


def test_text_visual_attention_rewrite_keeps_gradients():
    torch.manual_seed(0)
    tv = TextVisualAttention(64, text_dim=32, heads=2)
    x = torch.randn(2, 64, 4, 4, requires_grad=True)
    text = F.normalize(torch.randn(5, 32), dim=-1)
    tv(x, text).square().sum().backward()
    fast = [p.grad.clone() for p in (x, tv.embed.weight, tv.guide.weight, tv.bias)]
    for p in (x, *tv.parameters()):
        p.grad = None
    tv_reference(tv, x, text.unsqueeze(0).expand(2, -1, -1)).square().sum().backward()
    slow = [p.grad for p in (x, tv.embed.weight, tv.guide.weight, tv.bias)]
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_contrastive_head_from_features_matches_normalised_embeddings():
    torch.manual_seed(0)
    head = ContrastiveHead()
    embed = torch.nn.Conv2d(16, 40, 1)
    feats = torch.randn(3, 16, 6, 5)
    text = torch.randn(3, 7, 40)
    ref = head(embed(feats), text)
    assert torch.allclose(head.from_features(feats, embed, text), ref, atol=1e-5, rtol=1e-5)
    # forward hooks on the embedding conv still see the region embeddings (input-vocabulary export)
    seen = []
    handle = embed.register_forward_hook(lambda _m, _i, out: seen.append(out))
    head.from_features(feats, embed, text)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (3, 40, 6, 5)


@pytest.mark.parametrize("bias", [True, False])
def test_contrastive_head_norm_from_the_gram_matrix_in_eval_mode(bias):
    torch.manual_seed(0)
    head = ContrastiveHead().eval()
    embed = torch.nn.Conv2d(16, 40, 1, bias=bias)
    feats = torch.randn(3, 16, 6, 5)
    text = torch.randn(3, 7, 40)
    with torch.no_grad():
        ref = head(embed(feats), text)
        seen = []
        embed.register_forward_pre_hook(lambda _m, _i: seen.append(1))
        hooked = head.from_features(feats, embed, text)  # a hook: the embedding conv runs
        embed._forward_pre_hooks.clear()
        got = head.from_features(feats, embed, text)
    assert seen == [1]
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(hooked, ref, atol=1e-5, rtol=1e-5)
    # the eval path does not call the embedding conv at all
    calls = []
    embed.forward = lambda x: calls.append(x) or torch.zeros(())
    with torch.no_grad():
        head.from_features(feats, embed, text)
    assert calls == []


@pytest.mark.parametrize("bias", [True, False])
def test_deconv_as_conv_and_pixel_shuffle_matches_conv_transpose(bias):
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(12, 20, 2, 2, bias=bias)
    x = torch.randn(2, 12, 5, 3)
    assert torch.allclose(dp._deconv2x2(deconv, x), deconv(x), atol=1e-6)


def test_visual_text_update_matches_the_normalised_formula():
    torch.manual_seed(0)
    vt = VisualTextUpdate([8, 16], text_dim=24, embed=12, scale_init=0.7)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    text = torch.randn(2, 5, 24)
    assert torch.allclose(vt(feats, text), vt_reference(vt, feats, text), atol=1e-5, rtol=1e-5)


@pytest.fixture
def reference_formulas(monkeypatch):
    """Put the formulas of before the rewrites back in place (for one test)."""

    def tv_forward(self, x, text):
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(x.shape[0], -1, -1)
        return tv_reference(self, x, text)

    monkeypatch.setattr(TextVisualAttention, "forward", tv_forward)
    monkeypatch.setattr(VisualTextUpdate, "forward", vt_reference)
    monkeypatch.setattr(dp, "_deconv2x2", lambda deconv, x: deconv(x))
    monkeypatch.setattr(
        head_mod.ContrastiveHead, "from_features", lambda self, feats, embed, text: self(embed(feats), text)
    )
    assert interaction.TextVisualAttention.forward is tv_forward


@pytest.mark.parametrize("variant", ["rtvpnet_tiny", "rtvpnet_s"])
def test_whole_model_outputs_are_unchanged(variant, request):
    torch.manual_seed(0)
    size = 128 if variant == "rtvpnet_tiny" else 96
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = ModelConfig(
            variant=variant, img_size=size, sam_img_size=64, encoder_weights="random", encoder_scale=0.5
        )
        model = build_model(cfg).eval()
    images = torch.randn(2, 3, size, size)
    text = F.normalize(torch.randn(6, 512), dim=-1)
    model.set_text_center(text)
    with torch.no_grad():
        boxes, scores = model.forward_inference(images, text)
        request.getfixturevalue("reference_formulas")
        ref_boxes, ref_scores = model.forward_inference(images, text)
    assert torch.allclose(boxes, ref_boxes, atol=1e-3, rtol=1e-5)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    assert not torch.equal(scores, torch.zeros_like(scores))


def test_onnx_export_with_a_dynamic_vocabulary_matches_and_a_folded_one_uses_a_conv(tmp_path):
    """Input-vocabulary graphs (C dynamic) take the matmul form of T-V's product, folded ones a Conv."""
    import onnx

    from export.onnx_export import export_onnx
    from export.wrapper import FoldedVocabulary

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(
            ModelConfig(variant="rtvpnet_tiny", img_size=64, sam_img_size=64, encoder_weights="random")
        ).eval()
        text = F.normalize(torch.randn(4, 512), dim=-1)
        images = torch.randn(2, 3, 64, 64)
        path = tmp_path / "input.onnx"
        torch.onnx.export(
            model,
            (images, text),
            str(path),
            opset_version=17,
            input_names=["images", "text_embeds"],
            output_names=["boxes", "scores"],
            dynamic_axes={
                "images": {0: "batch"},
                "text_embeds": {0: "classes"},
                "scores": {0: "batch", 2: "classes"},
            },
            dynamo=False,
        )
        folded = export_onnx(
            FoldedVocabulary(model, text).eval(), tmp_path / "folded.onnx", "folded", (64, 64), (4, 512)
        )
    ort = pytest.importorskip("onnxruntime")
    with torch.no_grad():
        ref_boxes, ref_scores = model.forward_inference(images, text)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": images.numpy(), "text_embeds": text.numpy()})
    assert abs(scores - ref_scores.numpy()).max() < 1e-5
    # another vocabulary size through the same input-mode graph
    text5 = F.normalize(torch.randn(5, 512), dim=-1)
    _, scores5 = sess.run(None, {"images": images.numpy(), "text_embeds": text5.numpy()})
    with torch.no_grad():
        assert abs(scores5 - model.forward_inference(images, text5)[1].numpy()).max() < 1e-5
    sess = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": images.numpy()})
    assert abs(scores - ref_scores.numpy()).max() < 1e-5
    tv_convs = [
        n.name
        for n in onnx.load(str(folded)).graph.node
        if n.op_type == "Conv" and n.name.startswith("/model/tv")
    ]
    tv_convs += [
        n.name for n in onnx.load(str(folded)).graph.node if n.op_type == "Conv" and n.name.startswith("/tv")
    ]
    assert len(tv_convs) == 3  # one folded vocabulary conv per level
    assert all(not getattr(m, "constant_vocabulary", False) for m in model.modules())  # restored
