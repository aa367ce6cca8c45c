"""rtvp-export pipeline on a small detector double (fast): ONNX parity, OpenVINO INT8 bundle with golden
self-test and tamper refusal, INT8 detections against FP32, vocabulary swap, atomic writing, bad input.

The double honours the ``forward_inference`` contract (export/testing.py); tests/test_export_checkpoint.py
runs the same pipeline from a real rtvpnet_tiny checkpoint through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

from export.accuracy import accuracy_guard
from export.calibration import build_calibration_set, list_images
from export.cli import main
from export.embeddings import load_vocabulary, resolve_embeddings
from export.errors import ExportError
from export.onnx_export import export_onnx
from export.options import (
    AccuracyOptions,
    BundleOptions,
    CalibrationOptions,
    ExportOptions,
    Int8Options,
    check_options,
)
from export.pipeline import export_bundle
from export.source import ExportSource, find_newest_checkpoint
from export.testing import TinyGlassDetector
from export.verify import TorchReference, verify_bundle
from export.wrapper import build_wrapper
from rtvp_edge.backends import load_backend, load_embeddings, open_model
from rtvp_edge.bundle import BundleError, VocabularyClass, load_manifest
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess
from rtvp_edge.selftest import run_golden_selftest
from rtvp_edge.vocabulary import GLASS_DEFECTS

torch.set_num_threads(1)
SIZE = (128, 128)
DIM = 32
THRESHOLD = 0.15  # the random double scores well below the usual 0.25; golden samples need detections


def _classes(n: int = len(GLASS_DEFECTS)) -> list[VocabularyClass]:
    return [VocabularyClass(name=c.name, prompt=c.prompt) for c in GLASS_DEFECTS[:n]]


def _embeddings(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)


def _source() -> ExportSource:
    torch.manual_seed(0)
    classes = _classes()
    return ExportSource(
        model=TinyGlassDetector(SIZE, DIM).eval(),
        model_name="tiny_double",
        preprocess=PreprocessSpec(SIZE),
        classes=classes,
        text_encoder=f"random:{DIM}",
        text_embeddings=_embeddings(len(classes)),
    )


@pytest.fixture(scope="module")
def glass_data(tmp_path_factory):
    """A small generated glass-container data set (closed protocol: Images/, annotations/)."""
    gen = pytest.importorskip("training.data.generate", reason="the rig's data generator is not installed")
    out = tmp_path_factory.mktemp("glass")
    roots = gen.generate_dataset(out, containers=8, protocol="closed", seed=3, progress=False)
    return roots["closed"]


def _options(data, **kw) -> ExportOptions:
    """These tests' export options, named like rtvp-export's flags (``int8=True`` with the INT8 ones)."""
    flags = dict(calib_data=data, calib_size=16, eval_size=12, golden_count=2, score_threshold=THRESHOLD)
    flags.update(kw)
    int8 = None
    if flags.pop("int8", False):
        int8 = Int8Options(
            calibration=CalibrationOptions(data=flags.pop("calib_data"), size=flags.pop("calib_size")),
            accuracy=AccuracyOptions(
                size=flags.pop("eval_size"),
                **{k: flags.pop(k) for k in ("max_ap_drop", "force", "class_thresholds") if k in flags},
            ),
            **{k: flags.pop(k) for k in ("accuracy_control", "keep_fp32") if k in flags},
        )
    for unused in ("calib_data", "calib_size", "eval_size"):
        flags.pop(unused, None)
    bundle = BundleOptions(
        **{k: flags.pop(k) for k in ("vocab_mode", "golden_count", "score_threshold") if k in flags}
    )
    return ExportOptions(int8=int8, bundle=bundle, progress=False, **flags)


def _detect(backend, image, m) -> list:
    """One image through a runtime backend (folded vocabulary), decoded with the bundle's score threshold
    and NMS."""
    batch, (lb,) = preprocess([image], m.preprocess.spec())
    boxes, scores = backend.infer(batch)
    thr, names = m.thresholds, [c.name for c in m.vocabulary.classes]
    return decode_detections(boxes[0], scores[0], lb, names, thr.score, thr.iou, thr.max_detections)


@pytest.fixture(scope="module")
def int8_bundle(glass_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "int8"
    manifest = export_bundle(_source(), out, _options(glass_data, target="openvino", int8=True))
    return out, manifest


def test_onnx_target_parity_and_dynamic_batch(glass_data, tmp_path):
    src = _source()
    out = tmp_path / "onnx"
    m = export_bundle(src, out, _options(glass_data, target="onnx"))
    assert [a.backend for a in m.artifacts] == ["onnxruntime"]
    parity = m.source_checkpoint["parity"]["onnxruntime"]
    assert parity["max_score_diff"] < 1e-3 and parity["images"] >= 2
    # Independently of the pipeline's own check: batch of 3 real images through ONNX Runtime vs PyTorch.
    images = [cv2.imread(str(p)) for p in list_images(glass_data / "Images" / "val")[:3]]
    batch, _ = preprocess(images, src.preprocess)
    ref = TorchReference(build_wrapper(src.model, "folded", src.text_embeddings)).infer(batch)
    backend = load_backend("onnxruntime", out, m)
    got = backend.infer(batch)
    assert got[0].shape == ref[0].shape == (3, ref[0].shape[1], 4)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-4)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-2)
    assert verify_bundle(out) == {"onnxruntime": 2}


def test_openvino_int8_bundle_passes_its_golden_self_test(int8_bundle):
    out, _ = int8_bundle
    m = load_manifest(out)
    art = m.artifact("openvino")
    assert art.precision == "int8"
    assert m.io.batch == 6  # static batch by default: one part of six views
    assert any("head output path" in k for k in art.kept_float)
    assert any("image_encoder" in k for k in art.kept_float)
    assert m.accuracy is not None and set(m.accuracy.fp32) >= {"AP", "AP50"}
    assert m.calibration["images"] == 16 and m.calibration["fake_quantize_ops"] > 0
    golden = [g for g in m.golden if g.backend == "openvino"]
    assert golden and sum(len(g.detections) for g in golden) > 0, (
        "golden samples without detections test nothing"
    )
    backend = load_backend("openvino", out, m, artifact=art)
    assert run_golden_selftest(out, m, backend) == len(golden)


def test_int8_ir_keeps_each_silu_one_swish_op(int8_bundle):
    """NNCF quantizes the graph as convert_model leaves it (as for the FP32 IR): each SiLU is one Swish op
    that the CPU plugin fuses into the INT8 convolution before it, not a Sigmoid and a Multiply with their
    own quantizers (read_model of the ONNX file), which ran as separate f32 nodes."""
    import openvino as ov

    out, m = int8_bundle
    silus = sum(isinstance(mod, torch.nn.SiLU) for mod in _source().model.modules())
    ops = [op.get_type_name() for op in ov.Core().read_model(out / m.artifact("openvino").path).get_ops()]
    assert silus > 0
    assert ops.count("Swish") == silus, f"{ops.count('Swish')} Swish ops for {silus} SiLUs"
    assert ops.count("Sigmoid") == 1  # the score's, in the float graph tail


def test_golden_check_catches_a_different_model(int8_bundle, tmp_path):
    out, _ = int8_bundle
    m = load_manifest(out)
    torch.manual_seed(123)  # other weights: other detections
    n = len(m.vocabulary.classes)
    other = build_wrapper(TinyGlassDetector(SIZE, DIM).eval(), "folded", _embeddings(n, seed=8))
    path = export_onnx(other, tmp_path / "other.onnx", "folded", SIZE, (n, DIM))
    backend = open_model("openvino", path)  # the runtime's OpenVINO backend on a model outside the bundle
    with pytest.raises(BundleError, match="golden self-test"):
        run_golden_selftest(out, m, backend)


def test_int8_detects_where_fp32_does(int8_bundle, glass_data):
    out, m = int8_bundle
    fp32 = load_backend("onnxruntime", out, m)
    int8 = load_backend("openvino", out, m)
    matched = total = 0
    for path in list_images(glass_data / "Images" / "val")[:6]:
        img = cv2.imread(str(path))
        ref, got = _detect(fp32, img, m), _detect(int8, img, m)
        for r in ref:
            total += 1
            matched += any(g.class_id == r.class_id and _iou(g.box, r.box) > 0.5 for g in got)
    assert total > 0
    assert matched / total >= 0.8, f"INT8 found {matched} of {total} FP32 detections"


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.parametrize(
    "victim", ["openvino/model.bin", "openvino/model.xml", "text_embeddings.npy", "golden/000.png"]
)
def test_bundle_refused_after_one_byte_changes(int8_bundle, tmp_path, victim):
    import shutil

    out, _ = int8_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    p = copy / victim
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=victim.split("/")[-1]):
        load_manifest(copy)
    assert main(["verify", "--bundle", str(copy)]) == 2


def test_input_mode_vocabulary_swap(glass_data, tmp_path, capsys):
    src = _source()
    out = tmp_path / "input"
    m = export_bundle(src, out, _options(glass_data, target="openvino", vocab_mode="input"))
    assert m.io.embeddings_input == "text_embeddings"
    # A new, smaller vocabulary, embedded by the bundle's text encoder (random:32) once, here.
    new = _classes(3)
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text(yaml.safe_dump({"classes": [{"name": c.name, "prompt": c.prompt} for c in new]}))
    cache = tmp_path / "cache"
    before = load_manifest(out)
    assert main(["vocab", "--bundle", str(out), "--vocab", str(vocab_file), "--cache-dir", str(cache)]) == 0
    after = load_manifest(out)  # hashes rewritten and consistent
    assert [c.name for c in after.vocabulary.classes] == [c.name for c in new]
    assert after.vocabulary.embeddings_sha256 != before.vocabulary.embeddings_sha256
    assert after.files["openvino/model.bin"] == before.files["openvino/model.bin"]  # not recompiled
    emb = np.load(out / "text_embeddings.npy")
    assert emb.shape == (3, DIM)
    backend = load_backend("openvino", out, after)
    _, scores = backend.infer(np.zeros((1, 3, *SIZE), np.float32), load_embeddings(out, after))
    assert scores.shape[-1] == 3
    assert verify_bundle(out) == {"openvino": 2}


def test_vocab_swap_refuses_folded_bundle_and_wrong_width(int8_bundle, tmp_path, capsys):
    out, m = int8_bundle
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text(yaml.safe_dump([{"name": "oil", "prompt": "oil on glass"}]))
    assert main(["vocab", "--bundle", str(out), "--vocab", str(vocab_file)]) == 2
    assert "folded" in capsys.readouterr().err
    # Embeddings of the wrong width do not fit the model.
    with pytest.raises(ExportError, match="width 16 does not fit"):
        classes = load_vocabulary(vocab_file)
        resolve_embeddings(_classes(), _embeddings(8).numpy(), "random:16", classes, tmp_path / "cache")


def test_failed_export_leaves_no_bundle(glass_data, tmp_path):
    class Broken(TinyGlassDetector):
        def forward_inference(self, images, text_embeds):
            boxes, scores = super().forward_inference(images, text_embeds)
            return boxes, scores[..., :-1]  # one class short: parity/decoding must fail

    src = _source()
    src.model = Broken(SIZE, DIM).eval()
    out = tmp_path / "b"
    with pytest.raises((ExportError, ValueError)):
        export_bundle(src, out, _options(glass_data, target="openvino"))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "a temp folder was left behind"


def test_existing_bundle_is_not_replaced_without_overwrite(glass_data, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(_source(), out, _options(glass_data, target="onnx"))
    assert (out / "keep.txt").read_text() == "x"


def test_accuracy_guard():
    fp32 = {"AP": 40.0, "AP50": 80.0, "AP75": 40.0}
    assert accuracy_guard(fp32, {**fp32, "AP50": 79.5}, 1.0, False, "val") == 0.5
    with pytest.raises(ExportError, match=r"dropped by 2.00 points .* --max-ap-drop 1"):
        accuracy_guard(fp32, {**fp32, "AP50": 78.0}, 1.0, False, "val")
    assert accuracy_guard(fp32, {**fp32, "AP50": 78.0}, 1.0, True, "val") == 2.0  # --force


def test_calibration_set_errors_and_warning(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=f"no images in {empty}"):
        build_calibration_set(empty, PreprocessSpec(SIZE), 10)
    with pytest.raises(ExportError, match="not found"):
        build_calibration_set(tmp_path / "nope", PreprocessSpec(SIZE), 10)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), np.full((40, 60, 3), 50 * i, np.uint8))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ExportError, match="bad.png"):
        build_calibration_set(tmp_path / "imgs", PreprocessSpec(SIZE), 10, progress=False)
    (tmp_path / "imgs" / "bad.png").unlink()
    cs = build_calibration_set(tmp_path / "imgs", PreprocessSpec(SIZE), 10, progress=False)
    assert len(cs) == 3 and next(cs.batches(2)).shape == (2, 3, *SIZE)
    assert "recommended" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "v.yaml:1: classes: expected a non-empty list"),
        ("- {name: oil}", "v.yaml:1: classes.0.prompt: required key is missing"),
        (
            "- {name: oil, prompt: a}\n- {name: ' ', prompt: b}",
            "v.yaml:2: classes.1.name: must be a non-empty",
        ),
        ("- {name: oil, prompt: a, colour: red}", "v.yaml:1: classes.0.colour: unknown key"),
        (
            "- {name: oil, prompt: a}\n- {name: oil, prompt: b}",
            "v.yaml:1: classes: duplicate class name 'oil'",
        ),
        ("classes: [{name: oil, prompt: a}]\nextra: 1", "v.yaml:2: extra: unknown key"),
        (
            "classes:\n  - {name: oil, prompt: 3}",
            "v.yaml:2: classes.0.prompt: Input should be a valid string",
        ),
        ("{: [", "v.yaml:1: not valid YAML"),
    ],
)
def test_vocabulary_file_errors(tmp_path, content, message):
    f = tmp_path / "v.yaml"
    f.write_text(content)
    with pytest.raises(ExportError, match=re.escape(message)):
        load_vocabulary(f)
    with pytest.raises(ExportError, match="nope.yaml: vocabulary file not found"):
        load_vocabulary(tmp_path / "nope.yaml")


def test_cli_bad_input_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--checkpoint", "missing.pt"], "checkpoint missing.pt not found"),
        (["--int8"], "no runs folder"),
        (["--target", "tensorrt", "--checkpoint", "x.pt"], "not supported on this machine"),
        (["--target", "coreml"], "choose one of onnx, openvino, tensorrt"),
        (["--target", "onnx", "--half"], "--half with --target onnx"),
        (["--vocab-mode", "both"], "--vocab-mode 'both'"),
        (["--accuracy-control"], "--accuracy-control needs --int8"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    (tmp_path / "runs" / "a").mkdir(parents=True)
    with pytest.raises(ExportError, match="no checkpoint"):
        find_newest_checkpoint(tmp_path / "runs")


def test_newest_checkpoint_prefers_best_of_newest_run(tmp_path):
    import os
    import time

    for run, names in (("old", ("best.pt", "last.pt")), ("new", ("last.pt", "best.pt"))):
        (tmp_path / run).mkdir()
        for n in names:
            (tmp_path / run / n).write_bytes(b"x")
    t = time.time()
    os.utime(tmp_path / "old" / "best.pt", (t - 100, t - 100))
    os.utime(tmp_path / "old" / "last.pt", (t - 100, t - 100))
    assert find_newest_checkpoint(tmp_path) == tmp_path / "new" / "best.pt"


def test_manifest_records_toolchain_and_precision(int8_bundle):
    out, _ = int8_bundle
    raw = json.loads((out / "manifest.json").read_text())
    assert {"torch", "onnx", "openvino", "nncf", "onnxruntime"} <= set(raw["toolchain"])
    assert raw["vocabulary"]["mode"] == "folded"
    assert raw["artifacts"][1]["properties"]["INFERENCE_PRECISION_HINT"] in ("bf16", "f32", "f16")


def test_openvino_fp16_ir_and_accuracy_controlled_int8(glass_data, tmp_path):
    src = _source()
    m = export_bundle(src, tmp_path / "fp16", _options(glass_data, target="openvino", half=True))
    art = m.artifact("openvino")
    assert art.precision == "fp16"
    assert m.source_checkpoint["parity"]["openvino"]["max_score_diff"] < 5e-3
    # FP16 weights: the .bin is about half the FP32 ONNX's weight bytes.
    assert (tmp_path / "fp16" / "openvino" / "model.bin").stat().st_size < 0.7 * (
        tmp_path / "fp16" / "model.onnx"
    ).stat().st_size
    m = export_bundle(
        src, tmp_path / "ac", _options(glass_data, target="openvino", int8=True, accuracy_control=True)
    )
    assert m.calibration["method"] == "nncf.quantize_with_accuracy_control"
    assert m.accuracy is not None and m.artifact("openvino").precision == "int8"


def test_golden_samples_are_recorded_for_the_primary_artifact(int8_bundle):
    _, m = int8_bundle
    assert {g.backend for g in m.golden} == {"openvino"}
    assert m.golden_for("openvino") == m.golden and m.golden_for("onnxruntime") == []


@pytest.mark.parametrize("mode", ["int8", "input", "static"])
def test_runtime_loads_the_bundle_and_passes_its_golden_self_test(int8_bundle, glass_data, tmp_path, mode):
    """The edge runtime's own loader and self-test (rtvp_edge.backends / rtvp_edge.selftest) accept the bundle."""
    backends = pytest.importorskip("rtvp_edge.backends", reason="the runtime part is not installed")
    selftest = pytest.importorskip("rtvp_edge.selftest", reason="the runtime part is not installed")
    if mode == "int8":
        out, _ = int8_bundle
    elif mode == "input":
        out = tmp_path / "input"
        export_bundle(_source(), out, _options(glass_data, target="openvino", vocab_mode="input"))
    else:  # static batch 3: the runtime chunks and pads batches to it
        out = tmp_path / "static"
        export_bundle(_source(), out, _options(glass_data, target="openvino", int8=True, batch=3))
    m = load_manifest(out)
    backend = backends.load_backend("openvino", out, m)
    if mode == "static":
        assert m.io.batch == 3 and backend.fixed_batch == 3
    try:
        assert selftest.run_golden_selftest(out, m, backend) == len(m.golden) > 0
    finally:
        backend.close()


