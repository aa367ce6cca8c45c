"""Detection losses: task-aligned assignment, BCE classification, CIoU + DFL box regression.

The assignment follows TOOD's task-aligned learning as used by YOLOv8 (metric s^alpha * IoU^beta,
top-k candidates whose centres lie inside the box, one box per anchor by largest IoU, soft targets
normalised by the best IoU per box). Box ops come from torchvision; this is our own implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, complete_box_iou_loss

from .head import dfl_decode


def pad_targets(
    targets: dict[str, torch.Tensor], batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat targets -> padded per image.

    Args:
        targets: ``batch_idx`` (M,) int, ``cls`` (M,) int, ``boxes`` (M,4) xyxy input px.
        batch (int): B.

    Returns:
        boxes (B,Mmax,4), cls (B,Mmax) long, valid (B,Mmax) bool. Mmax may be 0 (no box in the batch).
    """
    for key in ("batch_idx", "cls", "boxes"):
        if key not in targets:
            raise KeyError(f"targets is missing {key!r} (has {sorted(targets)})")
    bidx = targets["batch_idx"].long().view(-1)
    cls = targets["cls"].long().view(-1)
    boxes = targets["boxes"].float().view(-1, 4)
    if not (len(bidx) == len(cls) == len(boxes)):
        raise ValueError(f"targets lengths differ: batch_idx {len(bidx)}, cls {len(cls)}, boxes {len(boxes)}")
    counts = torch.bincount(bidx, minlength=batch) if len(bidx) else torch.zeros(batch, dtype=torch.long)
    m = int(counts.max()) if len(bidx) else 0
    out_b = boxes.new_zeros(batch, m, 4)
    out_c = cls.new_zeros(batch, m)
    valid = torch.zeros(batch, m, dtype=torch.bool, device=boxes.device)
    for b in range(batch):
        sel = bidx == b
        k = int(sel.sum())
        out_b[b, :k], out_c[b, :k], valid[b, :k] = boxes[sel], cls[sel], True
    return out_b, out_c, valid


