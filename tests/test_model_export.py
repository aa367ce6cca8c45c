"""forward_inference exports with torch.onnx.export (opset 17) and runs the same in ONNX Runtime / OpenVINO."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from training.model import ModelConfig, build_model

IMG = 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(ModelConfig(variant="rtvpnet_tiny", img_size=IMG, sam_img_size=64)).eval()
        images = torch.randn(2, 3, IMG, IMG)
        text = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
        path = tmp_path_factory.mktemp("onnx") / "rtvpnet_tiny.onnx"
        torch.onnx.export(
            model,
            (images, text),
            str(path),
            opset_version=17,
            input_names=["images", "text_embeds"],
            output_names=["boxes", "scores"],
            # Batch and vocabulary size stay free: the runtime batches views, and a line can swap or
            # extend its embeddings without re-export.
            dynamic_axes={
                "images": {0: "batch"},
                "text_embeds": {0: "classes"},
                "boxes": {0: "batch"},
                "scores": {0: "batch", 2: "classes"},
            },
            dynamo=False,
        )
    with torch.no_grad():
        ref = model.forward_inference(images, text)
    return path, model, images, text, ref


def test_graph_is_valid_and_deterministic(exported):
    path = exported[0]
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {
        "RandomUniform",
        "RandomUniformLike",
        "RandomNormal",
        "RandomNormalLike",
        "Bernoulli",
        "Loop",
        "If",
    }


def test_onnxruntime_matches_pytorch(exported):
    ort = pytest.importorskip("onnxruntime")
    path, model, images, text, (boxes, scores) = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ob, os_ = sess.run(None, {"images": images.numpy(), "text_embeds": text.numpy()})
    np.testing.assert_allclose(ob, boxes.numpy(), atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(os_, scores.numpy(), atol=1e-5)
    # Another batch and vocabulary size through the same graph.
    images3 = torch.randn(3, 3, IMG, IMG)
    text5 = torch.nn.functional.normalize(torch.randn(5, 512), dim=-1)
    b5, s5 = sess.run(None, {"images": images3.numpy(), "text_embeds": text5.numpy()})
    with torch.no_grad():
        ref_b5, ref_s5 = model.forward_inference(images3, text5)
    assert s5.shape == (3, ref_s5.shape[1], 5)
    np.testing.assert_allclose(b5, ref_b5.numpy(), atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(s5, ref_s5.numpy(), atol=1e-5)


def test_openvino_matches_pytorch(exported):
    ov = pytest.importorskip("openvino")
    path, _, images, text, (boxes, scores) = exported
    # f32 explicitly: on CPUs with bf16 support OpenVINO otherwise infers in bf16 (differences ~1e-1 px).
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled([images.numpy(), text.numpy()])
    # OpenVINO fuses/reorders float ops differently: allow 1/100 px on box corners.
    np.testing.assert_allclose(out[0], boxes.numpy(), atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(out[1], scores.numpy(), atol=1e-5)
