"""The model bundle: what ``rtvp-export`` writes and ``rtvp-edge`` reads (contract in shared DESIGN.md).

A bundle is a directory::

    manifest.json          the schema below (BundleManifest)
    CHECKSUMS.sha256       ``sha256sum -c`` compatible list of every file, manifest.json included
    model.onnx             the exported graph (ONNX Runtime; TensorRT builds from it); left out by
                           ``rtvp-export --no-onnx`` (an OpenVINO-only bundle)
    openvino/model.xml|bin optional compiled artifacts, one entry per backend in ``manifest.artifacts``
    text_embeddings.npy    (C, D) float32 L2-normalised class embeddings (cached text encoder output)
    golden/*.png + expected outputs in the manifest, for the start-up self-test

The schema is defined once, here, next to the code that reads it, so writer and reader cannot drift.
Verification refuses a bundle if any byte of any listed file changed, naming the file.

A bundle speaks only for itself: every path it names (``CHECKSUMS.sha256`` and ``files`` entries, artifact
paths, the embeddings file, golden images) must be a plain relative path that, links resolved, stays inside
the bundle directory, and must be one of the hashed files. Whatever the runtime then loads it reads once into
memory with ``read_verified`` and checks against the manifest's sha256 before use, so the bytes a backend
compiles are the bytes that were hashed (no window between check and use). An optional Ed25519 signature
(``CHECKSUMS.sha256.sig``, over the exact bytes of ``CHECKSUMS.sha256``, which names the sha256 of
manifest.json and so of every file) is checked when the caller gives a public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from rtvp_edge.preprocess import PreprocessSpec
from rtvp_edge.strict import StrictModel

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "CHECKSUMS.sha256"
SIGNATURE = "CHECKSUMS.sha256.sig"  # optional: base64 Ed25519 signature over the bytes of CHECKSUMS.sha256
_NOT_HASHED = (MANIFEST, CHECKSUMS, SIGNATURE)

Backend = Literal["onnxruntime", "openvino", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "mixed"]


class ModelInfo(StrictModel):
    name: str  # e.g. "rtvpnet_s"
    version: str  # free text, e.g. "glass-demo-2026.11"
    variant: str = "rtvpnet_s"
    parameters: int | None = None  # deployed parameters (text encoder excluded)
    gflops: float | None = None  # at the bundle's input size
    # The frozen general encoder and where its weights came from: {encoder, source, file, sha256, licence}.
    encoder: dict[str, str] | None = None


class PreprocessInfo(StrictModel):
    input_size: tuple[int, int]  # (height, width)
    pad_value: int = 114
    color: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # (x1, y1, x2, y2) camera-pixel region the model was trained on (None: the whole image); a line file's
    # camera ``roi`` replaces it for that camera.
    crop: tuple[int, int, int, int] | None = None

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            tuple(self.input_size),
            self.pad_value,
            self.color,
            tuple(self.mean),
            tuple(self.std),
            None if self.crop is None else tuple(self.crop),
        )


class IOInfo(StrictModel):
    """Graph inputs/outputs. ``boxes`` is (B, N, 4) xyxy in model-input pixels; ``scores`` is (B, N, C)
    class probabilities in [0, 1] (sigmoid applied in the graph). NMS is not in the graph: the runtime
    runs it (OpenCV) per image."""

    image_input: str = "images"  # (B, 3, H, W) float32, preprocessed per PreprocessInfo
    embeddings_input: str | None = None  # (C, D) float32, only in vocabulary mode "input"
    boxes_output: str = "boxes"
    scores_output: str = "scores"
    # (B, N, D) float32 L2-normalised region embedding of every anchor (row n: the box of row n), the
    # vectors the head compares with the class embeddings; only in vocabulary mode "input" bundles
    # exported with it (``rtvp-edge enroll`` needs it). None: older bundles, folded bundles.
    region_output: str | None = None
    batch: int = -1  # -1: dynamic batch; else the fixed batch the artifact was compiled for


class VocabularyClass(StrictModel):
    name: str
    prompt: str


class VocabularyInfo(StrictModel):
    mode: Literal["folded", "input"]  # folded: embeddings are constants in the graph
    classes: list[VocabularyClass]
    text_encoder: str  # identity of the encoder that produced the embeddings
    embeddings_file: str = "text_embeddings.npy"
    embeddings_sha256: str
    embedding_dim: int
    # (D,) float32: the vector the graph subtracts from every class embedding before normalising it (RTVPNet's
    # text centre, constant-folded into the graph); ``rtvp-edge enroll`` needs it to turn a region-space
    # prototype into a class embedding. None: the graph does not centre (or an older bundle).
    center_file: str | None = None
    # How each class's embedding was made, by class name: absent = its prompt through ``text_encoder``;
    # {"source": "exemplars", "examples": n, ...} = enrolled from n example boxes (``rtvp-edge enroll``).
    enrolled: dict[str, dict] = {}


class Thresholds(StrictModel):
    score: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, gt=0)
    # Per-class defaults chosen on held-out data (rtvp-export: best F1 at IoU 0.5 of the exported artifact,
    # precision/recall in accuracy.operating_points); a class not listed uses ``score``. A line file's
    # detection.score_threshold / class_thresholds override them.
    class_scores: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = {}


class Artifact(StrictModel):
    backend: Backend
    path: str  # relative to the bundle
    precision: Precision
    kept_float: list[str] = []  # parts kept out of INT8 (names/patterns), e.g. the head's score path
    device: str | None = None  # TensorRT: the GPU the engine was built for
    notes: str = ""
    # Backend compile properties the golden outputs and the measured accuracy were produced with, e.g.
    # OpenVINO {"INFERENCE_PRECISION_HINT": "bf16"}; the runtime should compile the artifact with them.
    properties: dict[str, str] = {}
    # This artifact's metrics on the export's held-out images (same names as ``accuracy.fp32``, e.g.
    # {"AP50": 61.2}); empty: not measured. The runtime keeps an artifact as a candidate only when its
    # ``accuracy.metric`` is within ``accuracy.max_drop`` of ``accuracy.fp32`` (the bundle's accuracy budget).
    accuracy: dict[str, float] = {}


class AccuracyInfo(StrictModel):
    dataset: str
    images: int
    metric: str = "AP50"
    fp32: dict[str, float]  # COCO metrics of the FP32 source
    artifact: dict[str, float]  # the same metrics of the primary (first) artifact of the export's target
    # The accuracy budget: the largest drop of ``metric`` (points) against ``fp32`` an artifact may have
    # and still be chosen by the runtime (rtvp-export --max-ap-drop). None: no budget recorded.
    max_drop: float | None = None
    # Per class, the artifact's best-F1 operating point on these images: {score, precision, recall, f1}.
    operating_points: dict[str, dict[str, float]] = {}


class GoldenSample(StrictModel):
    image: str  # relative path of a camera image (PNG)
    detections: list[dict]  # [{"class_id": int, "score": float, "box": [x1, y1, x2, y2]}] in image pixels
    score_atol: float = 0.05
    box_atol: float = 4.0
    # The artifact backend whose outputs these are (None: any); INT8 and FP32 artifacts differ slightly.
    backend: str | None = None
    # The artifact precision whose outputs these are, when a backend has several artifacts (None: any).
    precision: str | None = None


class BundleManifest(StrictModel):
    schema_version: int = SCHEMA_VERSION
    created_utc: str
    model: ModelInfo
    preprocess: PreprocessInfo
    io: IOInfo = IOInfo()
    vocabulary: VocabularyInfo
    thresholds: Thresholds = Thresholds()
    artifacts: list[Artifact]
    accuracy: AccuracyInfo | None = None
    calibration: dict | None = None  # provenance: source, images, method, subset size, time
    toolchain: dict[str, str] = {}
    source_checkpoint: dict | None = None  # path, sha256, epoch
    golden: list[GoldenSample] = []
    files: dict[str, str] = {}  # relative path -> sha256 of every file except manifest/checksums

    @model_validator(mode="after")
    def _class_scores_name_classes(self) -> BundleManifest:
        names = [c.name for c in self.vocabulary.classes]
        unknown = sorted(set(self.thresholds.class_scores) - set(names))
        if unknown:
            raise ValueError(f"thresholds.class_scores: {unknown} not in the vocabulary {names}")
        return self

    def artifact(self, backend: str, precision: str | None = None) -> Artifact:
        """The first artifact for ``backend`` (of ``precision`` when given): a bundle may hold several
        artifacts for one backend (e.g. OpenVINO INT8 and FP32); the first is the export's primary one."""
        for a in self.artifacts:
            if a.backend == backend and precision in (None, a.precision):
                return a
        have = ", ".join(f"{a.backend} {a.precision}" for a in self.artifacts) or "none"
        what = backend if precision is None else f"{backend} {precision}"
        raise BundleError(f"the bundle has no {what} artifact (it has: {have})")

    def golden_for(self, backend: str, precision: str | None = None) -> list[GoldenSample]:
        """Golden samples whose expected outputs came from ``backend``'s artifact (of ``precision`` when
        given; samples recorded without a backend or precision apply to any)."""
        return [
            g
            for g in self.golden
            if g.backend in (None, backend) and (precision is None or g.precision in (None, precision))
        ]


