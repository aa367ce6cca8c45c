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
  so a line swaps its vocabulary by replacing ``text_embeddings.npy`` (``rtvp-export vocab``).
"""

from __future__ import annotations

import torch
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
        return self.model.forward_inference(images, self.text_embeddings)


class InputVocabulary(nn.Module):
    """``forward(images (B,3,H,W), text_embeddings (C,D)) -> (boxes (B,N,4), scores (B,N,C))``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_inference(images, text_embeddings)


def build_wrapper(model: nn.Module, mode: str, text_embeddings: torch.Tensor) -> nn.Module:
    """The export wrapper for vocabulary ``mode`` (``"folded"`` or ``"input"``), in eval mode."""
    if mode == "folded":
        return FoldedVocabulary(model, text_embeddings).eval()
    if mode == "input":
        return InputVocabulary(model).eval()
    raise ValueError(f"vocabulary mode must be 'folded' or 'input', got {mode!r}")
