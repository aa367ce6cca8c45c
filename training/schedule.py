"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr(it)`` style).

The trainer multiplies every parameter group's initial learning rate by ``lr_factor(step, ...)``, so the
coupled expert rate of dynamic expert updating (TPAMI Eq. 6) keeps its ratio to the base rate throughout.
"""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    *,
    kind: str = "cosine",
    warmup_start: float = 0.01,
    final_factor: float = 0.01,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Args:
        step: current optimizer step, 0 <= step < total_steps (later steps hold the final factor).
        total_steps: number of optimizer steps of the whole run.
        warmup_steps: steps of linear warm-up from ``warmup_start`` to 1.
        kind: decay after the warm-up: ``cosine``, ``linear`` or ``constant``.
        warmup_start: factor at step 0.
        final_factor: factor at the last step.
    Returns:
        The factor, in ``[min(warmup_start, final_factor), 1]``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if kind == "cosine":
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "linear":
        return 1.0 + (final_factor - 1.0) * t
    raise ValueError(f"unknown schedule kind {kind!r} (cosine, linear, constant)")


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up length in steps; never the whole run, so the schedule always reaches its peak."""
    return min(int(round(warmup_epochs * steps_per_epoch)), max(0, total_steps - 1))
