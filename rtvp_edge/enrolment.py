"""Enrol a defect type from a few example boxes, at the edge: ``rtvp-edge enroll`` (issue 16).

No retraining, no re-export, no recompilation. The bundle must be in vocabulary mode ``input`` and carry the
region-embedding output (``rtvp-export --vocab-mode input``). How a class embedding is made from boxes:

1. The bundle's own artifact (the export's primary one, which has the golden outputs) runs on each example
   image with the bundle's current vocabulary and returns, per anchor n, its predicted box and its
   L2-normalised region embedding r_n (D,): the vector the head compares (cosine) with the class embeddings.
2. Anchors of an example box: those whose *predicted* box overlaps the example box with IoU >= 0.3 (the
   anchors that would detect that object), each weighted by its IoU; when none reaches 0.3, the single
   anchor of highest IoU (a tiny box). A box no predicted box overlaps at all is refused.
3. Per example: p_i = normalize(sum_n IoU_n r_n); the prototype p = normalize(mean_i p_i), every example
   counting once however many anchors it covers.
4. The class embedding e: the graph centres and normalises each class embedding before the head compares it,
   ``t = normalize(e - centre)`` (RTVPNet's text centre, shipped as ``vocabulary.center_file``). The unit vector
   e = centre + k p with k > 0 (solving |e| = 1) gives exactly t = p, and keeps the file's rows unit-norm.
   (RTVPNet's V-T module then adds a little image evidence to t, as it does for any prompt embedding.)
5. Score threshold of the new class: the new vocabulary is run on the example images; s_i is the highest
   new-class score among the anchors of example i (IoU >= 0.5 with it, else its anchors of step 2). The
   threshold is ``min(bundle default score threshold, 0.5 * min_i s_i)``, at least 0.01: every exemplar is
   detected with a margin of half its own score, and a class the model scores highly keeps the default.

The vocabulary entry is marked as enrolled (``vocabulary.enrolled[name]``: source, example count, file,
exemplar scores, the threshold rule) and the bundle is rewritten by ``rtvp_edge.bundle_vocabulary`` (golden
outputs recomputed, hashes rewritten, verified, replaced atomically; a signature is dropped with a warning).

Examples file (image paths relative to ``images_dir`` / ``--images``, default the file's folder):
- COCO json: ``images`` ({id, file_name}) and ``annotations`` ({image_id, bbox [x, y, w, h]}); when its
  ``categories`` name the class being enrolled (or ``category``, e.g. the predicted class whose boxes the user
  kept), only that category's boxes are used; a file whose boxes span several categories, none of them the
  one asked for, is refused (it would mix defect types). ``info.model``, when present, must be the bundle's
  model name. The hard-sample folder's COCO file (``rtvp_edge.hard_samples``), relabelled in CVAT / Label
  Studio or as written, is such a file; its extra fields (scores, part ids) are ignored.
- YAML/JSON list of ``{image: PATH, box: [x1, y1, x2, y2]}`` (or a mapping with ``model`` and ``examples``).
Boxes are in pixels of the camera image as stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import yaml

from rtvp_edge.bundle import BundleError, BundleManifest, VocabularyClass, load_manifest, read_verified
from rtvp_edge.bundle_vocabulary import RewriteResult, require_input_mode, rewrite_vocabulary
from rtvp_edge.preprocess import boxes_to_input, preprocess
from rtvp_edge.strict import StrictModel
from rtvp_edge.yaml_config import ConfigError, list_as_key, parse_yaml, validate_tree

MAX_EXAMPLES = 10
ANCHOR_IOU = 0.3  # anchors whose predicted box overlaps an example box at least this much form its prototype
SCORE_IOU = 0.5  # anchors that would report the example (its own score)
THRESHOLD_RULE = "min(default score threshold, 0.5 * lowest exemplar score), at least 0.01"


class EnrollError(BundleError):
    """Bad enrolment input; the message names the file, the field and the value. The bundle is unchanged."""


@dataclass(frozen=True)
class Example:
    image: Path
    box: tuple[float, float, float, float]  # xyxy, camera-image pixels
    where: str  # for messages: "FILE: annotations[3]"


@dataclass(frozen=True)
class Enrolment:
    """What ``enroll`` did: the rewritten bundle and how the class was made."""

    result: RewriteResult
    name: str
    examples: int
    threshold: float
    exemplar_scores: list[float]


class _ExampleItem(StrictModel):
    image: str
    box: tuple[float, float, float, float]


class _ExamplesFile(StrictModel):
    model: str | None = None  # the model the boxes were taken for (checked against the bundle's)
    examples: list[_ExampleItem]


def _read_examples_yaml(text: str, path: Path) -> dict:
    """A YAML examples file (a list of {image, box}, or {model, examples: [...]}) checked by the shared reader
    (``rtvp_edge.yaml_config``): every problem as ``<file>:<line>: <key>: <problem>``."""
    try:
        data, root = list_as_key(*parse_yaml(text, str(path)), "examples")  # the bare-list form
        checked = validate_tree(_ExamplesFile, data, root, str(path))
    except ConfigError as e:
        raise EnrollError(str(e)) from None
    return {
        "model": checked.model,
        "examples": [{"image": e.image, "box": list(e.box)} for e in checked.examples],
    }


def _box(value, where: str) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise EnrollError(f"{where}: box must be [x1, y1, x2, y2], got {value!r}")
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise EnrollError(f"{where}: box must be four numbers, got {value!r}") from None
    if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise EnrollError(f"{where}: box {list(value)} must have x2 > x1 and y2 > y1")
    return box


def load_examples(
    path: str | os.PathLike,
    name: str,
    images_dir: str | os.PathLike | None = None,
    category: str | None = None,
) -> tuple[list[Example], str | None]:
    """The example boxes of ``path`` (COCO json, or a YAML/JSON list of {image, box}) and the model name the
    file says it is for (None: not said). ``category``: of a COCO file, take that category's boxes (default:
    the category named ``name``). Raises ``EnrollError`` naming the file, field and value."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise EnrollError(f"{path}: cannot read the examples file ({e.strerror or e})") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise EnrollError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({e})"
        ) from None
    base = Path(images_dir) if images_dir is not None else path.parent
    model = None
    out: list[Example] = []
    if isinstance(raw, dict) and "annotations" in raw:  # COCO
        info = raw.get("info") or {}
        model = info.get("model") if isinstance(info, dict) else None
        images = {}
        for i, img in enumerate(raw.get("images") or []):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise EnrollError(f"{path}: images[{i}] needs 'id' and 'file_name', got {img!r}")
            images[img["id"]] = img["file_name"]
        cats = {c.get("id"): c.get("name") for c in raw.get("categories") or [] if isinstance(c, dict)}
        wanted = {k for k, v in cats.items() if v == (category or name)}
        if category is not None and not wanted:
            raise EnrollError(
                f"{path}: --category {category!r} is not among its categories {sorted(map(str, cats.values()))}"
            )
        used = {a.get("category_id") for a in raw["annotations"] or [] if isinstance(a, dict)}
        if not wanted and len(used) > 1:
            raise EnrollError(
                f"{path}: no category named {name!r} and its boxes are of {len(used)} categories "
                f"({', '.join(sorted(str(cats.get(c, c)) for c in used))}): label the example boxes {name!r} "
                "(e.g. in CVAT or Label Studio), or pass --category with the one whose boxes to use"
            )
        for i, ann in enumerate(raw["annotations"] or []):
            where = f"{path}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise EnrollError(f"{where}: not a mapping")
            if wanted and ann.get("category_id") not in wanted:
                continue
            if ann.get("image_id") not in images:
                raise EnrollError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise EnrollError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise EnrollError(f"{where}: bbox must be four numbers, got {bbox!r}") from None
            out.append(
                Example(base / images[ann["image_id"]], _box([x, y, x + w, y + h], where + ".bbox"), where)
            )
    else:
        if path.suffix.lower() != ".json":  # written by a person: the shared reader, file:line: key errors
            raw = _read_examples_yaml(text, path)
        items = raw
        if isinstance(raw, dict):
            model = raw.get("model")
            items = raw.get("examples")
        if not isinstance(items, list):
            raise EnrollError(
                f"{path}: expected a COCO file (images + annotations) or a list of {{image, box}}, "
                f"got {type(items).__name__}"
            )
        for i, item in enumerate(items):
            where = f"{path}: examples[{i}]"
            if not isinstance(item, dict) or set(item) != {"image", "box"}:
                raise EnrollError(f"{where}: needs exactly the keys 'image' and 'box', got {item!r}")
            out.append(Example(base / str(item["image"]), _box(item["box"], where + ".box"), where))
    if not out:
        raise EnrollError(
            f"{path}: no example boxes{f' of category {name!r}' if raw and 'annotations' in raw else ''}"
        )
    if len(out) > MAX_EXAMPLES:
        raise EnrollError(f"{path}: {len(out)} example boxes; give 1 to {MAX_EXAMPLES}")
    return out, model


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """boxes (N, 4), box (4,) xyxy -> (N,) IoU."""
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(1)
    return inter / np.maximum(area + (box[2] - box[0]) * (box[3] - box[1]) - inter, 1e-9)


