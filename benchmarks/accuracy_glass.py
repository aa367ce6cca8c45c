"""Accuracy on the synthetic glass-container set, with a budget you choose: RTVPNet closed AP50, open AP50
(unseen classes, from prompts; ``minilm`` text-encoder stand-in), the Table VII component switches, and a
YOLOv8-S peer trained by Ultralytics on the same data and budget. Every model is scored by the same code
(``rtvp_edge.postprocess.decode_detections`` + pycocotools through ``training.coco_eval``).

Ultralytics is AGPL: a benchmark-only peer, imported here alone, never by the product, never in setup.cfg
(``pip install ultralytics``). It runs offline (YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0), from scratch (no
pretrained weights can be downloaded here), with its default augmentation recipe.

    python benchmarks/accuracy_glass.py --data data/glass_bench --containers 120 --img-size 320 \
        --epochs 10 --batch 8 --rows closed open ablation yolo --threads 2

Rows: ``closed`` (full RTVPNet, closed protocol), ``open`` (full RTVPNet, open protocol, minilm),
``ablation`` (Table VII: each of EDP, RVP, V-T, T-V switched off in turn, and all off = the expert alone),
``yolo`` (YOLOv8-S by Ultralytics), ``compositional`` (not run by default: the compositional protocol of
``rtvp-data generate``, two runs on ``DATA/compositional``: trained on the seen types and evaluated on the
held-out ones from their prompts, and trained on every type (``train_all``) as the reference; AP50 per
held-out group, ``unseen_combination`` and ``unseen_type``, and the ratio open / trained-on-them). Results go
to a JSON file and Markdown tables on stdout.

    python benchmarks/accuracy_glass.py --data data/glass_bench --containers 300 --rows compositional ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ABLATION = {  # Table VII switches; "full" has all four on
    "full": {},
    "-EDP": {"model.edp": False, "model.projection": False},
    "-RVP": {"model.rvp": False},
    "-V-T": {"model.vt": False},
    "-T-V": {"model.tv": False},
    "expert only": {"model.edp": False, "model.projection": False, "model.rvp": False, "model.vt": False,
                    "model.tv": False},
}  # fmt: skip


def ensure_data(root: Path, containers: int, seed: int, size_scale: float) -> dict[str, Path]:
    from rtvp_edge.rig import RigConfig
    from training.data.generate import generate_dataset

    if (root / "closed" / "manifest.json").is_file() and (root / "open" / "manifest.json").is_file():
        return {"closed": root / "closed", "open": root / "open"}
    cfg = RigConfig(seed=seed, defect_size_scale=size_scale)
    return generate_dataset(
        root, containers=containers, protocol="both", config=cfg, workers=2, progress=False
    )


def img_size_value(args) -> int | list[int]:
    """``--img-size``: one side (a square input) or height width, as ``model.img_size`` takes it."""
    return args.img_size[0] if len(args.img_size) == 1 else list(args.img_size)


def ensure_compositional(root: Path, containers: int, seed: int, size_scale: float) -> Path:
    """``root/compositional``, generated with the built-in split when missing."""
    from rtvp_edge.rig import RigConfig
    from training.data.generate import generate_dataset

    if (root / "compositional" / "manifest.json").is_file():
        return root / "compositional"
    cfg = RigConfig(seed=seed, defect_size_scale=size_scale)
    return generate_dataset(
        root, containers=containers, protocol="compositional", config=cfg, workers=2, progress=False
    )["compositional"]


def group_ap50(per_class_ap50: dict[str, float | None], groups: dict[str, str]) -> dict[str, float | None]:
    """AP50 per held-out group from per-class AP50 (None: no ground truth), as ``rtvp-eval`` reports it."""
    from training.evaluate import group_metrics

    per_class = {n: {"AP": v, "AP50": v, "n_gt": 0 if v is None else 1} for n, v in per_class_ap50.items()}
    return {g: r["AP50"] for g, r in group_metrics(per_class, groups).items()}


def run_compositional(root: Path, out: Path, args) -> dict[str, dict]:
    """The open run (seen types, held-out ones from text) and the reference trained on every type."""
    groups = json.loads((root / "manifest.json").read_text())["groups"]
    enc = {"text.encoder": args.text_encoder}
    open_run = run_rtvpnet("compositional_open", root, out, args, "open", enc)
    ref = run_rtvpnet(
        "compositional_all", root, out, args, "closed", {**enc, "data.train_split": "train_all"}
    )
    rows = {}
    for key, r in ((f"RTVPNet compositional open ({args.text_encoder})", open_run),
                   (f"RTVPNet compositional, trained on every type ({args.text_encoder})", ref)):  # fmt: skip
        r["per_group_AP50"] = group_ap50(r["per_class_AP50"], groups)
        rows[key] = r
    for g in ("unseen_combination", "unseen_type"):
        a, b = open_run["per_group_AP50"].get(g), ref["per_group_AP50"].get(g)
        open_run.setdefault("ratio_to_trained", {})[g] = None if a is None or not b else a / b
    return rows


def run_rtvpnet(name: str, root: Path, out: Path, args, protocol: str, extra: dict) -> dict:
    from training.config import load_config
    from training.train import run_training

    overrides = {
        "name": name, "protocol": protocol, "data.root": str(root), "data.batch_size": args.batch,
        "data.workers": args.workers, "model.variant": args.variant, "model.img_size": img_size_value(args),
        "schedule.epochs": args.epochs, "schedule.pretrain_epochs": args.pretrain_epochs,
        "schedule.warmup_epochs": 1, "optim.lr": args.lr, "eval.every": 0, "output.dir": str(out),
        "output.progress": False, "output.plots": False, "text.encoder": args.text_encoder if protocol == "open"
        else args.closed_text_encoder, "device": "cpu", "threads": args.threads, "seed": args.seed,
        "output.overwrite": True,
    }  # fmt: skip
    overrides.update(extra)
    for item in args.set:  # applied to every row, after the row's own switches
        k, _, v = item.partition("=")
        overrides[k] = v
    cfg = load_config(args.config or None, [f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
                                            for k, v in overrides.items()])  # fmt: skip
    t0 = time.perf_counter()
    run = run_training(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1]
    per_class = {k.split("/")[1]: v for k, v in last.items() if k.startswith("val_class/")}
    return {
        "AP": last.get("val/AP"), "AP50": last.get("val/AP50"), "AP75": last.get("val/AP75"),
        "per_class_AP50": per_class, "train_s": time.perf_counter() - t0, "epochs": args.epochs,
        "images_per_s": sum(r["train/images_per_s"] for r in rows) / len(rows),
    }  # fmt: skip


def write_yolo_crops(root: Path, yroot: Path, crop: tuple[int, int, int, int]) -> list[str]:
    """The data set as Ultralytics reads it, cut to ``crop`` (x1, y1, x2, y2 camera pixels): the input
    policy RTVPNet's ``data.crop`` gives it. Labels follow the RTVPNet rule (``boxes_inside``): a box keeping
    less than half its area inside the crop is no target. Returns the class names."""
    import cv2

    from training.data.coco import load_coco_split
    from training.datasets import boxes_inside

    x1, y1, x2, y2 = crop
    names: list[str] = []
    for split_name in ("train", "val"):
        split = load_coco_split(root, split_name)
        names = list(split.class_names)
        idir, ldir = yroot / "images" / split_name, yroot / "labels" / split_name
        idir.mkdir(parents=True, exist_ok=True)
        ldir.mkdir(parents=True, exist_ok=True)
        for rec in split.images:
            dst = idir / Path(rec.path).name
            if dst.exists():
                continue
            img = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"{rec.path}: not a readable image")
            cx2, cy2 = min(x2, img.shape[1]), min(y2, img.shape[0])
            boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
            cls = np.asarray(rec.class_ids, np.int64).reshape(-1)
            lines = []
            if len(boxes):
                boxes, cls = boxes_inside(boxes, cls, (x1, y1, cx2, cy2))
                w, h = cx2 - x1, cy2 - y1
                for (bx1, by1, bx2, by2), c in zip(boxes - [x1, y1, x1, y1], cls, strict=True):
                    lines.append(f"{int(c)} {(bx1 + bx2) / 2 / w:.6f} {(by1 + by2) / 2 / h:.6f} "
                                 f"{(bx2 - bx1) / w:.6f} {(by2 - by1) / h:.6f}")  # fmt: skip
            (ldir / dst.with_suffix(".txt").name).write_text("\n".join(lines) + ("\n" if lines else ""))
            cv2.imwrite(str(dst), img[y1:cy2, x1:cx2])
    return names


def run_yolo(root: Path, out: Path, args) -> dict:
    """YOLOv8-S from scratch by Ultralytics on the closed split, scored by our COCO evaluation."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out / "ultralytics_cfg"))
    import yaml
    from ultralytics import YOLO  # AGPL: benchmark-only peer

    from training.coco_eval import coco_evaluate, coco_ground_truth
    from training.data.coco import load_coco_split

    crop = tuple(args.yolo_crop) if args.yolo_crop else None
    yroot = out / ("yolo_data_crop_" + "_".join(map(str, crop)) if crop else "yolo_data")
    if crop:
        names = write_yolo_crops(root, yroot, crop)
    else:
        # Ultralytics finds labels by replacing /images/ with /labels/ in each image path: link our files so.
        names = json.loads((root / "manifest.json").read_text())["names"]
        for split in ("train", "val"):
            for kind, src in (("images", root / "Images" / split), ("labels", root / "labels" / split)):
                d = yroot / kind / split
                d.mkdir(parents=True, exist_ok=True)
                for f in src.iterdir():
                    if not (d / f.name).exists():
                        (d / f.name).symlink_to(f.resolve())
    data_yaml = yroot / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(yroot), "train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(names))}))  # fmt: skip
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = YOLO("yolov8s.yaml")
    # --yolo-time-h: hours of training instead of --epochs (Ultralytics fits its LR schedule to the time)
    budget = {"time": args.yolo_time_h} if args.yolo_time_h else {}
    imgsz = max(args.img_size)  # Ultralytics letterboxes into a square: the longer side of our input
    model.train(data=str(data_yaml), epochs=args.epochs, imgsz=imgsz, batch=args.batch, device="cpu",
                workers=args.workers, pretrained=False, amp=False, plots=False, val=False, project=str(out),
                name="yolov8s", exist_ok=True, seed=args.seed, verbose=False, lr0=0.01, **budget)  # fmt: skip
    train_s = time.perf_counter() - t0
    split = load_coco_split(root, "val")
    index = {n: i for i, n in enumerate(split.class_names)}
    dets, sizes, gt_b, gt_c = [], [], [], []
    for img_id, rec in enumerate(split.images):
        sizes.append((rec.height, rec.width))
        gt_b.append(rec.boxes)
        gt_c.append(rec.class_ids)
        source = yroot / "images" / "val" / Path(rec.path).name if crop else rec.path
        res = model.predict(str(source), imgsz=imgsz, conf=0.001, iou=0.6, max_det=100, verbose=False,
                            device="cpu")[0]  # fmt: skip
        b = res.boxes
        dx, dy = (crop[0], crop[1]) if crop else (0, 0)  # back to camera pixels, where the ground truth is
        for box, score, cls in zip(b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int), strict=True):
            k = index.get(names[cls])
            if k is not None:
                x1, y1, x2, y2 = (float(v) for v in box + np.array([dx, dy, dx, dy], np.float32))
                dets.append({"image_id": img_id, "category_id": k + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "score": float(score)})  # fmt: skip
    r = coco_evaluate(coco_ground_truth(sizes, gt_b, gt_c, split.class_names), dets, split.class_names)
    m = r["metrics"]
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "train_s": train_s, "crop": crop, "imgsz": imgsz,
            "epochs": args.epochs if not args.yolo_time_h else f"time budget {args.yolo_time_h} h",
            "per_class_AP50": {k: v["AP50"] for k, v in r["per_class"].items()}, "n_val_images": len(split.images)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/glass_bench")
    p.add_argument("--containers", type=int, default=120)
    p.add_argument("--defect-size-scale", type=float, default=1.0)
    p.add_argument("--out", default="runs/accuracy_glass")
    p.add_argument("--config", default="", help="base YAML (default: built-in defaults + the flags here)")
    p.add_argument("--variant", default="rtvpnet_tiny")
    p.add_argument("--img-size", type=int, nargs="+", default=[320], help="one side, or height width")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-encoder", default="minilm", help="open-protocol text encoder")
    p.add_argument("--closed-text-encoder", default="minilm")
    p.add_argument("--set", nargs="*", default=[], help="key=value overrides applied to every RTVPNet row")
    p.add_argument("--rows", nargs="+", default=["closed", "open", "ablation", "yolo"])
    p.add_argument(
        "--yolo-time-h",
        type=float,
        default=0.0,
        help="train the YOLOv8-S peer for this many hours instead of --epochs (same CPU time)",
    )
    p.add_argument(
        "--yolo-crop",
        type=int,
        nargs=4,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="the YOLOv8-S peer sees this region of each view (camera pixels), as RTVPNet's data.crop does",
    )
    p.add_argument("--ablation-rows", nargs="+", default=list(ABLATION), type=lambda r: f"-{r}" if f"-{r}" in ABLATION else r,
                   choices=list(ABLATION), help="Table VII rows; EDP, RVP, V-T, T-V stand for -EDP, ... on a command line")  # fmt: skip
    p.add_argument("--json", default="benchmarks/results/accuracy_glass.json")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    roots = ensure_data(Path(args.data), args.containers, args.seed, args.defect_size_scale)
    out = Path(args.out)
    results: dict[str, dict] = {}
    # the full closed row is the ablation's reference; --ablation-rows without "full" leaves it to another run
    if "closed" in args.rows or ("ablation" in args.rows and "full" in args.ablation_rows):
        results["RTVPNet closed (full)"] = run_rtvpnet(
            "closed_full", roots["closed"], out, args, "closed", {}
        )
        print(json.dumps({"RTVPNet closed (full)": results["RTVPNet closed (full)"]}), flush=True)
    if "ablation" in args.rows:
        for row in args.ablation_rows:
            if row == "full":
                continue
            key = f"RTVPNet closed ({row})"
            results[key] = run_rtvpnet(f"closed_{row.strip('-').replace(' ', '_')}", roots["closed"], out, args,
                                       "closed", ABLATION[row])  # fmt: skip
            print(json.dumps({key: results[key]}), flush=True)
    if "open" in args.rows:
        key = f"RTVPNet open, unseen classes ({args.text_encoder})"
        results[key] = run_rtvpnet("open_full", roots["open"], out, args, "open", {})
        print(json.dumps({key: results[key]}), flush=True)
    if "compositional" in args.rows:
        comp = ensure_compositional(Path(args.data), args.containers, args.seed, args.defect_size_scale)
        for key, r in run_compositional(comp, out, args).items():
            results[key] = r
            print(json.dumps({key: r}), flush=True)
    if "yolo" in args.rows:
        results["YOLOv8-S (Ultralytics, from scratch)"] = run_yolo(roots["closed"], out, args)
        print(json.dumps({"YOLOv8-S": results["YOLOv8-S (Ultralytics, from scratch)"]}), flush=True)
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print(
        f"\nbudget: {args.epochs} epochs, {args.img_size} px, batch {args.batch}, {args.variant}, "
        f"data {args.data} ({args.containers} containers), seed {args.seed}\n"
    )
    print("| model | AP | AP50 | AP75 | train time (s) |\n|---|---|---|---|---|")
    for k, r in results.items():
        print(f"| {k} | {fmt(r['AP'])} | {fmt(r['AP50'])} | {fmt(r['AP75'])} | {r['train_s']:.0f} |")
    grouped = {k: r for k, r in results.items() if "per_group_AP50" in r}
    if grouped:
        print("\n| model | AP50 seen | AP50 unseen combination | AP50 unseen type | open / trained on them |")
        print("|---|---|---|---|---|")
        for k, r in grouped.items():
            pg, ratio = r["per_group_AP50"], r.get("ratio_to_trained", {})
            ratios = ", ".join(f"{g} {fmt(v)} %" for g, v in ratio.items())
            print(f"| {k} | {fmt(pg.get('seen'))} | {fmt(pg.get('unseen_combination'))} | "
                  f"{fmt(pg.get('unseen_type'))} | {ratios} |")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
