"""Pictures a person reads: training curves, precision-recall curves, sample detections (matplotlib, OpenCV)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (one JSON object per epoch)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_jsonl: str | Path, out_dir: str | Path) -> list[Path]:
    """Plot loss terms, learning rate and validation AP per epoch.

    Returns:
        The written PNG files (``losses.png``, ``lr.png``, ``ap.png``; those with data).
    """
    rows = read_metrics(metrics_jsonl)
    if not rows:
        return []
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [r["epoch"] for r in rows]
    written = []

    def series(prefix: str) -> dict[str, list[float]]:
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        return {k[len(prefix) :]: [r.get(k, np.nan) for r in rows] for k in keys}

    for fname, prefix, title, ylabel in (
        ("losses.png", "train/", "training losses", "loss"),
        ("ap.png", "val/", "validation", "COCO metric"),
    ):
        data = series(prefix)
        if prefix == "train/":
            data = {k: v for k, v in data.items() if k not in ("lr", "images_per_s", "grad_norm")}
        else:
            data = {k: v for k, v in data.items() if k in ("AP", "AP50", "AP75")}
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, v in data.items():
            ax.plot(epochs, [np.nan if x is None else x for x in v], marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)
        written.append(out_dir / fname)
    lr = [r.get("train/lr") for r in rows]
    if any(v is not None for v in lr):
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(epochs, lr, marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate (end of epoch)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "lr.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "lr.png")
    return written


def plot_pr_curves(
    curves: dict[str, Sequence[float]], per_class: dict[str, dict], out_path: str | Path
) -> Path:
    """Precision-recall curves at IoU 0.5, one line per class, AP50 in the legend."""
    plt = _pyplot()
    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, prec in curves.items():
        ap50 = per_class.get(name, {}).get("AP50")
        label = f"{name} (AP50 {ap50:.3f})" if ap50 is not None else f"{name} (no ground truth)"
        ax.plot(recall, prec, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def _colour(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(class_id + 7)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


def draw_detections(
    image_bgr: np.ndarray,
    detections: Sequence,
    ground_truth: Sequence[tuple[str, Sequence[float]]] = (),
) -> np.ndarray:
    """Annotate a copy of the image.

    Args:
        image_bgr: (H, W, 3) uint8.
        detections: ``rtvp_edge.messages.Detection`` objects (boxes in image pixels), drawn solid with labels.
        ground_truth: (class name, xyxy box) pairs, drawn as thin white boxes.
    """
    out = image_bgr.copy()
    for _, box in ground_truth:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1)
    for d in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        c = _colour(d.class_id)
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 2)
        label = f"{d.class_name} {d.score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ty = max(th + 2, y1)
        cv2.rectangle(out, (x1, ty - th - 3), (x1 + tw + 2, ty), c, -1)
        cv2.putText(out, label, (x1 + 1, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out
