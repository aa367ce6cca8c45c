"""COCO evaluation of a detector on a data-set split, and the ``rtvp-eval`` command.

Decoding goes through ``rtvp_edge.postprocess.decode_detections`` (score threshold, class-wise OpenCV NMS, boxes
back to camera pixels): the same code the edge runtime runs, so training-time AP is the AP of the runtime's
decoding. Metrics come from pycocotools (``training.coco_eval``).

Usage::

    rtvp-eval --checkpoint runs/glass/best.pt --data data/glass --split val
    rtvp-eval --checkpoint runs/glass_open/best.pt --data data/glass --classes unseen   # open protocol
    rtvp-eval --checkpoint runs/comp/best.pt --data data/comp/compositional --classes all  # AP50 per group

When the data set records held-out groups per class (``rtvp-data generate --protocol compositional``), the
report adds ``per_group``: AP and AP50 of each group (``seen``, ``unseen_combination``, ``unseen_type``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from rtvp_edge.messages import Detection
from rtvp_edge.postprocess import decode_detections
from training import dist
from training.coco_eval import coco_evaluate, coco_ground_truth
from training.datasets import DataError, DetectionDataset, collate, read_image, shard_indices

ANY_CLASS = "any class"  # the one class of a class-agnostic evaluation


@torch.no_grad()
def detect_dataset(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    text_embeds: torch.Tensor,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    score_threshold: float = 0.001,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    amp_dtype: torch.dtype | None = None,
    workers: int = 0,
    indices: Sequence[int] | None = None,
    progress: bool = False,
    agnostic_out: dict[int, list[Detection]] | None = None,
) -> dict[int, list[Detection]]:
    """Detections for (a shard of) a data set.

    Args:
        model: has ``forward_inference(images (B,3,H,W), text_embeds (C,D)) -> (boxes (B,N,4) xyxy input px,
            scores (B,N,C))``; in eval mode.
        dataset: an evaluation data set (no augmentation).
        text_embeds: (C, D) embeddings of ``dataset.vocabulary``.
        indices: positions to run (None = all).
        agnostic_out: when given, also filled from the same forward pass with the class-agnostic decoding
            (each box scored by its best class, one class ``ANY_CLASS``): where the detector finds defects,
            whatever it calls them.
    Returns:
        ``{position: [Detection in image pixels]}``.
    """
    positions = list(range(len(dataset))) if indices is None else list(indices)
    if not positions:
        return {}
    loader = DataLoader(
        Subset(dataset, positions),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
    )
    emb = text_embeds.to(device)
    out: dict[int, list[Detection]] = {}
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
    for images, _, meta in it:
        images = images.to(device, non_blocking=True)
        with torch.autocast(
            device_type=torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            boxes, scores = model.forward_inference(images, emb)
        boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
        decode = {"score_threshold": score_threshold, "iou_threshold": iou_threshold,
                  "max_detections": max_detections}  # fmt: skip
        best = scores.max(-1, keepdims=True) if agnostic_out is not None else None
        for k, m in enumerate(meta):
            out[m["index"]] = decode_detections(
                boxes[k], scores[k], m["letterbox"], dataset.vocabulary, **decode
            )
            if best is not None:
                agnostic_out[m["index"]] = decode_detections(
                    boxes[k], best[k], m["letterbox"], [ANY_CLASS], **decode
                )
    return out


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    text_embeds: torch.Tensor,
    class_agnostic: bool = False,
    **kwargs,
) -> tuple[dict, dict[int, list[Detection]]]:
    """COCO metrics of ``model`` on ``dataset`` (sharded over processes when a process group exists).

    Args:
        model, dataset, text_embeds, kwargs: as ``detect_dataset``.
        class_agnostic: also score the class-agnostic decoding of the same forward pass, every ground-truth
            box counted as one class (``result["class_agnostic"]``: ``metrics``, ``n_detections``).
    Returns:
        The ``training.coco_eval.coco_evaluate`` result (``metrics``, ``per_class``, ``pr_curve_50``) plus
        ``n_images``, and every image's detections.
    """
    rank, world = 0, 1
    if dist.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    agnostic: dict[int, list[Detection]] | None = {} if class_agnostic else None
    mine = detect_dataset(
        model,
        dataset,
        text_embeds,
        indices=shard_indices(len(dataset), rank, world),
        agnostic_out=agnostic,
        **kwargs,
    )
    detections: dict[int, list[Detection]] = {}
    for part in dist.all_gather_objects(mine):
        detections.update(part)
    sizes, gt_boxes, gt_cls = [], [], []
    for i in range(len(dataset)):
        rec = dataset.split.images[dataset.indices[i]]
        b, c = dataset.targets_of(i)
        sizes.append((int(rec.height), int(rec.width)))
        gt_boxes.append(b)
        gt_cls.append(c)
    result = _coco(
        detections, coco_ground_truth(sizes, gt_boxes, gt_cls, dataset.vocabulary), dataset.vocabulary
    )
    result["n_images"] = len(dataset)
    if agnostic is not None:
        merged: dict[int, list[Detection]] = {}
        for part in dist.all_gather_objects(agnostic):
            merged.update(part)
        gt = coco_ground_truth(sizes, gt_boxes, [np.zeros_like(c) for c in gt_cls], [ANY_CLASS])
        scored = _coco(merged, gt, [ANY_CLASS])
        result["class_agnostic"] = {"metrics": scored["metrics"], "n_detections": scored["n_detections"]}
    return result, detections


def _coco(detections: dict[int, list[Detection]], gt, vocabulary: list[str]) -> dict:
    """``coco_evaluate`` of per-image detections against ``gt``, plus ``n_detections``."""
    results = [
        {
            "image_id": i,
            "category_id": d.class_id + 1,
            "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]],
            "score": d.score,
        }
        for i, dets in detections.items()
        for d in dets
    ]
    result = coco_evaluate(gt, results, vocabulary)
    result["n_detections"] = len(results)
    return result


def group_metrics(per_class: dict[str, dict], groups: dict[str, str]) -> dict[str, dict]:
    """AP and AP50 of each held-out group of classes.

    A group's AP50 is the mean AP50 of its classes that have ground truth, which is what pycocotools gives
    when its evaluation is restricted to those categories (COCO averages over categories, leaving out those
    without ground truth).

    Args:
        per_class: ``{class: {"AP", "AP50", "n_gt", ...}}`` (``coco_evaluate``'s ``per_class``).
        groups: ``{class: group}``; classes of ``per_class`` without a group are left out.
    Returns:
        ``{group: {"AP", "AP50" (None when no class of the group has ground truth), "classes", "n_gt"}}`` in
        the order groups first appear.
    """
    out: dict[str, dict] = {}
    for name, pc in per_class.items():
        g = groups.get(name)
        if g is None:
            continue
        entry = out.setdefault(g, {"classes": [], "n_gt": 0, "_ap": [], "_ap50": []})
        entry["classes"].append(name)
        entry["n_gt"] += int(pc.get("n_gt") or 0)
        if pc.get("n_gt"):
            entry["_ap"].append(pc["AP"])
            entry["_ap50"].append(pc["AP50"])
    for entry in out.values():
        ap, ap50 = entry.pop("_ap"), entry.pop("_ap50")
        entry["AP"] = float(np.mean(ap)) if ap else None
        entry["AP50"] = float(np.mean(ap50)) if ap50 else None
    return out


# ------------------------------------------------------------------------------------------------ CLI


def resolve_classes(
    spec: str, checkpoint_classes: list[str], data_classes: list[str], groups: dict[str, str] | None = None
) -> list[str]:
    """Class list from ``--classes``: ``seen`` (the checkpoint's vocabulary), ``unseen`` (data-set classes the
    checkpoint was not trained on), ``all`` (every data-set class), a held-out group the data set records
    (``unseen_combination``, ``unseen_type``) or comma-separated names."""
    if groups and spec in ("unseen_combination", "unseen_type"):
        classes = [c for c in data_classes if groups.get(c) == spec]
    elif spec in ("", "seen"):
        classes = [c for c in checkpoint_classes if c in data_classes]
    elif spec == "unseen":
        classes = [c for c in data_classes if c not in checkpoint_classes]
    elif spec == "all":
        classes = list(data_classes)
    else:
        classes = [c.strip() for c in spec.split(",") if c.strip()]
        unknown = [c for c in classes if c not in data_classes]
        if unknown:
            raise DataError(f"--classes: {unknown} not in the data set (it has {data_classes})")
    if not classes:
        raise DataError(
            f"--classes {spec or 'seen'}: no classes to evaluate (data set has {data_classes}, "
            f"checkpoint was trained on {checkpoint_classes})"
        )
    return classes


def vocabulary_embeddings(
    classes: list[str], prompts: dict[str, str], info: dict, cache_dir: str = ""
) -> tuple[torch.Tensor, list[str]]:
    """(C, D) embeddings for ``classes``: the checkpoint's cached ones when the vocabulary is the trained one,
    else encoded (and cached) with the checkpoint's text encoder from the data set's prompts."""
    from training.text_cache import text_embeddings

    if classes == info["class_names"] and info.get("text_embeddings") is not None:
        return info["text_embeddings"].float(), [v["prompt"] for v in info["vocabulary"]]
    vocab_prompts = {v["name"]: v["prompt"] for v in info["vocabulary"]}
    texts = [prompts.get(c) or vocab_prompts.get(c) or c for c in classes]
    emb, _ = text_embeddings(info["text_encoder"], texts, cache_dir)
    return emb, texts


def load_split(root: str, split: str):
    """``training.data.coco.load_coco_split`` with a clear error for a missing directory."""
    from training.data.coco import load_coco_split

    if not Path(root).is_dir():
        raise DataError(f"{root}: data set directory not found")
    return load_coco_split(root, split)


def write_samples(
    dataset: DetectionDataset, detections: dict, out_dir: Path, n: int, min_score: float
) -> list[Path]:
    """Annotated pictures of ``n`` images (those with the most ground truth first)."""
    import cv2

    from training.plots import draw_detections

    out_dir.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(dataset)), key=lambda i: -len(dataset.targets_of(i)[1]))[:n]
    written = []
    for i in order:
        rec = dataset.split.images[dataset.indices[i]]
        image = read_image(rec.path)
        b, c = dataset.targets_of(i)
        gt = [(dataset.vocabulary[int(k)], box) for k, box in zip(c, b, strict=False)]
        dets = [d for d in detections.get(i, []) if d.score >= min_score]
        path = out_dir / f"{Path(rec.path).stem}.jpg"
        cv2.imwrite(str(path), draw_detections(image, dets, gt))
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtvp-eval", description="COCO evaluation of an RTVPNet checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (best.pt / last.pt)")
    p.add_argument("--data", required=True, help="data-set root (MMIOC/COCO layout)")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--classes",
        default="seen",
        help="seen (trained vocabulary), unseen (data-set classes not trained on: open protocol), all, "
        "unseen_combination / unseen_type (a held-out group of a compositional data set), or comma-separated "
        "names",
    )
    p.add_argument("--out", default="", help="output directory (default runs/eval/<run>_<split>_<classes>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--score-threshold", type=float, default=0.001)
    p.add_argument("--iou-threshold", type=float, default=0.6)
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--samples", type=int, default=8, help="annotated sample pictures to write")
    p.add_argument("--sample-score", type=float, default=0.25, help="minimum score drawn on sample pictures")
    p.add_argument("--text-cache", default="", help="text-embedding cache directory")
    p.add_argument("--raw-weights", action="store_true", help="use the raw instead of the EMA weights")
    p.add_argument(
        "--class-agnostic",
        action="store_true",
        help="also score boxes regardless of class (every box scored by its best class): locating vs naming",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from training.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli("rtvp-eval", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from training.checkpoint import build_from_checkpoint
    from training.plots import plot_pr_curves

    device = dist.resolve_device(args.device, key="--device")
    model, info = build_from_checkpoint(args.checkpoint, device, use_ema=not args.raw_weights)
    split = load_split(args.data, args.split)
    groups = split.group_of() if hasattr(split, "group_of") else {}
    classes = resolve_classes(args.classes, info["class_names"], list(split.class_names), groups)
    data_prompts = dict(zip(split.class_names, getattr(split, "prompts", []) or [], strict=False))
    emb, prompts = vocabulary_embeddings(classes, data_prompts, info, args.text_cache)
    dataset = DetectionDataset(split, classes, info["preprocess_spec"])
    result, detections = evaluate_dataset(
        model,
        dataset,
        emb,
        batch_size=args.batch_size,
        device=device,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        max_detections=args.max_detections,
        progress=sys.stderr.isatty(),
        class_agnostic=args.class_agnostic,
    )
    if groups:
        result["per_group"] = group_metrics(result["per_class"], groups)
    tag = args.classes if args.classes in ("seen", "unseen", "all", *set(groups.values())) else "custom"
    out = Path(args.out or Path("runs") / "eval" / f"{Path(args.checkpoint).parent.name}_{args.split}_{tag}")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(args.checkpoint),
        "weights": info["weights"],
        "data": str(args.data),
        "split": args.split,
        "classes": classes,
        "prompts": prompts,
        "trained_classes": info["class_names"],
        "text_encoder": info["text_encoder"],
        "settings": {
            "score_threshold": args.score_threshold,
            "iou_threshold": args.iou_threshold,
            "max_detections": args.max_detections,
            "input_size": list(info["preprocess_spec"].input_size),
        },
        **result,
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    plot_pr_curves(result["pr_curve_50"], result["per_class"], out / "pr_curves.png")
    write_samples(dataset, detections, out / "samples", args.samples, args.sample_score)
    m = result["metrics"]
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(" ".join(f"{k} {fmt(m[k])}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    for name, pc in result["per_class"].items():
        print(f"  {name:<20s} AP {fmt(pc['AP'])}  AP50 {fmt(pc['AP50'])}  ({pc['n_gt']} boxes)")
    for g, pg in result.get("per_group", {}).items():
        print(
            f"  group {g:<18s} AP {fmt(pg['AP'])}  AP50 {fmt(pg['AP50'])}  ({len(pg['classes'])} classes, {pg['n_gt']} boxes)"
        )
    if "class_agnostic" in result:
        ma = result["class_agnostic"]["metrics"]
        print("class-agnostic " + " ".join(f"{k} {fmt(ma[k])}" for k in ("AP", "AP50", "AP75")))
    print(f"wrote {out / 'eval.json'}")
    return 0


def summarize(result: dict) -> dict[str, float]:
    """Flat ``{metric: value}`` of an evaluation (None for metrics without ground truth -> NaN)."""
    return {k: (float("nan") if v is None else float(v)) for k, v in result["metrics"].items()}


if __name__ == "__main__":
    sys.exit(main())
