"""The backend stage's interface (``export.targets``): every target's contract on a small detector double,
option checks naming the flag, a new target registered with one ``TARGETS`` entry, and the runtime's
``open_model`` that benchmarks use for model files outside a bundle."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from test_export import THRESHOLD, _source

import export.targets as targets
from export.errors import ExportError
from export.options import (
    AccuracyOptions,
    BundleOptions,
    CalibrationOptions,
    ExportOptions,
    Int8Options,
    check_options,
)
from export.pipeline import data_stage, export_bundle, onnx_stage, vocabulary_stage
from export.targets import BuildContext, Built, Target, get_target
from export.verify import verify_bundle
from rtvp_edge.backends import BACKENDS, open_model
from rtvp_edge.bundle import Artifact, BundleError, load_manifest

FLOAT = ExportOptions(bundle=BundleOptions(golden_count=2, score_threshold=THRESHOLD), progress=False)


def _context(tmp_path, options: ExportOptions) -> BuildContext:
    """The context the backend stage gets, made by the pipeline's own earlier stages."""
    source = _source()
    vocab = vocabulary_stage(source, options, None, None)
    root = tmp_path / "staging"
    root.mkdir()
    return onnx_stage(source, options, vocab, data_stage(source, options), root)


def test_every_target_names_itself_and_a_runtime_backend():
    for name in targets.TARGETS:
        target = get_target(name)
        assert isinstance(target, Target) and target.name == name
        assert target.backend in BACKENDS
    with pytest.raises(ExportError, match="--target 'coreml': choose one of onnx, openvino, tensorrt"):
        get_target("coreml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (replace(FLOAT, target="onnx", half=True), "--half with --target onnx: ONNX Runtime's CPU provider"),
        (
            replace(FLOAT, target="onnx", batch=3),
            r"--batch \(static batch\) applies to --target openvino only",
        ),
        (replace(FLOAT, target="onnx", ship_onnx=False), "--no-onnx needs --target openvino"),
        (replace(FLOAT, target="onnx", int8=Int8Options(accuracy_control=True)), "--accuracy-control needs"),
        (replace(FLOAT, target="onnx", int8=Int8Options(keep_fp32=True)), "--keep-fp32 needs --int8"),
        (replace(FLOAT, target="openvino", batch=0), "--batch must be a positive batch size or -1"),
        (replace(FLOAT, bundle=BundleOptions(vocab_mode="both")), "--vocab-mode 'both'"),
    ],
)
def test_options_a_target_cannot_honour_are_refused_naming_the_flag(options, message):
    with pytest.raises(ExportError, match=message):
        check_options(options)


def test_tensorrt_without_tensorrt_is_refused_with_the_reason():
    ok, why = get_target("tensorrt").available()
    if ok:
        pytest.skip("TensorRT is usable on this machine")
    with pytest.raises(
        ExportError, match=re.escape(f"--target tensorrt is not supported on this machine: {why}")
    ):
        check_options(replace(FLOAT, target="tensorrt"))


@pytest.mark.parametrize(("name", "half"), [("onnx", False), ("openvino", False), ("openvino", True)])
def test_target_contract_artifacts_staged_and_run_by_the_runtime(tmp_path, name, half):
    """``build`` writes every artifact it lists into the staging folder, lists its primary one first among
    its backend's, gets golden outputs for listed artifacts only, and each artifact runs on the runtime's
    backend with the graph's output contract."""
    options = replace(FLOAT, target=name, half=half)
    ctx = _context(tmp_path, options)
    target = get_target(name)
    built = target.build(ctx)
    assert isinstance(built, Built) and built.measured is None  # float export: nothing to guard
    assert all((ctx.root / a.path).is_file() for a in built.artifacts)
    primary = built.golden[0]
    assert primary.backend == target.backend
    assert next(a for a in built.artifacts if a.backend == target.backend) == primary
    assert all(g in built.artifacts for g in built.golden)
    assert "onnxruntime" in ctx.checks  # the ONNX stage's parity, before the target ran
    if name == "openvino":
        assert built.batch == 6 and ctx.checks["openvino"]["max_score_diff"] < (5e-3 if half else 1e-3)
        assert primary.precision == ("fp16" if half else "fp32")
        assert primary.properties["INFERENCE_PRECISION_HINT"] in ("f32", "bf16", "f16")
    batch = np.zeros((3, 3, *ctx.spec.input_size), np.float32)
    for art in built.artifacts:
        with ctx.bundle.run(art) as backend:
            boxes, scores = backend.infer(batch)
        assert boxes.shape[0] == 3 and scores.shape == (*boxes.shape[:2], len(ctx.class_names))


