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
from export.options import BundleOptions, ExportOptions, Int8Options, check_options
from export.pipeline import data_stage, export_bundle, onnx_stage, vocabulary_stage
from export.targets import BuildContext, Built, Target, get_target
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