def test_keep_float_policy_blocks_and_unknown_block(tmp_path):
    import onnx

    from export.int8_policy import keep_float_policy, node_scope
    from export.onnx_export import export_onnx

    src = _source()
    path = export_onnx(
        build_wrapper(src.model, "folded", src.text_embeddings), tmp_path / "m.onnx", "folded", SIZE, (8, DIM)
    )
    graph = onnx.load(str(path))
    blocks = [n for n, _ in src.model.named_children()] + ["det_loss"]  # a block with no inference nodes
    only_expert = keep_float_policy(graph, blocks, r"^(?!expert$)")
    kept = {n.name for n in graph.graph.node if only_expert.matches(n.name)}
    assert {node_scope(n) for n in kept} >= {"image_encoder", "fuse", "head"}
    assert not any(n.startswith("/expert/") for n in kept)
    default = keep_float_policy(graph, blocks)
    assert [r.split(":")[0] for r in default.reasons[1:]] == ["block image_encoder"]
    assert default.matches("/image_encoder/image_encoder.0/image_encoder.0.0/Conv")
    assert not default.matches("/expert/expert.0/expert.0.0/Conv")
    assert any(n.startswith("/head/") for n in default.names)
    with pytest.raises(ExportError, match="'nope' matches no node"):
        keep_float_policy(graph, blocks, None, ["nope"])


