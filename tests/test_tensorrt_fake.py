"""The TensorRT code paths (engine build for ``rtvp-export`` and the runtime backend, engine execution) against
``tests/fake_tensorrt.py``, an emulation of the TensorRT 10/11 + cuda-python (CUDA runtime) API surface we call. This checks what
we ask TensorRT for on each major version and the buffer plumbing; it does not check TensorRT itself, which
no machine here has (the GPU tests in test_backends.py / test_export_tensorrt.py do, and skip here)."""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rtvp_edge.backends import load_backend
from rtvp_edge.backends.tensorrt import TensorRTError, build_serialized_engine
from rtvp_edge.bundle import BundleError, load_manifest
from tests import fake_tensorrt
from tests.test_backends import make_toy_bundle


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("trt") / "toy", openvino_ir=False, golden=False)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 64, 64), dtype=np.float32)


def _vocab_input_onnx(path) -> None:
    """images (B,3,8,8) and text_embeddings (C,4) both dynamic on axis 0, as in vocabulary mode ``input``."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["boxes"]), helper.make_node("Identity", ["text_embeddings"],
                                                                                ["scores"])],
        "v",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 8, 8]),
         helper.make_tensor_value_info("text_embeddings", TensorProto.FLOAT, ["C", 4])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 3, 8, 8]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["C", 4])],
    )  # fmt: skip
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_trt10_int8_sets_fp16_and_int8_flags_the_calibrator_and_both_profiles(monkeypatch, tmp_path):
    trt, _ = fake_tensorrt.install(monkeypatch, "10.8.0")
    _vocab_input_onnx(tmp_path / "v.onnx")
    calibrator = object()
    data = build_serialized_engine(trt, tmp_path / "v.onnx", "int8", calibrator=calibrator, max_batch=8,
                                   opt_batch=6, max_classes=64)  # fmt: skip
    assert data.startswith(fake_tensorrt.ENGINE_MAGIC)
    config = trt.record[-1][1]
    assert config.flags == ["FP16", "INT8"]
    assert config.int8_calibrator is calibrator
    (profile,) = config.profiles
    assert config.calibration_profile is profile
    assert profile.shapes["images"] == ([1, 3, 8, 8], [6, 3, 8, 8], [8, 3, 8, 8])
    assert profile.shapes["text_embeddings"] == ([1, 4], [8, 4], [64, 4])


def test_trt10_fp32_sets_no_precision_flag_and_refuses_a_calibrator(monkeypatch, tmp_path):
    trt, _ = fake_tensorrt.install(monkeypatch, "10.8.0")
    _vocab_input_onnx(tmp_path / "v.onnx")
    build_serialized_engine(trt, tmp_path / "v.onnx", "fp32")
    assert trt.record[-1][1].flags == []
    with pytest.raises(ValueError, match="calibrator needs precision int8"):
        build_serialized_engine(trt, tmp_path / "v.onnx", "fp16", calibrator=object())


def test_trt11_is_strongly_typed_no_precision_flags_no_calibrators(monkeypatch, tmp_path, caplog):
    # The fake 11.x has no BuilderFlag.FP16/INT8 and no int8_calibrator: asking for them would raise.
    trt, _ = fake_tensorrt.install(monkeypatch, "11.1.0")
    _vocab_input_onnx(tmp_path / "v.onnx")
    build_serialized_engine(trt, tmp_path / "v.onnx", "int8")  # from a Q/DQ graph: its types decide
    assert trt.record[-1][1].flags == []
    with caplog.at_level(logging.WARNING):
        build_serialized_engine(trt, tmp_path / "v.onnx", "fp16")
    assert "strongly typed" in caplog.text and "v.onnx" in caplog.text
    with pytest.raises(ValueError, match="Q/DQ"):
        build_serialized_engine(trt, tmp_path / "v.onnx", "int8", calibrator=object())


def test_build_errors_name_the_file(monkeypatch, tmp_path):
    trt, _ = fake_tensorrt.install(monkeypatch, "10.8.0")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not a graph")
    with pytest.raises(TensorRTError, match="broken.onnx: TensorRT cannot parse"):
        build_serialized_engine(trt, bad, "fp16")
    _vocab_input_onnx(tmp_path / "v.onnx")
    trt.fail_build = True
    with pytest.raises(TensorRTError, match="v.onnx: TensorRT failed to build"):
        build_serialized_engine(trt, tmp_path / "v.onnx", "fp16")
    with pytest.raises(ValueError, match="fp32, fp16 or int8"):
        build_serialized_engine(trt, tmp_path / "v.onnx", "fp8")


def test_runtime_backend_builds_caches_and_runs_like_onnxruntime(monkeypatch, tmp_path, toy):
    trt, cuda = fake_tensorrt.install(monkeypatch, "10.8.0")
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path / "cache"))
    m = load_manifest(toy)
    backend = load_backend("tensorrt", toy, m, "0")
    assert trt.builds == 1 and trt.record[-1][1].flags == ["FP16"]  # no tensorrt artifact: FP16 engine
    cached = list((tmp_path / "cache" / "tensorrt").glob("*.engine"))
    assert len(cached) == 1 and "Fake_GPU_80GB-trt10.8.0-fp16" in cached[0].name
    x = _batch(6)
    boxes, scores = backend.infer(x)
    ref_boxes, ref_scores = load_backend("onnxruntime", toy, m).infer(x)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-6)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert np.ptp(scores) > 0.5  # image-dependent outputs, so a mix-up of buffers would show
    assert cuda.live() == 0, "device buffers are freed after each call"
    # the runtime API's current device is per thread: a call from another thread (the pipeline's inference
    # worker) must make the GPU current there itself (the fake refuses memory calls otherwise)
    got = []
    worker = threading.Thread(target=lambda: got.append(backend.infer(x)))
    worker.start()
    worker.join()
    assert len(got) == 1, "inference on another thread failed"
    np.testing.assert_allclose(got[0][1], ref_scores, atol=1e-6)
    assert {t for call, t in cuda.calls if call == "cudaMalloc"} == {threading.get_ident(), worker.ident}
    assert len(cuda.streams) == 1
    backend.close()
    assert not cuda.streams, "close() destroys the stream"
    assert cuda.live() == 0
    # the next start finds the engine in the cache and builds nothing
    load_backend("tensorrt", toy, m, "0").close()
    assert trt.builds == 1


def test_runtime_backend_names_a_cached_engine_it_cannot_read(monkeypatch, tmp_path, toy):
    trt, _ = fake_tensorrt.install(monkeypatch, "10.8.0")
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path / "cache"))
    m = load_manifest(toy)
    load_backend("tensorrt", toy, m, "0").close()
    (engine,) = (tmp_path / "cache" / "tensorrt").glob("*.engine")
    engine.write_bytes(b"written by another TensorRT")
    with pytest.raises(
        BundleError, match=f"{engine.name}: TensorRT cannot deserialize.*next start rebuilds it"
    ):
        load_backend("tensorrt", toy, m, "0")


def _staged(toy, tmp_path):
    """A copy of the toy bundle being staged the way rtvp-export stages one (``export.targets``)."""
    import shutil

    from export.targets import StagedBundle

    root = tmp_path / "staged"
    shutil.copytree(toy, root)
    return StagedBundle(root, load_manifest(toy))


def test_export_build_engine_and_runner_share_the_runtime_code(monkeypatch, tmp_path, toy):
    from export.tensorrt import build_engine
    from rtvp_edge.bundle import Artifact

    trt, cuda = fake_tensorrt.install(monkeypatch, "10.8.0")
    staged = _staged(toy, tmp_path)
    engine = build_engine(
        toy / "model.onnx", staged.root / "tensorrt" / "m.engine", "int8", calibrator=object()
    )
    assert engine.is_file() and not list(engine.parent.glob("*.tmp"))
    assert trt.record[-1][1].flags == ["FP16", "INT8"]
    x = _batch(3, seed=1)
    art = Artifact(backend="tensorrt", path="tensorrt/m.engine", precision="int8", device="Fake GPU 80GB",
                   properties={"tensorrt": "10.8.0"})  # fmt: skip
    with staged.run(art) as backend:  # export runs its engine with the runtime's TensorRT backend
        assert backend.engine_path == engine  # the engine export built, not one built from the ONNX
        boxes, scores = backend.infer(x)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(toy / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x}
    )
    np.testing.assert_allclose(boxes, ref[0], atol=1e-6)
    np.testing.assert_allclose(scores, ref[1], atol=1e-6)
    assert cuda.live() == 0


@pytest.mark.parametrize(("version", "recorded"), [("10.8.0", "fp16"), ("11.1.0", "fp32")])
def test_export_records_the_precision_the_engine_really_has(monkeypatch, tmp_path, toy, version, recorded):
    from export.tensorrt import export_tensorrt

    trt, _ = fake_tensorrt.install(monkeypatch, version)
    staged = _staged(toy, tmp_path)
    art = export_tensorrt(
        staged.root / "model.onnx", staged.root, None, half=True, int8=False, embeddings=None
    )
    assert art.precision == recorded  # TensorRT 11 builds an FP32 graph as FP32: the bundle must not say FP16
    assert art.path == f"tensorrt/model.Fake_GPU_80GB.trt{version}.{recorded}.engine"
    assert (staged.root / art.path).is_file() and art.properties == {"tensorrt": version}
    with staged.run(art) as backend:
        assert backend.engine_path == staged.root / art.path
        assert backend.infer(_batch(2))[1].shape == (2, 64, 2)


def test_runtime_cache_key_names_the_precision_trt11_really_builds(monkeypatch, tmp_path, toy):
    trt, _ = fake_tensorrt.install(monkeypatch, "11.1.0")
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path / "cache"))
    load_backend("tensorrt", toy, load_manifest(toy), "0").close()
    assert trt.record[-1][1].flags == []  # no FP16 flag to set on a strongly typed build
    (engine,) = (tmp_path / "cache" / "tensorrt").glob("*.engine")
    assert engine.name.endswith("-trt11.1.0-fp32.engine")


# --- the CUDA runtime calls (cuda-python) -------------------------------------------------------------


def test_cuda_errors_name_the_call_and_the_cuda_error(monkeypatch):
    from rtvp_edge.backends.cuda_runtime import Cuda, CudaError

    _, rt = fake_tensorrt.install(monkeypatch, "10.8.0")
    with pytest.raises(CudaError, match=r"GPU 3 asked for, this machine has 1 \(0..0\)"):
        Cuda(3)
    cuda = Cuda(0)
    assert cuda.name == "Fake GPU 80GB"  # the NUL padding of cudaDeviceProp.name is cut
    d = cuda.malloc(16)
    cuda.free(d)
    with pytest.raises(CudaError, match="cudaFree failed: cudaErrorInvalidValue"):
        cuda.free(d)
    rt.gpus = 0
    with pytest.raises(CudaError, match="no CUDA GPU found"):
        Cuda(0)


def test_tensorrt_backend_on_a_gpu_that_is_not_there_names_it(monkeypatch, tmp_path, toy):
    fake_tensorrt.install(monkeypatch, "10.8.0")
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BundleError, match="backend tensorrt on GPU 2: GPU 2 asked for"):
        load_backend("tensorrt", toy, load_manifest(toy), "2")


def test_tensorrt_backend_without_cuda_python_names_the_extra(monkeypatch, toy):
    fake_tensorrt.install(monkeypatch, "10.8.0")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    with pytest.raises(BundleError, match=r"needs TensorRT and cuda-python .*rtvp-edge\[tensorrt\]"):
        load_backend("tensorrt", toy, load_manifest(toy), "0")


def test_int8_calibrator_copies_each_batch_to_the_device_and_frees_it(monkeypatch, tmp_path):
    from export.tensorrt import CalibrationBatches, CalibrationCache, make_entropy_calibrator
    from tests.fake_tensorrt import _ALLOCATIONS

    _, rt = fake_tensorrt.install(monkeypatch, "10.8.0")
    samples = [np.full((3, 4, 4), i, np.float32) for i in range(5)]
    calib = make_entropy_calibrator(
        CalibrationBatches(samples, 2), CalibrationCache(tmp_path / "c"), "images"
    )
    seen = []
    while (pointers := calib.get_batch(["images"])) is not None:
        (pointer,) = pointers
        seen.append(_ALLOCATIONS[pointer].data.view(np.float32).reshape(2, 3, 4, 4)[:, 0, 0, 0].tolist())
    assert seen == [[0.0, 1.0], [2.0, 3.0]]  # the incomplete last batch is dropped
    assert rt.live() == 1  # one device buffer, reused for every batch
    calib.close()
    assert rt.live() == 0


def test_the_cuda_calls_exist_in_the_real_cuda_python():
    """The names the wrapper calls, checked against the installed bindings (torch's CUDA build brings
    cuda-bindings; the [tensorrt] extra installs cuda-python). Without a GPU the calls answer with an error,
    which ``cuda_usable`` reports instead of raising."""
    runtime = pytest.importorskip(
        "cuda.bindings.runtime", reason="cuda-python (cuda-bindings) is not installed"
    )
    from rtvp_edge.backends.cuda_runtime import cuda_usable, import_cudart

    assert import_cudart() is runtime
    for call in ("cudaGetDeviceCount", "cudaSetDevice", "cudaGetDeviceProperties", "cudaGetErrorName",
                 "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize", "cudaMalloc", "cudaFree",
                 "cudaMemcpy", "cudaMemcpyAsync"):  # fmt: skip
        assert callable(getattr(runtime, call)), call
    assert runtime.cudaError_t.cudaSuccess is not None
    assert runtime.cudaMemcpyKind.cudaMemcpyHostToDevice != runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
    usable, why = cuda_usable(0)
    if usable:
        assert why  # the GPU's name
    else:
        assert why.startswith("CUDA not usable (CudaError: cudaGetDeviceCount failed: cudaError") or (
            "no CUDA GPU" in why
        ), why
