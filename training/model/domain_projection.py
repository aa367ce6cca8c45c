"""Expert-assisted domain projection, EDP (TPAMI 4.3.2, Eq. 2-5; AAAI Eq. 1-3).

MobileSAM's multi-scale features are partitioned into patches, a uniform random share of the patches is
masked (Eq. 2), and a conv/deconv ReLU network, conditioned on the spatially pooled expert features
(Eq. 3), reconstructs them (Eq. 4). The reconstruction is the coarse visual prompt. A 1x1 channel
alignment maps it onto the expert's feature space, and the multi-scale distance to the expert features
is minimised (Eq. 5). We read Eq. 5's "reconstruct domain expert information rather than the input"
literally: the target is the expert feature map, not the masked SAM feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .expert import FeatureSpec


def patch_cells(patch_px: int, stride: int) -> int:
    """Feature cells per patch side for a patch of ``patch_px`` input pixels at ``stride`` (at least 1)."""
    return max(1, patch_px // stride)


def expand_patches(per_patch: torch.Tensor, cells: int, size: tuple[int, int]) -> torch.Tensor:
    """Repeat a per-patch map (B,K,Hp,Wp) to a per-cell map (B,K,H,W) cropped to ``size``."""
    x = per_patch.repeat_interleave(cells, dim=2).repeat_interleave(cells, dim=3)
    return x[:, :, : size[0], : size[1]]


def random_patch_mask(
    batch: int, size: tuple[int, int], cells: int, ratio: float, device: torch.device, generator=None
) -> torch.Tensor:
    """Binary keep-mask (B,1,H,W): exactly ``round(ratio * P)`` of the P patches of each image are 0.

    Patches are ``cells x cells`` feature cells (the last row/column may be partial); the masked ones are
    drawn uniformly at random without replacement, independently per image (Eq. 2).
    """
    hp, wp = -(-size[0] // cells), -(-size[1] // cells)
    n_patches = hp * wp
    n_masked = int(round(ratio * n_patches))
    noise = torch.rand(batch, n_patches, device=device, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)  # uniform random permutation rank per patch
    keep = (rank >= n_masked).float().view(batch, 1, hp, wp)
    return expand_patches(keep, cells, size)


def _deconv2x2(deconv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``deconv(x)`` for a kernel-2, stride-2 transposed convolution, as a 1x1 convolution + pixel shuffle.

    The 2x2 output cells do not overlap, so output (o, 2i+a, 2j+b) = sum_c x(c, i, j) W(c, o, a, b) + bias(o):
    a 1x1 convolution to 4*O channels (channel o*4 + a*2 + b) rearranged by ``pixel_shuffle(2)``. Same weights
    and sums; OpenVINO's CPU plugin runs a ConvolutionBackpropData of these shapes several times slower than
    its FLOPs (benchmarks/results/peers.md).
    """
    w = deconv.weight  # (C_in, C_out, 2, 2)
    c_in, c_out = w.shape[:2]
    weight = w.permute(1, 2, 3, 0).reshape(c_out * 4, c_in, 1, 1)
    bias = deconv.bias.repeat_interleave(4) if deconv.bias is not None else None
    return F.pixel_shuffle(F.conv2d(x, weight, bias), 2)