def test_operating_points_of_an_artifact_on_held_out_data(glass_data):
    from export.accuracy import coco_result, load_eval_set
    from rtvp_edge.messages import Detection

    ev = load_eval_set(glass_data, "val")
    names = ev.class_names
    dets, fp_class = [], None
    for rec in ev.images:
        found = [
            Detection(int(c), names[int(c)], 0.6, tuple(float(v) for v in b))
            for b, c in zip(np.asarray(rec.boxes).reshape(-1, 4), rec.class_ids, strict=True)
        ]
        if found and fp_class is None:  # one confident false alarm, away from every defect
            fp_class = found[0].class_id
            found.append(Detection(fp_class, names[fp_class], 0.9, (0.0, 0.0, 6.0, 6.0)))
        dets.append(found)
    assert fp_class is not None, "the generated set should have defects"
    metrics, points = coco_result(ev, dets, names)
    annotated = {names[int(c)] for rec in ev.images for c in rec.class_ids}
    assert set(points) == annotated and metrics["AP50"] > 90
    for name, op in points.items():
        assert op["score"] == pytest.approx(0.6) and op["recall"] == pytest.approx(1.0), (name, op)
    fp = points[names[fp_class]]
    assert fp["precision"] < 1.0 and fp["f1"] < 1.0  # the false alarm at 0.9 is above the threshold


