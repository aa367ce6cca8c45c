"""The one preprocessing function shared by training (evaluation), export and the runtime.

The model sees a letterboxed, RGB, normalised square-or-rectangular image. Its parameters travel in the
bundle manifest (``PreprocessSpec``) so the runtime never repeats constants.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    input_size: tuple[int, int] = (640, 640)
    pad_value: int = 114
    color: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterbox: ``input = image * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    image_size: tuple[int, int]  # (height, width) of the original image


def letterbox(
    image: np.ndarray, input_size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``input_size``, centred.

    Args:
        image: (H, W, 3) uint8.
        input_size: (height, width) of the output.
    Returns:
        (input_h, input_w, 3) uint8 image and the ``Letterbox`` geometry.
    """
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
    return out, Letterbox(scale=scale, pad_x=float(left), pad_y=float(top), image_size=(h, w))


def preprocess(images_bgr: list[np.ndarray], spec: PreprocessSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Turn camera images into one model batch.

    Args:
        images_bgr: list of B images, each (H_i, W_i, 3) uint8 BGR (OpenCV order).
        spec: the bundle's preprocessing.
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
        lb_img, lb = letterbox(img, spec.input_size, spec.pad_value)
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
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.scale
    h, w = lb.image_size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def boxes_to_input(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map (N, 4) xyxy boxes from camera-image pixels to model-input pixels (for training targets)."""
    out = boxes_xyxy.astype(np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * lb.scale + lb.pad_x
    out[:, [1, 3]] = out[:, [1, 3]] * lb.scale + lb.pad_y
    return out
