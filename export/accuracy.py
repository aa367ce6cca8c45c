"""Stage: detection accuracy of an artifact on held-out images, COCO evaluation by pycocotools.

The same metric as training's evaluation: COCO bbox AP, AP50, AP75 over the classes the vocabulary and the
data set share (matched by name), detections decoded by the runtime's own ``decode_detections`` with a low
score threshold (0.001) and up to 300 detections per image, as COCO evaluation expects.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from export.errors import ExportError
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess

EVAL_SCORE_THRESHOLD = 0.001
EVAL_MAX_DETECTIONS = 300


@dataclass
class EvalSet:
    """Held-out annotated images.

    Args:
        root: data set root.
        annotation_file: the COCO json of the split.
        images: (image id, path) pairs, in order.
        categories: COCO category id by class name.
    """

    root: Path
    annotation_file: Path
    images: list[tuple[int, Path]]
    categories: dict[str, int]
    split: str

    def describe(self) -> str:
        return f"{self.root} ({self.split}, {len(self.images)} images)"


def _resolve_image(root: Path, split: str, file_name: str) -> Path | None:
    for cand in (root / "Images" / split / file_name, root / file_name, root / "Images" / file_name):
        if cand.is_file():
            return cand
    return None


def load_eval_set(root: str | os.PathLike, split: str = "val", max_images: int | None = None) -> EvalSet:
    """Held-out images of a data set (``root/annotations/<split>.json``, ``root/Images/<split>/``).

    Raises ``ExportError`` naming the file when the annotations are missing or reference missing images.
    """
    root = Path(root)
    ann = root / "annotations" / f"{split}.json"
    if not ann.is_file():
        raise ExportError(
            f"held-out annotations {ann} not found (the accuracy guard needs an annotated data set)"
        )
    try:
        data = json.loads(ann.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{ann}: not valid JSON ({e})") from None
    images = []
    for rec in sorted(data.get("images", []), key=lambda r: r["id"]):
        path = _resolve_image(root, split, rec["file_name"])
        if path is None:
            raise ExportError(f"{ann}: image {rec['file_name']!r} (id {rec['id']}) not found under {root}")
        images.append((int(rec["id"]), path))
    if not images:
        raise ExportError(f"{ann}: no images")
    if max_images is not None:
        images = images[:max_images]
    cats = {c["name"]: int(c["id"]) for c in data.get("categories", [])}
    return EvalSet(root, ann, images, cats, split)


Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def predict_coco(
    runner: Runner, eval_set: EvalSet, spec: PreprocessSpec, class_names: list[str], desc: str = "evaluate"
) -> list[dict]:
    """Run ``runner`` over the held-out images; COCO result dicts (boxes in image pixels, xywh)."""
    results = []
    for image_id, path in tqdm(eval_set.images, desc=desc, unit="img", leave=False):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ExportError(f"held-out image {path}: cannot be read")
        batch, (lb,) = preprocess([img], spec)
        boxes, scores = runner(batch)
        dets = decode_detections(
            boxes[0], scores[0], lb, class_names, EVAL_SCORE_THRESHOLD, 0.5, EVAL_MAX_DETECTIONS
        )
        for d in dets:
            cat = eval_set.categories.get(d.class_name)
            if cat is None:
                continue
            x1, y1, x2, y2 = d.box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": d.score,
                }
            )
    return results


def coco_metrics(eval_set: EvalSet, results: list[dict], class_names: list[str]) -> dict[str, float]:
    """COCO AP, AP50, AP75 (in points, 0-100) over the classes shared by the vocabulary and the data set."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_ids = [eval_set.categories[n] for n in class_names if n in eval_set.categories]
    if not cat_ids:
        raise ExportError(
            f"{eval_set.annotation_file}: none of the vocabulary's classes {class_names} is annotated there"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        gt = COCO(str(eval_set.annotation_file))
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [i for i, _ in eval_set.images]
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(s)) * 100 for s in ev.stats[:3]]  # -1 (no ground truth) counts as 0
    return {"AP": round(stats[0], 3), "AP50": round(stats[1], 3), "AP75": round(stats[2], 3)}


def evaluate(
    runner: Runner, eval_set: EvalSet, spec: PreprocessSpec, class_names: list[str], desc: str = "evaluate"
) -> dict[str, float]:
    """COCO metrics of one artifact (see ``coco_metrics``)."""
    return coco_metrics(eval_set, predict_coco(runner, eval_set, spec, class_names, desc), class_names)
