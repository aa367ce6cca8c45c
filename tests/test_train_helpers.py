"""Helpers for the training tests: a small stand-in detector satisfying the ``training.model`` interface, a
stand-in text encoder, and a generated data set of coloured shapes written in the COCO layout.

The stand-in is a real (if small) dense detector: it learns, so tests of the loop, resume and DDP can check
numbers quickly; integration tests use the real ``rtvpnet_tiny``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from rtvp_edge.strict import StrictModel

SHAPE_CLASSES = ["red", "green", "blue"]
SHAPE_COLOURS = {"red": (40, 40, 220), "green": (40, 200, 40), "blue": (220, 60, 40)}  # BGR


class DoubleConfig(StrictModel):
    """Model config of the stand-in detector (a strict pydantic model, like ``training.model.ModelConfig``)."""

    img_size: int = 128
    width: int = 16
    text_dim: int = 32
    pretrain: bool = True
    extra: dict = {}


class DoubleDetector(nn.Module):
    """Stride-16 dense detector: class logits = cell embedding . text embedding, boxes = ltrb distances."""

    def __init__(self, cfg: DoubleConfig):
        super().__init__()
        self.config = cfg
        w = cfg.width
        self.expert = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1),
            nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1),
            nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1),
            nn.SiLU(),
        )
        self.embed = nn.Conv2d(4 * w, cfg.text_dim, 1)
        self.box = nn.Conv2d(4 * w, 4, 1)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.bias = nn.Parameter(torch.tensor(-4.0))
        self.stride = 16

    def _dense(self, images, text_embeds):
        f = self.expert(images)  # (B, 4w, H/16, W/16)
        e = F.normalize(self.embed(f), dim=1)
        logits = torch.einsum("bdhw,cd->bhwc", e, text_embeds) * self.logit_scale.exp() + self.bias
        b, h, w = f.shape[0], f.shape[2], f.shape[3]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = (torch.stack([xs, ys], -1).to(images) + 0.5) * self.stride  # (h, w, 2)
        ltrb = F.softplus(self.box(f)).permute(0, 2, 3, 1) * self.stride  # (B, h, w, 4)
        boxes = torch.cat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], -1)
        return logits.reshape(b, h * w, -1), boxes.reshape(b, h * w, 4), (h, w)

    def forward_inference(self, images, text_embeds):
        logits, boxes, _ = self._dense(images, text_embeds)
        return boxes, logits.sigmoid()

    def forward_training(self, images, targets, text_embeds, stage="joint"):
        logits, boxes, (h, w) = self._dense(images, text_embeds)
        b = images.shape[0]
        cls_t = torch.zeros_like(logits)
        gt = targets["boxes"]
        cx = ((gt[:, 0] + gt[:, 2]) / 2 / self.stride).long().clamp(0, w - 1)
        cy = ((gt[:, 1] + gt[:, 3]) / 2 / self.stride).long().clamp(0, h - 1)
        cell = cy * w + cx
        bi = targets["batch_idx"]
        cls_t[bi, cell, targets["cls"]] = 1.0
        # Normalised per image (not per target), so N processes with B/N images each average to the loss of
        # one process with B images: DDP equivalence is exact for this stand-in.
        loss_cls = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="sum") / (b * 4)
        if len(gt):
            loss_box = torchvision.ops.generalized_box_iou_loss(boxes[bi, cell], gt, reduction="sum") / b
        else:
            loss_box = boxes.sum() * 0.0
        return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box}

    def forward(self, images, text_embeds):
        return self.forward_inference(images, text_embeds)

    def param_groups(self, lr, weight_decay, stage="joint"):
        params = [p for p in self.parameters() if p.requires_grad]
        if stage == "pretrain":
            params = (
                list(self.expert.parameters()) + list(self.embed.parameters()) + list(self.box.parameters())
            )
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]


def build_double(cfg: DoubleConfig) -> DoubleDetector:
    return DoubleDetector(cfg)


class HashTextEncoder:
    """Deterministic stand-in text encoder: a unit vector seeded by the prompt's hash."""

    def __init__(self, spec: str, dim: int = 32):
        self.identity = f"hash:{dim}"
        self.dim = dim
        self.calls = 0

    def encode(self, prompts):
        self.calls += 1
        out = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(out), dim=1)


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Record:
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    class_ids: np.ndarray


