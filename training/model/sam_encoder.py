"""MobileSAM-T image encoder (TinyViT from the ``mobile_sam`` package), frozen (TPAMI 4.3).

``mobile_sam``'s ``TinyViT.forward_features`` reshapes its last tokens to a hard-coded 64x64 grid, which
only holds for a 1024 px input. :class:`SamImageEncoder` runs the same TinyViT modules with the grid
derived from the input size, so the encoder can be built for 640, 384, 320 or 128 px. Nothing in the
TinyViT state dict depends on the input size (attention biases are per window, their index buffer is
not persistent), so the official 1024 px ``mobile_sam.pt`` loads strictly into any of these builds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .expert import FeatureSpec

with warnings.catch_warnings():
    # mobile_sam re-registers timm's tiny_vit_* names at import time and warns about it; harmless here.
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
    warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
    from mobile_sam.modeling import TinyViT

log = logging.getLogger(__name__)

# MobileSAM-T hyper-parameters, as in mobile_sam/build_sam.py (build_sam_vit_t).
MOBILE_SAM_T = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    drop_rate=0.0,
    drop_path_rate=0.0,
    use_checkpoint=False,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    layer_lr_decay=0.8,
)


def remap_mobile_sam_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a MobileSAM checkpoint into a TinyViT state dict.

    Accepts the official ``mobile_sam.pt`` (a full ``Sam`` state dict whose image-encoder keys start
    with ``image_encoder.``; prompt encoder and mask decoder keys are dropped), a dict wrapping it under
    ``"model"`` or ``"state_dict"``, or a bare TinyViT state dict.

    Raises:
        ValueError: when no TinyViT weights can be found (names the keys seen).
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if any(k.startswith("patch_embed.") for k in state):
        return dict(state)
    sample = ", ".join(list(state)[:5])
    raise ValueError(f"no MobileSAM image-encoder weights found (keys start with: {sample})")


def _refresh_after_load(module: SamImageEncoder, _incompatible_keys) -> None:
    # A module-level function (not a lambda) so the model stays picklable and deep-copyable (EMA).
    module._refresh_bias_cache()


class SamImageEncoder(nn.Module):
    """Frozen MobileSAM-T encoder returning multi-scale features.

    Args:
        img_size (int): square input size in pixels; a multiple of 32 (TinyViT downsamples by 16 with
            stride-2 convs whose sizes must stay even).
        checkpoint (str | Path | None): path to ``mobile_sam.pt``; ``None`` keeps a random init (warned).
        load_weights (bool): False when a full RTVPNet state dict is loaded afterwards (rebuilding from
            a training checkpoint): the checkpoint file is then neither needed nor read.

    ``forward(images (B,3,H,W))`` resizes to ``img_size`` and returns ``{"s8": (B,128,S/8,S/8),
    "s16": (B,160,S/16,S/16), "neck": (B,256,S/16,S/16)}`` with ``S = img_size``; strides in
    ``output_shape()`` are in this encoder's own input pixels. Expects ImageNet-normalised RGB like SAM.
    """

    def __init__(self, img_size: int = 1024, checkpoint: str | Path | None = None, load_weights: bool = True):
        super().__init__()
        if img_size % 32 or img_size < 64:
            raise ValueError(f"sam_img_size must be a multiple of 32 and >= 64, got {img_size}")
        self.img_size = img_size
        self.grid = img_size // 16  # 64 for the 1024 px input mobile_sam hard-codes
        self.vit = TinyViT(img_size=img_size, in_chans=3, num_classes=1000, **MOBILE_SAM_T)
        self.checkpoint = str(checkpoint) if checkpoint else None
        if not load_weights:
            # Rebuilding a trained model: its state dict (which holds these weights) is loaded next.
            log.debug("MobileSAM encoder built without weights; expecting a state dict to follow")
        elif checkpoint:
            self.load_checkpoint(checkpoint)
        else:
            msg = (
                "MobileSAM encoder has RANDOM weights (no mobile_sam.pt given): the SAM branch carries "
                "no pretrained knowledge. Pass sam_checkpoint=/path/to/mobile_sam.pt for real training."
            )
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        # Refresh TinyViT's eval-time attention-bias cache whenever weights are (re)loaded.
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.train(False)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load ``mobile_sam.pt`` strictly; raises FileNotFoundError / ValueError / RuntimeError naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MobileSAM checkpoint not found: {path} (rebuilding a trained model from its checkpoint? "
                "use build_model(cfg, load_weights=False): the SAM weights are in the model's state dict)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            self.vit.load_state_dict(remap_mobile_sam_checkpoint(state), strict=True)
        except (ValueError, RuntimeError) as e:
            raise type(e)(f"{path}: {e}") from e
        self._refresh_bias_cache()

    def _refresh_bias_cache(self) -> None:
        # TinyViT's Attention.train(False) caches attention biases in a buffer `ab`; rebuild it.
        self.vit.train(False)

    def train(self, mode: bool = True) -> SamImageEncoder:
        # Frozen encoder: always in eval mode, whatever the parent model does.
        super().train(False)
        self.training = False
        return self

    def output_shape(self) -> dict[str, FeatureSpec]:
        """Feature contract: name -> (channels, stride in this encoder's input pixels)."""
        return {"s8": FeatureSpec(128, 8), "s16": FeatureSpec(160, 16), "neck": FeatureSpec(256, 16)}

    def provenance(self) -> dict[str, str]:
        """Where the weights came from (recorded in checkpoints and bundle manifests)."""
        if self.checkpoint:
            return {
                "encoder": "mobile_sam_t",
                "weights": self.checkpoint,
                "source": "mobile_sam.pt (MobileSAM)",
                "licence": "Apache-2.0 (MobileSAM)",
            }
        return {"encoder": "mobile_sam_t", "weights": "random or from the model state dict", "licence": "n/a"}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # The TinyViT modules are run one by one (not TinyViT.forward_features) to (a) derive the token
        # grid from img_size instead of the hard-coded 64x64 and (b) always hand PatchMerging a 4-D
        # tensor: its 3-D path takes the batch size from len(x), which ONNX tracing freezes to a
        # constant and which would break a dynamic batch axis.
        vit = self.vit
        if images.shape[-2:] != (self.img_size, self.img_size):
            images = F.interpolate(
                images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )
        b = images.shape[0]

        def grid(tokens: torch.Tensor, res: tuple[int, int]) -> torch.Tensor:
            return tokens.transpose(1, 2).reshape(b, -1, res[0], res[1])  # (B, L, C) -> (B, C, H, W)

        x = vit.patch_embed(images)  # (B, 64, S/4, S/4)
        feats = {}
        for i, layer in enumerate(vit.layers):
            for block in layer.blocks:
                x = block(x)
            if layer.downsample is not None:
                if x.ndim == 3:
                    x = grid(x, layer.input_resolution)
                x = layer.downsample(x)  # tokens (B, L', C')
            if i == 0:
                feats["s8"] = grid(x, (self.img_size // 8, self.img_size // 8))  # (B, 128, S/8, S/8)
            elif i == 1:
                feats["s16"] = grid(x, (self.grid, self.grid))  # (B, 160, S/16, S/16)
        feats["neck"] = vit.neck(grid(x, (self.grid, self.grid)))  # (B, 256, S/16, S/16)
        return feats
