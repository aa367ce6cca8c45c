"""``rtvp-export vocab``: a new vocabulary for an existing bundle whose embeddings are a graph input.

The model file is untouched. The text encoder runs once over the new prompts, ``text_embeddings.npy`` is
replaced, the golden expected outputs are recomputed for the new vocabulary by each artifact, the manifest's
hashes are rewritten, and the result is verified (hashes + golden self-test) before it replaces the old
bundle — atomically, like an export. The measured accuracy is dropped from the manifest: it was measured with
the old vocabulary and says nothing about the new one. The rewrite itself is the runtime's
(``rtvp_edge.bundle_vocabulary.rewrite_vocabulary``, shared with ``rtvp-edge enroll``); this module adds the
text encoder.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from export.embeddings import encode_vocabulary, load_vocabulary
from export.errors import ExportError
from rtvp_edge.bundle import BundleError, BundleManifest, load_manifest
from rtvp_edge.bundle_vocabulary import require_input_mode, rewrite_vocabulary


def swap_vocabulary(
    bundle: str | os.PathLike,
    vocab_file: str | os.PathLike,
    out: str | os.PathLike | None = None,
    text_encoder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> BundleManifest:
    """Give an input-mode bundle a new vocabulary.

    Args:
        bundle: existing bundle folder (verified before use).
        vocab_file: vocabulary YAML.
        out: new bundle folder; None updates ``bundle`` in place (atomically).
        text_encoder: encoder spec; default: the one recorded in the manifest. Its embedding width must
            equal the bundle's.
    Returns:
        The new manifest.
    Raises:
        ExportError: folded-vocabulary bundle, bad vocabulary file, embedding width that does not fit.
    """
    bundle = Path(bundle)
    try:
        manifest = load_manifest(bundle)
        require_input_mode(bundle, manifest)
    except BundleError as e:
        raise ExportError(str(e)) from None
    vocab = manifest.vocabulary
    classes = load_vocabulary(vocab_file)
    spec_text = text_encoder or vocab.text_encoder
    emb = encode_vocabulary(spec_text, classes, cache_dir, expected_dim=vocab.embedding_dim)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        result = rewrite_vocabulary(
            bundle,
            classes,
            emb,
            out=out,
            text_encoder=spec_text,
            # per-class thresholds were chosen for the old prompts: the new vocabulary starts from the default
            class_scores={},
            enrolled={},
            provenance={"vocabulary_swapped_utc": now, "vocabulary_file": str(vocab_file)},
            expected=manifest,
        )
    except BundleError as e:
        raise ExportError(str(e)) from None
    return result.manifest