def test_a_staged_artifact_that_is_not_there_is_named(tmp_path):
    ctx = _context(tmp_path, replace(FLOAT, target="onnx"))
    with pytest.raises(ExportError, match="missing.onnx"):
        ctx.bundle.open(Artifact(backend="onnxruntime", path="missing.onnx", precision="fp32"))


class _RenamedOnnx(Target):
    """A new target: ships the checked ONNX under another name, for ONNX Runtime."""

    name = "onnx-copy"
    backend = "onnxruntime"

    def build(self, ctx: BuildContext) -> Built:
        (ctx.root / "copy.onnx").write_bytes(ctx.onnx_path.read_bytes())
        art = Artifact(backend="onnxruntime", path="copy.onnx", precision="fp32", notes="a copy")
        ctx.check_parity(art, "copy", "ONNX copy")
        return Built([art], golden=[art])


def test_a_new_target_needs_one_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(targets.TARGETS, "onnx-copy", f"{__name__}:_RenamedOnnx")
    out = tmp_path / "b"
    m = export_bundle(_source(), out, replace(FLOAT, target="onnx-copy"))
    assert [(a.path, a.notes) for a in m.artifacts] == [("copy.onnx", "a copy")]
    assert set(m.source_checkpoint["parity"]) == {"onnxruntime", "copy"}
    assert {g.backend for g in m.golden} == {"onnxruntime"} and load_manifest(out).golden == m.golden


def test_open_model_runs_a_file_outside_a_bundle_and_names_what_it_cannot(tmp_path):
    ctx = _context(tmp_path, replace(FLOAT, target="onnx"))
    batch = np.zeros((2, 3, *ctx.spec.input_size), np.float32)
    with ctx.bundle.run(ctx.onnx) as staged:
        expected = staged.infer(batch)
    for name in ("onnxruntime", "openvino"):  # OpenVINO reads the ONNX directly
        backend = open_model(name, ctx.onnx_path)
        try:
            got = backend.infer(batch)
        finally:
            backend.close()
        np.testing.assert_allclose(got[1], expected[1], atol=1e-4)
    with pytest.raises(BundleError, match="nope.onnx"):
        open_model("onnxruntime", tmp_path / "nope.onnx")
    with pytest.raises(BundleError, match="tensorrt runs bundle artifacts only"):
        open_model("tensorrt", ctx.onnx_path)
    with pytest.raises(BundleError, match="unknown backend 'coreml'"):
        open_model("coreml", ctx.onnx_path)


@pytest.fixture(scope="module")
def glass_data(tmp_path_factory):
    gen = pytest.importorskip("training.data.generate", reason="the rig's data generator is not installed")
    out = tmp_path_factory.mktemp("glass")
    return gen.generate_dataset(out, containers=6, protocol="closed", seed=3, progress=False)["closed"]


@pytest.mark.parametrize("version", ["10.8.0", "11.1.0"])
def test_tensorrt_int8_through_the_pipeline_on_the_runtime_backend(
    monkeypatch, tmp_path, glass_data, version
):
    """``--target tensorrt --int8`` against the TensorRT emulation (tests/fake_tensorrt.py; its engines are
    their ONNX run by ONNX Runtime): TensorRT 10 calibrates, 11 builds from the Q/DQ graph; the accuracy
    guard, the golden outputs and ``verify_bundle`` all run the engine on the runtime's TensorRT backend."""
    import torch._dynamo  # noqa: F401 - before the fake: the ONNX export imports it, and it probes "tensorrt"

    from tests import fake_tensorrt

    fake_tensorrt.install(monkeypatch, version)
    monkeypatch.setenv("RTVP_EDGE_CACHE", str(tmp_path / "cache"))
    int8 = Int8Options(
        calibration=CalibrationOptions(data=glass_data, size=8),
        accuracy=AccuracyOptions(size=6, force=True),  # the random double's AP says nothing
    )
    out = tmp_path / "trt"
    m = export_bundle(_source(), out, replace(FLOAT, target="tensorrt", int8=int8))
    art = m.artifact("tensorrt")
    assert art.precision == "int8" and art.path.endswith(f".trt{version}.int8.engine")
    # TensorRT 11 builds INT8 from the Q/DQ graph; 10 from the calibrator (the emulation never asks it for
    # batches, so no calibration cache is written here)
    assert ("model_qdq.onnx" in m.files) == (version == "11.1.0")
    how = "explicit Q/DQ ONNX" if version == "11.1.0" else "IInt8EntropyCalibrator2"
    assert how in art.notes
    assert m.accuracy is not None and art.accuracy == m.accuracy.artifact
    assert {g.backend for g in m.golden} == {"tensorrt"}
    assert verify_bundle(out) == {"tensorrt": 2}
    assert not (tmp_path / "cache").exists()  # the shipped engine ran: none was built from the ONNX
