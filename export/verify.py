"""Stage checks: parity of an artifact with its PyTorch source on real (generated glass) images, on raw
outputs and on decoded detections (after ONNX export and after every float backend), and the check of a
finished bundle (``verify_bundle``: the runtime's loader and golden self-test).

Artifacts run through the runtime's backends (``rtvp_edge.backends``); the PyTorch source, which the
runtime never runs, is wrapped in ``TorchReference`` with the same ``infer(batch, embeddings)`` call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from export.errors import ExportError
from rtvp_edge.bundle import BundleError, BundleManifest, Thresholds, load_manifest
from rtvp_edge.messages import Detection
from rtvp_edge.postprocess import decode_detections
from rtvp_edge.preprocess import PreprocessSpec, preprocess
from rtvp_edge.selftest import selftest_artifacts


class Model(Protocol):
    """What the checks run: a runtime backend (``rtvp_edge.backends.Backend``) or ``TorchReference``."""

    fixed_batch: int  # > 0: the batch the artifact accepts (it chunks/pads others); -1: any

    def infer(self, batch: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """batch (B, 3, H, W) float32 -> boxes (B, N, 4) xyxy input px, scores (B, N, C) in [0, 1]."""


class TorchReference:
    """The PyTorch source (FP32) through the export wrapper, called like a runtime backend.

    Args:
        wrapper: the export wrapper (``export.wrapper.build_wrapper``); in vocabulary mode ``input`` it takes
            the (C, D) embeddings as its second argument.
    """

    name = "pytorch"
    fixed_batch = -1

    def __init__(self, wrapper: torch.nn.Module):
        self.wrapper = wrapper.eval()

    @torch.no_grad()
    def infer(self, batch: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if embeddings is None:
            out = self.wrapper(x)
        else:
            out = self.wrapper(x, torch.from_numpy(np.asarray(embeddings, np.float32)))
        return out[0].numpy(), out[1].numpy()


def verify_bundle(bundle_dir: str | os.PathLike, manifest: BundleManifest | None = None) -> dict[str, int]:
    """Check a bundle the way a line does at start, with the runtime's own code: every hash
    (``load_manifest``), then the golden self-test of every artifact that has golden samples, each loaded
    afresh by its runtime backend (``rtvp_edge.selftest.selftest_artifacts``).

    Returns:
        golden samples checked per artifact (``{"openvino": 4}``, ``{"openvino int8": 2, "openvino fp32": 2}``).
    Raises:
        ExportError: a hash, the manifest or a self-test failed (the message names the file).
    """
    bundle_dir = Path(bundle_dir)
    try:
        manifest = manifest or load_manifest(bundle_dir)
        return selftest_artifacts(bundle_dir, manifest)
    except BundleError as e:
        raise ExportError(str(e)) from None


def parity(
    reference: Model,
    candidate: Model,
    images_bgr: Sequence[np.ndarray],
    spec: PreprocessSpec,
    class_names: Sequence[str],
    thresholds: Thresholds,
    name: str,
    embeddings: np.ndarray | None = None,
    score_atol: float = 1e-3,
    box_atol: float = 0.05,
    min_agreement: float = 0.9,
    boxes_of_scored: bool = False,
) -> dict:
    """Compare ``candidate`` against ``reference`` on one batch of all images (so a dynamic batch is
    exercised), raw outputs and decoded detections.

    Args:
        images_bgr: camera images, each (H, W, 3) uint8 BGR.
        embeddings: (C, D) float32 class embeddings for graphs in vocabulary mode ``input``, else None.
        score_atol: allowed absolute score difference (raw and decoded).
        box_atol: allowed absolute box difference in model-input pixels (raw outputs).
        min_agreement: least share of decoded detections matched one-to-one (``match_detections``). Raw
            outputs are the strict check; near-tied boxes of an untrained model can swap under NMS.
        boxes_of_scored: compare raw boxes only where the reference scores some class at or above
            ``thresholds.score`` (the anchors that can become detections). For FP16 weights: a background
            anchor's box distribution is flat, so a weight rounding moves its (never used) box by pixels.
    Returns:
        ``{"images", "max_score_diff", "max_box_diff", "detections", "detection_agreement"}``.
    Raises:
        ExportError naming the artifact when a tolerance is exceeded.
    """
    batch, lbs = preprocess(list(images_bgr), spec)
    rb, rs = reference.infer(batch, embeddings)
    cb, cs = candidate.infer(batch, embeddings)
    if rb.shape != cb.shape or rs.shape != cs.shape:
        raise ExportError(
            f"{name}: output shapes {cb.shape}, {cs.shape} differ from PyTorch {rb.shape}, {rs.shape}"
        )
    ds = float(np.abs(rs - cs).max())
    box_diff = np.abs(rb - cb).max(-1)  # (B, N)
    if boxes_of_scored:
        box_diff = box_diff[rs.max(-1) >= thresholds.score]
    db = float(box_diff.max()) if box_diff.size else 0.0
    if ds > score_atol or db > box_atol:
        raise ExportError(
            f"{name}: outputs differ from PyTorch (max score diff {ds:.2e} > {score_atol:g} or "
            f"max box diff {db:.2e} px > {box_atol:g}"
            f"{f' on anchors scored >= {thresholds.score:g}' if boxes_of_scored else ''})"
        )
    matched = total = 0
    for i, lb in enumerate(lbs):
        ref = decode_detections(
            rb[i], rs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        got = decode_detections(
            cb[i], cs[i], lb, class_names, thresholds.score, thresholds.iou, thresholds.max_detections
        )
        m = match_detections(ref, got)
        matched += m
        total += max(len(ref), len(got))
    agreement = matched / total if total else 1.0
    if agreement < min_agreement:
        raise ExportError(
            f"{name}: decoded detections agree with PyTorch's on only {matched} of {total} "
            f"({agreement:.0%} < {min_agreement:.0%})"
        )
    return {
        "images": len(images_bgr),
        "max_score_diff": ds,
        "max_box_diff": db,
        "detections": total,
        "detection_agreement": round(agreement, 4),
    }


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(reference: Sequence[Detection], candidate: Sequence[Detection], iou: float = 0.5) -> int:
    """Greedy one-to-one matches (same class, IoU >= ``iou``), highest reference score first.

    IoU rather than exact coordinates: when two overlapping boxes score almost the same, a difference in the
    last bits decides which one NMS keeps; either is the same detection of the same defect.
    """
    free = list(candidate)
    n = 0
    for r in sorted(reference, key=lambda d: -d.score):
        best, best_iou = None, iou
        for c in free:
            if c.class_id == r.class_id and (v := box_iou(r.box, c.box)) >= best_iou:
                best, best_iou = c, v
        if best is not None:
            free.remove(best)
            n += 1
    return n