class TaskAlignedAssigner(nn.Module):
    """Assign ground-truth boxes to anchors (TOOD / YOLOv8 task-aligned assignment).

    Args:
        topk (int): candidates per box. alpha, beta (float): exponents of score and IoU in the metric.
        min_cell (bool): a box counts as at least one cell of each level around its centre when choosing
            candidate anchors (ours, not YOLOv8's): with candidates strictly inside the box, a defect
            narrower than the stride-8 grid often contains no anchor centre and is never a positive
            (measured on the rig's training boxes: 33% at the old 320 px full-view input, 9% at native
            resolution); with it, the anchor whose cell holds the centre is a candidate.
    """

    def __init__(
        self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9, min_cell: bool = False
    ):
        super().__init__()
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps
        self.min_cell = min_cell

    @torch.no_grad()
    def forward(
        self,
        scores: torch.Tensor,
        boxes: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_cls: torch.Tensor,
        gt_valid: torch.Tensor,
        strides: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """scores (B,N,C) in [0,1], boxes (B,N,4) xyxy, anchors (N,2), gt_* padded (B,M,...), strides (N,)
        or (N,1) per anchor (needed by ``min_cell``).

        Returns target_boxes (B,N,4), target_scores (B,N,C) soft (0 for background), fg (B,N) bool.
        """
        b, n, c = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return (
                boxes.new_zeros(b, n, 4),
                scores.new_zeros(b, n, c),
                torch.zeros(b, n, dtype=torch.bool, device=scores.device),
            )
        # Anchor centre strictly inside the box: (B, M, N).
        x, y = anchors[:, 0].view(1, 1, -1), anchors[:, 1].view(1, 1, -1)
        g = gt_boxes.unsqueeze(-1)  # (B, M, 4, 1)
        if self.min_cell and strides is not None:
            half = strides.reshape(1, 1, -1) / 2  # (1, 1, N): half a cell of each anchor's level
            cx, cy = (g[:, :, 0] + g[:, :, 2]) / 2, (g[:, :, 1] + g[:, :, 3]) / 2  # (B, M, 1)
            hw = torch.maximum((g[:, :, 2] - g[:, :, 0]) / 2, half)  # (B, M, N)
            hh = torch.maximum((g[:, :, 3] - g[:, :, 1]) / 2, half)
            inside = ((x - cx).abs() < hw - self.eps) & ((y - cy).abs() < hh - self.eps)
        else:
            inside = (
                (x - g[:, :, 0] > self.eps)
                & (y - g[:, :, 1] > self.eps)
                & (g[:, :, 2] - x > self.eps)
                & (g[:, :, 3] - y > self.eps)
            )
        inside &= gt_valid.unsqueeze(-1)
        iou = torch.stack([box_iou(gt_boxes[i], boxes[i]) for i in range(b)]).clamp_min(0)  # (B, M, N)
        cls_score = torch.gather(
            scores.transpose(1, 2), 1, gt_cls.clamp_min(0).unsqueeze(-1).expand(-1, -1, n)
        )
        metric = cls_score.pow(self.alpha) * iou.pow(self.beta) * inside  # (B, M, N)
        k = min(self.topk, n)
        top = metric.topk(k, dim=-1).indices
        in_topk = torch.zeros_like(metric, dtype=torch.bool).scatter_(-1, top, True)
        pos = in_topk & inside  # (B, M, N)
        # An anchor claimed by several boxes keeps the one it overlaps most.
        multi = pos.sum(1, keepdim=True) > 1
        best = F.one_hot((iou * pos).argmax(1), m).permute(0, 2, 1).bool()  # (B, M, N)
        pos = torch.where(multi, best & pos, pos)
        fg = pos.any(1)  # (B, N)
        idx = pos.float().argmax(1)  # (B, N) assigned box
        target_boxes = torch.gather(gt_boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        target_cls = torch.gather(gt_cls, 1, idx)
        metric = metric * pos
        norm = metric * (iou * pos).amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + self.eps)
        norm = norm.amax(1)  # (B, N)
        target_scores = F.one_hot(target_cls.clamp(0, c - 1), c).to(scores.dtype) * (norm * fg).unsqueeze(-1)
        return target_boxes, target_scores, fg


def dfl_loss(dist: torch.Tensor, target_ltrb: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss. dist (K,4,R) logits, target_ltrb (K,4) in strides, in [0, R-1) -> (K,)."""
    r = dist.shape[-1]
    t = target_ltrb.clamp(0, r - 1 - 0.01)
    left = t.floor().long()
    w_right = t - left
    ce_l = F.cross_entropy(dist.reshape(-1, r), left.view(-1), reduction="none").view_as(t)
    ce_r = F.cross_entropy(dist.reshape(-1, r), (left + 1).view(-1), reduction="none").view_as(t)
    return (ce_l * (1 - w_right) + ce_r * w_right).mean(-1)


class DetectionLoss(nn.Module):
    """YOLOv8-style detection loss over head outputs.

    Args:
        box, cls, dfl (float): loss gains (YOLOv8 defaults 7.5, 0.5, 1.5).
        assigner (TaskAlignedAssigner): anchor assignment.
    """

    def __init__(
        self,
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float = 1.5,
        assigner: TaskAlignedAssigner | None = None,
    ):
        super().__init__()
        self.gains = {"box": box, "cls": cls, "dfl": dfl}
        self.assigner = assigner or TaskAlignedAssigner()

    def forward(
        self,
        dist: torch.Tensor,
        logits: torch.Tensor,
        anchors: torch.Tensor,
        strides: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_cls: torch.Tensor,
        gt_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """dist (B,N,4R), logits (B,N,C), anchors (N,2), strides (N,1), padded targets -> weighted terms."""
        # Losses in float32 even under autocast: CIoU and BCE sums are not fp16-safe.
        dist, logits, anchors, strides = dist.float(), logits.float(), anchors.float(), strides.float()
        b, n, _ = dist.shape
        pred_boxes = dfl_decode(dist, anchors, strides)  # (B, N, 4) px
        t_boxes, t_scores, fg = self.assigner(
            logits.detach().sigmoid(), pred_boxes.detach(), anchors, gt_boxes, gt_cls, gt_valid, strides
        )
        tss = t_scores.sum().clamp_min(1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logits, t_scores, reduction="sum") / tss
        if fg.any():
            w = t_scores.sum(-1)[fg]  # (K,)
            ciou = complete_box_iou_loss(pred_boxes[fg], t_boxes[fg], reduction="none")
            loss_box = (ciou * w).sum() / tss
            anchor_fg = anchors.unsqueeze(0).expand(b, -1, -1)[fg]
            stride_fg = strides.unsqueeze(0).expand(b, -1, -1)[fg]
            tb = t_boxes[fg]
            target_ltrb = torch.cat([anchor_fg - tb[:, :2], tb[:, 2:] - anchor_fg], -1) / stride_fg
            r = dist.shape[-1] // 4
            loss_dfl = (dfl_loss(dist[fg].view(-1, 4, r), target_ltrb) * w).sum() / tss
        else:
            # No object in the batch: keep the box branch in the graph with a zero loss.
            loss_box = loss_dfl = dist.sum() * 0.0
        return {
            "loss_box": loss_box * self.gains["box"],
            "loss_cls": loss_cls * self.gains["cls"],
            "loss_dfl": loss_dfl * self.gains["dfl"],
        }
