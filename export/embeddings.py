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

import numpy as np
from pydantic import field_validator

from export.errors import ExportError
from rtvp_edge.bundle import VocabularyClass
from rtvp_edge.strict import StrictModel
from rtvp_edge.yaml_config import ConfigError, list_as_key, read_yaml, validate_tree


class _Entry(StrictModel):
    name: str
    prompt: str
    seen: bool | None = None  # open protocol: whether training saw the class (read, not used by export)

    @field_validator("name", "prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value.strip()


class _VocabularyFile(StrictModel):
    classes: list[_Entry]

    @field_validator("classes")
    @classmethod
    def _non_empty_and_unique(cls, value: list[_Entry]) -> list[_Entry]:
        if not value:
            raise ValueError("expected a non-empty list of {name, prompt} entries")
        names = [e.name for e in value]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ValueError(f"duplicate class name {dup!r}")
        return value


def load_vocabulary(path: str | os.PathLike) -> list[VocabularyClass]:
    """Read and check a vocabulary YAML file (the shared reader, ``rtvp_edge.yaml_config``).

    Raises ``ExportError`` as ``<file>:<line>: <key>: <problem>`` for: a missing file, bad YAML, unknown keys,
    a missing or empty name/prompt, duplicate names, an empty list.
    """
    try:
        data, root = list_as_key(*read_yaml(path, "vocabulary file"), "classes")  # the bare-list form
        vocabulary = validate_tree(_VocabularyFile, data, root, str(path))
    except ConfigError as e:
        raise ExportError(str(e)) from None
    return [VocabularyClass(name=e.name, prompt=e.prompt) for e in vocabulary.classes]


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
