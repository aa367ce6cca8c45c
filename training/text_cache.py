"""Class-prompt embeddings, computed once per (text encoder, prompts) and cached on disk.

The text encoder (CLIP via open_clip, or a stand-in) is frozen, so its output for a vocabulary never changes:
training, evaluation and prediction load the cached (C, D) tensor instead of running the encoder again.
The cache key is the encoder spec (plus size and mtime of a weights file named in it) and a hash of the
prompts; the file also records the encoder's own identity string, stored in checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rtvp" / "text_embeddings"


def cache_key(encoder_spec: str, prompts: Sequence[str]) -> str:
    parts = [encoder_spec]
    for token in encoder_spec.split(":"):
        if token and os.path.isfile(token):  # a local weights file: re-encode when it changes
            st = os.stat(token)
            parts.append(f"{os.path.abspath(token)}|{st.st_size}|{int(st.st_mtime)}")
    parts.append(json.dumps(list(prompts)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _build_encoder(spec: str):
    from training.model.text_encoder import build_text_encoder

    return build_text_encoder(spec)


def text_embeddings(
    encoder_spec: str,
    prompts: Sequence[str],
    cache_dir: str | os.PathLike = "",
    build_encoder: Callable[[str], object] | None = None,
) -> tuple[torch.Tensor, str]:
    """Embeddings of ``prompts`` from the cache, computing and storing them on a miss.

    Args:
        encoder_spec: text-encoder spec (``training.model.text_encoder.build_text_encoder``).
        prompts: C prompts, in vocabulary order.
        cache_dir: cache directory ("" = ``$XDG_CACHE_HOME/rtvp/text_embeddings``).
        build_encoder: factory of the encoder from the spec (tests pass a stand-in).
    Returns:
        (C, D) float32 L2-normalised embeddings on the CPU, and the encoder's identity string.
    """
    if not prompts:
        raise ValueError("no prompts to embed: the vocabulary is empty")
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = directory / f"{cache_key(encoder_spec, prompts)}.pt"
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry["prompts"] == list(prompts) and entry["spec"] == encoder_spec:
                return entry["embeddings"].float(), entry["identity"]
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, never trusted
            pass
    encoder = (build_encoder or _build_encoder)(encoder_spec)
    with torch.no_grad():
        emb = encoder.encode(list(prompts)).detach().float().cpu()
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise ValueError(
            f"text encoder {encoder_spec!r} returned shape {tuple(emb.shape)} for {len(prompts)} prompts"
        )
    identity = str(getattr(encoder, "identity", encoder_spec))
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"embeddings": emb, "identity": identity, "spec": encoder_spec, "prompts": list(prompts)}, tmp)
    os.replace(tmp, path)  # atomic: concurrent ranks/runs never read a half-written file
    return emb, identity
