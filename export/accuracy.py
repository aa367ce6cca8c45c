"""Stage: detection accuracy of an artifact on held-out images, with training's own COCO evaluation, and the
INT8 accuracy guard (``accuracy_guard``, ``guard_int8``).

The same evaluation as ``rtvp-eval``: the split is read by ``training.data.coco.load_coco_split``, detections
are decoded by the runtime's ``decode_detections`` with training's evaluation settings (score 0.001, NMS IoU
0.6, 100 per image), and ``training.coco_eval`` (pycocotools) computes the metrics. Evaluated classes are those
the vocabulary and the data set share (by name).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from export.errors import ExportError
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess

if TYPE_CHECKING:
    from export.targets import BuildContext, Built
    from export.verify import Model
    from rtvp_edge.bundle import AccuracyInfo, Artifact

log = logging.getLogger("rtvp_export")

# training/evaluate.py's detect_dataset defaults: the numbers rtvp-eval reports are computed this way.
EVAL_SCORE_THRESHOLD = 0.001
EVAL_IOU_THRESHOLD = 0.6
EVAL_MAX_DETECTIONS = 100


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
    model: Model,
    eval_set: EvalSet,
    spec: PreprocessSpec,
    class_names: list[str],
    embeddings: np.ndarray | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> list[list]:
    """Decoded detections (camera pixels) of every held-out image, in order.

    Args:
        model: a runtime backend (or ``export.verify.TorchReference``).
        embeddings: (C, D) float32 class embeddings for graphs in vocabulary mode ``input``, else None.

    Images go through the model in batches of its static batch (``model.fixed_batch``, else 1), so a
    static-batch artifact is not padded for every image.
    """
    size = max(1, int(model.fixed_batch))
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
            boxes, scores = model.infer(batch, embeddings)
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
    model: Model,
    eval_set: EvalSet,
    spec: PreprocessSpec,
    class_names: list[str],
    embeddings: np.ndarray | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """COCO metrics (points) of one artifact on the held-out images, and each class's best-F1 operating point
    (``coco_result``)."""
    detections = predict(model, eval_set, spec, class_names, embeddings, desc, progress)
    return coco_result(eval_set, detections, class_names)


def accuracy_guard(
    fp32: dict[str, float], artifact: dict[str, float], max_drop: float, force: bool, where: str
) -> float:
    """The INT8 accuracy guard: AP50 (points) of the artifact against its FP32 source.

    Returns the drop; raises ``ExportError`` when it exceeds ``max_drop`` unless ``force`` (then warns).
    """
    drop = round(fp32["AP50"] - artifact["AP50"], 3)
    log.info(
        "accuracy guard: AP50 fp32 %.2f, int8 %.2f (drop %.2f, allowed %.2f)",
        fp32["AP50"],
        artifact["AP50"],
        drop,
        max_drop,
    )
    if drop > max_drop:
        msg = (
            f"INT8 accuracy guard: AP50 dropped by {drop:.2f} points (FP32 {fp32['AP50']:.2f} -> "
            f"INT8 {artifact['AP50']:.2f}) on {where}, more than --max-ap-drop {max_drop:g}"
        )
        if not force:
            raise ExportError(
                msg + "; try --accuracy-control, a larger --calib-size, --keep-float BLOCK (python "
                "benchmarks/int8_sensitivity.py measures each block), "
                "or --force to write the bundle anyway"
            )
        log.warning("%s; written anyway (--force)", msg)
    return drop


def guard_int8(ctx: BuildContext, built: Built) -> tuple[AccuracyInfo, list[Artifact], dict[str, float]]:
    """The accuracy stage of an INT8 export: COCO AP of the FP32 ONNX and of the quantized artifact, each run
    by its runtime backend from the staged bundle, then the guard (``accuracy_guard``).

    Returns:
        the manifest's ``accuracy``; ``built.artifacts`` each with its own accuracy (the quantized one as
        measured, the FP32 ones as their parity-checked source), so the runtime can choose within the budget
        without data; the per-class score thresholds to record (``--class-thresholds best-f1``), else {}.
    Raises:
        ExportError: the drop exceeds ``--max-ap-drop`` (unless ``--force``).
    """

    from rtvp_edge.bundle import AccuracyInfo

    opts = ctx.options.int8.accuracy
    eval_set, progress = ctx.eval_set, ctx.options.progress
    results = {}
    for key, art in (("fp32", ctx.onnx), ("int8", built.measured)):
        with ctx.bundle.run(art) as backend:
            results[key] = evaluate(
                backend, eval_set, ctx.spec, ctx.class_names, ctx.embeddings, f"evaluate {key}", progress
            )
    (fp32, _), (q, points) = results["fp32"], results["int8"]
    info = AccuracyInfo(
        dataset=eval_set.describe(),
        images=len(eval_set.images),
        metric="AP50",
        fp32=fp32,
        artifact=q,
        max_drop=opts.max_ap_drop,
        operating_points=points,
    )
    accuracy_guard(fp32, q, opts.max_ap_drop, opts.force, eval_set.describe())
    quantized = {built.measured.precision} - {"fp32"}
    artifacts = [
        a.model_copy(update={"accuracy": dict(q if a.precision in quantized else fp32)})
        if a.precision in quantized or a.precision == "fp32"
        else a
        for a in built.artifacts
    ]
    class_scores: dict[str, float] = {}
    if opts.class_thresholds == "best-f1" and points:
        class_scores = {n: op["score"] for n, op in points.items()}
        log.info(
            "per-class score thresholds (best F1 on %s): %s",
            eval_set.describe(),
            ", ".join(
                f"{n} {op['score']:.3f} (P {op['precision']:.2f} R {op['recall']:.2f})"
                for n, op in points.items()
            ),
        )
    return info, artifacts, class_scores
