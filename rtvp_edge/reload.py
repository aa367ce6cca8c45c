"""Reload of a running line: a changed vocabulary (``rtvp-edge enroll``, ``rtvp-export vocab``) or changed
thresholds (the line file's ``detection:`` / ``verdict:``) without a restart.

A reload is asked for by SIGHUP (``rtvp-edge run``) or on MQTT (``<root>/command/reload``); the pipeline
hands it to its reload thread, which runs ``prepare_reload`` beside the line:

1. read the line file again: only ``detection:`` and ``verdict:`` may differ from the running one (any
   other section needs a restart: the reload is refused and names the sections);
2. verify the bundle (``load_manifest``: every sha256, the signature when ``model.public_key`` is set);
3. refuse a bundle of another model: its model identity, preprocessing, input/output names and every file
   except the vocabulary embeddings must equal the running bundle's (the running backend keeps running:
   only the embeddings, given to the graph as an input, change); a bundle whose class names changed is
   refused while PLC servers run (their node table and register map are fixed at start);
4. run the golden self-test of the new bundle (new vocabulary, new golden outputs) on the running backend
   (its synchronous request, beside the line's asynchronous ones);
5. build the new ``LineModel`` (embeddings read through ``read_verified``, detection filter, verdict rules).

Any failure refuses the reload with its reason; the running ``LineModel`` stays. A good one is swapped in
between parts: a part is inferred, judged and published with one ``LineModel`` (the one current when it was
submitted to the backend); parts in flight finish with the old one. Nothing is lost or judged twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rtvp_edge.backends import Backend, load_embeddings
from rtvp_edge.bundle import BundleError, BundleManifest, load_manifest, sha256_file
from rtvp_edge.config import ConfigError, LineConfig, load_line_config
from rtvp_edge.inference import InferenceVocabulary
from rtvp_edge.selftest import run_golden_selftest
from rtvp_edge.verdict import VerdictRules

log = logging.getLogger(__name__)

RELOADABLE = ("detection", "verdict")  # line-file sections a reload applies


class ReloadError(Exception):
    """A reload was refused; the message says why. The running vocabulary and thresholds stay."""


@dataclass(frozen=True)
class LineModel:
    """What a reload swaps, as one value: a part is inferred, judged and published with one of these.

    Attributes:
        manifest: the bundle's manifest.
        vocabulary: class names, embeddings and detection filters for inference.
        verdict_rules: the line's verdict rules over those classes.
        info: the running model's identity in events (``model_info``: name, version, precision, backend,
            bundle_sha256).
        config: the line configuration its ``detection:`` and ``verdict:`` come from.
        generation: 0 at start, +1 per reload swapped in.
    """

    manifest: BundleManifest
    vocabulary: InferenceVocabulary
    verdict_rules: VerdictRules
    info: dict
    config: LineConfig
    generation: int = 0

    def describe(self) -> dict:
        """The vocabulary as announced on the status topic."""
        voc = self.manifest.vocabulary
        return {
            "generation": self.generation,
            "bundle_sha256": self.info.get("bundle_sha256"),
            "embeddings_sha256": voc.embeddings_sha256 if voc.mode == "input" else None,
            "mode": voc.mode,
            "classes": list(self.vocabulary.class_names),
            "enrolled": sorted(voc.enrolled),
        }


def model_differences(running: BundleManifest, new: BundleManifest) -> list[str]:
    """How ``new`` is another model than ``running`` (empty: the same graph, only the vocabulary, golden
    outputs, thresholds or provenance may differ)."""
    out = []
    if new.model != running.model:
        out.append(
            f"model {new.model.name} {new.model.version} is not the running {running.model.name} "
            f"{running.model.version}"
        )
    if new.preprocess != running.preprocess:
        out.append("preprocessing differs")
    if new.io != running.io:
        out.append("graph inputs/outputs (io) differ")
    if new.artifacts != running.artifacts:
        out.append("artifacts differ")
    if (new.vocabulary.mode, new.vocabulary.embedding_dim) != (
        running.vocabulary.mode,
        running.vocabulary.embedding_dim,
    ):
        out.append(
            f"vocabulary mode/width {new.vocabulary.mode}/{new.vocabulary.embedding_dim} is not the running "
            f"{running.vocabulary.mode}/{running.vocabulary.embedding_dim}"
        )
    vocab_files = {running.vocabulary.embeddings_file, new.vocabulary.embeddings_file}
    files = sorted(
        rel
        for rel in set(running.files) | set(new.files)
        if rel not in vocab_files and running.files.get(rel) != new.files.get(rel)
    )
    if files:
        out.append(f"model files differ: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}")
    return out


def prepare_reload(
    running: LineModel,
    line_file: str | os.PathLike,
    backend: Backend,
    *,
    near_band: float = 0.0,
    fixed_classes: bool = False,
) -> LineModel:
    """Check and build the ``LineModel`` a reload would swap in (module docstring, steps 1-5).

    Args:
        running: the line's current model.
        line_file: the line file to read again.
        backend: the running backend (the self-test runs on it; it must keep running this bundle).
        near_band: the hard-sample band of the running line (``hard_samples.near_threshold_band``).
        fixed_classes: refuse a change of class names (PLC servers run).
    Raises:
        ReloadError: why the reload is refused (the message names the file and what is wrong).
    """
    from rtvp_edge.pipeline import build_detection_filter, build_verdict_rules, model_info

    try:
        config = load_line_config(line_file)
    except ConfigError as e:
        raise ReloadError(str(e)) from None
    changed = [
        k
        for k in LineConfig.model_fields
        if k not in RELOADABLE and getattr(config, k) != getattr(running.config, k)
    ]
    if changed:
        raise ReloadError(
            f"{line_file}: {', '.join(changed)} changed; a reload applies only {' and '.join(RELOADABLE)} "
            "(and the bundle's vocabulary): restart the line for the rest"
        )
    bundle = config.model.bundle
    try:
        manifest = load_manifest(bundle, public_key=config.model.public_key)
        bundle_sha = sha256_file(Path(bundle) / "manifest.json")
    except (BundleError, OSError) as e:
        raise ReloadError(f"bundle refused: {e}") from None
    diffs = model_differences(running.manifest, manifest)
    if diffs:
        raise ReloadError(
            f"bundle {bundle} is another model than the running one ({'; '.join(diffs)}): a reload swaps "
            "the vocabulary and thresholds of the running model; restart the line to change the model"
        )
    names = tuple(c.name for c in manifest.vocabulary.classes)
    if fixed_classes and names != running.vocabulary.class_names:
        raise ReloadError(
            f"bundle {bundle}: classes {list(names)} differ from the running {list(running.vocabulary.class_names)} "
            "and the line has PLC servers, whose node table and register map are fixed at start: restart the line"
        )
    try:
        if config.model.selftest:
            run_golden_selftest(bundle, manifest, backend)
        embeddings = load_embeddings(bundle, manifest)
    except BundleError as e:
        raise ReloadError(f"bundle refused: {e}") from None
    try:
        detection_filter = build_detection_filter(config, manifest)
        rules = build_verdict_rules(config, manifest)
    except ConfigError as e:
        raise ReloadError(str(e)) from None
    vocabulary = InferenceVocabulary.build(
        manifest, embeddings, detection_filter, config.detection.iou_threshold, near_band
    )
    art = getattr(backend, "artifact", None)
    info = {
        **model_info(manifest, config.model.backend, bundle_sha, art),
        **{k: v for k, v in running.info.items() if k in ("precision", "backend")},
    }
    return LineModel(manifest, vocabulary, rules, info, config, running.generation + 1)
