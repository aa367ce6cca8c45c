"""Checkpoints: weights plus everything needed to rebuild and use the model without the training config.

A checkpoint (``torch.save`` of plain types and tensors, loadable with ``weights_only=True``) holds:

- ``model``: raw weights; ``ema``: EMA weights (what evaluation and export use) and its update count;
- ``model_config``: the ``training.model.ModelConfig`` fields (the model is rebuilt from these alone);
- ``vocabulary``: ``[{name, prompt}]`` in class-id order; ``text_encoder``: the encoder spec and identity;
  ``text_embeddings``: the (C, D) cached prompt embeddings of that vocabulary;
- ``preprocess``: ``rtvp_edge.preprocess.PreprocessSpec`` fields (input size, pad, colour order, mean/std);
- ``provenance``: data set path and hash, protocol, stage, epoch, metrics, versions, creation time;
- for exact resume: ``optimizer``, ``scaler``, ``trainer`` (epoch, step, best metric) and ``rng`` states;
- ``train_config``: the full resolved training configuration.

Files are written to a temporary name and renamed, so a crash never leaves a truncated ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from rtvp_edge.preprocess import PreprocessSpec

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model",
    "model_config",
    "vocabulary",
    "text_encoder",
    "preprocess",
    "provenance",
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or incomplete; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def filter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remap checkpoint keys to the plain model's names (drop DDP ``module.`` / compile ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        stripped = True
        while stripped:  # prefixes nest in any order (compile of DDP, DDP of compile)
            stripped = False
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix) :], True
        out[k] = v
    return out


def rng_state() -> dict:
    """Every random generator a training step touches (python, numpy, torch CPU, CUDA)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(x: Any) -> Any:
    if isinstance(x, BaseModel):  # the model and training configs
        return _plain(x.model_dump())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    model_config: Any,
    vocabulary: list[dict],
    text_encoder: str,
    preprocess: PreprocessSpec | dict,
    provenance: dict,
    text_embeddings: torch.Tensor | None = None,
    text_encoder_identity: str = "",
    ema: Any = None,
    scaler: Any = None,
    trainer_state: dict | None = None,
    train_config: Any = None,
    include_rng: bool = False,
    rng_per_rank: list[dict] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination ``.pt`` file (parent directories are created).
        model: the model (DDP/compile wrappers are unwrapped).
        optimizer: saved for exact resume when given.
        model_config: the ``ModelConfig`` the model was built from.
        vocabulary: ``[{"name": str, "prompt": str}]`` in class-id order.
        text_encoder: the text-encoder spec string.
        preprocess: the input preprocessing.
        provenance: data set path and hash, epoch, metrics, ... (plain types).
        text_embeddings: (C, D) embeddings of ``vocabulary`` prompts.
        text_encoder_identity: the encoder's identity string (weights it was built from).
        ema: a ``ModelEMA`` (its weights become the inference weights).
        scaler: a ``torch.amp.GradScaler`` (fp16 training).
        trainer_state: loop position (epoch, step, best metric, ...).
        train_config: the resolved ``TrainConfig``.
        include_rng: store the random generators' states (exact resume).
        rng_per_rank: under DDP, every process's generator states (``rng_state()``, gathered), so each
            process resumes its own random draws.
    Returns:
        The written path.
    """
    path = Path(path)
    ckpt: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "model_config": _plain(model_config),
        "vocabulary": [{"name": str(v["name"]), "prompt": str(v["prompt"])} for v in vocabulary],
        "text_encoder": {"spec": text_encoder, "identity": text_encoder_identity or text_encoder},
        "text_embeddings": None if text_embeddings is None else text_embeddings.detach().float().cpu(),
        "preprocess": _plain(preprocess),
        "provenance": _plain(provenance),
        "torch_version": str(torch.__version__),
    }
    if ema is not None:
        ckpt["ema"] = {
            "module": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
            "updates": ema.updates,
        }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    if trainer_state is not None:
        ckpt["trainer"] = _plain(trainer_state)
    if train_config is not None:
        ckpt["train_config"] = _plain(train_config)
    if include_rng:
        ckpt["rng"] = rng_state()
    if rng_per_rank:
        ckpt["rng_per_rank"] = list(rng_per_rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and check a checkpoint.

    Raises:
        CheckpointError: the file is missing, not a torch checkpoint, of another format version, or lacks a
            required entry (the message names the file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise CheckpointError(f"{path}: not a readable rtvp checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an rtvp checkpoint (top level is {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an rtvp checkpoint, missing entries: {', '.join(missing)}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt['format_version']}, this version reads format {FORMAT_VERSION}"
        )
    return ckpt


def preprocess_spec(info_preprocess: dict) -> PreprocessSpec:
    """``PreprocessSpec`` from the checkpoint's plain ``preprocess`` entry."""
    return PreprocessSpec.from_dict(dict(info_preprocess))


def _default_builder() -> tuple[type, Callable[[Any], nn.Module]]:
    from training.model import ModelConfig, build_model

    return ModelConfig, build_model


def build_from_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    use_ema: bool = True,
    model_config_cls: type | None = None,
    build_model: Callable[[Any], nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint, ready for inference.

    Args:
        path: checkpoint file.
        device: where the model goes.
        use_ema: load the EMA weights when the checkpoint has them (the default; what evaluation used).
        model_config_cls, build_model: the model config class and builder (default ``training.model``'s).
    Returns:
        The model in eval mode, and ``info`` with keys ``model_config`` (a ``ModelConfig``), ``vocabulary``
        (``[{name, prompt}]``), ``class_names``, ``text_encoder`` (spec string), ``text_encoder_identity``,
        ``preprocess`` (dict of ``PreprocessSpec`` fields), ``preprocess_spec`` (``PreprocessSpec``),
        ``provenance`` (dict), ``text_embeddings`` ((C, D) float32 tensor or None), ``weights``
        (``"ema"`` or ``"raw"``).
    Raises:
        CheckpointError: unreadable checkpoint, unknown model-config keys, or weights that do not fit.
    """
    from rtvp_edge.yaml_config import ConfigError, validate_mapping

    ckpt = load_checkpoint(path)
    default_cls, default_build = _default_builder()
    if model_config_cls is None or build_model is None:
        model_config_cls = model_config_cls or default_cls
        build_model = build_model or default_build
    stored = dict(ckpt["model_config"])
    if model_config_cls is default_cls and "encoder" not in stored:
        stored["encoder"] = "mobile_sam_t"  # written before the encoder slot existed: the paper's encoder
    try:
        model_config = validate_mapping(model_config_cls, stored, str(path), prefix=("model_config",))
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    # The encoder's pretrained weights are in the state dict loaded below: nothing else is read from disk.
    model = (
        build_model(model_config, load_weights=False)
        if build_model is default_build
        else build_model(model_config)
    )
    weights = "ema" if use_ema and "ema" in ckpt else "raw"
    state = filter_state_dict(ckpt["ema"]["module"] if weights == "ema" else ckpt["model"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model built from its config: {e}") from e
    model.to(device).eval()
    te = ckpt["text_encoder"]
    info = {
        "model_config": model_config,
        "vocabulary": list(ckpt["vocabulary"]),
        "class_names": [v["name"] for v in ckpt["vocabulary"]],
        "text_encoder": te["spec"],
        "text_encoder_identity": te.get("identity", te["spec"]),
        "preprocess": dict(ckpt["preprocess"]),
        "preprocess_spec": preprocess_spec(ckpt["preprocess"]),
        "provenance": dict(ckpt["provenance"]),
        "text_embeddings": ckpt.get("text_embeddings"),
        "weights": weights,
    }
    return model, info
