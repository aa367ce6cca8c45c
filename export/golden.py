"""Stage: golden samples, so the runtime can self-test a bundle at start.

A few generated glass-container images (the simulated rig when available, else held-out or calibration
images) are written as PNG with the detections this exact artifact produces on them, decoded by the runtime's
own ``decode_detections`` with the bundle's thresholds. ``check_golden`` compares with the runtime's own
``rtvp_edge.selftest.golden_differences``; export runs it on the finished bundle before renaming it into
place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from export.errors import ExportError
from rtvp_edge.bundle import BundleError, BundleManifest, GoldenSample, Thresholds, read_verified
from rtvp_edge.messages import Detection
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess
from rtvp_edge.selftest import golden_differences

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


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


def decode(
    runner: Runner, image_bgr: np.ndarray, spec: PreprocessSpec, class_names: Sequence[str], thr: Thresholds
) -> list[Detection]:
    batch, (lb,) = preprocess([image_bgr], spec)
    boxes, scores = runner(batch)
    return decode_detections(boxes[0], scores[0], lb, class_names, thr.score, thr.iou, thr.max_detections)


def _as_dict(d: Detection) -> dict:
    return {
        "class_id": d.class_id,
        "class_name": d.class_name,
        "score": round(d.score, 6),
        "box": [round(v, 3) for v in d.box],
    }


def write_golden(
    bundle_dir: str | os.PathLike,
    images: Sequence[np.ndarray],
    runners: dict[str | tuple[str, str], Runner],
    spec: PreprocessSpec,
    class_names: Sequence[str],
    thresholds: Thresholds,
) -> list[GoldenSample]:
    """Write ``golden/NNN.png`` and the expected detections of every artifact, keyed by backend, or by
    (backend, precision) when a backend has several artifacts (OpenVINO INT8 and FP32)."""
    root = Path(bundle_dir)
    (root / "golden").mkdir(parents=True, exist_ok=True)
    samples = []
    for i, img in enumerate(images):
        rel = f"golden/{i:03d}.png"
        if not cv2.imwrite(str(root / rel), img):
            raise ExportError(f"cannot write golden image {root / rel}")
        # Read back what was written (PNG is lossless, but the runtime sees the file, not our array).
        img = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
        for key, runner in runners.items():
            backend, precision = key if isinstance(key, tuple) else (key, None)
            dets = decode(runner, img, spec, class_names, thresholds)
            samples.append(
                GoldenSample(
                    image=rel, detections=[_as_dict(d) for d in dets], backend=backend, precision=precision
                )
            )
    return samples


def check_golden(
    bundle_dir: str | os.PathLike,
    manifest: BundleManifest,
    backend: str,
    runner: Runner,
    precision: str | None = None,
) -> int:
    """Run the bundle's golden images for ``backend`` (its ``precision`` artifact when given) through
    ``runner``; raise ``ExportError`` on mismatch.

    Returns the number of golden samples checked.
    """
    root = Path(bundle_dir)
    spec = manifest.preprocess.spec()
    names = [c.name for c in manifest.vocabulary.classes]
    thr = manifest.thresholds
    checked = 0
    for g in manifest.golden_for(backend, precision):
        try:
            data = read_verified(root, manifest, g.image, "golden image")  # decode what was hashed
        except BundleError as e:
            raise ExportError(str(e)) from None
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ExportError(f"golden image {root / g.image} cannot be read")
        problems = golden_differences(
            g.detections, decode(runner, img, spec, names, thr), g.score_atol, g.box_atol, thr.score, names
        )
        if problems:
            raise ExportError(
                f"golden self-test of {backend} on {g.image} failed: " + "; ".join(problems[:5])
            )
        checked += 1
    if checked == 0:
        raise ExportError(f"the bundle has no golden samples for backend {backend}")
    return checked
