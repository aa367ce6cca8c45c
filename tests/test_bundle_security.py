"""A bundle can only speak for itself (issue 12): every path it names stays inside it, links resolved; every
byte the runtime loads is a byte it hashed; an optional Ed25519 signature is checked against the line's key.

Real bundles (``make_toy_bundle``: ONNX + OpenVINO IR + golden image), real files and real symbolic links.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_backends import make_toy_bundle

from rtvp_edge.backends import load_backend, load_embeddings
from rtvp_edge.bundle import (
    CHECKSUMS,
    SIGNATURE,
    BundleError,
    load_manifest,
    sha256_file,
    sign_bundle,
    write_manifest,
)
from rtvp_edge.selftest import run_golden_selftest

# a hang guard: the CLI tests import torch in subprocesses, slow on a busy machine
pytestmark = [pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("sec") / "pristine")


@pytest.fixture
def bundle(tmp_path, pristine) -> Path:
    """A fresh copy of a good bundle for each test to damage."""
    root = tmp_path / "bundle"
    shutil.copytree(pristine, root)
    return root


def rehash(root: Path, mutate) -> None:
    """Edit manifest.json with ``mutate(raw)`` and rewrite CHECKSUMS.sha256 to match, as a forger would:
    every hash in the bundle then agrees with the bytes it names."""
    raw = json.loads((root / "manifest.json").read_text())
    mutate(raw)
    (root / "manifest.json").write_text(json.dumps(raw, indent=2))
    lines = [f"{sha256_file(root / 'manifest.json')}  manifest.json"]
    lines += [f"{h}  {rel}" for rel, h in raw["files"].items()]
    (root / CHECKSUMS).write_text("\n".join(lines) + "\n")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtvp_edge", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


# ---------------------------------------------------------------------------------------------------
# 1. the file list names only the bundle's own files


@pytest.mark.parametrize("form", ["dotdot", "absolute"])
def test_a_file_list_naming_a_file_outside_the_bundle_is_refused(tmp_path, bundle, form):
    secret = tmp_path / "secret.txt"
    secret.write_text("plant credentials\n")
    rel = "../secret.txt" if form == "dotdot" else str(secret)

    def add(raw):
        raw["files"][rel] = sha256_file(secret)

    rehash(bundle, add)
    with pytest.raises(BundleError, match="secret.txt") as e:
        load_manifest(bundle)
    assert "outside the bundle" in str(e.value) or "not a plain relative path" in str(e.value)
    r = cli("check", "--bundle", str(bundle), "--backend", "onnxruntime")
    assert r.returncode == 2, r.stdout
    assert "secret.txt" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------------
# 2. artifact, embeddings and golden paths point inside the bundle and at hashed files


def test_an_artifact_outside_the_bundle_is_refused(tmp_path, bundle):
    other = tmp_path / "other"
    shutil.copytree(bundle / "openvino", other)  # weights no hash of this bundle speaks for

    def point_out(raw):
        for a in raw["artifacts"]:
            if a["backend"] == "openvino":
                a["path"] = "../other/model.xml"

    rehash(bundle, point_out)
    with pytest.raises(BundleError, match=r"openvino artifact path '\.\./other/model\.xml'"):
        load_manifest(bundle)
    r = cli("check", "--bundle", str(bundle), "--backend", "openvino")
    assert r.returncode == 2 and "../other/model.xml" in r.stderr, r.stderr


def test_named_files_must_be_hashed_ones(bundle):
    def golden_elsewhere(raw):
        raw["golden"][0]["image"] = "golden/unlisted.png"

    rehash(bundle, golden_elsewhere)
    with pytest.raises(BundleError, match=r"golden image 'golden/unlisted\.png' is not among the files"):
        load_manifest(bundle)


def test_the_backend_refuses_an_artifact_path_it_was_handed_outside_the_bundle(tmp_path, bundle):
    """Defence in depth: a manifest that never went through ``load_manifest`` cannot steer a backend."""
    shutil.copytree(bundle / "openvino", tmp_path / "other")
    m = load_manifest(bundle)
    arts = [
        a.model_copy(update={"path": "../other/model.xml"}) if a.backend == "openvino" else a
        for a in m.artifacts
    ]
    with pytest.raises(BundleError, match=r"\.\./other/model\.xml.*not a plain relative path"):
        load_backend("openvino", bundle, m.model_copy(update={"artifacts": arts}), "CPU", 1)


# ---------------------------------------------------------------------------------------------------
# 3. links out of the bundle


@pytest.mark.parametrize("victim", ["openvino/model.bin", "model.onnx", "golden/0.png"])
def test_a_link_to_a_file_outside_the_bundle_is_refused(tmp_path, bundle, victim):
    outside = tmp_path / "outside.bin"
    shutil.copyfile(bundle / victim, outside)  # same bytes: every hash still matches
    (bundle / victim).unlink()
    (bundle / victim).symlink_to(outside)
    assert sha256_file(bundle / victim) == json.loads((bundle / "manifest.json").read_text())["files"][victim]
    with pytest.raises(BundleError, match="outside the bundle") as e:
        load_manifest(bundle)
    assert victim in str(e.value)


def test_a_linked_folder_leading_outside_is_refused(tmp_path, bundle):
    shutil.move(bundle / "openvino", tmp_path / "ir")
    (bundle / "openvino").symlink_to(tmp_path / "ir", target_is_directory=True)
    with pytest.raises(BundleError, match="openvino/model.*outside the bundle"):
        load_manifest(bundle)


def test_links_inside_the_bundle_and_a_linked_bundle_folder_are_fine(tmp_path, bundle):
    """The rule is where a path resolves, not whether a link is involved: ``current -> bundle-v3`` is how
    plants deploy, and a link from one bundle file to another stays inside."""
    (bundle / "golden" / "alias.png").symlink_to("0.png")
    write_manifest(bundle, load_manifest(bundle, verify=False))
    current = tmp_path / "current"
    current.symlink_to(bundle, target_is_directory=True)
    m = load_manifest(current)
    assert "golden/alias.png" in m.files
    backend = load_backend("onnxruntime", current, m, "cpu", 1)
    assert run_golden_selftest(current, m, backend) == 1


# ---------------------------------------------------------------------------------------------------
# no time-of-check/time-of-use gap: what loads is what was hashed


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("backend", "victim"),
    [("openvino", "openvino/model.bin"), ("openvino", "openvino/model.xml"), ("onnxruntime", "model.onnx")],
)
def test_a_file_changed_after_the_check_is_not_loaded(bundle, backend, victim):
    m = load_manifest(bundle)  # the check passes ...
    _flip(bundle / victim)  # ... then the file changes before the runtime loads it
    with pytest.raises(BundleError, match=f"{victim}: sha256 does not match the manifest"):
        load_backend(backend, bundle, m, "CPU" if backend == "openvino" else "cpu", 1)


def test_a_golden_image_swapped_after_the_check_is_not_used(bundle):
    m = load_manifest(bundle)
    backend = load_backend("onnxruntime", bundle, m, "cpu", 1)
    _flip(bundle / "golden" / "0.png")
    with pytest.raises(BundleError, match="golden/0.png: sha256 does not match"):
        run_golden_selftest(bundle, m, backend)


def test_embeddings_swapped_after_the_check_are_not_used(bundle):
    m = load_manifest(bundle)
    m = m.model_copy(update={"vocabulary": m.vocabulary.model_copy(update={"mode": "input"})})
    assert load_embeddings(bundle, m).shape == (2, 4)
    np.save(bundle / "text_embeddings.npy", np.ones((2, 4), np.float32))
    with pytest.raises(BundleError, match="text_embeddings.npy: sha256 does not match"):
        load_embeddings(bundle, m)


# ---------------------------------------------------------------------------------------------------
# signed bundles


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def test_signed_bundle_checked_against_the_configured_key(tmp_path, bundle):
    pytest.importorskip("cryptography", reason="signed bundles need the optional 'cryptography' package")
    vendor, vendor_pub = _keypair(tmp_path, "vendor")
    other, _ = _keypair(tmp_path, "other")
    with pytest.raises(BundleError, match=f"{SIGNATURE}: missing"):
        load_manifest(bundle, public_key=vendor_pub)
    assert load_manifest(bundle).files  # no key configured: a signature is not asked for
    sign_bundle(bundle, other)
    with pytest.raises(BundleError, match="signature does not verify"):
        load_manifest(bundle, public_key=vendor_pub)
    sign_bundle(bundle, vendor)
    assert load_manifest(bundle, public_key=vendor_pub).files
    r = cli("check", "--bundle", str(bundle), "--backend", "onnxruntime", "--public-key", str(vendor_pub))
    assert r.returncode == 0, r.stderr
    # re-hashed after signing (a consistent forgery of the hashes): the signature no longer speaks for it
    (bundle / "golden" / "0.png").write_bytes((bundle / "golden" / "0.png").read_bytes() + b"\0")
    write_manifest(bundle, load_manifest(bundle, verify=False))
    assert load_manifest(bundle).files
    with pytest.raises(BundleError, match="signature does not verify"):
        load_manifest(bundle, public_key=vendor_pub)
    # a public key that is not an Ed25519 key is named
    with pytest.raises(BundleError, match="vendor.pem"):
        load_manifest(bundle, public_key=vendor)


def test_line_file_public_key_refuses_an_unsigned_bundle(tmp_path, bundle):
    pytest.importorskip("cryptography", reason="signed bundles need the optional 'cryptography' package")
    from test_pipeline import line_file, recorded_line

    _, pub = _keypair(tmp_path, "vendor")
    line = line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set()), backend="onnxruntime")
    line.write_text(line.read_text().replace("threads: 1}", f"threads: 1, public_key: {pub}}}"))
    r = cli("check", "--line", str(line))
    assert r.returncode == 2 and f"{SIGNATURE}: missing" in r.stderr, r.stderr
    missing = tmp_path / "line2.yaml"
    missing.write_text(line.read_text().replace(str(pub), str(tmp_path / "nokey.pem")))
    r = cli("check", "--line", str(missing))
    assert r.returncode == 2 and "model.public_key" in r.stderr and "nokey.pem" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------
# the same rules for rtvp-export verify / vocab


def test_export_verify_and_vocab_refuse_a_link_out_of_the_bundle(tmp_path, bundle):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / "model.onnx", outside)
    os.unlink(bundle / "model.onnx")
    (bundle / "model.onnx").symlink_to(outside)
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("- {name: oil, prompt: oil}\n")
    for args in (
        ["verify", "--bundle", str(bundle)],
        ["vocab", "--bundle", str(bundle), "--vocab", str(vocab)],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "export.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert "model.onnx" in r.stderr and "outside the bundle" in r.stderr, r.stderr[-2000:]


def test_export_sign_and_verify_with_a_key(tmp_path, bundle):
    pytest.importorskip("cryptography", reason="signed bundles need the optional 'cryptography' package")
    vendor, vendor_pub = _keypair(tmp_path, "vendor")
    _, other_pub = _keypair(tmp_path, "other")

    def export_cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "export.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)

    r = export_cli("sign", "--bundle", str(bundle), "--key", str(vendor))
    assert r.returncode == 0 and (bundle / SIGNATURE).is_file(), r.stderr[-2000:]
    # verify loads every artifact from its hashed bytes and runs the golden self-test
    r = export_cli("verify", "--bundle", str(bundle), "--public-key", str(vendor_pub))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
    r = export_cli("verify", "--bundle", str(bundle), "--public-key", str(other_pub))
    assert r.returncode == 2 and "signature does not verify" in r.stderr, r.stderr[-2000:]
