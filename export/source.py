"""The export source: a model with ``forward_inference`` plus everything the bundle must say about it.

Built from a training checkpoint (``training.checkpoint.build_from_checkpoint``), so export needs nothing but
the checkpoint file: model config, vocabulary, text-encoder identity, preprocessing and provenance travel in it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError
from rtvp_edge.bundle import VocabularyClass, sha256_file
from rtvp_edge.preprocess import PreprocessSpec

CHECKPOINT_NAMES = ("best.pt", "last.pt")


@dataclass
class ExportSource:
    """What the pipeline exports.

    Args:
        model: an ``nn.Module`` in eval mode with ``forward_inference(images (B,3,H,W) float32,
            text_embeds (C,D) float32) -> (boxes (B,N,4) xyxy input px, scores (B,N,C) in [0,1])``.
        model_name: registry name of the variant, e.g. ``"rtvpnet_s"``.
        preprocess: how camera images become model inputs (input size, letterbox, colour, mean/std).
        classes: the vocabulary the model was trained with (names and prompts).
        text_encoder: text-encoder spec string (``training.model.text_encoder.build_text_encoder``).
        text_embeddings: (C, D) float32 embeddings of ``classes`` cached in the checkpoint, or None.
        provenance: training provenance (dataset path and hash, epoch, metrics).
        checkpoint: path of the checkpoint file, None for an in-memory model (tests, benchmarks).
        model_config: the model config as a plain dict (recorded in the manifest's source section).
    """

    model: torch.nn.Module
    model_name: str
    preprocess: PreprocessSpec
    classes: list[VocabularyClass]
    text_encoder: str
    text_embeddings: torch.Tensor | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_dim(self) -> int | None:
        return None if self.text_embeddings is None else int(self.text_embeddings.shape[1])

    def dataset_root(self) -> Path | None:
        """The data set the checkpoint was trained on (from its provenance), if it still exists here."""
        p = (
            self.provenance.get("dataset")
            or self.provenance.get("dataset_path")
            or self.provenance.get("data")
        )
        if isinstance(p, dict):
            p = p.get("path") or p.get("root")
        if not p:
            return None
        path = Path(p)
        return path if path.exists() else None

    def describe(self) -> dict[str, Any]:
        """The manifest's ``source_checkpoint`` section."""
        out: dict[str, Any] = {"model": self.model_name}
        if self.checkpoint is not None:
            out["path"] = str(self.checkpoint)
            out["sha256"] = sha256_file(self.checkpoint)
        for key in ("epoch", "dataset", "dataset_hash", "dataset_sha256", "metrics"):
            if key in self.provenance:
                out[key] = _jsonable(self.provenance[key])
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def find_newest_checkpoint(runs_dir: str | os.PathLike = "runs") -> Path:
    """The newest ``best.pt``/``last.pt`` under ``runs_dir`` (by modification time).

    Within the newest run, ``best.pt`` is preferred over ``last.pt``: the run's selected weights.
    Raises ``ExportError`` when the folder or any checkpoint is missing.
    """
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise ExportError(f"no runs folder {runs}/: pass --checkpoint FILE (or train with rtvp-train first)")
    found = [p for name in CHECKPOINT_NAMES for p in runs.rglob(name) if p.is_file()]
    if not found:
        raise ExportError(f"no checkpoint (best.pt or last.pt) under {runs}/: pass --checkpoint FILE")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    best = newest.parent / "best.pt"
    return best if best.is_file() else newest


def load_source(checkpoint: str | os.PathLike) -> ExportSource:
    """Rebuild the model and its metadata from a training checkpoint.

    Raises ``ExportError`` naming the file when it is missing or not an rtvp-train checkpoint.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    try:
        from training.checkpoint import build_from_checkpoint
    except ImportError as e:  # the training part is an extra ([train]); say so instead of a traceback
        raise ExportError(f"cannot read checkpoints: training.checkpoint is not importable ({e})") from None
    try:
        model, info = build_from_checkpoint(path)
    except ExportError:
        raise
    except Exception as e:  # any failure to rebuild is a bad checkpoint from the user's point of view
        raise ExportError(f"checkpoint {path}: cannot rebuild the model ({type(e).__name__}: {e})") from None
    for key in ("model_config", "vocabulary", "text_encoder", "preprocess"):
        if key not in info:
            raise ExportError(f"checkpoint {path}: missing {key!r}; not an rtvp-train checkpoint")
    cfg = info["model_config"]
    cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    name = str(cfg_dict.get("variant") or cfg_dict.get("name") or type(model).__name__)
    pre = info["preprocess"]
    pre_dict = dataclasses.asdict(pre) if dataclasses.is_dataclass(pre) else dict(pre)
    spec = PreprocessSpec.from_dict(pre_dict)
    classes = []
    for i, c in enumerate(info["vocabulary"]):
        name_i = c["name"] if isinstance(c, dict) else getattr(c, "name", None)
        prompt_i = c.get("prompt") if isinstance(c, dict) else getattr(c, "prompt", None)
        if not name_i or not prompt_i:
            raise ExportError(f"checkpoint {path}: vocabulary entry {i} has no name/prompt: {c!r}")
        classes.append(VocabularyClass(name=str(name_i), prompt=str(prompt_i)))
    emb = info.get("text_embeddings")
    if emb is not None:
        emb = torch.as_tensor(emb, dtype=torch.float32).detach().cpu()
    model.eval()
    return ExportSource(
        model=model,
        model_name=name,
        preprocess=spec,
        classes=classes,
        text_encoder=str(info["text_encoder"]),
        text_embeddings=emb,
        provenance=dict(info.get("provenance") or {}),
        checkpoint=path,
        model_config=_jsonable(cfg_dict),
    )
