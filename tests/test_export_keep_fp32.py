"""``rtvp-export --int8 --keep-fp32``: the bundle holds the OpenVINO INT8 and FP32 IRs, each with its
measured accuracy, the accuracy budget and golden outputs of its own; the runtime chooses between them and
self-tests the one it chose."""

from __future__ import annotations

import pytest
from test_export import _options, _source
from test_pipeline import line_file, recorded_line

from export.cli import main
from export.errors import ExportError
from export.options import ExportOptions, Int8Options, check_options
from export.pipeline import export_bundle
from export.verify import verify_bundle
from rtvp_edge.config import load_line_config
from rtvp_edge.pipeline import load_model


@pytest.fixture(scope="module")
def glass_data(tmp_path_factory):
    gen = pytest.importorskip("training.data.generate", reason="the rig's data generator is not installed")
    out = tmp_path_factory.mktemp("glass")
    return gen.generate_dataset(out, containers=8, protocol="closed", seed=3, progress=False)["closed"]


@pytest.fixture(scope="module")
def pair_bundle(glass_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "int8_fp32"
    opts = _options(glass_data, target="openvino", int8=True, keep_fp32=True, max_ap_drop=2.5)
    return out, export_bundle(_source(), out, opts)


def test_keep_fp32_records_both_artifacts_their_accuracy_and_the_budget(pair_bundle):
    out, m = pair_bundle
    ov = [(a.path, a.precision) for a in m.artifacts if a.backend == "openvino"]
    assert ov == [("openvino/model.xml", "int8"), ("openvino/model_fp32.xml", "fp32")]
    int8, fp32 = m.artifact("openvino", "int8"), m.artifact("openvino", "fp32")
    assert m.accuracy.max_drop == 2.5 and m.accuracy.metric == "AP50"
    assert int8.accuracy == m.accuracy.artifact  # as measured by the accuracy guard
    assert fp32.accuracy == m.accuracy.fp32 == m.artifact("onnxruntime").accuracy
    assert fp32.properties == {"INFERENCE_PRECISION_HINT": "f32"}
    assert {(g.backend, g.precision) for g in m.golden} == {("openvino", "int8"), ("openvino", "fp32")}
    assert "openvino_fp32" in m.source_checkpoint["parity"]
    assert verify_bundle(out) == {"openvino int8": 2, "openvino fp32": 2}


@pytest.mark.parametrize(
    ("faster", "path"), [("fp32", "openvino/model_fp32.xml"), ("int8", "openvino/model.xml")]
)
def test_the_runtime_runs_and_self_tests_the_faster_artifact(
    pair_bundle, tmp_path, monkeypatch, faster, path
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out, m = pair_bundle
    drop = m.accuracy.fp32["AP50"] - m.accuracy.artifact["AP50"]
    if drop > m.accuracy.max_drop:
        pytest.skip(f"the double's INT8 lost {drop:.2f} AP50 points: over the budget, never a candidate")
    cfg = load_line_config(line_file(tmp_path, out, recorded_line(tmp_path, 1, set())))
    loaded = load_model(cfg, time_part=lambda b: 0.1 if b.artifact.precision == faster else 0.3)
    loaded.backend.close()  # the golden self-test of the chosen artifact passed inside load_model
    assert loaded.choice.how == "measured" and loaded.backend.artifact.path == path


def test_keep_fp32_needs_int8_on_openvino(capsys):
    # without --int8 the flag has nothing to keep beside (the Python API cannot even say it)
    assert main(["--target", "openvino", "--keep-fp32"]) == 2
    assert "--keep-fp32 needs --int8 --target openvino" in capsys.readouterr().err
    with pytest.raises(ExportError, match="--keep-fp32"):
        check_options(ExportOptions(target="onnx", int8=Int8Options(keep_fp32=True)))
