"""Bidirectional text-visual prompt interaction (TPAMI 4.5 and 4.6).

* Text-visual mutual (Eq. 10): max-sigmoid attention. Each image position is embedded, compared with
  every class text embedding, and the maximum over classes (per head), squashed by a sigmoid, gates the
  image features: positions matching no class are suppressed.
* Visual-text mutual (Eq. 11): the pixel-level image-text similarity (softmax over all positions of
  all levels) weights the image evidence that is added to each class text embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def max_sigmoid_attention(embed: torch.Tensor, guide: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Max-sigmoid attention weights.

    Args:
        embed (Tensor): (B, nh, hc, H, W) image embedding split into nh heads of hc channels.
        guide (Tensor): (B, C, nh, hc) text embeddings of C classes, split the same way.
        bias (Tensor): (nh,) learnable bias per head.

    Returns:
        (B, nh, H, W) ``sigmoid(max_c <embed, guide_c> / sqrt(hc) + bias)``.
    """
    sim = torch.einsum("bmchw,bnmc->bmhwn", embed, guide)  # (B, nh, H, W, C)
    aw = sim.max(dim=-1).values / math.sqrt(embed.shape[2])
    return torch.sigmoid(aw + bias.view(1, -1, 1, 1))


class TextVisualAttention(nn.Module):
    """T-V mutual on one level: (B,C_img,H,W) features, (B,C,D) text -> (B,C_img,H,W) gated features.

    The features are gated directly (no extra 3x3 projection as in YOLO-World's block): that conv would
    cost ~2 GFLOPs per level at 640, beyond the compute budget.
    """

    def __init__(self, channels: int, text_dim: int, embed: int | None = None, heads: int | None = None):
        super().__init__()
        embed = embed or max(8, channels // 2)
        heads = heads or max(1, embed // 32)
        if embed % heads or channels % heads:
            raise ValueError(f"T-V heads={heads} must divide embed={embed} and channels={channels}")
        self.heads = heads
        self.embed = nn.Conv2d(channels, embed, 1)
        self.guide = nn.Linear(text_dim, embed)
        self.bias = nn.Parameter(torch.zeros(heads))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        e = self.embed(x).view(b, self.heads, -1, h, w)
        g = self.guide(text).view(b, text.shape[1], self.heads, -1)
        aw = max_sigmoid_attention(e, g, self.bias)  # (B, nh, H, W)
        return (x.view(b, self.heads, -1, h, w) * aw.unsqueeze(2)).view(b, -1, h, w)


class VisualTextUpdate(nn.Module):
    """V-T mutual (Eq. 11) over all levels.

    Args:
        channels (list[int]): channels per image level. text_dim (int): D of the text embeddings.
        scale_init (float): initial weight of the image evidence added to the text.
    """

    def __init__(self, channels: list[int], text_dim: int, embed: int = 128, scale_init: float = 0.1):
        super().__init__()
        # Image and text meet in an `embed`-d space (cheaper than lifting every pixel to D).
        self.embed = nn.ModuleList(nn.Conv2d(c, embed, 1) for c in channels)
        self.query = nn.Linear(text_dim, embed)
        self.out = nn.Linear(embed, text_dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """feats: per level (B,C_l,H_l,W_l); text (B,C,D) -> updated text (B,C,D)."""
        img = torch.cat([m(f).flatten(2) for m, f in zip(self.embed, feats, strict=True)], dim=2)  # (B, E, N)
        q = self.query(text)  # (B, C, E)
        sim = torch.einsum(
            "bce,ben->bcn", F.normalize(q, dim=-1), F.normalize(img, dim=1)
        )  # cosine per pixel
        weight = torch.softmax(sim * math.sqrt(q.shape[-1]), dim=-1)  # (B, C, N) over all positions
        evidence = torch.einsum("bcn,ben->bce", weight, img)  # image features weighted by similarity
        return text + self.scale * self.out(evidence)