def test_int8_export_records_per_class_thresholds_the_runtime_uses(glass_data, tmp_path, monkeypatch):
    import export.accuracy as accuracy
    from rtvp_edge.config import DetectionConfig
    from rtvp_edge.detection_filter import DetectionFilter

    real = accuracy.evaluate
    chosen = {"bubble": {"score": 0.42, "precision": 0.8, "recall": 0.7, "f1": 0.75}}

    def measured(*a, **kw):  # the random double finds nothing: give it an operating point to record
        metrics, _ = real(*a, **kw)
        return metrics, chosen

    monkeypatch.setattr(accuracy, "evaluate", measured)
    m = export_bundle(
        _source(), tmp_path / "b", _options(glass_data, target="openvino", int8=True, force=True)
    )
    m = load_manifest(tmp_path / "b")
    assert m.thresholds.class_scores == {"bubble": 0.42}
    assert m.accuracy.operating_points == chosen
    names = [c.name for c in m.vocabulary.classes]
    detection_filter = DetectionFilter(
        DetectionConfig(), names, m.thresholds.score, m.thresholds.class_scores
    )
    assert detection_filter.class_thresholds[names.index("bubble")] == pytest.approx(0.42)
    assert detection_filter.class_thresholds[names.index("oil")] == pytest.approx(THRESHOLD)
    # --class-thresholds none keeps the single default
    m = export_bundle(
        _source(),
        tmp_path / "c",
        _options(glass_data, target="openvino", int8=True, force=True, class_thresholds="none"),
    )
    assert m.thresholds.class_scores == {} and m.accuracy.operating_points == chosen


