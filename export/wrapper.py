"""Tensors-only export wrappers around ``forward_inference``.

Decision (documented in docs/export.md): box decoding and the sigmoid are in the graph, NMS is not. The graph
returns ``boxes (B, N, 4)`` xyxy in model-input pixels and ``scores (B, N, C)`` in [0, 1]; the runtime runs
``rtvp_edge.postprocess.decode_detections`` (score threshold, class-wise OpenCV NMS, back to camera pixels).
NMS stays out because its output size is data dependent (control flow in every backend) and because the
runtime applies per-class thresholds from the line config.

Two vocabulary modes, two wrappers, no branch inside ``forward`` (an exported graph has no control flow):
- ``FoldedVocabulary``: the (C, D) embeddings are a buffer, hence constants in the graph; the exporters'
  constant folding precomputes every text-only branch (the YOLO-World re-parameterisation idea, done by the
  compiler instead of by hand). Fastest; a new vocabulary needs a re-export.
- ``InputVocabulary``: the embeddings are a second graph input ``text_embeddings (C, D)`` with a dynamic C,
  so a line swaps its vocabulary by replacing ``text_embeddings.npy`` (``rtvp-export vocab``). It has a third
  output, ``region_embeddings (B, N, D)``: the L2-normalised region embedding of every anchor, the vectors the
  head compares (cosine) with the class embeddings. ``rtvp-edge enroll`` averages them inside a few example
  boxes into the embedding of a new class (a prototype), without retraining or recompiling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FoldedVocabulary(nn.Module):
    """``forward(images (B,3,H,W)) -> (boxes (B,N,4), scores (B,N,C))`` with the embeddings as constants.

    Args:
        model: module with ``forward_inference(images, text_embeds)`` (see ``export.source.ExportSource``).
        text_embeddings: (C, D) float32 class embeddings.
    """

    def __init__(self, model: nn.Module, text_embeddings: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text_embeddings", torch.as_tensor(text_embeddings, dtype=torch.float32).clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Modules that fold a constant vocabulary into their weights (RTVPNet's T-V: one 1x1 Conv per level)
        # may, for this call: the embeddings are a buffer here, constants of the traced graph.
        folding = [m for m in self.model.modules() if hasattr(m, "constant_vocabulary")]
        for m in folding:
            m.constant_vocabulary = True
        try:
            return self.model.forward_inference(images, self.text_embeddings)
        finally:
            for m in folding:
                m.constant_vocabulary = False


def region_embedding_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the head's region embeddings, one per level in anchor order.

    RTVPNet's ``DetectionHead.embed`` (a ``ModuleList`` of 1x1 convs, (B,C_l,H_l,W_l) -> (B,D,H_l,W_l)) and
    the test double's ``DetectorHead.embed`` (one conv). The head L2-normalises their outputs and takes the
    cosine with the (centred, normalised) class embeddings, scaled and biased per level.
    """
    embed = getattr(getattr(model, "head", None), "embed", None)
    if isinstance(embed, nn.ModuleList):
        return list(embed)
    if isinstance(embed, nn.Module):
        return [embed]
    raise ValueError(
        f"{type(model).__name__} has no head.embed layers: the region embeddings cannot be exported"
    )


class InputVocabulary(nn.Module):
    """``forward(images (B,3,H,W), text_embeddings (C,D))
    -> (boxes (B,N,4), scores (B,N,C), region_embeddings (B,N,D))``.

    The region embeddings are taken with forward hooks on the head's embedding layers (the model's own
    forward runs unchanged) and L2-normalised over D, flattened per level in the head's anchor order
    (level by level, row-major): row n belongs to the box of row n.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = region_embedding_layers(model)

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        regions: list[torch.Tensor] = []  # per level (B, D, H_l, W_l)
        # hooks only for this call: the model may be wrapped again (another export, a test)
        hooks = [m.register_forward_hook(lambda _m, _i, out: regions.append(out)) for m in self.layers]
        try:
            boxes, scores = self.model.forward_inference(images, text_embeddings)
        finally:
            for h in hooks:
                h.remove()
        flat = torch.cat([r.flatten(2) for r in regions], 2).transpose(1, 2)  # (B, N, D)
        return boxes, scores, F.normalize(flat, dim=-1)


def build_wrapper(model: nn.Module, mode: str, text_embeddings: torch.Tensor) -> nn.Module:
    """The export wrapper for vocabulary ``mode`` (``"folded"`` or ``"input"``), in eval mode."""
    if mode == "folded":
        return FoldedVocabulary(model, text_embeddings).eval()
    if mode == "input":
        return InputVocabulary(model).eval()
    raise ValueError(f"vocabulary mode must be 'folded' or 'input', got {mode!r}")
