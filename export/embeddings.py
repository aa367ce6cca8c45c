"""Vocabulary files and cached text embeddings.

The text encoder runs here, once per (encoder, prompts); the edge box never runs it. Embeddings are cached on
disk by ``training.text_cache`` keyed by the encoder spec and the prompts (the cache training uses), so
re-exporting the same vocabulary costs nothing.

Vocabulary YAML: a list of ``{name, prompt}`` mappings, or a mapping with a ``classes:`` list of them::

    classes:
      - {name: oil, prompt: a smear of oil on the glass container}
      - {name: bubble, prompt: a small round air bubble trapped in the glass}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from export.errors import ExportError
from rtvp_edge.bundle import VocabularyClass

_ENTRY_KEYS = {"name", "prompt", "seen"}


def load_vocabulary(path: str | os.PathLike) -> list[VocabularyClass]:
    """Read and check a vocabulary YAML file.

    Raises ``ExportError`` naming the file and entry for: missing file, bad YAML, unknown keys, a missing or
    empty name/prompt, duplicate names, an empty list.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"vocabulary file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ExportError(f"vocabulary file {path}: not valid YAML ({e})") from None
    if isinstance(raw, dict):
        unknown = set(raw) - {"classes"}
        if unknown:
            raise ExportError(f"vocabulary file {path}: unknown key(s) {sorted(unknown)}; expected 'classes'")
        raw = raw.get("classes")
    if not isinstance(raw, list) or not raw:
        raise ExportError(f"vocabulary file {path}: expected a non-empty list of {{name, prompt}} entries")
    classes: list[VocabularyClass] = []
    seen_names: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"vocabulary file {path}: entry {i}"
        if not isinstance(entry, dict):
            raise ExportError(f"{where}: expected a mapping with name and prompt, got {entry!r}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ExportError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: name, prompt, seen")
        for key in ("name", "prompt"):
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ExportError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
        if entry["name"] in seen_names:
            raise ExportError(f"{where}: duplicate class name {entry['name']!r}")
        seen_names.add(entry["name"])
        classes.append(VocabularyClass(name=entry["name"].strip(), prompt=entry["prompt"].strip()))
    return classes


def encode_vocabulary(
    text_encoder: str,
    classes: list[VocabularyClass],
    cache_dir: str | os.PathLike | None = None,
    expected_dim: int | None = None,
) -> np.ndarray:
    """Text embeddings of the vocabulary's prompts, from training's embedding cache or by running the
    encoder once (``training.text_cache``: one cache for training, evaluation and export).

    Args:
        text_encoder: spec string for ``training.model.text_encoder.build_text_encoder``.
        classes: C classes; their prompts are encoded in order.
        cache_dir: cache folder (default ``$XDG_CACHE_HOME/rtvp/text_embeddings``).
        expected_dim: the embedding width D the model was trained with; a different width is an error.
    Returns:
        (C, D) float32, L2-normalised rows.
    """
    try:
        from training.text_cache import text_embeddings
    except ImportError as e:
        raise ExportError(f"cannot run text encoder {text_encoder!r}: {e}") from None
    try:
        emb, _identity = text_embeddings(text_encoder, [c.prompt for c in classes], cache_dir or "")
    except Exception as e:  # any encoder failure: name the encoder, keep the message
        raise ExportError(f"text encoder {text_encoder!r} failed: {type(e).__name__}: {e}") from None
    emb = np.asarray(emb.numpy(), dtype=np.float32)
    check_fits(emb, classes, expected_dim, what=f"embeddings of text encoder {text_encoder!r}")
    return emb


def check_fits(emb: np.ndarray, classes: list[VocabularyClass], expected_dim: int | None, what: str) -> None:
    """Raise ``ExportError`` when embeddings do not fit the vocabulary or the model."""
    if emb.ndim != 2 or emb.shape[0] != len(classes):
        raise ExportError(
            f"{what}: shape {tuple(emb.shape)} does not fit a vocabulary of {len(classes)} classes"
        )
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise ExportError(
            f"{what}: embedding width {emb.shape[1]} does not fit the model, which was trained with "
            f"width {expected_dim} (use the checkpoint's text encoder)"
        )
    if not np.isfinite(emb).all():
        raise ExportError(f"{what}: contains NaN or Inf")


def resolve_embeddings(
    checkpoint_classes: list[VocabularyClass],
    checkpoint_embeddings: np.ndarray | None,
    text_encoder: str,
    vocabulary: list[VocabularyClass] | None,
    cache_dir: str | os.PathLike | None = None,
    force_encode: bool = False,
) -> tuple[list[VocabularyClass], np.ndarray]:
    """The vocabulary to export and its (C, D) embeddings.

    The checkpoint's own cached embeddings are used when the vocabulary is the checkpoint's (same names and
    prompts) and ``force_encode`` is off (another encoder than the checkpoint's); otherwise the text encoder
    runs (cached on disk).
    """
    classes = list(vocabulary) if vocabulary is not None else list(checkpoint_classes)
    dim = None if checkpoint_embeddings is None else int(checkpoint_embeddings.shape[1])
    if checkpoint_embeddings is not None and classes == list(checkpoint_classes) and not force_encode:
        emb = np.asarray(checkpoint_embeddings, dtype=np.float32)
        check_fits(emb, classes, dim, what="the checkpoint's cached text embeddings")
        return classes, emb
    return classes, encode_vocabulary(text_encoder, classes, cache_dir, expected_dim=dim)
