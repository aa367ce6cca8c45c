"""Torch data sets over ``training.data.coco.load_coco_split`` splits.

Images go through ``rtvp_edge.preprocess.letterbox`` and the same normalisation as
``rtvp_edge.preprocess.preprocess`` (the one preprocessing shared with export and the runtime); a sample without
augmentation is bit-identical to what the runtime feeds the model. Targets are in model-input pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rtvp_edge.preprocess import PreprocessSpec, boxes_to_input, clip_crop, letterbox
from training.augment import hflip, hsv_jitter, random_patch, scale_about_centre


class DataError(ValueError):
    """A data set, an image or an annotation is broken; the message names the file."""


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation of one training sample (see ``training.augment``)."""

    flip: float = 0.5
    hsv: tuple[float, float, float] = (0.015, 0.5, 0.3)
    scale_jitter: float = 0.1
    patch: tuple[int, int] | None = None  # (height, width) training window, None = the whole input
    patch_on_defect: float = 0.8


def normalize(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Letterboxed (H, W, 3) uint8 BGR image -> (3, H, W) float32, bit-identical to ``rtvp_edge.preprocess``
    (same per-channel 256-entry lookup table; a unit test guards against drift)."""
    lut = (
        np.arange(256, dtype=np.float32)[None, :] / 255.0 - np.asarray(spec.mean, np.float32)[:, None]
    ) / np.asarray(spec.std, np.float32)[:, None]  # (3, 256), in model channel order
    planes = cv2.split(np.ascontiguousarray(image_bgr))  # B, G, R
    if spec.color == "RGB":
        planes = planes[::-1]
    out = np.empty((3, *image_bgr.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], planes[c], out=out[c])
    return out


def read_image(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a BGR uint8 image, with an error naming the file when it is missing, unreadable or of the wrong size."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    if expected_hw is not None and img.shape[:2] != tuple(expected_hw):
        raise DataError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} (w x h) but the annotations say "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    return img


def boxes_inside(
    boxes: np.ndarray, cls: np.ndarray, region: tuple[int, int, int, int], min_visible: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy clipped to ``region`` (x1, y1, x2, y2); those keeping less than ``min_visible`` of
    their area are dropped (a defect mostly outside the model's crop is not a target), with their classes."""
    x1, y1, x2, y2 = region
    b = boxes.astype(np.float32).copy()
    area0 = np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-6, None)
    b[:, [0, 2]] = b[:, [0, 2]].clip(x1, x2)
    b[:, [1, 3]] = b[:, [1, 3]].clip(y1, y2)
    keep = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= min_visible * area0
    return b[keep], cls[keep]


