"""rtvp-export from a real rtvpnet_tiny checkpoint (random weights, saved by training.checkpoint), through the
CLI: the no-argument INT8 export, its golden self-test through OpenVINO, INT8 against FP32 detections on
generated glass images, tamper refusal, ONNX parity in vocabulary mode ``input``, bad input."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from export.calibration import list_images
from export.cli import main
from export.source import load_source
from export.verify import TorchReference, match_detections, verify_bundle
from export.wrapper import build_wrapper
from rtvp_edge.backends import load_backend
from rtvp_edge.bundle import BundleError, load_manifest
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess
from rtvp_edge.selftest import run_golden_selftest
from rtvp_edge.vocabulary import GLASS_DEFECTS

checkpoint_mod = pytest.importorskip("training.checkpoint", reason="training.checkpoint not installed")
model_mod = pytest.importorskip("training.model", reason="training.model not installed")
text_mod = pytest.importorskip("training.model.text_encoder", reason="training.model not installed")

torch.set_num_threads(2)
IMG = 160  # small input: the whole pipeline in seconds on a 2-core CPU
LOW = 0.02  # an untrained head scores ~0.01 (prior); decode below that to see its detections


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out like a user's: runs/tiny/best.pt trained (provenance) on data/glass/closed."""
    from training.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("user")
    data = generate_dataset(root / "data", containers=6, protocol="closed", seed=5, progress=False)["closed"]
    torch.manual_seed(0)
    cfg = model_mod.ModelConfig(variant="rtvpnet_tiny", img_size=IMG, sam_img_size=64, text_dim=32)
    model = model_mod.build_model(cfg).eval()
    encoder = text_mod.build_text_encoder("random:32")
    vocabulary = [{"name": c.name, "prompt": c.prompt} for c in GLASS_DEFECTS]
    spec = PreprocessSpec((IMG, IMG), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    checkpoint_mod.save_checkpoint(
        root / "runs" / "tiny" / "best.pt",
        model,
        model_config=cfg,
        vocabulary=vocabulary,
        text_encoder="random:32",
        preprocess=spec,
        provenance={"dataset": str(data), "epoch": 1},
        text_embeddings=encoder.encode([v["prompt"] for v in vocabulary]),
    )
    return root, data


@pytest.fixture(scope="module")
def default_bundle(workdir):
    """``rtvp-export --int8`` with no other argument, run from the user's folder."""
    root, _ = workdir
    cwd = pytest.MonkeyPatch()
    cwd.chdir(root)
    try:
        assert main(["--int8", "--quiet"]) == 0
    finally:
        cwd.undo()
    return root / "bundles" / "tiny-best-openvino-int8"


@pytest.mark.slow
def test_no_argument_int8_export_uses_newest_run_its_vocabulary_and_data(default_bundle, workdir):
    _, data = workdir
    m = load_manifest(default_bundle)
    assert m.source_checkpoint["path"].endswith("runs/tiny/best.pt")
    assert [c.name for c in m.vocabulary.classes] == [c.name for c in GLASS_DEFECTS]
    assert m.calibration["source"] == str(data) and m.calibration["kind"] == "dataset:train"
    assert m.accuracy is not None and m.accuracy.dataset.startswith(str(data))
    art = m.artifact("openvino")
    assert art.precision == "int8"
    assert any(k.startswith("block sam") for k in art.kept_float)
    # the visual-text update's softmax over all positions stays float (INT8 alone there cost 18 AP50)
    assert any(k.startswith("block vt:") for k in art.kept_float)
    assert not any(k.startswith(("block tv:", "block expert:")) for k in art.kept_float)
    assert m.io.batch == 6
    assert m.preprocess.input_size == (IMG, IMG) and m.preprocess.mean == (0.485, 0.456, 0.406)


@pytest.mark.slow
def test_int8_bundle_passes_its_golden_self_test_and_refuses_a_changed_byte(default_bundle, tmp_path):
    m = load_manifest(default_bundle)
    art = m.artifact("openvino")
    n = run_golden_selftest(default_bundle, m, load_backend("openvino", default_bundle, m, artifact=art))
    assert n == len(m.golden) > 0
    copy = tmp_path / "copy"
    shutil.copytree(default_bundle, copy)
    b = copy / "openvino" / "model.bin"
    data = bytearray(b.read_bytes())
    data[len(data) // 3] ^= 0x10
    b.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.bin"):
        load_manifest(copy)


@pytest.mark.slow
def test_int8_detects_the_glass_defects_fp32_detects(default_bundle, workdir):
    root, data = workdir
    m = load_manifest(default_bundle)
    source = load_source(root / "runs" / "tiny" / "best.pt")
    torch_fp32 = TorchReference(build_wrapper(source.model, "folded", source.text_embeddings))
    int8 = load_backend("openvino", default_bundle, m)
    names = [c.name for c in m.vocabulary.classes]
    images = [cv2.imread(str(p)) for p in list_images(data / "Images" / "val")[:4]]
    batch, lbs = preprocess(images, m.preprocess.spec())
    (rb, rs), (qb, qs) = torch_fp32.infer(batch), int8.infer(batch)
    matched = total = 0
    for i, lb in enumerate(lbs):
        ref = decode_detections(rb[i], rs[i], lb, names, LOW, 0.5, 50)
        got = decode_detections(qb[i], qs[i], lb, names, LOW, 0.5, 50)
        matched += match_detections(ref, got)
        total += len(ref)
    assert total > 0, "FP32 found nothing to compare against"
    assert matched / total >= 0.7, f"INT8 found {matched} of the {total} FP32 detections"


@pytest.mark.slow
def test_onnx_input_mode_parity_and_vocabulary_swap(workdir, tmp_path, capsys):
    root, _ = workdir
    out = tmp_path / "onnx"
    argv = [
        "--checkpoint",
        str(root / "runs" / "tiny" / "best.pt"),
        "--target",
        "onnx",
        "--vocab-mode",
        "input",
        "--score-threshold",
        str(LOW),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    m = load_manifest(out)
    parity = m.source_checkpoint["parity"]["onnxruntime"]
    assert (
        parity["max_score_diff"] < 1e-3 and parity["detection_agreement"] >= 0.9 and parity["detections"] > 0
    )
    vocab = tmp_path / "v.yaml"
    vocab.write_text(
        yaml.safe_dump([{"name": "chip", "prompt": "a chipped rim"}, {"name": "oil", "prompt": "oil"}])
    )
    # The bundle's text encoder (random:32) runs here, once; the edge box never runs it.
    assert (
        main(["vocab", "--bundle", str(out), "--vocab", str(vocab), "--cache-dir", str(tmp_path / "c")]) == 0
    )
    m2 = load_manifest(out)
    assert [c.name for c in m2.vocabulary.classes] == ["chip", "oil"]
    assert np.load(out / "text_embeddings.npy").shape == (2, 32)
    assert verify_bundle(out) == {"onnxruntime": len(m2.golden)}


def test_cli_errors_name_the_problem(workdir, tmp_path, capsys):
    root, data = workdir
    ckpt = str(root / "runs" / "tiny" / "best.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    vocab = tmp_path / "v.yaml"
    vocab.write_text("- {name: oil, prompt: oil}\n- {name: oil, prompt: again}\n")
    cases = [
        (["--checkpoint", str(tmp_path / "none.pt")], "not found"),
        (["--checkpoint", str(bad)], str(bad)),
        (
            ["--checkpoint", ckpt, "--int8", "--calib-data", str(empty), "--eval-data", str(data)],
            f"no images in {empty}",
        ),
        (["--checkpoint", ckpt, "--vocab", str(vocab)], "duplicate class name 'oil'"),
        (["--checkpoint", ckpt, "--target", "tensorrt"], "not supported on this machine"),
        (["--checkpoint", ckpt, "--text-encoder", "random:16"], "width 16 does not fit the model"),
        (
            ["--checkpoint", ckpt, "--int8", "--calib-data", str(data), "--eval-data", str(empty)],
            "annotations",
        ),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        assert main([*argv, "--out", str(out), "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temp folder left behind"
