"""The model bundle: what ``rtvp-export`` writes and ``rtvp-edge`` reads (contract in shared DESIGN.md).

A bundle is a directory::

    manifest.json          the schema below (BundleManifest)
    CHECKSUMS.sha256       ``sha256sum -c`` compatible list of every file, manifest.json included
    model.onnx             the exported graph (always shipped: ONNX Runtime, and TensorRT builds from it)
    openvino/model.xml|bin optional compiled artifacts, one entry per backend in ``manifest.artifacts``
    text_embeddings.npy    (C, D) float32 L2-normalised class embeddings (cached text encoder output)
    golden/*.png + expected outputs in the manifest, for the start-up self-test

The schema is defined once, here, next to the code that reads it, so writer and reader cannot drift.
Verification refuses a bundle if any byte of any listed file changed, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rtvp_edge.preprocess import PreprocessSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "CHECKSUMS.sha256"

Backend = Literal["onnxruntime", "openvino", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "mixed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelInfo(_Strict):
    name: str  # e.g. "rtvpnet_s"
    version: str  # free text, e.g. "glass-demo-2026.11"
    variant: str = "rtvpnet_s"
    parameters: int | None = None  # deployed parameters (text encoder excluded)
    gflops: float | None = None  # at the bundle's input size
    # The frozen general encoder and where its weights came from: {encoder, source, file, sha256, licence}.
    encoder: dict[str, str] | None = None


class PreprocessInfo(_Strict):
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


class IOInfo(_Strict):
    """Graph inputs/outputs. ``boxes`` is (B, N, 4) xyxy in model-input pixels; ``scores`` is (B, N, C)
    class probabilities in [0, 1] (sigmoid applied in the graph). NMS is not in the graph: the runtime
    runs it (OpenCV) per image."""

    image_input: str = "images"  # (B, 3, H, W) float32, preprocessed per PreprocessInfo
    embeddings_input: str | None = None  # (C, D) float32, only in vocabulary mode "input"
    boxes_output: str = "boxes"
    scores_output: str = "scores"
    batch: int = -1  # -1: dynamic batch; else the fixed batch the artifact was compiled for


class VocabularyClass(_Strict):
    name: str
    prompt: str


class VocabularyInfo(_Strict):
    mode: Literal["folded", "input"]  # folded: embeddings are constants in the graph
    classes: list[VocabularyClass]
    text_encoder: str  # identity of the encoder that produced the embeddings
    embeddings_file: str = "text_embeddings.npy"
    embeddings_sha256: str
    embedding_dim: int


class Thresholds(_Strict):
    score: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, gt=0)
    # Per-class defaults chosen on held-out data (rtvp-export: best F1 at IoU 0.5 of the exported artifact,
    # precision/recall in accuracy.operating_points); a class not listed uses ``score``. A line file's
    # detection.score_threshold / class_thresholds override them.
    class_scores: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = {}


class Artifact(_Strict):
    backend: Backend
    path: str  # relative to the bundle
    precision: Precision
    kept_float: list[str] = []  # parts kept out of INT8 (names/patterns), e.g. the head's score path
    device: str | None = None  # TensorRT: the GPU the engine was built for
    notes: str = ""
    # Backend compile properties the golden outputs and the measured accuracy were produced with, e.g.
    # OpenVINO {"INFERENCE_PRECISION_HINT": "bf16"}; the runtime should compile the artifact with them.
    properties: dict[str, str] = {}


class AccuracyInfo(_Strict):
    dataset: str
    images: int
    metric: str = "AP50"
    fp32: dict[str, float]  # COCO metrics of the FP32 source
    artifact: dict[str, float]  # the same metrics of this artifact
    max_drop: float | None = None
    # Per class, the artifact's best-F1 operating point on these images: {score, precision, recall, f1}.
    operating_points: dict[str, dict[str, float]] = {}


class GoldenSample(_Strict):
    image: str  # relative path of a camera image (PNG)
    detections: list[dict]  # [{"class_id": int, "score": float, "box": [x1, y1, x2, y2]}] in image pixels
    score_atol: float = 0.05
    box_atol: float = 4.0
    # The artifact backend whose outputs these are (None: any); INT8 and FP32 artifacts differ slightly.
    backend: str | None = None


class BundleManifest(_Strict):
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

    def artifact(self, backend: str) -> Artifact:
        for a in self.artifacts:
            if a.backend == backend:
                return a
        have = ", ".join(a.backend for a in self.artifacts) or "none"
        raise BundleError(f"the bundle has no {backend} artifact (it has: {have})")

    def golden_for(self, backend: str) -> list[GoldenSample]:
        """Golden samples whose expected outputs came from ``backend``'s artifact (samples recorded without
        a backend apply to any). Export records them for the bundle's primary artifact only."""
        return [g for g in self.golden if g.backend in (None, backend)]


class BundleError(Exception):
    """A bundle is missing, malformed or tampered with. The message names the file and the problem."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listed_files(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST, CHECKSUMS):
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


def load_manifest(root: str | os.PathLike, verify: bool = True) -> BundleManifest:
    """Read and (by default) verify a bundle.

    Raises ``BundleError`` naming the file when the directory, manifest or checksums are missing, the
    manifest does not match the schema, a listed file is missing, or any file's sha256 differs.
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    mpath, cpath = root / MANIFEST, root / CHECKSUMS
    for p in (mpath, cpath):
        if not p.is_file():
            raise BundleError(f"{p}: missing; not a complete rtvp-edge bundle")
    if verify:
        expected: dict[str, str] = {}
        for n, line in enumerate(cpath.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("  ", 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                raise BundleError(f"{cpath}:{n}: malformed checksum line {line[:80]!r}")
            expected[parts[1]] = parts[0]
        if MANIFEST not in expected:
            raise BundleError(f"{cpath}: does not list {MANIFEST}")
        for rel, digest in expected.items():
            p = root / rel
            if not p.is_file():
                raise BundleError(f"{p}: listed in {CHECKSUMS} but missing")
            if sha256_file(p) != digest:
                raise BundleError(
                    f"{p}: sha256 does not match {CHECKSUMS}; the bundle was modified or corrupted"
                )
    try:
        raw = json.loads(mpath.read_text())
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
    if verify:
        unlisted = set(_listed_files(root)) - set(manifest.files)
        if unlisted:
            raise BundleError(f"{root}: files not in the manifest: {', '.join(sorted(unlisted))}")
        for rel, digest in manifest.files.items():
            if expected.get(rel) != digest:
                raise BundleError(f"{root / rel}: manifest and {CHECKSUMS} disagree on its sha256")
    return manifest