def test_bundle_with_a_class_threshold_outside_its_vocabulary_is_refused(int8_bundle, tmp_path):
    import shutil

    from rtvp_edge.bundle import BundleManifest

    out, _ = int8_bundle
    raw = json.loads((out / "manifest.json").read_text())
    raw["thresholds"]["class_scores"] = {"crak": 0.3}
    with pytest.raises(ValueError, match="crak"):
        BundleManifest.model_validate(raw)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "manifest.json").write_text(json.dumps(raw))
    # re-sign it, as a careless hand edit with a checksum tool would: the schema still refuses it
    digest = hashlib.sha256((bad / "manifest.json").read_bytes()).hexdigest()
    sums = (bad / "CHECKSUMS.sha256").read_text().splitlines()
    (bad / "CHECKSUMS.sha256").write_text(
        "\n".join(f"{digest}  manifest.json" if line.endswith(" manifest.json") else line for line in sums)
        + "\n"
    )
    with pytest.raises(BundleError, match="crak"):
        load_manifest(bad)


def test_bad_option_values_are_refused_before_any_work():
    def thresholds(mode: str) -> ExportOptions:
        return ExportOptions(int8=Int8Options(accuracy=AccuracyOptions(class_thresholds=mode)))

    with pytest.raises(ExportError, match=r"--class-thresholds must be one of best-f1, none, got 'f1'"):
        check_options(thresholds("f1"))
    with pytest.raises(ExportError, match=r"--score-threshold must be in \[0, 1\], got 1.5"):
        check_options(ExportOptions(bundle=BundleOptions(score_threshold=1.5)))
    check_options(thresholds("none"))  # a valid one passes