@dataclass
class Split:
    images: list
    class_names: list
    prompts: list


def make_shapes_dataset(root: Path, n_train: int = 32, n_val: int = 8, size=(96, 128), seed: int = 0) -> Path:
    """Write a data set of coloured rectangles on a grey, noisy background (COCO json + images).

    Layout: ``root/Images/<split>/*.png`` and ``root/annotations/<split>.json``; 3 classes (colours).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "Images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img = np.full((h, w, 3), 110, np.uint8)
            img = (img + rng.integers(-8, 8, img.shape)).clip(0, 255).astype(np.uint8)
            for _ in range(int(rng.integers(1, 3))):
                c = int(rng.integers(0, 3))
                bw, bh = int(rng.integers(18, 34)), int(rng.integers(18, 34))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), SHAPE_COLOURS[SHAPE_CLASSES[c]], -1)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i,
                        "category_id": c + 1,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
            name = f"{split}_{i:04d}.png"
            cv2.imwrite(str(root / "Images" / split / name), img)
            images.append({"id": i, "file_name": name, "width": w, "height": h})
        (root / "annotations").mkdir(exist_ok=True)
        cats = [{"id": k + 1, "name": n, "prompt": f"a {n} square"} for k, n in enumerate(SHAPE_CLASSES)]
        (root / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def load_shapes_split(root: str | Path, split: str) -> Split:
    """Minimal COCO reader for the shapes data set (the stand-in of ``load_coco_split``)."""
    root = Path(root)
    data = json.loads((root / "annotations" / f"{split}.json").read_text())
    names = [c["name"] for c in data["categories"]]
    recs = []
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in anns
            ],
            np.float32,
        ).reshape(-1, 4)
        cls = np.array([a["category_id"] - 1 for a in anns], np.int64)
        recs.append(Record(root / "Images" / split / im["file_name"], im["width"], im["height"], boxes, cls))
    return Split(recs, names, [c["prompt"] for c in data["categories"]])


def double_overrides(root: Path, out: Path, **extra) -> list[str]:
    """Overrides of a small CPU run of the stand-in on the shapes data set."""
    base = {
        "data.root": str(root),
        "data.batch_size": 8,
        "data.workers": 0,
        "data.hsv": "[0,0,0]",
        "data.scale_jitter": 0.0,
        "schedule.epochs": 2,
        "schedule.warmup_epochs": 0.5,
        "optim.lr": 0.01,
        "output.dir": str(out),
        "output.plots": False,
        "output.progress": False,
        "text.encoder": "hash:32",
        "text.cache_dir": str(out / "text_cache"),
        "ema.tau": 10.0,
        "device": "cpu",
        "threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_shapes_dataset_reads_back(tmp_path):
    root = make_shapes_dataset(tmp_path / "shapes", n_train=4, n_val=2)
    split = load_shapes_split(root, "train")
    assert len(split.images) == 4 and split.class_names == SHAPE_CLASSES
    assert all(len(r.boxes) == len(r.class_ids) >= 1 for r in split.images)
    assert cv2.imread(str(split.images[0].path)).shape == (96, 128, 3)


def make_tiny_checkpoint(
    path: Path, vocabulary: list[dict], img_size: int = 128, cache_dir: Path | None = None
):
    """An untrained real RTVPNet-tiny checkpoint with the given vocabulary and the ``random:512`` encoder."""
    from training.checkpoint import save_checkpoint
    from training.model import ModelConfig, build_model
    from training.text_cache import text_embeddings
    from training.train import preprocess_spec_for

    torch.manual_seed(0)
    cfg = ModelConfig(variant="rtvpnet_tiny", img_size=img_size, sam_img_size=64)
    model = build_model(cfg)
    emb, ident = text_embeddings(
        "random:512", [v["prompt"] for v in vocabulary], cache_dir or path.parent / "cache"
    )
    return save_checkpoint(
        path,
        model,
        model_config=model.config,
        vocabulary=vocabulary,
        text_encoder="random:512",
        text_encoder_identity=ident,
        preprocess=preprocess_spec_for(cfg, model),
        provenance={"dataset": "test", "epoch": 0},
        text_embeddings=emb,
    )
