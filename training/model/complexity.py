"""Model cost: parameter counts (with and without the text encoder) and FLOPs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real forward pass. It counts a
multiply-accumulate as **2 FLOPs** (2xMAC), the convention of the issue's peer figures (YOLOv8-S 28.6,
YOLO-World-S 32.8 GFLOPs at 640). Only matmul/conv/attention-type operators are counted (element-wise
ops are not), as in the usual detector tables.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .rtvpnet import RTVPNet
from .text_encoder import TextEncoder

FLOP_CONVENTION = "2xMAC (torch.utils.flop_counter: one multiply-accumulate = 2 FLOPs)"


def count_parameters(model: RTVPNet, text_encoder: TextEncoder | None = None) -> dict[str, int]:
    """Parameters per part, the model total, and the total including the text encoder.

    Returns keys ``expert``, ``sam``, ``projection``, ``rvp``, ``tv``, ``vt``, ``head`` (0 when
    switched off), ``model`` (RTVPNet), ``trainable``, ``text_encoder`` and ``total_with_text``.
    """
    parts = {}
    for name in ("expert", "sam", "projection", "rvp", "tv", "vt", "head"):
        module = getattr(model, name)
        parts[name] = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
    parts["model"] = sum(p.numel() for p in model.parameters())
    parts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts["text_encoder"] = text_encoder.num_parameters() if text_encoder is not None else 0
    parts["total_with_text"] = parts["model"] + parts["text_encoder"]
    return parts


@torch.no_grad()
def count_flops(model: RTVPNet, img_size: int, num_classes: int = 8, batch: int = 1) -> dict[str, float]:
    """GFLOPs (2xMAC) of ``forward_inference`` for a (batch,3,img_size,img_size) input and C classes.

    Returns ``total`` plus a per-part breakdown keyed by the model's top-level children
    (``expert``, ``sam``, ``projection``, ``rvp``, ``tv``, ``vt``, ``head``), all in GFLOPs.
    """
    was = model.training
    model.eval()
    images = torch.zeros(batch, 3, img_size, img_size)
    text = torch.nn.functional.normalize(torch.ones(num_classes, model.text_dim), dim=-1)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images, text)  # __call__ so the counter names parts RTVPNet.<child>
    model.train(was)
    by_module = counter.get_flop_counts()
    out: dict[str, float] = defaultdict(float)
    out["total"] = counter.get_total_flops() / 1e9
    for key, ops in by_module.items():
        path = key.split(".")
        # A top-level child ("RTVPNet.head") or an element of a top-level ModuleList ("RTVPNet.rvp.0").
        if path[0] == "RTVPNet" and (len(path) == 2 or (len(path) == 3 and path[2].isdigit())):
            out[path[1]] += sum(ops.values()) / 1e9
    return dict(out)
