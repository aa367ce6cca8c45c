"""Reader of COCO-json / MMIOC-layout detection data sets (ours from ``rtvp-data generate`` and real ones).

Layout (MMIOC-like)::

    root/Images/<split>/*.jpg|png     images
    root/labels/<split>/*.txt         YOLO labels (one line per box: class cx cy w h, normalised)
    root/annotations/<split>.json     COCO annotations (also accepted: instances_<split>.json)
    root/manifest.json                optional: class prompts, generator, seed, counts

The COCO json is the source of truth; the reader checks it strictly and raises ``DatasetError`` naming
the file and the image / annotation at fault, instead of letting a broken box reach training.
Class indices are contiguous in the order of the json's ``categories`` list (COCO ids are kept in
``CocoSplit.category_ids`` to write predictions back as COCO results). Crowd annotations
(``iscrowd: 1``) are not boxes to learn and are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtvp_edge.vocabulary import GLASS_DEFECTS

# Held-out groups of the compositional protocol (``rtvp_edge.rig.compositional.GROUPS``).
HELD_OUT_GROUPS = ("seen", "unseen_combination", "unseen_type")

# A box may overhang its image by this much (pixels) before it is an error; it is clipped instead.
BOX_TOLERANCE_PX = 1.0


class DatasetError(ValueError):
    """A data set on disk is broken; the message names the file and the image/annotation."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its boxes.

    Args:
        path: image file.
        width, height: image size in pixels (from the json, checked against the file when asked).
        boxes: (N, 4) float32 xyxy in image pixels.
        class_ids: (N,) int64 indices into ``CocoSplit.class_names``.
        image_id: COCO image id.
        file_name: the json's ``file_name``.
        clear: (N,) bool, the rig's "well visible" flag (True when the json does not say).
        meta: extra fields of the json image entry (rig: part_id, view_index, camera_id, shape, tint).
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray
    image_id: int = -1
    file_name: str = ""
    clear: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CocoSplit:
    """A loaded split: images with boxes, the class list and a text prompt per class.

    ``seen`` (one bool per class) and ``groups`` (one held-out group per class: ``seen``,
    ``unseen_combination``, ``unseen_type``) are the data set's own open-protocol flags, from the json's
    categories when every category carries one (``rtvp-data generate`` writes them); None otherwise.
    """

    root: Path
    split: str
    annotation_file: Path
    images: list[ImageRecord]
    class_names: list[str]
    prompts: list[str]
    category_ids: list[int]
    seen: list[bool] | None = None
    groups: list[str] | None = None

    def group_of(self) -> dict[str, str]:
        """``{class name: group}`` ({} when the data set records no groups)."""
        return dict(zip(self.class_names, self.groups, strict=True)) if self.groups else {}

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.boxes) for r in self.images))

    def class_counts(self) -> dict[str, int]:
        counts = np.zeros(len(self.class_names), np.int64)
        for r in self.images:
            np.add.at(counts, r.class_ids, 1)
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}


