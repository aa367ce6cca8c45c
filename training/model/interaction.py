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
        # Set (for one call) by export.wrapper.FoldedVocabulary: the vocabulary is a constant of the exported
        # graph, so the shared-vocabulary product may be a Conv with a known kernel (not state: never saved).
        self.constant_vocabulary = False

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B,C_img,H,W); text (C,D) shared by the whole batch, or (B,C,D) -> gated x (B,C_img,H,W)."""
        b, _, h, w = x.shape
        if text.ndim == 2:
            aw = self._attention_shared(x, text)
        else:
            e = self.embed(x).view(b, self.heads, -1, h, w)
            g = self.guide(text).view(b, text.shape[1], self.heads, -1)
            aw = max_sigmoid_attention(e, g, self.bias)  # (B, nh, H, W)
        # Gate each head's channel chunk with its weight map: split/multiply/concat on 4-D tensors, the same
        # products as a (B, nh, C_img/nh, H, W) view; the 5-D view made OpenVINO reorder x out of its blocked
        # layout and back (benchmarks/results/peers.md).
        chunks = x.chunk(self.heads, dim=1)
        return torch.cat([c * aw[:, i : i + 1] for i, c in enumerate(chunks)], dim=1)

    def _attention_shared(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Max-sigmoid attention (B, nh, H, W) for one (C, D) vocabulary shared by the batch.

        ``<embed(x)_m, guide(t_n)_m>`` is linear in x, so it is one 1x1 convolution of x with nh*C output
        channels (weights ``guide(t_n)_m^T W_m``, head-major), instead of the embedding (C_img/2 channels)
        followed by a 5-D einsum. With a folded vocabulary the weights are constants of the exported graph.
        """
        c_img, n = x.shape[1], text.shape[0]
        g = self.guide(text).view(n, self.heads, -1)  # (C, nh, hc)
        w_e = self.embed.weight.view(self.heads, -1, c_img)  # (nh, hc, C_img)
        weight = torch.einsum("nmc,mck->mnk", g, w_e).reshape(self.heads * n, c_img, 1, 1)
        bias = torch.einsum("nmc,mc->mn", g, self.embed.bias.view(self.heads, -1)).reshape(-1)
        if torch.onnx.is_in_onnx_export() and not self.constant_vocabulary:
            # The vocabulary is a graph input (C dynamic): ONNX's Conv needs a kernel of known shape and Split
            # known sizes, so the same 1x1 product as a matmul and the maximum over a (B, nh, C, H, W) view.
            b, _, h, w = x.shape
            sim = torch.einsum("bkhw,jk->bjhw", x, weight.flatten(1)) + bias.view(1, -1, 1, 1)
            best = sim.view(b, self.heads, -1, h, w).amax(2)
        else:
            sim = F.conv2d(x, weight, bias)  # (B, nh*C, H, W), channel m*C + n
            best = torch.cat([s.amax(1, keepdim=True) for s in sim.split(n, dim=1)], dim=1)  # (B, nh, H, W)
        return torch.sigmoid(best / math.sqrt(w_e.shape[1]) + self.bias.view(1, -1, 1, 1))


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
        # cosine per pixel: the image norms divide the (B, C, N) similarities rather than the (B, E, N) features
        # (C << E: the same quotient, one pass over a far smaller tensor)
        norm = img.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, 1, N), as F.normalize
        sim = torch.einsum("bce,ben->bcn", F.normalize(q, dim=-1), img) / norm
        weight = torch.softmax(sim * math.sqrt(q.shape[-1]), dim=-1)  # (B, C, N) over all positions
        evidence = torch.einsum("bcn,ben->bce", weight, img)  # image features weighted by similarity
        return text + self.scale * self.out(evidence)