def test_calibration_images_get_the_crop_once(tmp_path):
    """The calibration set holds cropped + letterboxed images; its model inputs equal the runtime's."""
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(3)
    raw = [rng.integers(0, 255, (82, 70, 3), dtype=np.uint8) for _ in range(2)]
    for i, img in enumerate(raw):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), img)
    spec = PreprocessSpec((32, 32), crop=(10, 20, 60, 70))
    cs = build_calibration_set(tmp_path / "imgs", spec, 2, progress=False)
    order = [int(p.stem) for p in cs.paths]
    for k in range(2):
        assert np.array_equal(cs.sample(k), preprocess([raw[order[k]]], spec)[0])
    assert np.array_equal(next(cs.batches(2)), np.concatenate([cs.sample(0), cs.sample(1)]))


def test_no_onnx_bundle_ships_only_its_ir_and_the_runtime_runs_it(glass_data, tmp_path):
    backends = pytest.importorskip("rtvp_edge.backends", reason="the runtime part is not installed")
    selftest = pytest.importorskip("rtvp_edge.selftest", reason="the runtime part is not installed")
    out = tmp_path / "ir-only"
    m = export_bundle(_source(), out, _options(glass_data, target="openvino", half=True, ship_onnx=False))
    assert not (out / "model.onnx").exists() and "model.onnx" not in m.files
    assert [a.backend for a in m.artifacts] == ["openvino"]
    assert "onnxruntime" in m.source_checkpoint["parity"]  # the ONNX was still exported and checked
    verify_bundle(out)
    backend = backends.load_backend("openvino", out, load_manifest(out))
    try:
        assert selftest.run_golden_selftest(out, m, backend) == len(m.golden) > 0
    finally:
        backend.close()
    with pytest.raises(BundleError, match="no onnxruntime artifact"):
        backends.load_backend("onnxruntime", out, load_manifest(out))
    with pytest.raises(ExportError, match="--no-onnx needs --target openvino"):
        export_bundle(_source(), tmp_path / "x", _options(glass_data, target="onnx", ship_onnx=False))
    assert not (tmp_path / "x").exists()
