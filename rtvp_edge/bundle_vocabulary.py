"""Rewrite the vocabulary of an input-mode bundle, without touching its model files: the one place that does it.

Used by ``rtvp-export vocab`` (new prompts, embedded by the text encoder) and ``rtvp-edge enroll`` (a class
from example boxes). Steps: copy the bundle into a hidden staging folder next to the target, replace
``text_embeddings.npy``, update the manifest's vocabulary, thresholds and provenance, re-record the golden
expected outputs of every artifact that had them *with the runtime's own backends*, rewrite every hash
(manifest + ``CHECKSUMS.sha256``), verify the staged bundle as a line would at start (hashes, then the golden
self-test), and only then rename it into place. A failure anywhere leaves the old bundle as it was.

A signature (``CHECKSUMS.sha256.sig``) covers the old hashes and cannot speak for the new bundle: it is
dropped, a warning says so, and ``signature_dropped`` in the result tells the caller (sign it again with
``rtvp-export sign``; a line configured with a public key refuses the unsigned bundle until then).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from rtvp_edge.bundle import (
    SIGNATURE,
    BundleError,
    BundleManifest,
    VocabularyClass,
    load_manifest,
    sha256_file,
    write_manifest,
)
from rtvp_edge.selftest import record_golden, selftest_artifacts

log = logging.getLogger(__name__)

FOLDED_HINT = "re-export it with `rtvp-export --vocab-mode input`"


class BundleStaging:
    """Atomic bundle writing: ``with BundleStaging(out) as tmp: ...; staging.commit()``.

    Everything goes into a hidden temp folder next to ``out`` (same filesystem); ``commit`` renames it into
    place (``os.replace``; an old bundle is moved aside first and removed after). Leaving the block without
    ``commit`` removes the temp folder: ``out`` is untouched.

    Args:
        out: final bundle folder.
        overwrite: replace an existing bundle at ``out`` (only after the new one is complete).
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}"
        self.committed = False

    def __enter__(self) -> Path:
        if self.out.exists() and not self.overwrite:
            raise BundleError(f"output {self.out} already exists; choose another --out or pass --overwrite")
        if self.out.exists() and not self.out.is_dir():
            raise BundleError(f"output {self.out} exists and is not a folder")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except OSError as e:
            raise BundleError(f"cannot create the bundle folder next to {self.out}: {e}") from None
        return self.tmp

    def commit(self) -> Path:
        """Move the finished bundle into place."""
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)


def require_input_mode(bundle: str | os.PathLike, manifest: BundleManifest) -> None:
    """Refuse a folded-vocabulary bundle with the export flag that makes one that can change vocabulary."""
    if manifest.vocabulary.mode != "input":
        raise BundleError(
            f"bundle {bundle} folds its vocabulary into the graph (vocabulary mode 'folded'): its vocabulary "
            f"cannot change without recompiling; {FOLDED_HINT}"
        )


@dataclass(frozen=True)
class RewriteResult:
    manifest: BundleManifest
    bundle: Path
    signature_dropped: bool


def rewrite_vocabulary(
    bundle: str | os.PathLike,
    classes: list[VocabularyClass],
    embeddings: np.ndarray,
    *,
    out: str | os.PathLike | None = None,
    text_encoder: str | None = None,
    class_scores: dict[str, float] | None = None,
    enrolled: dict[str, dict] | None = None,
    provenance: dict | None = None,
    expected: BundleManifest | None = None,
) -> RewriteResult:
    """Give an input-mode bundle a new vocabulary; the model files are not touched.

    Args:
        bundle: existing bundle folder (verified before use).
        classes: the new vocabulary, in class-id order.
        embeddings: (C, D) float32 class embeddings, row c for ``classes[c]``; D must be the bundle's.
        out: new bundle folder; None replaces ``bundle`` (atomically).
        text_encoder: recorded encoder identity (None: keep the manifest's).
        class_scores: per-class score thresholds of the new bundle (None: keep those of classes still in it).
        enrolled: ``vocabulary.enrolled`` of the new bundle (None: keep entries of classes still in it).
        provenance: merged into ``source_checkpoint`` (what changed, when, from which file).
        expected: the manifest the caller read (refuse if the bundle changed since).
    Returns:
        the new manifest, where it was written, and whether a signature was dropped.
    Raises:
        BundleError: a folded bundle, a width/row-count mismatch, a bundle changed while being copied, a
            failed golden self-test of the rewritten bundle (naming the file); the old bundle is unchanged.
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if expected is not None and manifest != expected:
        raise BundleError(f"bundle {bundle} changed while the new vocabulary was computed; run again")
    require_input_mode(bundle, manifest)
    vocab = manifest.vocabulary
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape != (len(classes), vocab.embedding_dim):
        raise BundleError(
            f"new embeddings have shape {emb.shape}, the bundle {bundle} needs ({len(classes)}, "
            f"{vocab.embedding_dim}) (one row per class, the model's embedding width)"
        )
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise BundleError(f"class names must be unique, got {names}")
    if class_scores is None:
        class_scores = {k: v for k, v in manifest.thresholds.class_scores.items() if k in names}
    if enrolled is None:
        enrolled = {k: v for k, v in vocab.enrolled.items() if k in names}

    target = Path(out) if out is not None else bundle
    staging = BundleStaging(target, overwrite=out is None)
    signed = (bundle / SIGNATURE).exists()
    with staging as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(bundle, tmp)
        try:
            # The copy is what the new bundle is made of: check it, not only the source.
            if load_manifest(tmp) != manifest:
                raise BundleError(f"bundle {bundle} changed while it was being copied; run again")
        except BundleError as e:
            raise BundleError(f"bundle {bundle} changed while it was being copied: {e}") from None
        (tmp / SIGNATURE).unlink(missing_ok=True)  # covers the old hashes (see the module docstring)
        np.save(tmp / vocab.embeddings_file, emb)
        emb_sha = sha256_file(tmp / vocab.embeddings_file)
        new_vocab = vocab.model_copy(
            update={
                "classes": list(classes),
                "text_encoder": text_encoder or vocab.text_encoder,
                "embeddings_sha256": emb_sha,
                "enrolled": enrolled,
            }
        )
        draft = manifest.model_copy(
            update={
                "vocabulary": new_vocab,
                "files": {**manifest.files, vocab.embeddings_file: emb_sha},
                "thresholds": manifest.thresholds.model_copy(update={"class_scores": dict(class_scores)}),
                # measured with the old vocabulary: says nothing about the new one
                "accuracy": None,
                "source_checkpoint": {**(manifest.source_checkpoint or {}), **(provenance or {})},
            }
        )
        draft = BundleManifest.model_validate(draft.model_dump())  # class_scores must name classes
        draft = draft.model_copy(update={"golden": record_golden(tmp, draft)})
        write_manifest(tmp, draft)
        new = load_manifest(tmp)
        selftest_artifacts(tmp, new)
        staging.commit()
    if signed:
        log.warning(
            "%s: the bundle was signed; its signature covered the old vocabulary and was removed "
            "(sign it again with `rtvp-export sign`)",
            target,
        )
    return RewriteResult(manifest=new, bundle=target, signature_dropped=signed)
