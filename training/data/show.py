"""Pictures of a data set a person looks at: contact sheets of the six views of a part, class counts, box sizes.

Works on any COCO/MMIOC root the reader accepts; for our generated data sets the six views of a
container are grouped by the ``part_id`` stored in each COCO image entry (other data sets: six
consecutive images per sheet).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from training.data.coco import CocoSplit, DatasetError, load_coco_split

COCO_SMALL = 32.0  # COCO size classes: sqrt(area) < 32 small, < 96 medium, else large
COCO_MEDIUM = 96.0


def find_roots(data: str | Path) -> list[Path]:
    """Data set roots under ``data``: ``data`` itself if it holds ``annotations/``, else its protocol subfolders."""
    data = Path(data)
    if (data / "annotations").is_dir():
        return [data]
    roots = sorted(p for p in data.iterdir() if (p / "annotations").is_dir()) if data.is_dir() else []
    if not roots:
        raise DatasetError(f"{data}: no data set here (no annotations/ folder in it or its subfolders)")
    return roots


def splits_of(root: Path) -> list[str]:
    names = sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("*.json"))
    return [s for s in ("train", "val", "test") if s in names] + [
        s for s in names if s not in ("train", "val", "test")
    ]


def _class_colors(n: int) -> list[tuple[int, int, int]]:
    # distinct hues, saturated, readable on bright back-lit glass
    hsv = np.stack([np.linspace(0, 179, n, endpoint=False), np.full(n, 255), np.full(n, 210)], 1)
    bgr = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2BGR)[0]
    return [tuple(int(v) for v in c) for c in bgr]


def contact_sheet(ds: CocoSplit, image_indices: list[int], title: str, scale: float = 0.5) -> np.ndarray:
    """One image: the views ``image_indices`` of ``ds`` in a grid of 3 columns, boxes and class labels drawn.

    Clear defects get a thick box, defects grazing the silhouette or tiny a thin one.
    """
    colors = _class_colors(max(len(ds.class_names), 1))
    tiles = []
    for i in image_indices:
        rec = ds.images[i]
        img = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{rec.path}: cannot read image")
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for box, k, clear in zip(rec.boxes, rec.class_ids, rec.clear, strict=True):
            x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
            pad = 3  # leave the defect itself visible inside the box
            cv2.rectangle(img, (x1 - pad, y1 - pad), (x2 + pad, y2 + pad), colors[k], 2 if clear else 1)
            label = ds.class_names[k]
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            ty = max(y1 - pad - 3, th + 2)
            cv2.rectangle(img, (x1 - pad, ty - th - 2), (x1 - pad + tw + 2, ty + 2), colors[k], -1)
            cv2.putText(
                img, label, (x1 - pad + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
            )
        cam = rec.meta.get("camera_id", f"#{rec.image_id}")
        cv2.putText(img, f"{cam} view {rec.meta.get('view_index', '?')}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (20, 20, 20), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(img)
    th_, tw_ = tiles[0].shape[:2]
    tiles = [cv2.resize(t, (tw_, th_)) if t.shape[:2] != (th_, tw_) else t for t in tiles]
    while len(tiles) % 3:
        tiles.append(np.full_like(tiles[0], 255))
    grid = np.vstack([np.hstack(tiles[r : r + 3]) for r in range(0, len(tiles), 3)])
    head = np.full((34, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(head, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([head, grid])


def _group_parts(ds: CocoSplit) -> OrderedDict[str, list[int]]:
    parts: OrderedDict[str, list[int]] = OrderedDict()
    for i, rec in enumerate(ds.images):
        key = rec.meta.get("part_id") or f"images {i // 6 * 6}-{i // 6 * 6 + 5}"
        parts.setdefault(str(key), []).append(i)
    for idx in parts.values():
        idx.sort(key=lambda i: ds.images[i].meta.get("view_index", i))
    return parts


def plot_statistics(splits: dict[str, CocoSplit], out_png: Path, title: str) -> None:
    """Class counts per split and the box-size distribution (sqrt(area), with COCO small/medium limits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_s, ax_wh) = plt.subplots(1, 3, figsize=(17, 5))
    # classes in descending order of their total count, as the papers' Fig. 6 (long-tail view)
    total: dict[str, int] = {}
    for ds in splits.values():
        for n, c in ds.class_counts().items():
            total[n] = total.get(n, 0) + c
    names = sorted(total, key=lambda n: (-total[n], n))
    x = np.arange(len(names))
    width = 0.8 / max(len(splits), 1)
    for j, (split, ds) in enumerate(splits.items()):
        counts = ds.class_counts()
        ax_c.bar(x + j * width, [counts.get(n, 0) for n in names], width, label=split)
    ax_c.set_xticks(x + width * (len(splits) - 1) / 2, names, rotation=35, ha="right")
    ax_c.set_ylabel("boxes")
    ax_c.set_title("class counts")
    ax_c.legend()
    sizes_all = []
    for split, ds in splits.items():
        boxes = np.concatenate([r.boxes for r in ds.images]) if ds.images else np.zeros((0, 4))
        s = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None))
        sizes_all.append(s)
        if len(s):
            ax_s.hist(s, bins=np.arange(0, max(float(s.max()), COCO_SMALL) + 4, 2), alpha=0.6, label=split)
        ax_wh.scatter(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], s=5, alpha=0.5, label=split)
    s = np.concatenate(sizes_all) if sizes_all else np.zeros(0)
    for lim in (COCO_SMALL, COCO_MEDIUM):
        ax_s.axvline(lim, color="k", ls="--", lw=0.8)
    if len(s):
        small = float((s < COCO_SMALL).mean())
        medium = float(((s >= COCO_SMALL) & (s < COCO_MEDIUM)).mean())
        ax_s.set_title(
            f"box size: {small:.0%} small, {medium:.0%} medium, {max(0.0, 1 - small - medium):.0%} large"
        )
    ax_s.set_xlabel("sqrt(box area) [px]")
    ax_s.set_ylabel("boxes")
    ax_s.legend()
    ax_wh.set_xlabel("box width [px]")
    ax_wh.set_ylabel("box height [px]")
    ax_wh.set_title("box width vs height")
    ax_wh.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def show_dataset(
    data: str | Path, out: str | Path, containers: int = 4, split: str | None = None
) -> list[Path]:
    """Write contact sheets (``containers`` parts per split, defective ones first) and statistics plots.

    Args:
        data: a data set root, or a folder holding protocol roots (``closed/``, ``open/``).
        out: folder for the PNGs.
        containers: contact sheets per split.
        split: only this split (default: all).
    Returns:
        the PNG files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for root in find_roots(data):
        names = [split] if split else splits_of(root)
        splits = {s: load_coco_split(root, s, check_image_sizes=False) for s in names}
        for s, ds in splits.items():
            parts = _group_parts(ds)
            # defective parts first: they are what a person checks the boxes on
            order = sorted(parts, key=lambda p: -sum(len(ds.images[i].boxes) > 0 for i in parts[p]))
            for part in order[:containers]:
                idx = parts[part]
                rec = ds.images[idx[0]]
                desc = " ".join(str(rec.meta[k]) for k in ("shape", "tint") if k in rec.meta)
                nbox = sum(len(ds.images[i].boxes) for i in idx)
                title = f"{root.name}/{s}  {part}  {desc}  ({nbox} boxes in {len(idx)} views)"
                sheet = contact_sheet(ds, idx, title)
                p = out / f"contact_{root.name}_{s}_{part}.png".replace(" ", "_")
                cv2.imwrite(str(p), sheet)
                written.append(p)
        p = out / f"stats_{root.name}.png"
        plot_statistics(
            splits, p, f"{root.name}: " + ", ".join(f"{s} {len(d.images)} images" for s, d in splits.items())
        )
        written.append(p)
    return written
