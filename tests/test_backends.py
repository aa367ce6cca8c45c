"""Backends behind one interface: OpenVINO and ONNX Runtime agree on the same bundle; async == sync;
static-batch artifacts are chunked; the golden self-test accepts a good bundle and refuses a wrong one.

``make_toy_bundle`` builds a real bundle (ONNX + OpenVINO IR + manifest + golden sample) around a tiny
hand-written ONNX graph honouring the model contract, so the runtime tests run without trained weights:
each 8x8 cell of the input is one candidate box; "black spot" scores how dark the cell is, "oil" how red.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtvp_edge.backends import BACKENDS, load_backend
from rtvp_edge.backends.openvino import cpu_float_precision
from rtvp_edge.bundle import (
    Artifact,
    BundleError,
    BundleManifest,
    GoldenSample,
    ModelInfo,
    PreprocessInfo,
    VocabularyClass,
    VocabularyInfo,
    load_manifest,
    sha256_file,
    write_manifest,
)
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import preprocess
from rtvp_edge.selftest import run_golden_selftest

TOY_CLASSES = ("black spot", "oil")


def _toy_onnx(path: Path, size: int = 64, cell: int = 8, batch: int | None = None) -> None:
    """(B,3,size,size) -> boxes (B,N,4), scores (B,N,2) with N = (size/cell)^2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = size // cell
    n = g * g
    ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    cells = np.stack([xs * cell, ys * cell, xs * cell + cell, ys * cell + cell], -1).reshape(1, n, 4)
    inits = [
        numpy_helper.from_array(cells.astype(np.float32), "cells"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([20.0], np.float32), "gain"),
        numpy_helper.from_array(np.array([0.5], np.float32), "half"),
        numpy_helper.from_array(np.array([0.3], np.float32), "red_bias"),
        numpy_helper.from_array(np.array([0, 2, n], np.int64), "shape_bcn"),
        numpy_helper.from_array(np.array([0], np.int64), "c0"),
        numpy_helper.from_array(np.array([1], np.int64), "c1"),
        numpy_helper.from_array(np.array([2], np.int64), "c2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "ax123"),
    ]
    pool = {"kernel_shape": [cell, cell], "strides": [cell, cell]}
    nodes = [
        helper.make_node("ReduceMean", ["images", "ax1"], ["gray"], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["gcell"], **pool),  # (B,1,g,g)
        helper.make_node("Sub", ["one", "gcell"], ["dark"]),
        helper.make_node("Sub", ["dark", "half"], ["dark_c"]),
        helper.make_node("Mul", ["dark_c", "gain"], ["logit_dark"]),
        helper.make_node("Slice", ["images", "c0", "c1", "ax1"], ["r"]),
        helper.make_node("Slice", ["images", "c1", "c2", "ax1"], ["gch"]),
        helper.make_node("Sub", ["r", "gch"], ["redness"]),
        helper.make_node("AveragePool", ["redness"], ["rcell"], **pool),
        helper.make_node("Sub", ["rcell", "red_bias"], ["red_c"]),
        helper.make_node("Mul", ["red_c", "gain"], ["logit_red"]),
        helper.make_node("Concat", ["logit_dark", "logit_red"], ["logits"], axis=1),  # (B,2,g,g)
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Reshape", ["probs", "shape_bcn"], ["probs_bcn"]),  # (B,2,N)
        helper.make_node("Transpose", ["probs_bcn"], ["scores"], perm=[0, 2, 1]),  # (B,N,2)
        # boxes do not depend on the image; a zero derived from the input gives them the batch dim
        helper.make_node("ReduceMean", ["images", "ax123"], ["m"], keepdims=1),  # (B,1,1,1)
        helper.make_node("Mul", ["m", "zero"], ["z4"]),
        helper.make_node("Squeeze", ["z4", "ax1"], ["z3"]),  # (B,1,1)
        helper.make_node("Add", ["z3", "cells"], ["boxes"]),  # (B,N,4)
    ]
    b = batch if batch else "B"
    graph = helper.make_graph(
        nodes,
        "toy_rtvp",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, size, size])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [b, n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, n, 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def golden_image(h: int = 120, w: int = 100) -> np.ndarray:
    """A light-grey camera image with one dark blob (black spot) and one red blob (oil)."""
    img = np.full((h, w, 3), 200, np.uint8)
    img[30:52, 20:42] = 10
    img[70:95, 55:80] = (20, 20, 230)  # BGR red
    return img


def make_toy_bundle(
    root: Path,
    size: int = 64,
    batch: int | None = None,
    openvino_ir: bool = True,
    golden: bool = True,
    ov_properties: dict[str, str] | None = None,
) -> Path:
    """Write a complete, verifiable bundle under ``root`` and return it."""
    import openvino as ov

    root.mkdir(parents=True, exist_ok=True)
    _toy_onnx(root / "model.onnx", size=size, batch=batch)
    artifacts = [Artifact(backend="onnxruntime", path="model.onnx", precision="fp32")]
    if openvino_ir:
        (root / "openvino").mkdir(exist_ok=True)
        ov.save_model(ov.convert_model(str(root / "model.onnx")), str(root / "openvino" / "model.xml"), False)
        artifacts.append(
            Artifact(
                backend="openvino",
                path="openvino/model.xml",
                precision="fp32",
                properties=ov_properties or {},
            )
        )
    emb = np.eye(len(TOY_CLASSES), 4, dtype=np.float32)
    np.save(root / "text_embeddings.npy", emb)
    pre = PreprocessInfo(input_size=(size, size), pad_value=255)  # white padding: no "black spot" there
    golden_samples = []
    if golden:
        (root / "golden").mkdir(exist_ok=True)
        img = golden_image()
        cv2.imwrite(str(root / "golden" / "0.png"), img)
        # expected outputs recorded with ONNX Runtime, as export does for its artifact
        import onnxruntime as ort

        sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
        batch_arr, lbs = preprocess([img], pre.spec())
        if batch:
            batch_arr = np.concatenate([batch_arr] * batch)[:batch]
        boxes, scores = sess.run(["boxes", "scores"], {"images": batch_arr})
        dets = decode_detections(boxes[0], scores[0], lbs[0], TOY_CLASSES, 0.25, 0.5, 100)
        assert dets, "the toy golden image must produce detections"
        golden_samples.append(
            GoldenSample(
                image="golden/0.png",
                detections=[{"class_id": d.class_id, "score": d.score, "box": list(d.box)} for d in dets],
            )
        )
    m = BundleManifest(
        created_utc="2026-11-21T00:00:00.000Z",
        model=ModelInfo(name="toy_rtvp", version="test"),
        preprocess=pre,
        vocabulary=VocabularyInfo(
            mode="folded",
            classes=[VocabularyClass(name=c, prompt=c) for c in TOY_CLASSES],
            text_encoder="random:4",
            embeddings_sha256=sha256_file(root / "text_embeddings.npy"),
            embedding_dim=4,
        ),
        artifacts=artifacts,
        golden=golden_samples,
    )
    write_manifest(root, m)
    return root


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, 64, 64), dtype=np.float32)