class ProjectionLevel(nn.Module):
    """Domain-aware projection of one SAM feature level onto one expert level.

    The reconstruction runs in a bottleneck of ``hidden`` channels (default C/4): the coarse prompt only
    has to carry SAM's evidence, and full-width convs at stride 8 would cost several GFLOPs at 640.

    Args:
        sam_channels (int): channels of the SAM map. expert_channels (int): C, channels of the expert map.
        projection (bool): masked reconstruction on (Eq. 2-4); off = 1x1 channel mappings only.
        hidden (int | None): bottleneck width.
    """

    def __init__(
        self, sam_channels: int, expert_channels: int, projection: bool = True, hidden: int | None = None
    ):
        super().__init__()
        c = expert_channels
        h = hidden or max(16, c // 4)
        self.projection = projection
        self.inp = nn.Conv2d(sam_channels, h, 1)  # channel alignment of SAM features (at SAM resolution)
        self.out = nn.Conv2d(h, c, 1)  # into the expert's channel space
        if projection:
            self.context = nn.Linear(c, h)  # spatially pooled expert features -> conditioning (Eq. 3)
            # Reconstruction network of Eq. 4: conv (stride 2) -> ReLU -> deconv (x2) -> ReLU.
            self.conv = nn.Conv2d(h, h, 3, 2, 1)
            self.deconv = nn.ConvTranspose2d(h, h, 2, 2)
            self.align = nn.Conv2d(c, c, 1)  # alignment function of Eq. 5 (training only)

    def forward(
        self, sam: torch.Tensor, expert: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sam (B,Cs,h,w), expert (B,C,H,W), keep (B,1,H,W) or None ->
        (coarse prompt (B,C,H,W), aligned prompt (B,C,H,W) in training with projection on, else None)."""
        size = expert.shape[-2:]
        x = F.interpolate(self.inp(sam), size=size, mode="bilinear", align_corners=False)  # (B, h, H, W)
        if not self.projection:
            return self.out(x), None
        if keep is not None:
            x = x * keep  # masked patches are zero (Eq. 2-3)
        ctx = self.context(expert.mean(dim=(2, 3)))  # (B, h) pooled expert knowledge
        x = x + ctx[:, :, None, None]
        y = F.relu(_deconv2x2(self.deconv, F.relu(self.conv(x))))[:, :, : size[0], : size[1]]
        prompt = self.out(x + y)  # (B, C, H, W) coarse visual prompt
        return prompt, (self.align(prompt) if self.training else None)


class DomainProjection(nn.Module):
    """EDP over matched levels: SAM ``s8, s16, neck`` -> expert ``p3, p4, p5``.

    Args:
        sam_spec / expert_spec (dict[str, FeatureSpec]): feature contracts of both branches.
        projection (bool): masked reconstruction + alignment loss (Table VIII "Projection").
        mask_ratio (float): share of patches masked in training (paper: 0.2).
        patch (int): patch side in input pixels (paper: 32).
    """

    def __init__(
        self,
        sam_spec: dict[str, FeatureSpec],
        expert_spec: dict[str, FeatureSpec],
        projection: bool = True,
        mask_ratio: float = 0.2,
        patch: int = 32,
    ):
        super().__init__()
        if len(sam_spec) != len(expert_spec):
            raise ValueError(f"SAM levels {list(sam_spec)} do not match expert levels {list(expert_spec)}")
        self.pairs = list(zip(sam_spec, expert_spec, strict=True))
        self.strides = [expert_spec[e].stride for e in expert_spec]
        self.projection = projection
        self.mask_ratio = mask_ratio
        self.patch = patch
        self.levels = nn.ModuleList(
            ProjectionLevel(sam_spec[s].channels, expert_spec[e].channels, projection) for s, e in self.pairs
        )

    def forward(
        self, sam: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Returns coarse prompts, one (B,C_l,H_l,W_l) per expert level, and the alignment loss (Eq. 5)
        in training with projection on (``None`` otherwise)."""
        prompts, losses = [], []
        for (s_name, e_name), level, stride in zip(self.pairs, self.levels, self.strides, strict=True):
            e = expert[e_name]
            keep = None
            if self.training and self.projection and self.mask_ratio > 0:
                cells = patch_cells(self.patch, stride)
                keep = random_patch_mask(e.shape[0], tuple(e.shape[-2:]), cells, self.mask_ratio, e.device)
            prompt, aligned = level(sam[s_name], e, keep)
            prompts.append(prompt)
            if aligned is not None and self.training:
                # The expert is the teacher here: stop its gradient so the distance cannot be closed by
                # dragging the expert towards SAM (which would also allow a trivial collapse).
                losses.append(F.mse_loss(aligned, e.detach()))
        loss = torch.stack(losses).mean() if losses else None
        return prompts, loss
