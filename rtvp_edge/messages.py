"""Small frozen messages passed between stages of the line (camera -> part assembler -> inference ->
decision).

Everything carries ids and capture timestamps so a verdict can be traced to the frames behind it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the assembler imports this module
    from rtvp_edge.assembler import AssembledPart


@dataclass(frozen=True)
class GroundTruthBox:
    """A defect the simulated rig knows is visible in one view (never present for real cameras).

    Args:
        class_name: vocabulary name, e.g. ``"bubble"``.
        box: (x1, y1, x2, y2) in pixels of the camera image.
        clear: True when the defect is well visible in this view (not grazing the silhouette edge,
            not tiny); tests compare detections against clear defects only.
        defect_id: id of the 3-D defect on the container, identical across the views that see it.
    """

    class_name: str
    box: tuple[float, float, float, float]
    clear: bool = True
    defect_id: int = -1


@dataclass(frozen=True)
class Frame:
    """One image from one camera for one trigger.

    Args:
        camera_id: configured camera id (e.g. ``"L1"``).
        view_index: position of this camera's view within a part, 0..n_views-1 (rig: 0-2 left bank
            before the 180 degree turn, 3-5 right bank after it).
        trigger_seq: sequence number of the photoelectric-gate trigger; all views of one part share it.
        capture_time: wall-clock capture time, seconds since the Unix epoch (UTC).
        image: (H, W, 3) uint8 BGR image.
        part_id: id of the part if the source knows it (the simulated rig does), else None and the
            part assembler derives it.
        monotonic: ``time.monotonic()`` at capture, for latency measurement inside this process.
        ground_truth: defects visible in this view (simulated rig only).
    """

    camera_id: str
    view_index: int
    trigger_seq: int
    capture_time: float
    image: np.ndarray = field(repr=False)
    part_id: str | None = None
    monotonic: float = 0.0
    ground_truth: tuple[GroundTruthBox, ...] | None = None


class CameraSource(abc.ABC):
    """A camera as the runtime sees it. Implementations: OpenCV capture, folder/video replay,
    the simulated rig. ``read`` is called from the camera's own thread."""

    camera_id: str

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the camera. Raises ``CameraError`` when it cannot."""

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """Block until the next frame (or ``timeout`` seconds). Returns None on timeout.

        Raises ``CameraError`` when the camera failed (the caller reconnects with back-off) and
        ``EndOfStream`` when a finite source (a replayed folder or video) is exhausted.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the camera. Safe to call twice."""


class CameraError(RuntimeError):
    """The camera could not be opened or stopped delivering frames."""


class EndOfStream(Exception):
    """A finite source has no more frames."""


@dataclass(frozen=True)
class Detection:
    """One detected defect in one camera image.

    Args:
        class_id: index into the bundle's vocabulary.
        class_name: vocabulary name.
        score: class probability in [0, 1].
        box: (x1, y1, x2, y2) in pixels of the camera image.
    """

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ViewResult:
    """Detections of one view of a part (after thresholds, ROI and minimum-size filters)."""

    camera_id: str
    view_index: int
    trigger_seq: int
    capture_time: float
    detections: tuple[Detection, ...]
    evidence_path: str | None = None  # annotated image written for NG parts
    # detections within hard_samples.near_threshold_band of their class threshold, on either side (those
    # below it are not in ``detections``); empty unless the line keeps hard samples
    near_threshold: tuple[Detection, ...] = ()


@dataclass(frozen=True)
class InferredPart:
    """What inference hands the decision stage for one part (the pipeline's result queue).

    Args:
        part: the assembled part (its frames, missing views, trigger sequence).
        views: one ``ViewResult`` per frame of the part, detections already filtered; None when inference
            failed.
        error: why inference failed (the part becomes INCOMPLETE), else None.
        timing_ms: per-stage times of this part, e.g. {"preprocess": 3.1, "inference": 41.2, "decode": 0.8}.
        model: the line model (vocabulary, thresholds, verdict rules; ``rtvp_edge.reload.LineModel``) this
            part was inferred with: a reload swaps it between parts, and the decision stage judges and
            publishes each part with the one it was inferred with. None: the pipeline's current one.
    """

    part: AssembledPart
    views: tuple[ViewResult, ...] | None
    error: BaseException | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    model: object | None = None


@dataclass(frozen=True)
class PartVerdict:
    """The decision for one part: OK, NG (a defect rule fired) or INCOMPLETE (views missing at timeout).

    Args:
        part_id: part id (rig: container id; else derived from the trigger sequence or a PLC message).
        trigger_seq: gate trigger sequence of the part.
        verdict: ``"OK"``, ``"NG"`` or ``"INCOMPLETE"``.
        views: one ``ViewResult`` per view that arrived, ordered by view index.
        missing_views: view indices that did not arrive before the timeout.
        reasons: human-readable rule hits, e.g. ``"bubble score 0.81 >= 0.50 on L2"``.
        first_capture_time: earliest capture time of the part's frames (UTC epoch seconds).
        decided_time: when the verdict was decided (UTC epoch seconds).
        latency_ms: per-stage latencies, e.g. {"inference": 41.2, "trigger_to_verdict": 180.3}.
        plc: what the PLC was told for this part when the line has a ``plc:`` section, e.g. {"signal":
            "REJECT", "reason": "deadline", "late": True, ...} (``rtvp_edge.messaging.plc.station``); None without.
    """

    part_id: str
    trigger_seq: int
    verdict: str
    views: tuple[ViewResult, ...]
    missing_views: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()
    first_capture_time: float = 0.0
    decided_time: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    plc: dict | None = None
