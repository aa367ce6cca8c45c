"""Refined visual prompt, RVP (TPAMI 4.4, Eq. 7-9).

The coarse prompt is energy-activated (Eq. 7, SimAM-style minimal energy from mean and variance), a
two-layer MLP scores each position's uncertainty (Eq. 8), and a sparse selection keeps, inside each
``patch`` x ``patch`` pixel window, the positions scoring above the window mean, Bernoulli-sampled with
their score in training (Eq. 9). An auxiliary box head, trained with CIoU on the selected positions,
keeps the selection on the objects.

Inference is deterministic (exportable): positions above the window mean are weighted by their score,
the expectation of the training-time Bernoulli sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss

from .domain_projection import expand_patches, patch_cells

MIN_SIDE = 0.05  # smallest auxiliary-box distance, in strides


def energy_activation(x: torch.Tensor, lam: float = 1e-4) -> torch.Tensor:
    """SimAM-style energy activation (Eq. 7).

    For each channel, the inverse minimal energy of position t is ``(t - mu)^2 / (4 (var + lam)) + 0.5``
    with mu and var (unbiased, over H*W) the channel's spatial mean and variance; positions that stand out
    from their channel get more energy. Returns ``x * sigmoid(inverse energy)``.

    Args:
        x (Tensor): (B, C, H, W) features. lam (float): small regulariser lambda.
    """
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    var = d.sum(dim=(2, 3), keepdim=True) / max(n, 1)
    inv_energy = d / (4 * (var + lam)) + 0.5
    return x * torch.sigmoid(inv_energy)


def sparse_candidates(score: torch.Tensor, cells: int) -> torch.Tensor:
    """1.0 where ``score`` (B,1,H,W) >= the mean score of its ``cells x cells`` patch, else 0.0.

    ``>=`` (not ``>``) so a one-cell patch keeps its position. Partial border patches average only
    the cells they contain.
    """
    size = score.shape[-2:]
    mean = F.avg_pool2d(score, cells, cells, ceil_mode=True) if cells > 1 else score
    return (score >= expand_patches(mean, cells, size)).to(score.dtype)


class RefinedVisualPrompt(nn.Module):
    """RVP on one feature level.

    Args:
        channels (int): channels of the coarse prompt. stride (int): its stride in input pixels.
        patch (int): sparse-selection window in input pixels (paper 32). lam (float): energy lambda.
    """

    def __init__(self, channels: int, stride: int, patch: int = 32, lam: float = 1e-4):
        super().__init__()
        self.stride, self.cells, self.lam = stride, patch_cells(patch, stride), lam
        hidden = max(8, channels // 2)
        # Eq. 8: two-layer MLP over channels (1x1 convs) -> one uncertainty score per position.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )
        # Auxiliary box head: l, t, r, b distances in strides at every position.
        self.box = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 1, 1), nn.SiLU(inplace=True), nn.Conv2d(hidden, 4, 1)
        )

    def forward(self, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        """prompt (B,C,H,W) -> dict with ``refined`` (B,C,H,W), ``score`` (B,1,H,W) in (0,1),
        ``selected`` (B,1,H,W) hard 0/1 mask (training) or weights (inference); in training also
        ``boxes`` (B,4,H,W), the auxiliary head's l, t, r, b distances in px, and ``logit`` (B,1,H,W)."""
        act = energy_activation(prompt, self.lam)
        logit = self.mlp(act)
        score = torch.sigmoid(logit)
        cand = sparse_candidates(score, self.cells)
        if self.training:
            hard = torch.bernoulli(score.detach()) * cand
            # Straight-through: the forward uses the 0/1 sample, the gradient reaches the score.
            select = hard + score - score.detach()
        else:
            select = hard = cand * score
        out = {"refined": act * select, "score": score, "selected": hard.detach()}
        if self.training:  # the auxiliary box head and the logit only serve the training loss
            # A floor of MIN_SIDE strides per distance: softplus underflows to exactly 0 for very negative
            # outputs, and CIoU's aspect term (atan(w / h), no epsilon in torchvision) then has a NaN gradient.
            out["boxes"] = (F.softplus(self.box(act)) + MIN_SIDE) * self.stride
            out["logit"] = logit
        return out


