"""RTVPNet: the detector assembled from already-built parts (TPAMI Fig. 9).

Data flow of one forward (joint stage), shapes for input (B,3,H,W) and C classes of D-dim text::

    expert (C2F-S)      images -> E = {p3,p4,p5}                        (B,C_l,H/s_l,W/s_l)
    SAM (frozen)        images -> S = {s8,s16,neck} at sam_img_size
    EDP                 S, E   -> coarse prompts P_l, alignment loss     (B,C_l,H/s_l,W/s_l)
    RVP                 P_l    -> refined sparse prompts R_l, aux boxes
    fusion              F_l = E_l + R_l
    T-V (Eq. 10)        F_l, text (B,C,D) -> text-gated F_l
    V-T (Eq. 11)        F, text -> image-aware text (B,C,D)
    head                F, text -> DFL boxes (B,N,4*16), region-text logits (B,N,C)

Stage ``"pretrain"`` (Eq. 1) runs the expert and the head alone: a closed-set detector on the classes
whose embeddings are passed (the seen classes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .domain_projection import DomainProjection
from .head import DetectionHead, dfl_decode
from .loss import DetectionLoss, pad_targets
from .visual_prompt import rvp_box_loss

STAGES = ("joint", "pretrain")


class RTVPNet(nn.Module):
    """Open-vocabulary defect detector.

    Args (keyword only, each already built; ``None`` switches the component off):
        expert (nn.Module): C2F expert with ``output_shape()``; returns {name: (B,C,H,W)}.
        head (DetectionHead): contrastive + DFL head over the expert levels.
        det_loss (DetectionLoss): assignment and detection loss terms.
        sam (nn.Module | None): frozen SAM image encoder (needed by ``projection``).
        projection (DomainProjection | None): EDP; ``None`` = coarse prompt is the expert feature itself.
        rvp (nn.ModuleList | None): one RefinedVisualPrompt per level.
        tv (nn.ModuleList | None): one TextVisualAttention per level. vt (VisualTextUpdate | None).
        update_expert (bool): train the expert in the joint stage (dynamic expert updating, Eq. 6).
        expert_lr_scale (float): coupling factor of the expert learning rate in the joint stage.
        loss_gains (dict): gains of the ``align`` and ``rvp`` terms.
        text_center (bool): centre the class text embeddings on the training vocabulary's mean (see
            :meth:`set_text_center`).
        config (Any): the resolved ModelConfig, kept for checkpoints (``model.config``).
    """

    def __init__(
        self,
        *,
        expert: nn.Module,
        head: DetectionHead,
        det_loss: DetectionLoss,
        sam: nn.Module | None = None,
        projection: DomainProjection | None = None,
        rvp: nn.ModuleList | None = None,
        tv: nn.ModuleList | None = None,
        vt: nn.Module | None = None,
        update_expert: bool = True,
        expert_lr_scale: float = 0.1,
        loss_gains: dict[str, float] | None = None,
        text_dim: int = 512,
        text_center: bool = True,
        config: Any = None,
    ):
        super().__init__()
        if projection is not None and sam is None:
            raise ValueError("domain projection needs a SAM image encoder")
        self.expert, self.head, self.det_loss = expert, head, det_loss
        self.sam, self.projection, self.rvp, self.tv, self.vt = sam, projection, rvp, tv, vt
        self.update_expert, self.expert_lr_scale = update_expert, expert_lr_scale
        self.loss_gains = {"align": 1.0, "rvp": 1.0, **(loss_gains or {})}
        self.text_dim = text_dim
        if text_center:
            self.register_buffer("text_center", torch.zeros(text_dim))
        else:
            self.text_center = None
        self.levels = list(expert.output_shape())
        self.strides = [expert.output_shape()[k].stride for k in self.levels]
        self.config = config

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, images: torch.Tensor, text_embeds: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"image height/width must be multiples of 32, got {h}x{w}")
        if text_embeds.ndim != 2 or text_embeds.shape[1] != self.text_dim or text_embeds.shape[0] < 1:
            raise ValueError(
                f"text_embeds must be (C,{self.text_dim}) with C >= 1, got {tuple(text_embeds.shape)}"
            )

    @staticmethod
    def _check_targets(boxes: torch.Tensor, cls: torch.Tensor, num_classes: int) -> None:
        if len(cls) == 0:
            return
        if int(cls.min()) < 0 or int(cls.max()) >= num_classes:
            bad = int(cls.min()) if int(cls.min()) < 0 else int(cls.max())
            raise ValueError(f"target class {bad} out of range for {num_classes} text embeddings")
        if not torch.isfinite(boxes).all():
            raise ValueError(
                f"target boxes contain NaN/inf: {boxes[~torch.isfinite(boxes).all(1)][:3].tolist()}"
            )
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if inverted.any():
            raise ValueError(
                f"target boxes must be xyxy with x2>=x1, y2>=y1; got {boxes[inverted][:3].tolist()}"
            )

    # -------------------------------------------------------------------- text
    @torch.no_grad()
    def set_text_center(self, text_embeds: torch.Tensor) -> None:
        """Record the mean of the training vocabulary's (C,D) text embeddings as the text centre.

        Prompt embeddings of one encoder share a large common direction (the `minilm` embeddings of the eight
        glass-defect prompts have pairwise cosines of 0.43-0.72): against it, the region-text head learns the
        classes slowly. Subtracting the training vocabulary's mean leaves the class-specific parts (the open
        protocol applies the seen classes' centre to unseen prompts, as an exported bundle does to a new
        vocabulary). A vocabulary of one class has no class-specific part: the centre stays zero.
        """
        if self.text_center is None or text_embeds.shape[0] < 2:
            return
        self.text_center.copy_(text_embeds.float().mean(0).to(self.text_center))

    def _prepare_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        if self.text_center is None:
            return text_embeds
        return F.normalize(text_embeds - self.text_center.to(text_embeds.dtype), dim=-1)

    # ----------------------------------------------------------------- forward
    def _expert(self, images: torch.Tensor, trainable: bool) -> dict[str, torch.Tensor]:
        if trainable:
            return self.expert(images)
        # Frozen expert (joint stage with update off): no gradient, BatchNorm statistics untouched.
        was = self.expert.training
        self.expert.train(False)
        with torch.no_grad():
            out = self.expert(images)
        self.expert.train(was)
        return out

    def _features(self, images: torch.Tensor, text_embeds: torch.Tensor, stage: str):
        """Shared trunk -> (head inputs list, text (B,C,D), align loss | None, rvp outputs | None)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        b = images.shape[0]
        shared = self._prepare_text(text_embeds.to(images.dtype))  # (C, D), the same for every image
        text = shared.unsqueeze(0).expand(b, -1, -1)  # (B, C, D)
        if stage == "pretrain":
            e = self.expert(images)
            return [e[k] for k in self.levels], text, None, None
        e = self._expert(images, trainable=self.update_expert)
        expert_feats = [e[k] for k in self.levels]
        align = None
        if self.projection is not None:
            prompts, align = self.projection(self.sam(images), e)  # already in the expert's channel space
        else:
            prompts = expert_feats  # EDP off: the expert's own features are the coarse prompt
        if self.rvp is not None:
            rvp_out = [m(p) for m, p in zip(self.rvp, prompts, strict=True)]
            prompts = [o["refined"] for o in rvp_out]
        else:
            rvp_out = None
        if self.projection is None and self.rvp is None:
            feats = expert_feats  # no visual prompt at all
        else:
            feats = [f + p for f, p in zip(expert_feats, prompts, strict=True)]  # prompt-enhanced features
        if self.tv is not None:
            # the shared (C, D) vocabulary: T-V folds it into one 1x1 conv per level (interaction.py)
            feats = [m(f, shared) for m, f in zip(self.tv, feats, strict=True)]
        if self.vt is not None:
            text = self.vt(feats, text)
        return feats, text, align, rvp_out

    def forward_training(
        self,
        images: torch.Tensor,
        targets: dict[str, torch.Tensor],
        text_embeds: torch.Tensor,
        stage: str = "joint",
    ) -> dict[str, torch.Tensor]:
        """Loss terms for one batch.

        Args:
            images (Tensor): (B,3,H,W) normalised RGB, H and W multiples of 32.
            targets (dict): ``batch_idx`` (M,), ``cls`` (M,) indices into ``text_embeds``, ``boxes``
                (M,4) xyxy in input pixels. M may be 0.
            text_embeds (Tensor): (C,D) class text embeddings.
            stage (str): ``"joint"`` or ``"pretrain"`` (expert + head only, Eq. 1).

        Returns:
            ``{"loss", "loss_box", "loss_cls", "loss_dfl", "loss_align", "loss_rvp"}`` (scalars; terms of
            switched-off components are 0).
        """
        self._check_inputs(images, text_embeds)
        gt_boxes, gt_cls, gt_valid = pad_targets(targets, images.shape[0])
        gt_boxes, gt_cls, gt_valid = (
            gt_boxes.to(images.device),
            gt_cls.to(images.device),
            gt_valid.to(images.device),
        )
        self._check_targets(gt_boxes[gt_valid], gt_cls[gt_valid], text_embeds.shape[0])
        feats, text, align, rvp_out = self._features(images, text_embeds, stage)
        dist, logits, anchors, strides = self.head(feats, text)
        losses = self.det_loss(dist, logits, anchors, strides, gt_boxes, gt_cls, gt_valid)
        zero = logits.new_zeros(())
        losses["loss_align"] = align * self.loss_gains["align"] if align is not None else zero
        if rvp_out is not None:
            losses["loss_rvp"] = (
                rvp_box_loss(rvp_out, self.strides, gt_boxes, gt_valid) * self.loss_gains["rvp"]
            )
        else:
            losses["loss_rvp"] = zero
        losses["loss"] = sum(losses.values())
        return losses

    def forward_inference(
        self, images: torch.Tensor, text_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense predictions, tensors only (what export traces).

        Args:
            images (Tensor): (B,3,H,W) normalised RGB. text_embeds (Tensor): (C,D).

        Returns:
            boxes (B,N,4) xyxy in input pixels, scores (B,N,C) sigmoid in [0,1]; N = sum of H_l*W_l.
        """
        self._check_inputs(images, text_embeds)
        feats, text, _, _ = self._features(images, text_embeds, "joint")
        dist, logits, anchors, strides = self.head(feats, text)
        return dfl_decode(dist, anchors, strides), logits.sigmoid()

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward_inference` (so ``torch.onnx.export(model, (images, text_embeds))`` works)."""
        return self.forward_inference(images, text_embeds)

    # ------------------------------------------------------------- optimiser
    def param_groups(self, lr: float, weight_decay: float, stage: str = "joint") -> list[dict]:
        """AdamW parameter groups with the coupled expert learning rate (Eq. 6).

        Joint stage: the expert's lr is ``lr * expert_lr_scale`` (or the expert is left out when
        ``update_expert`` is off); every other trainable part gets ``lr``. Pretrain stage: expert and
        head only, at ``lr``. Biases, norms and scalars get no weight decay. Frozen encoders are never
        included. Each group carries ``name`` and ``lr_scale`` (its lr / base lr) for schedulers.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        parts: dict[str, tuple[float, list[nn.Module]]] = {}
        if stage == "pretrain":
            parts["expert"] = (1.0, [self.expert])
            parts["head"] = (1.0, [self.head])
        else:
            if self.update_expert:
                parts["expert"] = (self.expert_lr_scale, [self.expert])
            others = [self.head, self.projection, self.rvp, self.tv, self.vt]
            parts["prompt"] = (1.0, [m for m in others if m is not None])
        groups = []
        for name, (scale, modules) in parts.items():
            decay, no_decay = [], []
            for m in modules:
                for p in m.parameters():
                    if p.requires_grad:
                        (decay if p.ndim > 1 else no_decay).append(p)
            for suffix, params, wd in ((" ", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
                if params:
                    groups.append(
                        {
                            "name": name + suffix.strip(),
                            "params": params,
                            "lr": lr * scale,
                            "weight_decay": wd,
                            "lr_scale": scale,
                        }
                    )
        return groups
