"""Start-up check of ``plc.reject_deadline_ms`` against the model's measured speed on this machine.

Before the line starts, one part's worth of views (``assembly.views_per_part`` images of the cameras'
resolution) goes through preprocessing and the backend, once to warm up and ``runs`` times timed. Then:

- deadline < the *best* timed run: no part could ever be decided in time; every container would be
  rejected by deadline. That is a line-file error naming the key (``rtvp-edge run`` exits 2).
- deadline < ``HEADROOM`` x the *median* run: the line can run, but parts will miss the deadline whenever
  the assembler waits for the last view, a queue holds a part or the machine is busy. A warning naming the
  key and the measured times.

The timing covers the model only (preprocess + inference of one part); a part's real trigger-to-verdict
time also holds the wait for its last view (the rig's right bank shoots after the 180 degree turn), so the
runtime also warns once when a decided verdict comes after 80 % of the deadline (``PlcStation``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np

from rtvp_edge.messaging.plc.errors import PlcStartError
from rtvp_edge.preprocess import preprocess

log = logging.getLogger(__name__)

HEADROOM = 2.0  # warn when the deadline leaves less than this factor over the median part inference


@dataclass(frozen=True)
class PartTiming:
    """Measured preprocess + inference of one part, in milliseconds."""

    best_ms: float
    median_ms: float
    runs: int
    views: int
    image_size: tuple[int, int]  # (height, width) of the timed images


def time_part_inference(
    inference, views: int, image_size: tuple[int, int] | None = None, runs: int = 3
) -> PartTiming:
    """Time one part through ``inference`` (a ``PartInference``): preprocessing and the backend's
    synchronous ``infer`` on ``views`` grey images, one warm-up run, then ``runs`` timed runs.

    Args:
        inference: the line's ``PartInference`` (backend, preprocessing spec, embeddings).
        views: images per part (``assembly.views_per_part``).
        image_size: (height, width) of the cameras' images; None: the model's input size.
        runs: timed runs (the best and the median are reported).
    """
    h, w = image_size or tuple(inference.spec.input_size)
    images = [np.full((h, w, 3), 114, np.uint8) for _ in range(views)]  # (H, W, 3) BGR each
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        batch, _ = preprocess(images, inference.spec)  # (V, 3, H_in, W_in)
        inference.backend.infer(batch, inference.embeddings)
        if i:  # the first run warms caches and lazy compilation up
            times.append((time.perf_counter() - t0) * 1e3)
    return PartTiming(round(min(times), 2), round(statistics.median(times), 2), runs, views, (h, w))


def check_deadline(deadline_ms: float, timing: PartTiming, where: str = "") -> str | None:
    """Compare ``plc.reject_deadline_ms`` with a measured ``PartTiming``.

    Returns:
        a warning (also logged) when the deadline leaves less than ``HEADROOM`` x the median; else None.
    Raises:
        PlcStartError: the deadline is shorter than even the best measured run (every part would be
            rejected by deadline); the message names the key and the measured times.
    """
    measured = (
        f"one part ({timing.views} views of {timing.image_size[1]}x{timing.image_size[0]}) takes "
        f"{timing.best_ms:.1f} ms at best, {timing.median_ms:.1f} ms median over {timing.runs} timed runs "
        f"on this machine"
    )
    if deadline_ms < timing.best_ms:
        raise PlcStartError(
            f"{where}plc.reject_deadline_ms: {deadline_ms:g} ms is shorter than the model's inference: "
            f"{measured}; every part would be rejected by deadline (raise the deadline, move the reject "
            f"gate, or use a faster artifact/backend)"
        )
    if deadline_ms < HEADROOM * timing.median_ms:
        msg = (
            f"{where}plc.reject_deadline_ms: {deadline_ms:g} ms leaves little room over the model's "
            f"inference: {measured}; parts will be rejected by deadline when the line is busy (keep it "
            f"above {HEADROOM:g}x the median plus the wait for the last view)"
        )
        log.warning(msg)
        return msg
    log.info("plc.reject_deadline_ms %g ms: %s", deadline_ms, measured)
    return None
