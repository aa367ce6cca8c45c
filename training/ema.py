"""Exponential moving average of model weights.

The EMA copy is what evaluation, ``best.pt`` and export use: it is smoother than the raw weights. The decay
ramps up with the number of updates (``decay * (1 - exp(-updates / tau))``, as in the YOLOv5/v8 trainers) so
the randomly initialised start is forgotten quickly; our own implementation of that idea.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """EMA of a module's floating-point state (parameters and buffers; integer buffers are copied).

    Args:
        model: the model being trained (unwrapped, not the DDP wrapper).
        decay: asymptotic decay per update.
        tau: ramp length in updates.
        updates: number of updates already made (when resuming).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0, updates: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA towards ``model``'s current weights (call after each optimizer step)."""
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        for name, ema_v in self.module.state_dict().items():
            v = src[name].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.to(ema_v.dtype), alpha=1.0 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "tau": self.tau,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