def rvp_box_loss(
    outputs: list[dict[str, torch.Tensor]],
    strides: list[int],
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
) -> torch.Tensor:
    """IoU-based optimisation of the selection (TPAMI 4.4, last paragraph). Sum of two terms:

    * box term: mean CIoU loss, over the selected positions lying inside a ground-truth box, between the
      auxiliary box and the smallest box containing the position (trains the auxiliary head);
    * score term: binary cross-entropy of the uncertainty score against a CIoU quality target,
      ``clamp(1 - CIoU loss, 0, 1)`` of the auxiliary box inside objects (no gradient) and 0 outside
      every box, averaged over all positions. The score, hence the sparse selection, moves onto
      positions inside objects whose box is well regressed (an IoU-aware score, as in VarifocalNet).

    Args:
        outputs: RVP outputs per level (see :meth:`RefinedVisualPrompt.forward`).
        strides: stride per level. gt_boxes (B,M,4) xyxy px. gt_valid (B,M) bool.
    """
    box_sum, box_n, score_sum, score_n = [], [], [], []
    for out, stride in zip(outputs, strides, strict=True):
        score, sel, ltrb = out["score"], out["selected"], out["boxes"]
        b, _, h, w = score.shape
        ys = (torch.arange(h, device=score.device, dtype=score.dtype) + 0.5) * stride
        xs = (torch.arange(w, device=score.device, dtype=score.dtype) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], -1).view(1, -1, 1, 2)  # (1, HW, 1, 2)
        ltrb = ltrb.flatten(2).transpose(1, 2)  # (B, HW, 4)
        pred = torch.cat([centers[:, :, 0] - ltrb[..., :2], centers[:, :, 0] + ltrb[..., 2:]], -1)
        sel = sel.flatten(1)  # (B, HW) 0/1
        quality = torch.zeros((b, h * w), device=score.device, dtype=score.dtype)
        has = torch.zeros_like(sel, dtype=torch.bool)
        ciou = torch.zeros_like(quality)
        if gt_boxes.shape[1] > 0:
            g = gt_boxes.unsqueeze(1)  # (B, 1, M, 4)
            inside = (
                (centers[..., 0] > g[..., 0])
                & (centers[..., 1] > g[..., 1])
                & (centers[..., 0] < g[..., 2])
                & (centers[..., 1] < g[..., 3])
                & gt_valid.unsqueeze(1)
            )  # (B, HW, M)
            area = ((g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])).expand_as(inside)
            area = area.masked_fill(~inside, float("inf"))
            idx = area.argmin(-1)  # (B, HW) smallest containing box
            target = torch.gather(gt_boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            has = inside.any(-1)
            # Positions inside no box (and padded all-zero targets) get a valid stand-in box around the
            # position: CIoU's aspect term has an undefined gradient on degenerate boxes, and a NaN gradient
            # survives multiplication by the 0/1 mask. The stand-in's loss is masked out below.
            c = centers[:, :, 0].expand(b, -1, -1)  # (B, HW, 2)
            standin = torch.cat([c - stride, c + stride], -1)
            target = torch.where(has.unsqueeze(-1), target, standin)
            ciou = complete_box_iou_loss(pred.reshape(-1, 4), target.reshape(-1, 4), reduction="none").view(
                b, -1
            )
            quality = torch.where(has, (1 - ciou.detach()).clamp(0, 1), quality)
        on_object = sel * has
        box_sum.append((ciou * on_object).sum())
        box_n.append(on_object.sum())
        # BCE on the MLP's logit (stable, autocast-safe), in float32.
        bce = F.binary_cross_entropy_with_logits(
            out["logit"].flatten(1).float(), quality.float(), reduction="sum"
        )
        score_sum.append(bce)
        score_n.append(quality.numel())
    box_term = torch.stack(box_sum).sum() / torch.stack(box_n).sum().clamp_min(1.0)
    score_term = torch.stack(score_sum).sum() / sum(score_n)
    return box_term + score_term
