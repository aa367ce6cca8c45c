"""``rtvp-export vocab``: a new vocabulary for an existing bundle whose embeddings are a graph input.

The model file is untouched. The text encoder runs once over the new prompts, ``text_embeddings.npy`` is
replaced, the golden expected outputs are recomputed for the new vocabulary by each artifact, the manifest's
hashes are rewritten, and the result is verified (hashes + golden self-test) before it replaces the old
bundle — atomically, like an export. The measured accuracy is dropped from the manifest: it was measured with
the old vocabulary and says nothing about the new one.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from export.bundle_writer import BundleStaging
from export.embeddings import encode_vocabulary, load_vocabulary
from export.errors import ExportError
from export.golden import write_golden
from rtvp_edge.bundle import (
    SIGNATURE,
    BundleError,
    BundleManifest,
    load_manifest,
    read_verified,
    sha256_file,
    write_manifest,
)


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
    from export.pipeline import runner_for, verify_bundle

    bundle = Path(bundle)
    try:
        manifest = load_manifest(bundle)
    except BundleError as e:
        raise ExportError(str(e)) from None
    vocab = manifest.vocabulary
    if vocab.mode != "input":
        raise ExportError(
            f"bundle {bundle} folds its vocabulary into the graph (mode 'folded'); re-export it with "
            "--vocab-mode input to swap vocabularies without recompiling"
        )
    classes = load_vocabulary(vocab_file)
    spec_text = text_encoder or vocab.text_encoder
    emb = encode_vocabulary(spec_text, classes, cache_dir, expected_dim=vocab.embedding_dim)

    target = Path(out) if out is not None else bundle
    staging = BundleStaging(target, overwrite=out is None)
    with staging as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(bundle, tmp)
        try:
            # The copy is what the new bundle is made of: check it, not only the source (which may have
            # changed between the check above and the copy); its hashes are rewritten below.
            if load_manifest(tmp) != manifest:
                raise ExportError(f"bundle {bundle} changed while it was being copied; run again")
        except BundleError as e:
            raise ExportError(f"bundle {bundle} changed while it was being copied: {e}") from None
        # A signature covers the old hashes: it cannot speak for the new bundle (sign it again).
        (tmp / SIGNATURE).unlink(missing_ok=True)
        np.save(tmp / vocab.embeddings_file, emb.astype(np.float32))
        emb_sha = sha256_file(tmp / vocab.embeddings_file)
        new_vocab = vocab.model_copy(
            update={
                "classes": classes,
                "text_encoder": spec_text,
                "embeddings_sha256": emb_sha,
                "embedding_dim": int(emb.shape[1]),
            }
        )
        draft = manifest.model_copy(
            update={"vocabulary": new_vocab, "files": {**manifest.files, vocab.embeddings_file: emb_sha}}
        )
        images = []
        for rel in dict.fromkeys(g.image for g in manifest.golden):
            try:
                data = read_verified(tmp, draft, rel, "golden image")
            except BundleError as e:
                raise ExportError(str(e)) from None
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise ExportError(f"golden image {tmp / rel} cannot be read")
            images.append(img)
        # Golden outputs only for the artifacts that had them (the bundle's primary backend).
        with_golden = {g.backend for g in manifest.golden}
        runners = {
            a.backend: runner_for(tmp, draft, a)
            for a in manifest.artifacts
            if a.backend in with_golden or None in with_golden
        }
        golden = write_golden(
            tmp, images, runners, manifest.preprocess.spec(), [c.name for c in classes], manifest.thresholds
        )
        history = dict(manifest.calibration or {})
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        source = dict(manifest.source_checkpoint or {})
        source["vocabulary_swapped_utc"] = now
        source["vocabulary_file"] = str(vocab_file)
        new = draft.model_copy(
            update={
                "golden": golden,
                # measured with the old vocabulary: says nothing about the new one
                "accuracy": None,
                "thresholds": manifest.thresholds.model_copy(update={"class_scores": {}}),
                "source_checkpoint": source,
                "calibration": history or None,
            }
        )
        write_manifest(tmp, new)
        new = load_manifest(tmp)
        verify_bundle(tmp, new)
        staging.commit()
    return new
