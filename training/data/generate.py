"""Write synthetic glass-container data sets from the rig in the MMIOC layout, closed and open protocols.

``generate_dataset(out, containers=200, protocol="both", seed=0)`` renders each container once and writes

    out/closed/{Images,labels}/{train,val}/, out/closed/annotations/{train,val}.json, out/closed/manifest.json
    out/open/...   (same layout)

Protocols (split by container, so the six views of a part never straddle train and val):
- closed: a seeded 80/20 split of the containers; every class in both splits.
- open: train = the closed-train containers that carry no unseen-class defect, annotated with the seen
  classes; val = every other container, annotated with the unseen classes only (the categories of
  ``val.json`` are the unseen classes). A model never sees an unseen defect in training, not even
  unlabelled.
- compositional (written alone, to ``out/compositional``): the rig draws compositional defect types
  (``rtvp_edge.rig.compositional``) split by a ``CompositionalSplit`` into ``seen``, ``unseen_combination``
  and ``unseen_type``. train = the closed-train containers without a held-out defect, annotated with the
  seen types; train_all = every closed-train container, every type annotated (the "trained on them"
  reference); val = the closed-val containers, every type annotated. Each category carries its ``group``
  and ``attributes``; ``seen`` is true for the seen group only.
YOLO labels use the global vocabulary index (``manifest.json`` ``names``); COCO category ids are the
vocabulary index + 1, and each split's ``categories`` lists the classes annotated in it.

A data set is written into a temporary sibling directory and renamed into place at the end: an
interrupted run leaves nothing half-written under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtvp_edge.rig import GENERATOR_VERSION, RigConfig, render_container
from rtvp_edge.rig.camera import DEFAULT_CAMERA_IDS
from rtvp_edge.rig.compositional import DEFAULT_SPLIT, CompositionalSplit, parse_type

PROTOCOLS = ("closed", "open")
COMPOSITIONAL = "compositional"  # a protocol of its own: other classes, so other images
COMPOSITIONAL_SPLITS = ("train", "train_all", "val")
IMAGE_FORMATS = ("jpg", "png")
DATASET_FORMAT = "rtvp-mmioc-1"


def _encode(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    if image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError("image encoding failed")
    return buf.tobytes()


def _render_one(args: tuple[RigConfig, int, str, int]) -> dict[str, Any]:
    """Render and encode one container (runs in a worker process when workers > 1)."""
    config, index, image_format, jpeg_quality = args
    cv = render_container(config, index)
    views = []
    for v, (image, gts) in enumerate(cv):
        views.append(
            {
                "view": v,
                "bytes": _encode(image, image_format, jpeg_quality),
                "boxes": [(g.class_name, g.box, g.clear, g.defect_id) for g in gts],
            }
        )
    return {
        "index": index,
        "part_id": cv.part_id,
        "shape": cv.spec.shape,
        "tint": cv.spec.tint,
        "classes": sorted({d.class_name for d in cv.spec.defects}),
        "views": views,
    }


def _rendered(jobs: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for j in jobs:
            yield _render_one(j)
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        yield from ex.map(_render_one, jobs, chunksize=2)


def split_containers(n: int, seed: int, val_share: float) -> set[int]:
    """Indices of the validation containers of the closed protocol (a seeded ``val_share`` of ``n``)."""
    n_val = int(round(n * val_share))
    if n >= 2:  # both splits non-empty whenever there are two containers
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng([seed, 0xDA7A]).permutation(n)
    return {int(i) for i in perm[:n_val]}


class _SplitWriter:
    """Collects one split of one protocol root: files, YOLO labels, COCO entries, counts."""

    def __init__(self, root: Path, split: str, categories: list[dict[str, Any]], names: list[str]) -> None:
        self.root, self.split = root, split
        self.categories = categories
        self.cat_by_name = {c["name"]: c for c in categories}
        self.names = names
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.containers: set[int] = set()
        (root / "Images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)

    def add(
        self, item: dict[str, Any], view: dict[str, Any], file_name: str, src: Path | None, h: int, w: int
    ):
        """Add one view; hard-links the encoded image from ``src`` when another root already wrote it."""
        dst = self.root / "Images" / self.split / file_name
        if src is not None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        else:
            dst.write_bytes(view["bytes"])
        image_id = len(self.images) + 1
        v = view["view"]
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": w,
                "height": h,
                "part_id": item["part_id"],
                "container_index": item["index"],
                "view_index": v,
                "camera_id": DEFAULT_CAMERA_IDS[v] if v < len(DEFAULT_CAMERA_IDS) else f"V{v}",
                "shape": item["shape"],
                "tint": item["tint"],
            }
        )
        self.containers.add(item["index"])
        lines = []
        for cls, (x1, y1, x2, y2), clear, defect_id in view["boxes"]:
            cat = self.cat_by_name.get(cls)
            if cat is None:  # a class this split does not annotate (open protocol)
                continue
            bw, bh = x2 - x1, y2 - y1
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat["id"],
                    "bbox": [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                    "area": round(bw * bh, 2),
                    "iscrowd": 0,
                    "clear": bool(clear),
                    "defect_id": int(defect_id),
                }
            )
            k = self.names.index(cls)
            lines.append(f"{k} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        label = self.root / "labels" / self.split / (Path(file_name).stem + ".txt")
        label.write_text("".join(line + "\n" for line in lines))
        return dst

    def finish(self) -> dict[str, Any]:
        coco = {
            "info": {"description": f"rtvp-edge synthetic glass containers ({self.root.name}/{self.split})"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        (self.root / "annotations").mkdir(parents=True, exist_ok=True)
        (self.root / "annotations" / f"{self.split}.json").write_text(json.dumps(coco))
        counts = {c["name"]: 0 for c in self.categories}
        for a in self.annotations:
            counts[next(c["name"] for c in self.categories if c["id"] == a["category_id"])] += 1
        return {
            "containers": len(self.containers),
            "images": len(self.images),
            "annotations": len(self.annotations),
            "classes": [c["name"] for c in self.categories],
            "class_counts": counts,
        }


def generate_dataset(
    out: str | Path,
    containers: int = 200,
    protocol: str = "both",
    seed: int = 0,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    val_share: float = 0.2,
    config: RigConfig | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    compositional_split: CompositionalSplit | None = None,
) -> dict[str, Path]:
    """Render ``containers`` containers and write the data set(s).

    Args:
        out: output directory; protocol roots are ``out/closed``, ``out/open`` and ``out/compositional``.
        containers: number of containers (six images each).
        protocol: ``"closed"``, ``"open"``, ``"both"`` (closed and open) or ``"compositional"``.
        seed: rig seed (ignored when ``config`` is given: its seed is used).
        image_format: ``"jpg"`` (quality ``jpeg_quality``) or ``"png"``.
        val_share: share of the containers in the closed protocol's val split.
        config: full rig configuration (default: ``RigConfig(seed=seed)``).
        workers: rendering processes.
        overwrite: replace existing protocol roots under ``out`` (else refuse).
        progress: show a tqdm progress bar.
        compositional_split: the compositional protocol's types and held-out groups (default
            ``rtvp_edge.rig.compositional.DEFAULT_SPLIT``); its types replace ``config.classes``.
    Returns:
        {protocol: root path} of the roots written.
    """
    if protocol not in (*PROTOCOLS, "both", COMPOSITIONAL):
        raise ValueError(f"protocol must be one of closed, open, both, compositional; got {protocol!r}")
    if compositional_split is not None and protocol != COMPOSITIONAL:
        raise ValueError(f"a compositional split is for protocol 'compositional', not {protocol!r}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}; got {image_format!r}")
    if not isinstance(containers, int) or containers < 1:
        raise ValueError(f"containers must be an int >= 1, got {containers!r}")
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"val_share must be in (0, 1), got {val_share!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality!r}")
    config = config if config is not None else RigConfig(seed=seed)
    groups: dict[str, str] = {}
    if protocol == COMPOSITIONAL:
        comp = compositional_split if compositional_split is not None else DEFAULT_SPLIT
        if config.class_weights is not None:
            raise ValueError(
                "class_weights: the compositional protocol draws its types uniformly; remove class_weights"
            )
        config = RigConfig(**{**dict(config), "classes": comp.classes()})
        groups = comp.groups()
    protocols = PROTOCOLS if protocol == "both" else (protocol,)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    finals = {p: out / p for p in protocols}
    for p, final in finals.items():
        if final.exists() and not overwrite:
            raise FileExistsError(
                f"{final} exists; pass overwrite=True (--overwrite) to replace the {p} data set"
            )

    classes = config.classes
    names = [c.name for c in classes]
    cat = [
        {"id": k + 1, "name": c.name, "prompt": c.prompt, "seen": c.seen, "supercategory": "glass container"}
        for k, c in enumerate(classes)
    ]
    for c in cat:
        if groups:  # which held-out group a class is in, and what it is made of
            c.update(group=groups[c["name"]], attributes=parse_type(c["name"]).attributes)
    unseen = {c.name for c in classes if not c.seen}
    val_idx = split_containers(containers, config.seed, val_share)
    h, w = config.image_size

    tmp = Path(tempfile.mkdtemp(prefix=".rtvp-data-", dir=out))
    try:
        writers: dict[str, dict[str, _SplitWriter]] = {}
        for p in protocols:
            root = tmp / p
            if p == "closed":
                writers[p] = {s: _SplitWriter(root, s, cat, names) for s in ("train", "val")}
            elif p == COMPOSITIONAL:
                writers[p] = {
                    "train": _SplitWriter(root, "train", [c for c in cat if c["seen"]], names),
                    "train_all": _SplitWriter(root, "train_all", cat, names),
                    "val": _SplitWriter(root, "val", cat, names),
                }
            else:
                writers[p] = {
                    "train": _SplitWriter(root, "train", [c for c in cat if c["seen"]], names),
                    "val": _SplitWriter(root, "val", [c for c in cat if not c["seen"]], names),
                }
        jobs = [(config, i, image_format, jpeg_quality) for i in range(containers)]
        it = _rendered(jobs, workers)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=containers, desc="rendering containers", unit="container")
        for item in it:
            closed_split = "val" if item["index"] in val_idx else "train"
            held_out = bool(unseen & set(item["classes"]))
            open_split = "train" if closed_split == "train" and not held_out else "val"
            targets = []  # (protocol, split) this container's views go to
            for p in protocols:
                if p == "closed":
                    targets.append((p, closed_split))
                elif p == COMPOSITIONAL:
                    if closed_split == "val":
                        targets.append((p, "val"))
                    else:
                        targets += [(p, "train_all")] + ([] if held_out else [(p, "train")])
                else:
                    targets.append((p, open_split))
            for view in item["views"]:
                file_name = f"{item['part_id']}_v{view['view']}.{image_format}"
                src = None
                for p, split in targets:
                    src = writers[p][split].add(item, view, file_name, src, h, w)

        roots = {}
        for p in protocols:
            splits = {s: wr.finish() for s, wr in writers[p].items()}
            manifest = {
                "format": DATASET_FORMAT,
                "generator": "rtvp_edge.rig",
                "generator_version": GENERATOR_VERSION,
                "seed": config.seed,
                "protocol": p,
                "containers": containers,
                "views_per_container": config.n_views,
                "image_size": [h, w],
                "image_format": image_format,
                "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
                "val_share": val_share,
                "names": names,
                "classes": [
                    {"id": c["id"], "name": c["name"], "prompt": c["prompt"], "seen": c["seen"]}
                    | ({"group": c["group"], "attributes": c["attributes"]} if "group" in c else {})
                    for c in cat
                ],
                "prompts": {c.name: c.prompt for c in classes},
                "splits": splits,
                "rig_config": _config_dict(config),
            }
            if p == COMPOSITIONAL:
                manifest["groups"] = groups
                manifest["compositional_split"] = comp.model_dump(mode="json")
            (tmp / p / "manifest.json").write_text(json.dumps(manifest, indent=2))
            roots[p] = tmp / p
        for p, final in finals.items():
            if final.exists():
                shutil.rmtree(final)
            os.replace(roots[p], final)
        return finals
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _config_dict(config: RigConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")  # classes by name: a rig file of the same rig
