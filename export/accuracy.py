"""Stage: detection accuracy of an artifact on held-out images, with training's own COCO evaluation.

The same evaluation as ``rtvp-eval``: the split is read by ``training.data.coco.load_coco_split``, detections
are decoded by the runtime's ``decode_detections`` with training's evaluation settings (score 0.001, NMS IoU
0.6, 100 per image), and ``training.coco_eval`` (pycocotools) computes the metrics. Evaluated classes are those
the vocabulary and the data set share (by name).
"""

from __future__ import annotations

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

# training/evaluate.py's detect_dataset defaults: the numbers rtvp-eval reports are computed this way.
EVAL_SCORE_THRESHOLD = 0.001
EVAL_IOU_THRESHOLD = 0.6
EVAL_MAX_DETECTIONS = 100

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalSet:
    """Held-out annotated images (a ``training.data.coco.CocoSplit``, possibly truncated).

    Args:
        root: data set root.
        split: split name (e.g. ``"val"``).
        images: ``ImageRecord`` list (path, width, height, boxes (N,4) xyxy px, class_ids into class_names).
        class_names: the data set's class names.
    """

    root: Path
    split: str
    images: list
    class_names: list[str]

    def describe(self) -> str:
        return f"{self.root} ({self.split}, {len(self.images)} images)"


def load_eval_set(root: str | os.PathLike, split: str = "val", max_images: int | None = None) -> EvalSet:
    """Held-out split of a data set. Raises ``ExportError`` naming the file for a missing or broken split."""
    from training.data.coco import DatasetError, load_coco_split

    root = Path(root)
    try:
        coco = load_coco_split(root, split, check_image_sizes=False)
    except (DatasetError, FileNotFoundError) as e:
        raise ExportError(f"held-out data (accuracy guard, annotations of split {split!r}): {e}") from None
    images = list(coco.images)
    if not images:
        raise ExportError(f"held-out data {root} split {split!r}: no images")
    if max_images is not None:
        images = images[:max_images]
    return EvalSet(root, split, images, list(coco.class_names))


def predict(
    runner: Runner,
    eval_set: EvalSet,
    spec: PreprocessSpec,
    class_names: list[str],
    desc: str = "evaluate",
    progress: bool = True,
) -> list[list]:
    """Decoded detections (camera pixels) of every held-out image, in order.

    Images go through the runner in batches of its static batch (``runner.fixed_batch``, else 1), so a
    static-batch artifact is not padded for every image.
    """
    size = max(1, int(getattr(runner, "fixed_batch", 1) or 1))
    out = []
    records = eval_set.images
    with tqdm(total=len(records), desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for start in range(0, len(records), size):
            images = []
            for rec in records[start : start + size]:
                img = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
                if img is None:
                    raise ExportError(f"held-out image {rec.path}: cannot be read")
                images.append(img)
            batch, lbs = preprocess(images, spec)
            boxes, scores = runner(batch)
            for i, lb in enumerate(lbs):
                out.append(
                    decode_detections(
                        boxes[i],
                        scores[i],
                        lb,
                        class_names,
                        EVAL_SCORE_THRESHOLD,
                        EVAL_IOU_THRESHOLD,
                        EVAL_MAX_DETECTIONS,
                    )
                )
            bar.update(len(images))
    return out


def coco_metrics(eval_set: EvalSet, detections: list[list], class_names: list[str]) -> dict[str, float]:
    """COCO AP, AP50, AP75 in points (0-100) over the classes shared by the vocabulary and the data set."""
    return coco_result(eval_set, detections, class_names)[0]


def coco_result(
    eval_set: EvalSet, detections: list[list], class_names: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``coco_metrics`` plus each class's best-F1 operating point at IoU 0.5 (``{score, precision, recall,
    f1}``, rounded; classes without ground truth or without a true positive are left out)."""
    from training.coco_eval import coco_evaluate, coco_ground_truth

    shared = [n for n in class_names if n in eval_set.class_names]
    if not shared:
        raise ExportError(
            f"held-out data {eval_set.root}: none of the vocabulary's classes {class_names} is annotated "
            f"there (it has {eval_set.class_names})"
        )
    index = {n: i for i, n in enumerate(shared)}
    data_to_eval = np.array([index.get(n, -1) for n in eval_set.class_names], dtype=np.int64)
    sizes, boxes, cls = [], [], []
    for rec in eval_set.images:
        mapped = data_to_eval[rec.class_ids] if len(rec.class_ids) else np.zeros(0, np.int64)
        keep = mapped >= 0
        sizes.append((int(rec.height), int(rec.width)))
        boxes.append(np.asarray(rec.boxes).reshape(-1, 4)[keep])
        cls.append(mapped[keep])
    gt = coco_ground_truth(sizes, boxes, cls, shared)
    results = [
        {
            "image_id": i,
            "category_id": index[d.class_name] + 1,
            "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]],
            "score": d.score,
        }
        for i, dets in enumerate(detections)
        for d in dets
        if d.class_name in index
    ]
    result = coco_evaluate(gt, results, shared)
    metrics = result["metrics"]
    points = {
        name: {k: round(v, 4) for k, v in op.items()}
        for name, op in result["operating_points_50"].items()
        if op is not None
    }
    # None: no ground truth for the metric (COCO's -1); count it as 0 rather than hide it.
    return {k: round(100.0 * (metrics.get(k) or 0.0), 3) for k in ("AP", "AP50", "AP75")}, points


def evaluate(
    runner: Runner,
    eval_set: EvalSet,
    spec: PreprocessSpec,
    class_names: list[str],
    desc: str = "evaluate",
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """COCO metrics (points) of one artifact on the held-out images, and each class's best-F1 operating point
    (``coco_result``)."""
    return coco_result(eval_set, predict(runner, eval_set, spec, class_names, desc, progress), class_names)