def anchor_weights(pred_boxes: np.ndarray, box: np.ndarray, min_iou: float = ANCHOR_IOU) -> np.ndarray:
    """(N,) weights of the anchors that form an example's prototype (step 2 of the module docstring): IoU
    where IoU >= ``min_iou``, else only the best-overlapping anchor; all zero when nothing overlaps."""
    iou = _iou(pred_boxes, box)
    w = np.where(iou >= min_iou, iou, 0.0)
    if not w.any() and iou.max() > 0:
        w[int(iou.argmax())] = iou.max()
    return w


def class_embedding(prototype: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """The unit (D,) class embedding e with ``normalize(e - center) == prototype`` (``prototype`` unit (D,)).

    e = center + k p, k > 0 the root of |center + k p| = 1 (needs |center| < 1, true of a mean of unit
    vectors); no centre: e = p."""
    p = prototype / np.linalg.norm(prototype)
    if center is None:
        return p.astype(np.float32)
    c = center.astype(np.float64)
    if c.shape != p.shape:
        raise EnrollError(
            f"text centre has shape {c.shape}, the region embeddings ({p.shape[0]},): not this model's"
        )
    cp, cc = float(c @ p), float(c @ c)
    if cc >= 1.0:
        raise EnrollError(f"text centre norm {cc**0.5:.3f} >= 1: cannot place a unit class embedding")
    k = -cp + np.sqrt(cp * cp + 1.0 - cc)
    return (c + k * p).astype(np.float32)


def _read_image(ex: Example) -> np.ndarray:
    img = cv2.imread(str(ex.image), cv2.IMREAD_COLOR)
    if img is None:
        raise EnrollError(f"{ex.where}: image {ex.image} cannot be read (missing or not an image)")
    h, w = img.shape[:2]
    x1, y1, x2, y2 = ex.box
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        raise EnrollError(
            f"{ex.where}: box {[round(v, 1) for v in ex.box]} is outside the image {ex.image} ({w}x{h})"
        )
    return img


def _load_center(bundle: Path, manifest: BundleManifest) -> np.ndarray | None:
    rel = manifest.vocabulary.center_file
    if rel is None:
        return None
    import io

    data = read_verified(bundle, manifest, rel, "text centre file")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise BundleError(f"{bundle / rel}: cannot read the text centre ({e})") from None


def enroll(
    bundle: str | os.PathLike,
    name: str,
    examples: str | os.PathLike,
    *,
    prompt: str | None = None,
    out: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    backend: str | None = None,
    device: str = "CPU",
    category: str | None = None,
) -> Enrolment:
    """Add the defect type ``name`` to an input-mode bundle from 1-10 example boxes (module docstring).

    Args:
        bundle: the bundle folder (verified first).
        name: the new class name (as events will carry it); must not be in the vocabulary yet.
        examples: COCO json, or YAML/JSON list of {image, box [x1, y1, x2, y2]} (camera pixels).
        prompt: recorded as the class's prompt (default: "enrolled from N example boxes").
        out: write the new bundle there; None replaces ``bundle`` atomically.
        images_dir: folder the examples' image paths are relative to (default: the examples file's).
        backend: the runtime backend to compute embeddings with (default: the bundle's first artifact's).
        category: of a COCO examples file, the category whose boxes to use (default: the one named ``name``).
    Returns:
        an ``Enrolment``.
    Raises:
        EnrollError / BundleError naming the file, field and value; the bundle is then unchanged.
    """
    from rtvp_edge.backends import load_backend, load_embeddings

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    require_input_mode(bundle, manifest)
    if manifest.io.region_output is None:
        raise EnrollError(
            f"bundle {bundle} has no region-embedding output (exported before enrolment existed): "
            "re-export it with `rtvp-export --vocab-mode input`"
        )
    vocab = manifest.vocabulary
    name = name.strip()
    if not name:
        raise EnrollError("--name: the class name is empty")
    if name in [c.name for c in vocab.classes]:
        raise EnrollError(
            f"--name {name!r}: already in the vocabulary of {bundle} ({', '.join(c.name for c in vocab.classes)})"
        )
    exs, model = load_examples(examples, name, images_dir, category)
    if model is not None and model != manifest.model.name:
        raise EnrollError(
            f"{examples}: the examples are for model {model!r}, the bundle {bundle} is {manifest.model.name!r}"
        )
    images = [_read_image(ex) for ex in exs]
    center = _load_center(bundle, manifest)
    emb = load_embeddings(bundle, manifest)
    spec = manifest.preprocess.spec()
    if backend is not None:
        art = manifest.artifact(backend)
    elif manifest.golden and manifest.golden[0].backend is not None:  # the export's primary artifact
        art = manifest.artifact(manifest.golden[0].backend, manifest.golden[0].precision)
    else:
        art = manifest.artifacts[0]
    be = load_backend(art.backend, bundle, manifest, device=device, artifact=art)
    try:
        batch, lbs = preprocess(images, spec)
        pred, _, regions = be.infer_regions(batch, emb)  # (B,N,4) input px, (B,N,D)
        if regions.shape[-1] != vocab.embedding_dim:
            raise EnrollError(
                f"bundle {bundle}: region embeddings are {regions.shape[-1]}-d, its class embeddings "
                f"{vocab.embedding_dim}-d: the graph and the vocabulary are not of one model"
            )
        protos, weights = [], []
        for i, ex in enumerate(exs):
            box = boxes_to_input(np.asarray([ex.box], np.float32), lbs[i])[0]
            w = anchor_weights(pred[i], box)
            if not w.any():
                raise EnrollError(f"{ex.where}: no predicted box of the model overlaps box {list(ex.box)}")
            v = (w[:, None] * regions[i]).sum(0)
            protos.append(v / np.linalg.norm(v))
            weights.append(w)
        proto = np.mean(protos, axis=0)
        new_emb = class_embedding(proto / np.linalg.norm(proto), center)
        full = np.concatenate([emb, new_emb[None]]).astype(np.float32)
        # the exemplars' own scores with the new vocabulary (step 5)
        _, scores = be.infer(batch, full)
        own = []
        for i, ex in enumerate(exs):
            box = boxes_to_input(np.asarray([ex.box], np.float32), lbs[i])[0]
            near = _iou(pred[i], box) >= SCORE_IOU
            if not near.any():
                near = weights[i] > 0
            own.append(float(scores[i, near, -1].max()))
    finally:
        be.close()
    threshold = round(max(0.01, min(manifest.thresholds.score, 0.5 * min(own))), 4)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    classes = [
        *vocab.classes,
        VocabularyClass(name=name, prompt=prompt or f"enrolled from {len(exs)} example boxes"),
    ]
    enrolled = {
        **vocab.enrolled,
        name: {
            "source": "exemplars",
            "examples": len(exs),
            "examples_file": str(examples),
            "enrolled_utc": now,
            "artifact": f"{art.backend} {art.precision}",
            "exemplar_scores": [round(s, 4) for s in own],
            "threshold_rule": THRESHOLD_RULE,
        },
    }
    result = rewrite_vocabulary(
        bundle,
        classes,
        full,
        out=out,
        class_scores={**manifest.thresholds.class_scores, name: threshold},
        enrolled=enrolled,
        provenance={"vocabulary_enrolled_utc": now, "enrolled_class": name},
        expected=manifest,
    )
    return Enrolment(result=result, name=name, examples=len(exs), threshold=threshold, exemplar_scores=own)