class BundleError(Exception):
    """A bundle is missing, malformed or tampered with. The message names the file and the problem."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_path(root: Path, rel: str, what: str) -> Path:
    """Where ``rel``, a path the bundle names, really is: links resolved, and refused unless it stays inside.

    Args:
        root: the bundle directory, already resolved (``Path.resolve()``).
        rel: a path from the bundle (CHECKSUMS/``files`` entry, artifact path, embeddings file, golden image).
        what: what names it, for the message (e.g. ``"artifact path"``).
    Returns:
        the resolved path (it may not exist; the caller reports a missing file).
    Raises:
        BundleError: ``rel`` is absolute, has ``..``/``.``/empty parts or a backslash, or resolves (through
            links) outside ``root``; the message names the path.
    """
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(x in ("", ".", "..") for x in parts)
    ):
        raise BundleError(
            f"{root}: {what} {rel!r} is not a plain relative path inside the bundle "
            "(absolute paths, '..', '.', empty parts and backslashes are refused)"
        )
    try:
        real = (root / rel).resolve()
    except (OSError, RuntimeError) as e:  # a link loop
        raise BundleError(f"{root / rel}: {what} cannot be resolved ({e})") from None
    if not real.is_relative_to(root):
        raise BundleError(
            f"{root / rel}: {what} resolves to {real}, outside the bundle {root}; "
            "a bundle may only name its own files (links out of it are refused)"
        )
    return real


def _open_regular(real: Path, shown: Path, what: str):
    """Open a regular file for reading without following a link swapped in after ``bundle_path`` resolved
    it, and without blocking on a FIFO or device planted under a bundle name."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise BundleError(f"{shown}: {what}, named by the bundle, is missing") from None
    except OSError as e:
        raise BundleError(f"{shown}: cannot read {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{shown}: {what} is not a regular file")
    return os.fdopen(fd, "rb")


