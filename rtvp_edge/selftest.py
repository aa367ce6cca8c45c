"""Golden self-test: before a line starts, the bundle's own sample images must give the detections the
export recorded for this exact artifact. Catches a wrong backend build, a broken preprocessing, a
mismatched vocabulary or a silently corrupted install before any part is judged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rtvp_edge.backends.base import Backend, load_embeddings
from rtvp_edge.bundle import BundleError, BundleManifest, read_verified
from rtvp_edge.messages import Detection
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import preprocess


def _match(exp: dict, got: list[Detection], score_atol: float, box_atol: float) -> int | None:
    for i, d in enumerate(got):
        if d.class_id != int(exp["class_id"]) or abs(d.score - float(exp["score"])) > score_atol:
            continue
        if np.max(np.abs(np.asarray(d.box) - np.asarray(exp["box"], dtype=np.float64))) <= box_atol:
            return i
    return None


def golden_differences(
    expected: Sequence[dict],
    actual: Sequence[Detection],
    score_atol: float,
    box_atol: float,
    score_threshold: float,
    class_names: Sequence[str],
) -> list[str]:
    """How ``actual`` detections differ from the ``expected`` ones recorded at export (empty: they agree).
    The one golden comparison: the runtime's start-up self-test and export's check of a finished bundle.

    A detection matches when its class is the same, its score within ``score_atol`` and every box
    coordinate within ``box_atol`` pixels. Only detections clear of the threshold must match one-to-one:
    those scored at least ``score_threshold + score_atol``. Decoding keeps ``score >= score_threshold``,
    so a detection scored ``score_threshold + score_atol`` or more on one side scores at least
    ``score_threshold`` on the other and cannot have been dropped there; one scored below that may
    legitimately appear or vanish between runtimes.

    Args:
        expected: the golden sample's recorded detections (``{"class_id", "score", "box"}``, box
            (x1, y1, x2, y2) in pixels of the golden image).
        actual: the detections decoded now, with the bundle's thresholds.
        class_names: the bundle's C class names (for the messages).
    Returns:
        one message per difference, in order: missing expected detections, then unexpected ones.
    """
    margin = score_threshold + score_atol
    problems = []
    unmatched = list(actual)
    for exp in expected:
        i = _match(exp, unmatched, score_atol, box_atol)
        if i is not None:
            unmatched.pop(i)
        elif float(exp["score"]) >= margin:
            problems.append(
                f"expected {class_names[int(exp['class_id'])]} score {float(exp['score']):.3f} box "
                f"{[round(float(v), 1) for v in exp['box']]}, not found in "
                f"{[(d.class_name, round(d.score, 3), [round(v, 1) for v in d.box]) for d in actual]}"
            )
    problems += [
        f"unexpected {d.class_name} score {d.score:.3f} box {[round(v, 1) for v in d.box]}"
        for d in unmatched
        if d.score >= margin
    ]
    return problems


def run_golden_selftest(bundle_dir: str | Path, manifest: BundleManifest, backend: Backend) -> int:
    """Run every golden sample of the bundle through ``backend`` and compare with the recorded outputs.

    A detection whose score is within ``score_atol`` of the score threshold may legitimately appear or
    vanish between runtimes, so only detections clear of the threshold must match one-to-one (same class,
    score within ``score_atol``, every box coordinate within ``box_atol`` pixels).

    Returns:
        the number of golden samples checked.
    Raises:
        BundleError: no golden samples, an image is unreadable, or a sample's detections differ; the
            message names the image and the first difference.
    """
    if not manifest.golden:
        raise BundleError(
            f"{bundle_dir}: the bundle has no golden samples, the start-up self-test cannot run "
            "(re-export it, or set model.selftest: false in the line file to accept the risk)"
        )
    art = getattr(backend, "artifact", None)  # the artifact it runs, when the bundle holds several
    samples = manifest.golden_for(backend.name, art.precision if art is not None else None)
    if not samples:
        recorded = ", ".join(
            sorted({" ".join(x for x in (g.backend or "any", g.precision) if x) for g in manifest.golden})
        )
        mine = backend.name if art is None else f"{backend.name} {art.precision}"
        raise BundleError(
            f"{bundle_dir}: the golden outputs were recorded for {recorded}, not {mine}: the self-test "
            f"cannot check this artifact (run the bundle on {recorded}, or re-export it for {mine})"
        )
    names = [c.name for c in manifest.vocabulary.classes]
    spec = manifest.preprocess.spec()
    thr = manifest.thresholds
    emb = load_embeddings(bundle_dir, manifest)
    for g in samples:
        path = Path(bundle_dir) / g.image
        data = read_verified(bundle_dir, manifest, g.image, "golden image")  # decode what was hashed
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise BundleError(f"{path}: golden image unreadable")
        batch, lbs = preprocess([img], spec)
        boxes, scores = backend.infer(batch, emb)
        got = decode_detections(boxes[0], scores[0], lbs[0], names, thr.score, thr.iou, thr.max_detections)
        problems = golden_differences(g.detections, got, g.score_atol, g.box_atol, thr.score, names)
        if problems:
            raise BundleError(f"{path}: golden self-test failed on {backend.name}: {problems[0]}")
    return len(samples)