def test_openvino_and_onnxruntime_agree(toy_bundle):
    m = load_manifest(toy_bundle)
    ov_b = load_backend("openvino", toy_bundle, m, "CPU", 1)
    ort_b = load_backend("onnxruntime", toy_bundle, m, "cpu", 1)
    x = _batch(6)
    b1, s1 = ov_b.infer(x)
    b2, s2 = ort_b.infer(x)
    assert b1.shape == (6, 64, 4) and s1.shape == (6, 64, 2)
    np.testing.assert_allclose(b1, b2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    # the scores depend on the image (a constant output would make this test meaningless)
    assert np.ptp(s1) > 0.5


def test_openvino_async_matches_sync(toy_bundle):
    m = load_manifest(toy_bundle)
    b = load_backend("openvino", toy_bundle, m, "CPU", 1, infer_requests=3)
    results = {}
    for i in range(5):
        b.submit(_batch(6, seed=i), None, lambda bx, sc, err, i=i: results.__setitem__(i, (bx, sc, err)))
    b.wait_all()
    assert sorted(results) == list(range(5))
    for i, (_bx, sc, err) in results.items():
        assert err is None
        _, ref = b.infer(_batch(6, seed=i))
        np.testing.assert_allclose(sc, ref, atol=1e-6)


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
def test_static_batch_artifact_is_chunked(tmp_path, name):
    root = make_toy_bundle(tmp_path / "b2", batch=2, golden=False)
    dyn = make_toy_bundle(tmp_path / "dyn", golden=False)
    b = load_backend(name, root, load_manifest(root), "CPU", 1)
    ref = load_backend(name, dyn, load_manifest(dyn), "CPU", 1)
    assert b.fixed_batch == 2 and ref.fixed_batch == -1
    x = _batch(5)
    np.testing.assert_allclose(b.infer(x)[1], ref.infer(x)[1], atol=1e-6)


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
def test_golden_selftest_passes(toy_bundle, name):
    m = load_manifest(toy_bundle)
    assert run_golden_selftest(toy_bundle, m, load_backend(name, toy_bundle, m, "CPU", 1)) == 1


def test_golden_selftest_refuses_wrong_outputs(tmp_path):
    root = make_toy_bundle(tmp_path / "b")
    m = load_manifest(root)
    # Re-sign a manifest whose recorded outputs are wrong (a mis-built artifact, not a tampered one).
    wrong = m.golden[0].model_copy(
        update={"detections": [{"class_id": 1, "score": 0.99, "box": [1.0, 1.0, 5.0, 5.0]}]}
    )
    m2 = write_manifest(root, m.model_copy(update={"golden": [wrong]}))
    with pytest.raises(BundleError, match=r"golden/0\.png.*golden self-test failed"):
        run_golden_selftest(root, m2, load_backend("onnxruntime", root, m2, "CPU", 1))


def test_selftest_without_golden_samples_is_refused(tmp_path):
    root = make_toy_bundle(tmp_path / "b", golden=False)
    m = load_manifest(root)
    with pytest.raises(BundleError, match="no golden samples"):
        run_golden_selftest(root, m, load_backend("onnxruntime", root, m, "CPU", 1))


@pytest.mark.parametrize("hint", ["f32", "bf16"])
def test_openvino_compiles_with_the_artifact_properties(tmp_path, hint):
    import openvino as ov

    root = make_toy_bundle(tmp_path / "b", golden=False, ov_properties={"INFERENCE_PRECISION_HINT": hint})
    b = load_backend("openvino", root, load_manifest(root), "CPU", 1)
    # What OpenVINO chose (asked of the compiled model) is what this CPU can run: bf16 only with bf16
    # units. The expectation comes from the CPU's own answer, so the test holds on any x86-64 CPU.
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert b.describe()["precision_hint"] == cpu_float_precision(hint, caps)
    assert b.describe()["precision_requested"] == hint


def test_openvino_artifact_properties_reach_the_compiler_on_any_cpu(tmp_path):
    # A property every CPU honours: proves the artifact's properties are passed to compile_model even
    # on a CPU where the precision hint falls back to f32 whether it was passed or not.
    root = make_toy_bundle(tmp_path / "b", golden=False, ov_properties={"EXECUTION_MODE_HINT": "ACCURACY"})
    b = load_backend("openvino", root, load_manifest(root), "CPU", 1)
    assert str(b.compiled.get_property("EXECUTION_MODE_HINT")).endswith("ACCURACY")


@pytest.mark.parametrize(
    ("requested", "capabilities", "runs_in"),
    [
        ("bf16", ["FP32", "INT8", "BF16"], "bf16"),  # AVX512-BF16 / AMX
        ("bf16", ["FP32", "INT8"], "f32"),  # AVX2 only: OpenVINO falls back to f32
        ("f32", ["FP32", "INT8", "BF16"], "f32"),
        ("f32", ["FP32", "INT8"], "f32"),
        (None, ["FP32", "BF16"], "bf16"),  # no hint: the plugin's default where it has bf16
        (None, ["FP32"], "f32"),
        ("f16", ["FP32", "FP16", "BF16"], "f16"),
        ("f16", ["FP32", "BF16"], "bf16"),
        ("f16", ["FP32"], "f32"),
    ],
)
def test_cpu_float_precision_with_and_without_bf16_units(requested, capabilities, runs_in):
    assert cpu_float_precision(requested, capabilities) == runs_in


def test_openvino_fallback_is_logged(tmp_path, monkeypatch, caplog):
    import openvino as ov

    # The compiled model answers f32 to a bf16 request, as on a CPU without bf16 units.
    real_compile = ov.Core.compile_model

    def compile_without_bf16(self, model, device, config=None):
        config = {**(config or {}), "INFERENCE_PRECISION_HINT": "f32"}
        return real_compile(self, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", compile_without_bf16)
    root = make_toy_bundle(tmp_path / "b", golden=False, ov_properties={"INFERENCE_PRECISION_HINT": "bf16"})
    with caplog.at_level("WARNING", logger="rtvp_edge.backends.openvino"):
        b = load_backend("openvino", root, load_manifest(root), "CPU", 1)
    assert b.describe()["precision_hint"] == "f32" and b.describe()["precision_requested"] == "bf16"
    assert "asks OpenVINO for bf16, this CPU runs it in f32" in caplog.text


def test_unknown_backend_and_missing_artifact(tmp_path):
    root = make_toy_bundle(tmp_path / "b", openvino_ir=False, golden=False)
    m = load_manifest(root)
    with pytest.raises(BundleError, match="unknown backend 'tflite'"):
        load_backend("tflite", root, m)
    # OpenVINO falls back to the ONNX graph when no IR is shipped
    b = load_backend("openvino", root, m, "CPU", 1)
    assert b.infer(_batch(1))[1].shape == (1, 64, 2)
    assert set(BACKENDS) == {"openvino", "onnxruntime", "tensorrt"}


def test_tampered_bundle_named(tmp_path):
    root = make_toy_bundle(tmp_path / "b", golden=False)
    weights = root / "openvino" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x40  # one flipped bit in the IR weights
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"openvino/model\.bin: sha256 does not match"):
        load_manifest(root)


def test_manifest_is_json(toy_bundle):
    data = json.loads((toy_bundle / "manifest.json").read_text())
    assert data["golden"][0]["detections"]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_matches_onnxruntime(toy_bundle, tmp_path, monkeypatch):
    pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU + the tensorrt extra)"
    )
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path))
    m = load_manifest(toy_bundle)
    trt_b = load_backend("tensorrt", toy_bundle, m, "0")
    x = _batch(6)
    np.testing.assert_allclose(
        trt_b.infer(x)[1],
        load_backend("onnxruntime", toy_bundle, m).infer(x)[1],
        atol=2e-2,  # an FP16 engine (no tensorrt artifact in the toy bundle)
    )
    assert list((tmp_path / "tensorrt").glob("*.engine")), "the engine is cached for the next start"
    trt_b.close()
