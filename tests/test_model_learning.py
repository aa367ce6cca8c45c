"""The tiny model learns: a short training run localises and classifies held-out synthetic objects."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision.ops import box_iou

from training.model import ModelConfig, build_model

IMG = 128


def make_batch(n: int, generator: torch.Generator):
    """Noise images with one bright rectangle each; its class is the colour channel it lights up."""
    images = torch.randn(n, 3, IMG, IMG, generator=generator) * 0.1
    boxes, cls = [], []
    for i in range(n):
        x0, y0 = torch.randint(0, 80, (2,), generator=generator).tolist()
        w, h = torch.randint(24, 44, (2,), generator=generator).tolist()
        images[i, i % 2, y0 : y0 + h, x0 : x0 + w] += 2.0
        boxes.append([x0, y0, x0 + w, y0 + h])
        cls.append(i % 2)
    return images, {
        "batch_idx": torch.arange(n),
        "cls": torch.tensor(cls),
        "boxes": torch.tensor(boxes, dtype=torch.float),
    }


def top_box_quality(model, text, images, targets) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        boxes, scores = model.forward_inference(images, text)
    ious, hits = [], 0
    for i in range(len(images)):
        best, cls = scores[i].max(-1)
        j = int(best.argmax())
        ious.append(float(box_iou(boxes[i, j : j + 1], targets["boxes"][i : i + 1])))
        hits += int(cls[j] == targets["cls"][i])
    return sum(ious) / len(ious), hits / len(images)


@pytest.mark.slow
def test_short_training_localises_held_out_objects():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = build_model(ModelConfig(variant="rtvpnet_tiny", img_size=IMG, sam_img_size=64))
    text = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    held_out = make_batch(16, torch.Generator().manual_seed(99))
    iou_before, _ = top_box_quality(model, text, *held_out)
    opt = torch.optim.AdamW(model.param_groups(lr=2e-3, weight_decay=0.0))
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        model.train()
        loss = model.forward_training(*make_batch(8, g), text)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    iou_after, accuracy = top_box_quality(model, text, *held_out)
    assert iou_before < 0.2
    assert iou_after > 0.5 and accuracy >= 0.75
