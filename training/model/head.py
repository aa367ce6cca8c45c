"""Detection head: region-text contrastive classification + DFL box regression (YOLOv8 / YOLO-World style).

Every position of every level predicts a region embedding (compared by cosine similarity with each
class's text embedding: the classification is open-vocabulary) and a box as 4 discrete distributions
over ``reg_max`` bins (distribution focal loss, DFL).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .expert import ConvBNAct


def make_anchors(
    shapes: list[tuple[int, int]], strides: list[int], device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (N,2) (x, y in input px, cell centres) and their strides (N,1) for feature sizes.

    Sizes come from the feature tensors' static shapes, so a traced/exported graph holds them as
    constants for its fixed input size: no data-dependent control flow.
    """
    points, stride_t = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([cx, cy], -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_t)


def dfl_decode(dist: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """dist (B,N,4*R) logits -> boxes (B,N,4) xyxy px: expectation of each side's distribution."""
    b, n, _ = dist.shape
    r = dist.shape[-1] // 4
    proj = torch.arange(r, device=dist.device, dtype=dist.dtype)
    ltrb = dist.view(b, n, 4, r).softmax(-1) @ proj  # (B, N, 4) in strides
    lt, rb = ltrb.split(2, dim=-1)
    return torch.cat([anchors - lt * strides, anchors + rb * strides], -1)


class ContrastiveHead(nn.Module):
    """Region-text similarity: L2-normalised region embeddings vs text embeddings, learnable scale/bias."""

    def __init__(self, prior: float = 0.01):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior) / prior)))

    def forward(self, region: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """region (B,D,H,W), text (B,C,D) -> logits (B,C,H,W)."""
        region = F.normalize(region, dim=1)
        text = F.normalize(text, dim=-1)
        return (
            torch.einsum("bdhw,bcd->bchw", region, text) * self.logit_scale.exp().clamp(max=100) + self.bias
        )

    def from_features(self, feats: torch.Tensor, embed: nn.Conv2d, text: torch.Tensor) -> torch.Tensor:
        """``forward(embed(feats), text)`` computed on the narrower features.

        feats (B,K,H,W) (K channels, the input of the 1x1 ``embed`` conv to D), text (B,C,D) -> (B,C,H,W).
        The cosine's numerator ``<W f + b, t>`` is ``<f, W^T t> + <b, t>``: the text is projected into the
        K-d feature space (a (B,C,K) matmul) and the D-d region embedding is only reduced to its norm, never
        divided nor laid out for a matmul (on OpenVINO's CPU plugin those two passes over the (B,D,H,W)
        tensor cost more than the embedding conv itself).

        In eval mode the norm is taken on the K-d features too: ``|W f + b|^2 = f^T (W^T W) f + 2 (W^T b)^T f
        + |b|^2``, one K->K 1x1 conv instead of the K->D embedding conv (K=128, D=512 in RTVPNet-S: 4x fewer
        FLOPs on the largest level; the embedding conv was the slowest single node of the INT8 graph, where
        the head's output path stays float, benchmarks/results/peers.md). In training mode, or when forward
        hooks are registered on ``embed`` (``export.wrapper.InputVocabulary`` reads the region embeddings),
        ``embed`` runs and its output's norm is taken.
        """
        text = F.normalize(text, dim=-1)
        w = embed.weight.flatten(1)  # (D, K)
        if self.training or embed._forward_hooks or embed._forward_pre_hooks:
            region = embed(feats)  # (B, D, H, W)
            norm = region.norm(dim=1, keepdim=True)
        else:
            wt = w.t()  # (K, D)
            gram = (wt @ w).unsqueeze(-1).unsqueeze(-1)  # (K, K, 1, 1)
            lin = None if embed.bias is None else 2 * (wt @ embed.bias)  # (K,)
            sq = (F.conv2d(feats, gram, lin) * feats).sum(1, keepdim=True)  # (B, 1, H, W)
            if embed.bias is not None:
                sq = sq + embed.bias.square().sum()
            norm = sq.clamp_min(0).sqrt()
        norm = norm.clamp_min(1e-12)  # (B, 1, H, W), as F.normalize
        num = torch.einsum("bkhw,bck->bchw", feats, text @ w)
        if embed.bias is not None:
            num = num + (text @ embed.bias).unsqueeze(-1).unsqueeze(-1)  # (B, C, 1, 1)
        return num / norm * self.logit_scale.exp().clamp(max=100) + self.bias


class DetectionHead(nn.Module):
    """Decoupled head over levels.

    Args:
        channels (list[int]): input channels per level. strides (list[int]). text_dim (int): D.
        reg_max (int): DFL bins per side. objectness (bool): add a class-agnostic objectness logit per position.

    ``forward(feats, text (B,C,D))`` -> ``(dist (B,N,4*reg_max), logits (B,N,C), anchors (N,2), strides (N,1))``.
    """

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        text_dim: int,
        reg_max: int = 16,
        objectness: bool = True,
    ):
        super().__init__()
        self.strides, self.reg_max = list(strides), reg_max
        cb = max(16, channels[0] // 4, 4 * reg_max)
        cc = channels[0]
        self.box = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, cb, 3), ConvBNAct(cb, cb, 3), nn.Conv2d(cb, 4 * reg_max, 1))
            for c in channels
        )
        # Region-embedding branch with depthwise-separable 3x3 convs (as YOLO11's classification branch):
        # full 3x3 convs here cost ~5 GFLOPs at 640, which the compute budget cannot afford.
        self.region = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(c, c, 3, groups=c),
                ConvBNAct(c, cc, 1),
                ConvBNAct(cc, cc, 3, groups=cc),
                ConvBNAct(cc, cc, 1),
            )
            for c in channels
        )
        self.embed = nn.ModuleList(nn.Conv2d(cc, text_dim, 1) for _ in channels)
        # Class-agnostic objectness logit added to every class logit: background is suppressed here, so the
        # region-text similarity only has to tell the classes apart (with centred text embeddings there is no
        # region embedding dissimilar to every class at once).
        self.objectness = nn.ModuleList(nn.Conv2d(cc, 1, 1) for _ in channels) if objectness else None
        self.contrast = nn.ModuleList(ContrastiveHead() for _ in channels)
        for seq in self.box:
            nn.init.constant_(seq[-1].bias, 1.0)

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor):
        dists, logits, objs, shapes = [], [], [], []
        for i, f in enumerate(feats):
            shapes.append((f.shape[2], f.shape[3]))
            dists.append(self.box[i](f).flatten(2))  # (B, 4R, HW)
            r = self.region[i](f)
            logits.append(self.contrast[i].from_features(r, self.embed[i], text).flatten(2))  # (B, C, HW)
            if self.objectness is not None:
                objs.append(self.objectness[i](r).flatten(2))  # (B, 1, HW)
        dist = torch.cat(dists, 2).transpose(1, 2)
        logit = torch.cat(logits, 2).transpose(1, 2)  # (B, N, C)
        if objs:
            # added on the flat (B, N, C) layout: OpenVINO's CPU plugin mis-broadcasts (B,1,H,W) onto the
            # einsum's (B,C,H,W) output when the class axis is dynamic
            logit = logit + torch.cat(objs, 2).transpose(1, 2)
        anchors, strides = make_anchors(shapes, self.strides, dist.device, dist.dtype)
        return dist, logit, anchors, strides
