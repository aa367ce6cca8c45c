import json

import numpy as np
import pytest

from rtvp_edge.bundle import (
    Artifact,
    BundleError,
    BundleManifest,
    ModelInfo,
    PreprocessInfo,
    VocabularyClass,
    VocabularyInfo,
    load_manifest,
    sha256_file,
    write_manifest,
)


def _bundle(tmp_path):
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"not really onnx but bytes to hash")
    emb = np.eye(2, 4, dtype=np.float32)
    np.save(root / "text_embeddings.npy", emb)
    m = BundleManifest(
        created_utc="2026-11-21T00:00:00.000Z",
        model=ModelInfo(name="rtvpnet_s", version="test"),
        preprocess=PreprocessInfo(input_size=(64, 64)),
        vocabulary=VocabularyInfo(
            mode="folded",
            classes=[
                VocabularyClass(name="oil", prompt="oil"),
                VocabularyClass(name="bubble", prompt="bubble"),
            ],
            text_encoder="random",
            embeddings_sha256=sha256_file(root / "text_embeddings.npy"),
            embedding_dim=4,
        ),
        artifacts=[Artifact(backend="onnxruntime", path="model.onnx", precision="fp32")],
    )
    write_manifest(root, m)
    return root


def test_roundtrip_lists_every_file(tmp_path):
    root = _bundle(tmp_path)
    m = load_manifest(root)
    assert set(m.files) == {"model.onnx", "text_embeddings.npy"}
    assert m.artifact("onnxruntime").path == "model.onnx"
    with pytest.raises(BundleError, match="no openvino artifact"):
        m.artifact("openvino")


@pytest.mark.parametrize("victim", ["model.onnx", "text_embeddings.npy", "manifest.json", "CHECKSUMS.sha256"])
def test_one_changed_byte_is_refused_and_named(tmp_path, victim):
    root = _bundle(tmp_path)
    p = root / victim
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_manifest(root)
    # the message names the file that no longer matches (or the checksum file that was damaged)
    assert victim in str(e.value) or "CHECKSUMS" in str(e.value)


def test_missing_and_unlisted_files(tmp_path):
    root = _bundle(tmp_path)
    (root / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.bin"):
        load_manifest(root)
    (root / "extra.bin").unlink()
    (root / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx.*missing"):
        load_manifest(root)
    with pytest.raises(BundleError, match="not found"):
        load_manifest(tmp_path / "nope")


def test_schema_error_names_the_field(tmp_path):
    root = _bundle(tmp_path)
    raw = json.loads((root / "manifest.json").read_text())
    raw["thresholds"] = {"score": 3.0}
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="thresholds.score"):
        load_manifest(root, verify=False)


def test_selftest_refuses_a_backend_the_golden_outputs_were_not_recorded_for(tmp_path):
    from types import SimpleNamespace

    from rtvp_edge.bundle import GoldenSample
    from rtvp_edge.selftest import run_golden_selftest

    root = _bundle(tmp_path)
    m = load_manifest(root).model_copy(
        update={"golden": [GoldenSample(image="golden/0.png", detections=[], backend="openvino")]}
    )
    assert len(m.golden_for("openvino")) == 1 and m.golden_for("onnxruntime") == []
    with pytest.raises(BundleError, match="recorded for openvino, not onnxruntime"):
        run_golden_selftest(root, m, SimpleNamespace(name="onnxruntime"))
