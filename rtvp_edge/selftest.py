"""Golden self-test: before a line starts, the bundle's own sample images must give the detections the
export recorded for this exact artifact. Catches a wrong backend build, a broken preprocessing, a
mismatched vocabulary or a silently corrupted install before any part is judged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rtvp_edge.backends.base import Backend, load_embeddings
from rtvp_edge.bundle import Artifact, BundleError, BundleManifest, GoldenSample, read_verified
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
    thr = manifest.thresholds
    emb = load_embeddings(bundle_dir, manifest)
    for g in samples:
        got = _detect(backend, golden_image(bundle_dir, manifest, g.image), manifest, emb)
        problems = golden_differences(g.detections, got, g.score_atol, g.box_atol, thr.score, names)
        if problems:
            raise BundleError(
                f"{Path(bundle_dir) / g.image}: golden self-test failed on {backend.name}: {problems[0]}"
            )
    return len(samples)


def golden_image(bundle_dir: str | Path, manifest: BundleManifest, rel: str) -> np.ndarray:
    """A golden image (H, W, 3) uint8 BGR, decoded from the bytes checked against the manifest's sha256."""
    data = read_verified(bundle_dir, manifest, rel, "golden image")  # decode what was hashed
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BundleError(f"{Path(bundle_dir) / rel}: golden image unreadable")
    return img


def _detect(
    backend: Backend, image: np.ndarray, manifest: BundleManifest, embeddings: np.ndarray | None
) -> list[Detection]:
    """One image through ``backend``, decoded with the bundle's preprocessing and thresholds."""
    batch, (lb,) = preprocess([image], manifest.preprocess.spec())
    boxes, scores = backend.infer(batch, embeddings)
    thr = manifest.thresholds
    names = [c.name for c in manifest.vocabulary.classes]
    return decode_detections(boxes[0], scores[0], lb, names, thr.score, thr.iou, thr.max_detections)


def golden_artifacts(manifest: BundleManifest) -> list[tuple[tuple[str | None, str | None], Artifact]]:
    """``((backend, precision) as the golden samples record it, the artifact it names)`` for every recorded
    key, in the order first recorded."""
    out = []
    for backend, precision in dict.fromkeys((g.backend, g.precision) for g in manifest.golden):
        art = manifest.artifact(backend or manifest.artifacts[0].backend, precision)
        out.append(((backend, precision), art))
    return out


def record_golden(
    bundle_dir: str | Path, manifest: BundleManifest, device: str = "CPU"
) -> list[GoldenSample]:
    """The golden expected outputs of ``manifest``'s vocabulary and thresholds on the bundle's own golden
    images, by the runtime backend of every artifact that has golden samples (same keys, images and
    tolerances as ``manifest.golden``; their recorded detections are replaced). Export records a new bundle's
    golden outputs with it, a vocabulary rewrite re-records them."""
    from rtvp_edge.backends import load_backend

    emb = load_embeddings(bundle_dir, manifest)
    images = {
        rel: golden_image(bundle_dir, manifest, rel)
        for rel in dict.fromkeys(g.image for g in manifest.golden)
    }
    samples = []
    for (backend, precision), art in golden_artifacts(manifest):
        be = load_backend(art.backend, bundle_dir, manifest, device=device, artifact=art)
        try:
            for g in manifest.golden:
                if (g.backend, g.precision) != (backend, precision):
                    continue
                dets = _detect(be, images[g.image], manifest, emb)
                detections = [
                    {
                        "class_id": d.class_id,
                        "class_name": d.class_name,
                        "score": round(d.score, 6),
                        "box": [round(v, 3) for v in d.box],
                    }
                    for d in dets
                ]
                samples.append(g.model_copy(update={"detections": detections}))
        finally:
            be.close()
    return samples


def selftest_artifacts(
    bundle_dir: str | Path, manifest: BundleManifest, device: str = "CPU"
) -> dict[str, int]:
    """The start-up self-test of a line, on every artifact that has golden samples, each loaded afresh by
    its runtime backend. Returns golden samples checked per artifact (``"openvino"``, or ``"openvino int8"``
    when a backend has several artifacts).

    Raises:
        BundleError: no golden samples, or one artifact's outputs differ (``run_golden_selftest``).
    """
    from rtvp_edge.backends import load_backend

    if not manifest.golden:
        raise BundleError(f"{bundle_dir}: the bundle has no golden samples")
    checked: dict[str, int] = {}
    for _, art in golden_artifacts(manifest):
        several = sum(a.backend == art.backend for a in manifest.artifacts) > 1
        be = load_backend(art.backend, bundle_dir, manifest, device=device, artifact=art)
        try:
            checked[f"{art.backend} {art.precision}" if several else art.backend] = run_golden_selftest(
                bundle_dir, manifest, be
            )
        finally:
            be.close()
    return checked
