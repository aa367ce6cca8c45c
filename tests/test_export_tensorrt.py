"""TensorRT stage without TensorRT: calibration batching, calibration cache, engine naming, the explicit Q/DQ
ONNX that TensorRT >= 11 builds INT8 engines from. Building and running engines needs a GPU: skipped here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.calibration import CalibrationSet
from export.onnx_export import export_onnx
from export.onnxruntime_backend import quantize_qdq
from export.tensorrt import (
    CalibrationBatches,
    CalibrationCache,
    engine_filename,
    tensorrt_available,
    trt_major,
)
from export.testing import TinyGlassDetector
from export.wrapper import build_wrapper
from rtvp_edge.preprocess import PreprocessSpec

torch.set_num_threads(1)


def test_calibration_batches_are_fixed_size_contiguous_and_drop_the_remainder():
    samples = [np.full((3, 8, 8), i, np.float32) for i in range(7)]
    batches = CalibrationBatches(samples, 3)
    assert len(batches) == 2
    first = batches.next_batch()
    assert first.shape == (3, 3, 8, 8) and first.flags["C_CONTIGUOUS"] and first.dtype == np.float32
    assert first[:, 0, 0, 0].tolist() == [0, 1, 2]
    assert batches.next_batch()[:, 0, 0, 0].tolist() == [3, 4, 5]
    assert batches.next_batch() is None  # image 6 alone is not a full batch
    batches.reset()
    assert batches.next_batch()[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="fewer than one batch"):
        CalibrationBatches(samples[:2], 3)


def test_calibration_cache_roundtrip(tmp_path):
    cache = CalibrationCache(tmp_path / "trt" / "calibration.cache")
    assert cache.read() is None
    cache.write(b"TRT-1000-EntropyCalibration2\nimages: 3c010a14\n")
    assert cache.read().startswith(b"TRT-1000")
    assert not list((tmp_path / "trt").glob("*.tmp"))


def test_engine_names_carry_gpu_and_version():
    name = engine_filename("NVIDIA H100 80GB HBM3", "10.3.0", "int8")
    assert name == "model.NVIDIA_H100_80GB_HBM3.trt10.3.0.int8.engine"
    assert engine_filename("Orin (nvgpu)", "11.0.1", "fp16") == "model.Orin_nvgpu.trt11.0.1.fp16.engine"
    assert trt_major("11.0.1") == 11


def test_qdq_onnx_for_tensorrt_is_symmetric_int8(tmp_path):
    torch.manual_seed(0)
    model = TinyGlassDetector((64, 64), 16).eval()
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    path = export_onnx(build_wrapper(model, "folded", emb), tmp_path / "m.onnx", "folded", (64, 64), (3, 16))
    rng = np.random.default_rng(0)
    calib = CalibrationSet(
        [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)],
        [],
        PreprocessSpec((64, 64)),
        "test",
        "folder",
        0,
    )
    out, info, kept = quantize_qdq(path, tmp_path / "q.onnx", calib, model, for_tensorrt=True)
    q = onnx.load(str(out))
    zero_points = {i.name: i for i in q.graph.initializer if i.name.endswith("zero_point")}
    assert zero_points, "no Q/DQ nodes"
    for zp in zero_points.values():
        arr = onnx.numpy_helper.to_array(zp)
        assert arr.dtype == np.int8 and not arr.any(), f"{zp.name}: TensorRT needs int8 zero points of 0"
    # The graph tail (score sigmoid, box decoding) stays float: no Q/DQ right before the outputs.
    producer = {o: n for n in q.graph.node for o in n.output}
    for out_name in ("boxes", "scores"):
        assert producer[out_name].op_type not in ("DequantizeLinear", "QuantizeLinear")
    assert any("head output path" in k for k in kept)


@pytest.mark.tensorrt
def test_build_engine_on_gpu(tmp_path):
    """The TensorRT target through the whole pipeline; its engine runs on the runtime's TensorRT backend."""
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT engine build not run: {why}")
    from export.options import BundleOptions, ExportOptions
    from export.pipeline import export_bundle
    from export.source import ExportSource
    from rtvp_edge.backends import load_backend
    from rtvp_edge.bundle import VocabularyClass

    torch.manual_seed(0)
    model = TinyGlassDetector((64, 64), 16).eval()
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    source = ExportSource(
        model=model,
        model_name="tiny_double",
        preprocess=PreprocessSpec((64, 64)),
        classes=[VocabularyClass(name=n, prompt=n) for n in ("oil", "bubble", "stone")],
        text_encoder="random:16",
        text_embeddings=emb,
    )
    options = ExportOptions(target="tensorrt", bundle=BundleOptions(golden_count=2), progress=False)
    m = export_bundle(source, tmp_path / "trt", options)
    backend = load_backend("tensorrt", tmp_path / "trt", m, "0")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    try:
        boxes, scores = backend.infer(x)
    finally:
        backend.close()
    with torch.no_grad():
        ref = build_wrapper(model, "folded", emb)(torch.from_numpy(x))
    np.testing.assert_allclose(scores, ref[1].numpy(), atol=1e-3)
