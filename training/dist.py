"""Process-group helpers for DDP under ``torchrun`` (or a single plain process).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT or a c10d rendezvous); without them
the same command runs as one process and every helper here degenerates to a no-op. Backend: NCCL when
training on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from training.config import ConfigError


def resolve_device(setting: str, local_rank: int = 0, key: str = "device") -> torch.device:
    """The torch device this process runs on.

    Args:
        setting: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` (this process's GPU) or
            ``cuda:N``.
        local_rank: this process's rank on its machine (``LOCAL_RANK`` under torchrun): the GPU of ``cuda``.
        key: what the user wrote the setting as (a config key or a command-line flag), for the error.
    Raises:
        ConfigError: CUDA was asked for on a machine without it (the message names ``key`` and the value).
    """
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key} {setting!r}: CUDA is not available on this machine")
    if setting in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
    return torch.device(setting)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment, if any.

    Args:
        device_type: ``"cuda"`` (NCCL, one GPU per local rank) or ``"cpu"`` (gloo).
    Returns:
        This process's rank, world size and local rank (0, 1, 0 when not launched by torchrun).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean of each scalar over all processes (identity without a process group)."""
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    t /= tdist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=False)}


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out