def annotation_path(root: str | Path, split: str) -> Path:
    """The COCO json of ``split`` under ``root`` (``annotations/<split>.json`` or ``instances_<split>.json``)."""
    root = Path(root)
    for name in (f"{split}.json", f"instances_{split}.json"):
        p = root / "annotations" / name
        if p.is_file():
            return p
    raise DatasetError(
        f"{root}: no annotations for split {split!r}: expected {root / 'annotations' / (split + '.json')}"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _prompts_from_manifest(root: Path) -> dict[str, str]:
    p = root / "manifest.json"
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    prompts = m.get("prompts", {}) if isinstance(m, dict) else {}
    if not isinstance(prompts, dict):
        raise DatasetError(f"{p}: 'prompts' must be an object {{class name: prompt}}")
    return {str(k): str(v) for k, v in prompts.items()}


def _resolve_image(root: Path, split: str, file_name: str) -> Path | None:
    p = Path(file_name)
    candidates = (
        [p] if p.is_absolute() else [root / "Images" / split / p, root / "images" / split / p, root / p]
    )
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_coco_split(
    root: str | Path, split: str, check_files: bool = True, check_image_sizes: bool = True
) -> CocoSplit:
    """Load and check one split of a COCO-json / MMIOC-layout data set.

    Args:
        root: data set root (holding ``Images/``, ``annotations/``; for our generated sets this is
            ``<out>/closed`` or ``<out>/open``).
        split: split name, e.g. ``"train"`` or ``"val"``.
        check_files: check every image file exists.
        check_image_sizes: also read each image header (Pillow) and compare with the json's size.
    Returns:
        ``CocoSplit``; ``images[i].boxes`` (N, 4) float32 xyxy pixels, ``class_ids`` (N,) int64.
    Raises:
        DatasetError: naming the file and the image or annotation (bad JSON, missing keys, duplicate
            ids, missing image files, wrong sizes, unknown category or image ids, boxes that are
            degenerate or outside the image).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data set root is not a directory")
    ann_file = annotation_path(root, split)
    try:
        data = json.loads(ann_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{ann_file}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{ann_file}: not a UTF-8 text file ({e.reason})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: missing or non-list {key!r}")

    # -- categories -> contiguous class indices
    cat_index: dict[int, int] = {}
    names: list[str] = []
    cat_prompts: list[str | None] = []
    cat_ids: list[int] = []
    cat_seen: list[object] = []
    cat_groups: list[object] = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{ann_file}: categories[{i}] needs an int 'id' and a str 'name', got {c!r}")
        if c["id"] in cat_index:
            raise DatasetError(f"{ann_file}: duplicate category id {c['id']} ({c['name']!r})")
        if c["name"] in names:
            raise DatasetError(f"{ann_file}: duplicate category name {c['name']!r}")
        cat_index[c["id"]] = len(names)
        names.append(c["name"])
        cat_prompts.append(c.get("prompt") if isinstance(c.get("prompt"), str) else None)
        cat_ids.append(c["id"])
        cat_seen.append(c.get("seen"))
        cat_groups.append(c.get("group"))
        if "group" in c and c["group"] not in HELD_OUT_GROUPS:
            raise DatasetError(
                f"{ann_file}: categories[{i}] ({c['name']!r}): group must be one of {list(HELD_OUT_GROUPS)}, "
                f"got {c['group']!r}"
            )
        if "seen" in c and not isinstance(c["seen"], bool):
            raise DatasetError(f"{ann_file}: categories[{i}] ({c['name']!r}): seen must be true or false")
    manifest_prompts = _prompts_from_manifest(root)
    vocab = {d.name: d.prompt for d in GLASS_DEFECTS}
    prompts = [
        manifest_prompts.get(n) or p or vocab.get(n) or f"a {n} defect"
        for n, p in zip(names, cat_prompts, strict=True)
    ]

    # -- images
    img_by_id: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{ann_file}: images[{i}] needs an int 'id' and a str 'file_name', got {im!r}")
        where = f"{ann_file}: image id {im['id']} ({im['file_name']!r})"
        if im["id"] in img_by_id:
            raise DatasetError(f"{where}: duplicate image id")
        w, h = im.get("width"), im.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise DatasetError(f"{where}: width/height must be positive ints, got {w!r} x {h!r}")
        path = _resolve_image(root, split, im["file_name"])
        if path is None:
            if check_files:
                raise DatasetError(
                    f"{where}: image file missing (looked in {root / 'Images' / split / im['file_name']})"
                )
            path = root / "Images" / split / im["file_name"]
        elif check_image_sizes:
            _check_size(path, w, h, where)
        img_by_id[im["id"]] = {"entry": im, "path": path, "boxes": [], "cls": [], "clear": []}
        order.append(im["id"])

    # -- annotations
    seen_ann: set[int] = set()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise DatasetError(f"{ann_file}: annotations[{i}] is not an object")
        aid = a.get("id", f"#{i}")
        where = f"{ann_file}: annotation id {aid}"
        if _is_int(a.get("id")):
            if a["id"] in seen_ann:
                raise DatasetError(f"{where}: duplicate annotation id")
            seen_ann.add(a["id"])
        if a.get("image_id") not in img_by_id:
            raise DatasetError(f"{where}: unknown image_id {a.get('image_id')!r}")
        rec = img_by_id[a["image_id"]]
        im = rec["entry"]
        where += f" (image {im['file_name']!r})"
        if a.get("category_id") not in cat_index:
            raise DatasetError(
                f"{where}: unknown category_id {a.get('category_id')!r}; categories are {sorted(cat_index)}"
            )
        if a.get("iscrowd", 0):
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            raise DatasetError(f"{where}: bbox must be [x, y, w, h] of 4 finite numbers, got {bbox!r}")
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            raise DatasetError(f"{where}: degenerate bbox {bbox} (width and height must be > 0)")
        W, H = im["width"], im["height"]
        t = BOX_TOLERANCE_PX
        if x < -t or y < -t or x + bw > W + t or y + bh > H + t:
            raise DatasetError(f"{where}: bbox {bbox} (xywh) lies outside the {W}x{H} image")
        rec["boxes"].append([max(x, 0.0), max(y, 0.0), min(x + bw, W), min(y + bh, H)])
        rec["cls"].append(cat_index[a["category_id"]])
        rec["clear"].append(bool(a.get("clear", True)))

    images = []
    meta_skip = {"id", "file_name", "width", "height"}
    for iid in order:
        rec = img_by_id[iid]
        im = rec["entry"]
        images.append(
            ImageRecord(
                path=rec["path"],
                width=im["width"],
                height=im["height"],
                boxes=np.asarray(rec["boxes"], np.float32).reshape(-1, 4),
                class_ids=np.asarray(rec["cls"], np.int64),
                image_id=iid,
                file_name=im["file_name"],
                clear=np.asarray(rec["clear"], bool),
                meta={k: v for k, v in im.items() if k not in meta_skip},
            )
        )
    seen = [bool(v) for v in cat_seen] if cat_seen and all(isinstance(v, bool) for v in cat_seen) else None
    groups = (
        [str(g) for g in cat_groups] if cat_groups and all(isinstance(g, str) for g in cat_groups) else None
    )
    return CocoSplit(root, split, ann_file, images, names, prompts, cat_ids, seen, groups)


def _check_size(path: Path, w: int, h: int, where: str) -> None:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib in the [train] extra
        return
    try:
        with Image.open(path) as img:
            fw, fh = img.size
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{where}: {path} is not a readable image ({e})") from None
    if (fw, fh) != (w, h):
        raise DatasetError(f"{where}: the json says {w}x{h} but {path.name} is {fw}x{fh}")
