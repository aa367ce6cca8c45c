"""Real cameras through OpenCV: USB/V4L2 index, RTSP/HTTP URL (FFmpeg), GStreamer pipeline string."""

from __future__ import annotations

import re
import time

import cv2

from rtvp_edge.messages import CameraError, CameraSource, Frame


def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (the pip wheels cannot)."""
    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


class OpenCVCamera(CameraSource):
    """An OpenCV ``VideoCapture`` as a ``CameraSource``.

    Every frame read is taken as one trigger: cameras on the rig are hardware-triggered by the gate, so
    the n-th frame of each camera belongs to the n-th part. ``trigger_seq`` counts frames since start.

    Args:
        camera_id: configured id.
        view_index: configured view.
        target: USB index (int), URL, or GStreamer pipeline string.
        kind: "usb", "url" or "gstreamer".
        resolution: (height, width) asked of USB cameras, or None.
        read_timeout_ms: FFmpeg open/read timeout so a dead stream raises instead of hanging forever.
    """

    def __init__(
        self,
        camera_id: str,
        view_index: int,
        target: int | str,
        kind: str,
        resolution: tuple[int, int] | None = None,
        read_timeout_ms: int = 5000,
    ) -> None:
        self.camera_id, self.view_index, self.target, self.kind = camera_id, view_index, target, kind
        self.resolution, self.read_timeout_ms = resolution, read_timeout_ms
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0

    def open(self) -> None:
        if self.kind == "usb":
            cap = cv2.VideoCapture(int(self.target))
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_GSTREAMER)
        else:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.read_timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms,
            ]  # fmt: skip
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            hint = ""
            if self.kind == "gstreamer" and not opencv_has_gstreamer():
                hint = (
                    " (this OpenCV is built without GStreamer, e.g. the opencv-python-headless wheel: install an "
                    "OpenCV with GStreamer support, such as the distribution's python3-opencv)"
                )
            raise CameraError(
                f"camera {self.camera_id}: cannot open {self.kind} source {self.target!r}{hint}"
            )
        if self.kind == "usb" and self.resolution is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.resolution[0])
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.resolution[1])
        self._cap = cap

    def read(self, timeout: float) -> Frame | None:
        if self._cap is None:
            raise CameraError(f"camera {self.camera_id}: not open")
        ok, img = self._cap.read()
        if not ok or img is None:
            raise CameraError(f"camera {self.camera_id}: no frame from {self.target!r}")
        seq = self._seq
        self._seq += 1
        return Frame(self.camera_id, self.view_index, seq, time.time(), img, monotonic=time.monotonic())

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
