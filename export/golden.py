"""Stage: golden samples, so the runtime can self-test a bundle at start.

A few generated glass-container images (the simulated rig when available, else held-out or calibration
images) are written as PNG; the detections each golden artifact produces on them are recorded by the
runtime itself (``rtvp_edge.selftest.record_golden``: its backend, its preprocessing, its decoding with the
bundle's thresholds), and checked the same way (``export.verify.verify_bundle``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from export.errors import ExportError
from rtvp_edge.bundle import Artifact, GoldenSample
from rtvp_edge.preprocess import PreprocessSpec


def rig_images(count: int, seed: int = 2026) -> list[np.ndarray]:
    """``count`` camera views (BGR uint8 (820, 700, 3)) of generated glass containers, or [] when the
    simulated rig is not installed. Containers from a seed the training rig does not use by default."""
    try:
        from rtvp_edge.rig import RigConfig, render_container
    except ImportError:
        return []
    images: list[np.ndarray] = []
    cfg = RigConfig(seed=seed)
    index = 0
    while len(images) < count:
        views = render_container(cfg, index)
        # Prefer views showing defects: golden samples with detections test more than empty ones.
        ranked = sorted(views, key=lambda v: -len(v[1]))
        images.extend(img for img, _ in ranked[: max(1, count - len(images))][:2])
        index += 1
    return images[:count]


def check_images(spec: PreprocessSpec, paths: Sequence[Path], count: int) -> list[np.ndarray]:
    """Camera images (H, W, 3) uint8 BGR for parity checks and golden samples: generated glass containers
    (the rig), else the first of ``paths`` (held-out or calibration images), else one grey frame with a
    dark blob (still exercises the whole graph)."""
    images = rig_images(count)
    if images:
        return images
    images = [img for p in paths[:count] if (img := cv2.imread(str(p), cv2.IMREAD_COLOR)) is not None]
    if not images:
        h, w = spec.input_size
        img = np.full((h, w, 3), 170, np.uint8)
        cv2.circle(img, (w // 2, h // 2), max(2, min(h, w) // 10), (40, 40, 40), -1)
        images = [img]
    return images


def golden_placeholders(
    bundle_dir: str | os.PathLike, images: Sequence[np.ndarray], golden: Sequence[Artifact]
) -> list[GoldenSample]:
    """Write ``golden/NNN.png`` and one sample per image and golden artifact, detections still empty
    (``record_golden`` fills them). Samples name the backend, and the precision too when the bundle records
    golden outputs of several artifacts (OpenVINO INT8 and FP32)."""
    root = Path(bundle_dir)
    (root / "golden").mkdir(parents=True, exist_ok=True)
    keys = [(a.backend, a.precision if len(golden) > 1 else None) for a in golden]
    samples = []
    for i, img in enumerate(images):
        rel = f"golden/{i:03d}.png"
        if not cv2.imwrite(str(root / rel), img):
            raise ExportError(f"cannot write golden image {root / rel}")
        samples += [GoldenSample(image=rel, detections=[], backend=b, precision=p) for b, p in keys]
    return samples
