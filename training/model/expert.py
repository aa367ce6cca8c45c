"""C2F-S expert: a YOLOv8-S-style CSP backbone and PAN neck built from C2f blocks (TPAMI 4.3.1).

The expert is the industrial-domain specialist of RTVPNet: it is pre-trained alone as a closed-set
detector on the seen classes (Eq. 1), then supervises the MobileSAM branch through the domain
projection and keeps training with a coupled learning rate (Eq. 6).

The layer layout follows the published YOLOv8 architecture description (CSP stages with C2f blocks,
SPPF, top-down + bottom-up PAN); this is an independent implementation, no code copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureSpec:
    """One named feature map of a backbone's output: channels and stride in input pixels."""

    channels: int
    stride: int


def _scaled(channels: int, width: float, max_channels: int) -> int:
    # Round to a multiple of 8 like the YOLO family so channel counts stay hardware-friendly.
    c = min(channels, max_channels) * width
    return max(8, int(math.ceil(c / 8) * 8))


def _depth(n: int, depth: float) -> int:
    return max(1, round(n * depth))


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU, the basic YOLO unit."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        # eps=1e-3 as YOLOv8. Momentum 0.1 (PyTorch's default) rather than YOLOv8's 0.03: with 0.03 the
        # running statistics still lag after ~100 steps, and short CPU/CI runs then evaluate badly.
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.1)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs with an optional residual connection."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convolutions and n bottlenecks whose every output is concatenated.

    Shapes: (B, c_in, H, W) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNAct(c_in, 2 * self.c, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, dim=1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        c_hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, c_hidden, 1)
        self.cv2 = ConvBNAct(c_hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], dim=1))


class C2FExpert(nn.Module):
    """C2F backbone + PAN neck. ``width=0.5, depth=0.33, max_channels=1024`` is the "S" size.

    Args:
        width (float): channel multiplier applied to the YOLOv8 base widths (64..1024).
        depth (float): multiplier applied to the base block repeats (3, 6, 6, 3).
        max_channels (int): cap on base channels before the width multiplier.

    ``forward(images (B,3,H,W))`` returns ``{"p3": (B,C3,H/8,W/8), "p4": (B,C4,H/16,W/16),
    "p5": (B,C5,H/32,W/32)}``; ``output_shape()`` states that contract (H, W multiples of 32).
    """

    def __init__(self, width: float = 0.5, depth: float = 0.33, max_channels: int = 1024):
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(c, width, max_channels) for c in (64, 128, 256, 512, 1024))
        n3, n6 = _depth(3, depth), _depth(6, depth)
        # Backbone: strides 2, 4, 8, 16, 32.
        self.stem = ConvBNAct(3, c1, 3, 2)
        self.stage2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), C2f(c2, c2, n3, shortcut=True))
        self.stage3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), C2f(c3, c3, n6, shortcut=True))
        self.stage4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), C2f(c4, c4, n6, shortcut=True))
        self.stage5 = nn.Sequential(ConvBNAct(c4, c5, 3, 2), C2f(c5, c5, n3, shortcut=True), SPPF(c5, c5))
        # PAN neck: top-down then bottom-up, C2f without shortcut as in YOLOv8.
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(c5 + c4, c4, n3)
        self.td3 = C2f(c4 + c3, c3, n3)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.bu4 = C2f(c3 + c4, c4, n3)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.bu5 = C2f(c4 + c5, c5, n3)
        self._spec = {"p3": FeatureSpec(c3, 8), "p4": FeatureSpec(c4, 16), "p5": FeatureSpec(c5, 32)}

    def output_shape(self) -> dict[str, FeatureSpec]:
        """Feature contract: name -> (channels, stride)."""
        return dict(self._spec)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stage2(self.stem(images))
        b3 = self.stage3(x)  # (B, c3, H/8, W/8)
        b4 = self.stage4(b3)  # (B, c4, H/16, W/16)
        b5 = self.stage5(b4)  # (B, c5, H/32, W/32)
        t4 = self.td4(torch.cat([self.up(b5), b4], 1))
        p3 = self.td3(torch.cat([self.up(t4), b3], 1))
        p4 = self.bu4(torch.cat([self.down3(p3), t4], 1))
        p5 = self.bu5(torch.cat([self.down4(p4), b5], 1))
        return {"p3": p3, "p4": p4, "p5": p5}
