"""A small detector honouring the ``forward_inference`` contract, for export tests and pipeline trials.

It is a test double, not RTVPNet: a few convolutions standing in for the expert and the SAM image encoder,
a region-text contrastive score head (features against the (C, D) text embeddings, sigmoid) and a
distance-to-anchor box head, decoded in the graph like the real head. Module names follow the real model's
blocks (``expert``, ``image_encoder``, ``head``) so the INT8 keep-float policy is exercised the same way.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class DetectorHead(nn.Module):
    """Anchor-free head: per position a box (left, top, right, bottom distances) and region-text scores."""

    def __init__(self, channels: int, embed_dim: int, stride: int, input_size: tuple[int, int]):
        super().__init__()
        self.stride = stride
        self.box = nn.Conv2d(channels, 4, 1)
        self.embed = nn.Conv2d(channels, embed_dim, 1)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0))
        h, w = input_size[0] // stride, input_size[1] // stride
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        anchors = torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(stride)  # (N, 2) input px
        self.register_buffer("anchors", anchors, persistent=False)

    def forward(self, feats: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = nn.functional.softplus(self.box(feats)).flatten(2).transpose(1, 2) * (
            4 * self.stride
        )  # (B,N,4)
        boxes = torch.cat([self.anchors - dist[..., :2], self.anchors + dist[..., 2:]], -1)
        region = nn.functional.normalize(self.embed(feats).flatten(2).transpose(1, 2), dim=-1)  # (B, N, D)
        logits = region @ text_embeds.t() * self.logit_scale + self.logit_bias  # (B, N, C)
        return boxes, torch.sigmoid(logits)


class TinyGlassDetector(nn.Module):
    """Test double. ``forward_inference(images (B,3,H,W), text_embeds (C,D)) -> boxes (B,N,4), scores (B,N,C)``."""

    def __init__(self, input_size: tuple[int, int] = (128, 128), embed_dim: int = 32, width: int = 16):
        super().__init__()
        self.expert = nn.Sequential(_conv(3, width, 2), _conv(width, width, 2), _conv(width, 2 * width, 2))
        self.image_encoder = nn.Sequential(_conv(3, width, 4), _conv(width, 2 * width, 2))
        self.fuse = nn.Conv2d(4 * width, 2 * width, 1)
        self.head = DetectorHead(2 * width, embed_dim, stride=8, input_size=input_size)

    def forward_inference(
        self, images: torch.Tensor, text_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.fuse(torch.cat([self.expert(images), self.image_encoder(images)], 1))
        return self.head(feats, text_embeds)
