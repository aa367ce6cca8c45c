"""The one preprocessing function shared by training (evaluation), export and the runtime.

The model sees a region of the camera image (the whole image, or a crop to where the part is: a defect
of 10 px stays 10 px instead of shrinking with the rest of the view), letterboxed into the model input,
RGB, normalised. Its parameters travel in the checkpoint and the bundle manifest (``PreprocessSpec``) so
training, export and the runtime share one definition and never repeat constants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """How a camera image becomes a model input.

    Args:
        input_size: (height, width) of the model input in pixels.
        pad_value: grey level of the letterbox padding (0-255).
        color: channel order the model expects, ``"RGB"`` or ``"BGR"``.
        mean: per-channel mean subtracted after scaling to [0, 1], in ``color`` order.
        std: per-channel std divided by after the mean, in ``color`` order.
        crop: (x1, y1, x2, y2) region of the camera image the model sees, in camera pixels (x2/y2
            exclusive), before the letterbox; None = the whole image. Clipped to each image's bounds.
    """

    input_size: tuple[int, int] = (640, 640)
    pad_value: int = 114
    color: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.crop is not None:
            x1, y1, x2, y2 = self.crop
            if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1:
                raise ValueError(
                    f"preprocess crop must be (x1, y1, x2, y2) with 0 <= x1 < x2, 0 <= y1 < y2; got {self.crop}"
                )

    def with_crop(self, crop: tuple[int, int, int, int] | None) -> PreprocessSpec:
        """The same preprocessing with another crop (a camera's own region of interest)."""
        return replace(self, crop=None if crop is None else tuple(int(v) for v in crop))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["crop"] = None if self.crop is None else list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """From a checkpoint's or manifest's plain mapping (missing keys take the defaults)."""
        crop = d.get("crop")
        return cls(
            input_size=tuple(int(v) for v in d.get("input_size", (640, 640))),
            pad_value=int(d.get("pad_value", 114)),
            color=str(d.get("color", "RGB")),
            mean=tuple(float(v) for v in d.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(float(v) for v in d.get("std", (1.0, 1.0, 1.0))),
            crop=None if crop is None else tuple(int(v) for v in crop),
        )


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one crop + letterbox: ``input = (image - (crop_x, crop_y)) * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    image_size: tuple[int, int]  # (height, width) of the original (uncropped) image
    crop_x: int = 0
    crop_y: int = 0


def clip_crop(crop: tuple[int, int, int, int] | None, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``crop`` clipped to an image of ``image_hw``; the whole image when None or when nothing is left."""
    h, w = image_hw
    if crop is None:
        return (0, 0, w, h)
    x1, y1 = min(max(int(crop[0]), 0), w), min(max(int(crop[1]), 0), h)
    x2, y2 = min(int(crop[2]), w), min(int(crop[3]), h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return (0, 0, w, h)  # a frame of the wrong size: the model sees all of it rather than nothing
    return (x1, y1, x2, y2)


def letterbox(
    image: np.ndarray,
    input_size: tuple[int, int],
    pad_value: int = 114,
    crop: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Crop, resize keeping the aspect ratio and pad to ``input_size``, centred.

    Args:
        image: (H, W, 3) uint8.
        input_size: (height, width) of the output.
        crop: (x1, y1, x2, y2) region in image pixels (clipped to the image, see ``clip_crop``); None = all.
    Returns:
        (input_h, input_w, 3) uint8 image and the ``Letterbox`` geometry.
    """
    full_hw = image.shape[:2]
    x1, y1, x2, y2 = clip_crop(crop, full_hw)
    if (x1, y1, x2, y2) != (0, 0, full_hw[1], full_hw[0]):
        image = image[y1:y2, x1:x2]
    h, w = image.shape[:2]
    out_h, out_w = input_size
    scale = min(out_h / h, out_w / w)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    resized = (
        image
        if (new_w, new_h) == (w, h)
        else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    )
    pad_x = (out_w - new_w) / 2
    pad_y = (out_h - new_h) / 2
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    bottom, right = out_h - new_h - top, out_w - new_w - left
    out = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    lb = Letterbox(scale=scale, pad_x=float(left), pad_y=float(top), image_size=full_hw, crop_x=x1, crop_y=y1)
    return out, lb


def preprocess(
    images_bgr: list[np.ndarray],
    spec: PreprocessSpec,
    crops: list[tuple[int, int, int, int] | None] | None = None,
) -> tuple[np.ndarray, list[Letterbox]]:
    """Turn camera images into one model batch.

    Args:
        images_bgr: list of B images, each (H_i, W_i, 3) uint8 BGR (OpenCV order).
        spec: the bundle's preprocessing.
        crops: per image, a camera's own region of interest replacing ``spec.crop`` (None entries, or
            no list, keep ``spec.crop``).
    Returns:
        (B, 3, input_h, input_w) float32 contiguous array, and one ``Letterbox`` per image.
    """
    batch = np.empty((len(images_bgr), 3, *spec.input_size), dtype=np.float32)
    boxes: list[Letterbox] = []
    # The input is uint8, so scaling and normalisation are a 256-entry lookup table per channel: one
    # gather per plane instead of several float passes over a strided (reversed, transposed) view.
    lut = (
        np.arange(256, dtype=np.float32)[None, :] / 255.0 - np.asarray(spec.mean, np.float32)[:, None]
    ) / np.asarray(spec.std, np.float32)[:, None]  # (3, 256), in model channel order
    for i, img in enumerate(images_bgr):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {img.shape} dtype {img.dtype}")
        crop = crops[i] if crops is not None and crops[i] is not None else spec.crop
        lb_img, lb = letterbox(img, spec.input_size, spec.pad_value, crop)
        planes = cv2.split(lb_img)  # B, G, R contiguous planes
        if spec.color == "RGB":
            planes = planes[::-1]
        for c in range(3):
            np.take(lut[c], planes[c], out=batch[i, c])
        boxes.append(lb)
    return batch, boxes


def boxes_to_image(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map (N, 4) xyxy boxes from model-input pixels back to camera-image pixels, clipped."""
    out = boxes_xyxy.astype(np.float32).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale + lb.crop_x
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.scale + lb.crop_y
    h, w = lb.image_size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def boxes_to_input(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map (N, 4) xyxy boxes from camera-image pixels to model-input pixels (for training targets)."""
    out = boxes_xyxy.astype(np.float32).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.crop_x) * lb.scale + lb.pad_x
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.crop_y) * lb.scale + lb.pad_y
    return out
