"""``rtvp-predict``: run a checkpoint on images or a folder, with the trained classes, other class names, or
free-text prompts (the papers' visual-grounding use), and write annotated images plus JSON.

Usage::

    rtvp-predict --checkpoint runs/glass_demo/best.pt --source data/glass/closed/Images/val
    rtvp-predict --checkpoint runs/glass_demo/best.pt --source img.jpg --classes "bubble,stone"
    rtvp-predict --checkpoint runs/glass_demo/best.pt --source img.jpg --prompt "thin thread inside the glass"

Names and prompts outside the trained vocabulary are encoded with the checkpoint's text encoder (cached);
they only mean something with a pretrained text encoder (CLIP, or the ``minilm`` stand-in).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import torch

from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import preprocess
from training.datasets import DataError, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(source: str | Path) -> list[Path]:
    """The image files of ``source`` (a file, or a folder searched recursively), sorted."""
    p = Path(source)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise DataError(f"{p}: no such image file or folder")


def resolve_vocabulary(info: dict, classes: str = "", prompts: list[str] | None = None) -> list[dict]:
    """``[{name, prompt}]`` to detect: the trained vocabulary, named classes, or free-text prompts.

    Args:
        info: ``build_from_checkpoint`` info.
        classes: comma-separated class names ("" = the trained vocabulary). A trained class keeps its prompt;
            a class of the glass vocabulary (``rtvp_edge.vocabulary``) takes its prompt there; any other name
            is its own prompt.
        prompts: free-text prompts, each detected as a class named by the text.
    """
    if classes and prompts:
        raise DataError("give either --classes or --prompt, not both")
    if prompts:
        return [{"name": p, "prompt": p} for p in prompts]
    if not classes:
        return list(info["vocabulary"])
    from rtvp_edge.vocabulary import GLASS_DEFECTS

    known = {c.name: c.prompt for c in GLASS_DEFECTS}
    known.update({v["name"]: v["prompt"] for v in info["vocabulary"]})
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise DataError(f"--classes {classes!r}: no class names")
    return [{"name": n, "prompt": known.get(n, n)} for n in names]


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    info: dict,
    paths: list[Path],
    vocabulary: list[dict],
    *,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    text_cache: str = "",
):
    """Detections per image (camera pixels), using the runtime's preprocessing and decoding.

    Yields:
        (path, image BGR (H, W, 3) uint8, [Detection]) per image.
    """
    from training.evaluate import vocabulary_embeddings

    names = [v["name"] for v in vocabulary]
    emb, _ = vocabulary_embeddings(names, {v["name"]: v["prompt"] for v in vocabulary}, info, text_cache)
    emb = emb.to(device)
    spec = info["preprocess_spec"]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [read_image(p) for p in chunk]
        batch, letterboxes = preprocess(images, spec)
        boxes, scores = model.forward_inference(torch.from_numpy(batch).to(device), emb)
        boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
        for k, (path, image) in enumerate(zip(chunk, images, strict=True)):
            dets = decode_detections(
                boxes[k], scores[k], letterboxes[k], names, score_threshold=score_threshold,
                iou_threshold=iou_threshold, max_detections=max_detections,
            )  # fmt: skip
            yield path, image, dets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtvp-predict", description="Detect defects with an RTVPNet checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--classes", default="", help="comma-separated class names (default: the trained classes)")
    p.add_argument("--prompt", action="append", default=[], help="free-text prompt (repeatable)")
    p.add_argument("--out", default="", help="output folder (default runs/predict/<run name>)")
    p.add_argument("--score-threshold", type=float, default=0.25)
    p.add_argument("--iou-threshold", type=float, default=0.6)
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--text-cache", default="", help="text-embedding cache directory")
    return p


def main(argv: list[str] | None = None) -> int:
    from training.errors import run_cli

    args = build_parser().parse_args(argv)
    return run_cli("rtvp-predict", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from training.checkpoint import build_from_checkpoint
    from training.dist import resolve_device
    from training.plots import draw_detections

    device = resolve_device(args.device, key="--device")
    paths = list_images(args.source)
    model, info = build_from_checkpoint(args.checkpoint, device)
    vocabulary = resolve_vocabulary(info, args.classes, args.prompt)
    out = Path(args.out or Path("runs") / "predict" / Path(args.checkpoint).parent.name)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used: set[str] = set()
    for path, image, dets in predict_images(
        model, info, paths, vocabulary, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
        max_detections=args.max_detections, batch_size=args.batch_size, device=device, text_cache=args.text_cache,
    ):  # fmt: skip
        stem = path.stem
        while stem in used:  # same file name in two sub-folders
            stem += "_"
        used.add(stem)
        cv2.imwrite(str(out / f"{stem}.jpg"), draw_detections(image, dets))
        records.append(
            {
                "path": str(path),
                "annotated": str(out / f"{stem}.jpg"),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "detections": [
                    {"class": d.class_name, "class_id": d.class_id, "score": round(d.score, 5),
                     "box": [round(v, 2) for v in d.box]}
                    for d in dets
                ],
            }
        )  # fmt: skip
        print(
            f"{path}: {len(dets)} detection(s)"
            + "".join(f"\n  {d.class_name} {d.score:.2f}" for d in dets[:5])
        )
    report = {
        "checkpoint": str(args.checkpoint),
        "text_encoder": info["text_encoder"],
        "vocabulary": vocabulary,
        "score_threshold": args.score_threshold,
        "images": records,
    }
    (out / "predictions.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {len(records)} annotated image(s) and {out / 'predictions.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