def read_verified(
    bundle_dir: str | os.PathLike, manifest: BundleManifest, rel: str, what: str = "file"
) -> bytes:
    """The bytes of one bundle file, read once and checked against the manifest's sha256 before they are
    returned: load these bytes (never the path) and what runs is what was hashed.

    Args:
        bundle_dir: the bundle directory.
        manifest: its manifest (from ``load_manifest``, which checked it against CHECKSUMS.sha256).
        rel: the file's path relative to the bundle, as the manifest names it.
        what: what the file is, for messages (e.g. ``"openvino artifact"``).
    Raises:
        BundleError naming the file: not hashed by the manifest, outside the bundle, missing, or changed.
    """
    root = Path(bundle_dir).resolve()
    digest = manifest.files.get(rel)
    if digest is None:
        raise BundleError(
            f"{root}: {what} {rel!r} is not among the files the manifest hashes; the bundle is incomplete "
            "or was edited by hand (re-export it)"
        )
    real = bundle_path(root, rel, what)
    with _open_regular(real, root / rel, what) as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(
            f"{root / rel}: sha256 does not match the manifest; the {what} changed after the bundle was "
            "written or checked"
        )
    return data


def _hash_regular(real: Path, shown: Path, what: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with _open_regular(real, shown, what) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def named_paths(manifest: BundleManifest) -> list[tuple[str, str]]:
    """Every ``(path, what)`` the manifest names besides its ``files`` list: artifacts (and an OpenVINO
    IR's weights file), the embeddings file, golden images."""
    out: list[tuple[str, str]] = []
    for a in manifest.artifacts:
        out.append((a.path, f"{a.backend} artifact path"))
        if a.backend == "openvino" and a.path.endswith(".xml"):
            out.append((a.path[: -len(".xml")] + ".bin", f"{a.backend} artifact weights"))
    if manifest.vocabulary.mode == "input" or manifest.vocabulary.embeddings_file in manifest.files:
        out.append((manifest.vocabulary.embeddings_file, "vocabulary.embeddings_file"))
    if manifest.vocabulary.center_file is not None:
        out.append((manifest.vocabulary.center_file, "vocabulary.center_file"))
    out.extend((g.image, "golden image") for g in manifest.golden)
    return out


def _listed_files(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in _NOT_HASHED:
                out.append(rel)
    return out


def write_manifest(root: str | os.PathLike, manifest: BundleManifest) -> BundleManifest:
    """Hash every file under ``root``, write manifest.json and CHECKSUMS.sha256. Returns the manifest
    with ``files`` filled in. Call this last, after every artifact has been written."""
    root = Path(root)
    files = {rel: sha256_file(root / rel) for rel in _listed_files(root)}
    manifest = manifest.model_copy(update={"files": files})
    (root / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    lines = [f"{sha256_file(root / MANIFEST)}  {MANIFEST}"] + [f"{h}  {rel}" for rel, h in files.items()]
    (root / CHECKSUMS).write_text("\n".join(lines) + "\n")
    return manifest


def load_manifest(
    root: str | os.PathLike, verify: bool = True, public_key: str | os.PathLike | None = None
) -> BundleManifest:
    """Read and (by default) verify a bundle.

    Args:
        root: the bundle directory.
        verify: check every hash (False: read the manifest only, e.g. to print it).
        public_key: an Ed25519 public key (PEM); when given, the bundle must carry a valid signature by
            its private key (``CHECKSUMS.sha256.sig``, see ``sign_bundle``). Needs ``cryptography``.
    Raises:
        ``BundleError`` naming the file when the directory, manifest or checksums are missing, the
        manifest does not match the schema, a path the bundle names is absolute, climbs out with ``..``
        or resolves through a link outside the bundle, a named file is not hashed, a listed file is
        missing, any file's sha256 differs, or (with ``public_key``) the signature is missing or invalid.
    """
    shown = Path(root)
    if not shown.is_dir():
        raise BundleError(f"{shown}: bundle directory not found")
    root = shown.resolve()
    mpath, cpath = shown / MANIFEST, shown / CHECKSUMS
    for p in (mpath, cpath):
        if not p.is_file():
            raise BundleError(f"{p}: missing; not a complete rtvp-edge bundle")
    with _open_regular(bundle_path(root, MANIFEST, "manifest"), mpath, "manifest") as f:
        mbytes = f.read()  # read once: the bytes hashed below are the bytes parsed
    if verify:
        with _open_regular(bundle_path(root, CHECKSUMS, "checksum list"), cpath, "checksum list") as f:
            cbytes = f.read()
        if public_key is not None:
            check_signature(shown, cbytes, public_key)
        expected: dict[str, str] = {}
        for n, line in enumerate(cbytes.decode(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("  ", 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise BundleError(f"{cpath}:{n}: malformed checksum line {line[:80]!r}")
            if parts[1] in expected:
                raise BundleError(f"{cpath}:{n}: {parts[1]!r} listed twice")
            bundle_path(root, parts[1], f"{CHECKSUMS} line {n}: file")
            expected[parts[1]] = parts[0]
        if MANIFEST not in expected:
            raise BundleError(f"{cpath}: does not list {MANIFEST}")
        for rel, digest in expected.items():
            p = shown / rel
            got = (
                hashlib.sha256(mbytes).hexdigest()
                if rel == MANIFEST
                else _hash_regular(bundle_path(root, rel, "file"), p, "file listed in " + CHECKSUMS)
            )
            if got != digest:
                raise BundleError(
                    f"{p}: sha256 does not match {CHECKSUMS}; the bundle was modified or corrupted"
                )
    elif public_key is not None:
        raise BundleError(f"{shown}: a signature can only be checked together with the hashes (verify=True)")
    try:
        raw = json.loads(mbytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    if isinstance(raw, dict) and raw.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: schema_version {raw.get('schema_version')!r}, this runtime reads {SCHEMA_VERSION}"
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise BundleError(f"{mpath}: field {loc!r}: {first['msg']}") from None
    for rel in manifest.files:
        bundle_path(root, rel, f"{MANIFEST} files entry")
    for rel, what in named_paths(manifest):
        bundle_path(root, rel, f"{MANIFEST} {what}")
    if verify:
        unlisted = set(_listed_files(root)) - set(manifest.files)
        if unlisted:
            raise BundleError(f"{shown}: files not in the manifest: {', '.join(sorted(unlisted))}")
        for rel, digest in manifest.files.items():
            if expected.get(rel) != digest:
                raise BundleError(f"{shown / rel}: manifest and {CHECKSUMS} disagree on its sha256")
        for rel, what in named_paths(manifest):
            if rel not in manifest.files:
                raise BundleError(
                    f"{mpath}: {what} {rel!r} is not among the files the manifest hashes "
                    "(every file a bundle names must be hashed)"
                )
    return manifest


# ---------------------------------------------------------------------------------------------------
# Optional signatures (Ed25519, via the ``cryptography`` package, imported only when used)


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError(
            "signed bundles need the 'cryptography' package: pip install 'rtvp-edge[signing]'"
        ) from None
    return InvalidSignature, serialization, ed25519


def sign_bundle(root: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Sign a written bundle: an Ed25519 signature over the bytes of its CHECKSUMS.sha256 (which names the
    sha256 of manifest.json, and so of every file), written base64 to ``CHECKSUMS.sha256.sig``.

    The key is an unencrypted PEM Ed25519 private key, e.g. ``openssl genpkey -algorithm ed25519``. The
    bundle is verified first: only a bundle that checks out gets signed. Returns the signature file.
    """
    _, serialization, ed25519 = _crypto()
    load_manifest(root)
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"{private_key}: cannot read an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{private_key}: not an Ed25519 private key")
    sig = key.sign((Path(root) / CHECKSUMS).read_bytes())
    out = Path(root) / SIGNATURE
    out.write_text(base64.b64encode(sig).decode() + "\n")
    return out


def check_signature(bundle_dir: Path, checksums: bytes, public_key: str | os.PathLike) -> None:
    """Refuse unless ``CHECKSUMS.sha256.sig`` in ``bundle_dir`` is a valid Ed25519 signature of the bytes
    ``checksums`` by the private half of ``public_key`` (PEM). Raises ``BundleError`` naming the file."""
    invalid_signature, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as e:
        raise BundleError(f"{public_key}: cannot read a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"{public_key}: not an Ed25519 public key")
    root = Path(bundle_dir).resolve()
    sig_path = Path(bundle_dir) / SIGNATURE
    if not sig_path.exists():
        raise BundleError(
            f"{sig_path}: missing; this line only accepts bundles signed for {public_key} (rtvp-export sign)"
        )
    with _open_regular(bundle_path(root, SIGNATURE, "signature"), sig_path, "signature") as f:
        text = f.read(4096)
    try:
        sig = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        sig = b""
    try:
        if len(sig) != 64:
            raise invalid_signature()
        key.verify(sig, checksums)
    except invalid_signature:
        raise BundleError(
            f"{sig_path}: signature does not verify with {public_key}; the bundle was not signed with "
            "that key or was changed after signing"
        ) from None