class DetectionDataset(Dataset):
    """Samples of one data-set split, restricted to a vocabulary.

    Args:
        split: a ``CocoSplit`` (``.images`` of records with ``path, width, height, boxes (N,4) xyxy image px,
            class_ids (N,)``, ``.class_names``).
        vocabulary: class names the model is trained on / evaluated against; targets index into it.
            Annotations of other classes are dropped.
        spec: preprocessing (input size, pad, colour order, mean/std).
        augment: augmentation for training, None for evaluation.
        seed: base seed of the per-sample augmentation.
        indices: subset of ``split.images`` to use (None = all).
    """

    def __init__(
        self,
        split: Any,
        vocabulary: Sequence[str],
        spec: PreprocessSpec,
        augment: AugmentSpec | None = None,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ):
        self.split = split
        self.vocabulary = list(vocabulary)
        missing = [c for c in self.vocabulary if c not in split.class_names]
        if missing:
            raise DataError(f"classes {missing} are not in the data set (it has {list(split.class_names)})")
        self.class_map = {split.class_names.index(c): i for i, c in enumerate(self.vocabulary)}
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.indices = list(range(len(split.images))) if indices is None else list(indices)

    def whole_inputs(self) -> DetectionDataset:
        """The same samples and augmentation without the training window (``AugmentSpec.patch``): what
        batch-norm statistics are recomputed on, since the evaluated model sees the whole input."""
        if self.augment is None or self.augment.patch is None:
            return self
        view = copy.copy(self)
        view.augment = dataclasses.replace(self.augment, patch=None)
        return view

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on the epoch (set by the trainer, inherited by fresh workers)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def targets_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) xyxy image-pixel boxes and (N,) vocabulary class ids of sample ``i`` (no augmentation)."""
        rec = self.split.images[self.indices[i]]
        ids = np.asarray(rec.class_ids, dtype=np.int64).reshape(-1)
        boxes = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
        keep = np.array([int(c) in self.class_map for c in ids], dtype=bool)
        cls = np.array([self.class_map[int(c)] for c in ids[keep]], dtype=np.int64)
        return boxes[keep], cls

    def __getitem__(self, i: int) -> dict:
        rec = self.split.images[self.indices[i]]
        image = read_image(rec.path, (int(rec.height), int(rec.width)))
        boxes, cls = self.targets_of(i)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.indices[i]])
            image = hsv_jitter(image, self.augment.hsv, rng)
        lb_img, lb = letterbox(image, self.spec.input_size, self.spec.pad_value, self.spec.crop)
        if self.spec.crop is not None and len(boxes):
            boxes, cls = boxes_inside(boxes, cls, clip_crop(self.spec.crop, image.shape[:2]))
        boxes = boxes_to_input(boxes, lb) if len(boxes) else boxes.reshape(0, 4)
        if self.augment is not None:
            if rng.random() < self.augment.flip:
                lb_img, boxes = hflip(lb_img, boxes)
            if self.augment.scale_jitter > 0:
                s = 1.0 + rng.uniform(-1.0, 1.0) * self.augment.scale_jitter
                lb_img, boxes, keep = scale_about_centre(lb_img, boxes, s, self.spec.pad_value)
                cls = cls[keep]
            if self.augment.patch is not None:
                lb_img, boxes, keep = random_patch(
                    lb_img, boxes, self.augment.patch, self.augment.patch_on_defect, rng
                )
                cls = cls[keep]
        return {
            "image": torch.from_numpy(normalize(lb_img, self.spec)),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "cls": torch.from_numpy(cls),
            "index": i,
            "letterbox": lb,
            "path": str(rec.path),
        }


def collate(samples: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict]]:
    """Stack samples into the model's training inputs.

    Returns:
        images (B, 3, H, W) float32; targets dict with ``batch_idx`` (M,) int64, ``cls`` (M,) int64 and
        ``boxes`` (M, 4) float32 xyxy input pixels; and per-image meta (``index``, ``letterbox``, ``path``).
    """
    images = torch.stack([s["image"] for s in samples])
    batch_idx = torch.cat([torch.full((len(s["cls"]),), k, dtype=torch.int64) for k, s in enumerate(samples)])
    targets = {
        "batch_idx": batch_idx,
        "cls": torch.cat([s["cls"] for s in samples]),
        "boxes": torch.cat([s["boxes"].reshape(-1, 4) for s in samples]),
    }
    meta = [{"index": s["index"], "letterbox": s["letterbox"], "path": s["path"]} for s in samples]
    return images, targets, meta


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled global batches split across processes, so results do not depend on the process count.

    Each epoch draws one permutation from (seed, epoch); global batch ``k`` is ``perm[k*B:(k+1)*B]`` and
    process ``r`` of ``W`` takes its ``r``-th contiguous slice of ``B/W`` indices. One process with batch B
    and W processes with B/W each therefore see exactly the same samples per optimizer step (unlike
    ``DistributedSampler``, whose strided split changes with W). The incomplete last batch is dropped.

    Args:
        n: data-set length.
        global_batch: B, divisible by ``world_size``.
        rank, world_size: this process and the process count.
        seed: shuffle seed.
        shuffle: False keeps data-set order.
    """

    def __init__(
        self, n: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle=True
    ):
        if global_batch % world_size:
            raise ValueError(f"data.batch_size={global_batch} is not divisible by the {world_size} processes")
        if n < global_batch:
            raise ValueError(
                f"the training set has {n} images, fewer than one batch (data.batch_size={global_batch})"
            )
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world_size
        self.local_batch = global_batch // world_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        for k in range(len(self)):
            start = k * self.global_batch + self.rank * self.local_batch
            yield perm[start : start + self.local_batch]


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shard of this process (strided; results are gathered, so sizes may differ by one)."""
    return list(range(rank, n, world_size))


def dataset_hash(split: Any) -> str:
    """sha256 over what a training run learned from: class names, prompts, each image's name, size and labels.

    Image bytes are represented by file size (hashing every pixel of a large data set at start is slow); a
    changed label, image list or vocabulary changes the hash.
    """
    h = hashlib.sha256()
    h.update(repr(list(split.class_names)).encode())
    h.update(repr(list(getattr(split, "prompts", []))).encode())
    for rec in split.images:
        size = os.path.getsize(rec.path) if os.path.exists(rec.path) else -1
        h.update(f"{os.path.basename(str(rec.path))}|{rec.width}|{rec.height}|{size}|".encode())
        h.update(np.asarray(rec.boxes, dtype=np.float32).tobytes())
        h.update(np.asarray(rec.class_ids, dtype=np.int64).tobytes())
    return h.hexdigest()


def steps_per_epoch(n_images: int, global_batch: int) -> int:
    return max(1, math.floor(n_images / global_batch))
