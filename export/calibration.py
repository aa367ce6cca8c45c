"""Stage: the calibration set, built once and reused by every backend (OpenVINO/NNCF, ONNX Runtime QDQ,
TensorRT's calibrator), so all INT8 artifacts of one export saw the same images, preprocessed by the same
shared function (``rtvp_edge.preprocess``).

A source is either a folder of line images (searched recursively) or a data set root in the project's
layout (``root/Images/<split>/*.png``; calibration uses the ``train`` split, the accuracy guard ``val``).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from export.errors import ExportError
from rtvp_edge.preprocess import PreprocessSpec, letterbox, preprocess

log = logging.getLogger("rtvp_export")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
RECOMMENDED_SIZE = 300


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted. Raises ``ExportError`` if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"calibration data {folder} not found (expected a folder of images or a data set)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ExportError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def is_dataset(root: str | os.PathLike) -> bool:
    return (Path(root) / "Images").is_dir()


def calibration_images(source: str | os.PathLike, split: str = "train") -> tuple[str, list[Path]]:
    """(kind, image paths) of a calibration source: ``"dataset:<split>"`` or ``"folder"``."""
    root = Path(source)
    if is_dataset(root) and (root / "Images" / split).is_dir():
        return f"dataset:{split}", list_images(root / "Images" / split)
    return "folder", list_images(root)


@dataclass
class CalibrationSet:
    """Letterboxed calibration images held in memory (uint8, BGR, model input size).

    Kept as uint8 rather than float tensors: 4x less memory; ``batches`` normalises through the shared
    ``preprocess`` (a letterbox of an image already at input size is the identity; the crop was applied
    when the set was built).
    """

    images: list[np.ndarray]  # each (H, W, 3) uint8 BGR at spec.input_size
    paths: list[Path]
    spec: PreprocessSpec
    source: str
    kind: str
    seed: int

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, i: int) -> np.ndarray:
        """(1, 3, H, W) float32 model input of image ``i``."""
        return preprocess([self.images[i]], self.spec.with_crop(None))[0]

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """(B, 3, H, W) float32 batches in a fixed order; the last batch may be smaller."""
        for start in range(0, len(self.images), batch_size):
            # the images are already cropped and letterboxed: only the normalisation is left to do
            yield preprocess(self.images[start : start + batch_size], self.spec.with_crop(None))[0]

    def describe(self) -> dict:
        """Calibration provenance for the manifest."""
        return {
            "source": self.source,
            "kind": self.kind,
            "images": len(self.images),
            "seed": self.seed,
            "files": [p.name for p in self.paths[:20]] + (["..."] if len(self.paths) > 20 else []),
        }


def build_calibration_set(
    source: str | os.PathLike,
    spec: PreprocessSpec,
    size: int = RECOMMENDED_SIZE,
    seed: int = 0,
    progress: bool = True,
    split: str = "train",
) -> CalibrationSet:
    """Pick ``size`` images (a seeded random subset, reproducible) and letterbox them once.

    Args:
        source: folder of images or data set root.
        spec: the bundle's preprocessing.
        size: number of images; fewer than 300 gives a warning (INT8 ranges from few images are noisy).
        seed: subset selection seed.
        split: the data set split calibrated on (a data set root only; the held-out split is never used).
    Raises:
        ExportError: missing folder, "no images in DIR", unreadable image (named), size < 1.
    """
    if size < 1:
        raise ExportError(f"--calib-size must be at least 1, got {size}")
    kind, paths = calibration_images(source, split)
    if len(paths) > size:
        paths = sorted(random.Random(seed).sample(paths, size))
    if len(paths) < size:
        log.warning("calibration: only %d images in %s (asked for %d)", len(paths), source, size)
    if len(paths) < RECOMMENDED_SIZE:
        log.warning(
            "calibration with %d images (< %d recommended): INT8 activation ranges may be unrepresentative",
            len(paths),
            RECOMMENDED_SIZE,
        )
    images = []
    for p in tqdm(paths, desc="calibration set", unit="img", disable=not progress, leave=False):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ExportError(f"calibration image {p}: cannot be read as an image")
        images.append(letterbox(img, spec.input_size, spec.pad_value, spec.crop)[0])
    return CalibrationSet(images, paths, spec, str(source), kind, seed)
