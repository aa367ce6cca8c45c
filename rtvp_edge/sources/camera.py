"""A camera on its own thread: an explicit state machine with a bounded frame buffer.

States::

    CONNECTING --open ok--> STREAMING --CameraError--> BACKOFF --(delay, doubled each time)--> CONNECTING
         |                      |
         +--stop()--------------+--EndOfStream / stop()--> STOPPED

One camera failing never stalls the others: each has its own thread and its own buffer, and the part
assembler only ever takes frames that are already buffered. Corrupt frames (a source raises
``CorruptFrame``) and frames of the wrong size are counted and skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from rtvp_edge.messages import CameraSource, EndOfStream, Frame

log = logging.getLogger(__name__)


class CorruptFrame(Exception):
    """A source read a frame it could not decode; the camera goes on with the next one."""


class CameraState(str, enum.Enum):
    CONNECTING = "CONNECTING"
    STREAMING = "STREAMING"
    BACKOFF = "BACKOFF"
    STOPPED = "STOPPED"


OverflowPolicy = str  # "drop_oldest" | "drop_newest" | "block"


class FrameBuffer:
    """A bounded FIFO of frames with a named overflow policy.

    ``drop_oldest`` (live cameras: the newest frame matters), ``drop_newest`` (keep what is queued,
    refuse new frames), ``block`` (replayed sources that must not lose frames: the camera thread waits).
    ``wakeup`` is set on every put so one consumer can wait on many buffers.
    """

    def __init__(self, maxsize: int, policy: OverflowPolicy, wakeup: threading.Event | None = None):
        if policy not in ("drop_oldest", "drop_newest", "block"):
            raise ValueError(f"unknown overflow policy {policy!r}")
        self.maxsize, self.policy = maxsize, policy
        self.wakeup = wakeup or threading.Event()
        self._q: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        """Add a frame. Returns False when it (or, for drop_oldest, an older one) was dropped."""
        accepted = True
        with self._cond:
            if len(self._q) >= self.maxsize:
                if self.policy == "drop_oldest":
                    self._q.popleft()
                    self.dropped += 1
                    accepted = False
                elif self.policy == "drop_newest":
                    self.dropped += 1
                    return False
                else:
                    while len(self._q) >= self.maxsize and not (stop is not None and stop.is_set()):
                        self._cond.wait(0.1)
                    if len(self._q) >= self.maxsize:
                        self.dropped += 1
                        return False
            self._q.append(frame)
        self.wakeup.set()
        return accepted

    def get_nowait(self) -> Frame | None:
        with self._cond:
            if not self._q:
                return None
            f = self._q.popleft()
            self._cond.notify()
            return f

    def __len__(self) -> int:
        return len(self._q)


@dataclass
class CameraStats:
    frames: int = 0  # frames accepted into the buffer
    corrupt: int = 0  # undecodable frames skipped
    wrong_size: int = 0  # frames whose size differs from the configured resolution
    reconnects: int = 0  # failures followed by a back-off
    last_error: str = ""
    fps_window: collections.deque = field(default_factory=lambda: collections.deque(maxlen=120))

    def fps(self, now: float | None = None) -> float:
        w = self.fps_window
        if len(w) < 2:
            return 0.0
        now = time.monotonic() if now is None else now
        span = max(now - w[0], 1e-6)
        return (len(w) - 1) / span if now - w[-1] < 5.0 else 0.0


StatusCallback = Callable[[str, str, str], None]  # (camera_id, state, message)


class CameraWorker:
    """Runs one ``CameraSource`` on its own thread into a ``FrameBuffer``.

    Args:
        source: the camera (not yet opened).
        view_index: the configured view of this camera; stamped on every frame.
        buffer: where frames go.
        resolution: expected (height, width), or None to accept any size.
        reconnect_initial_s / reconnect_max_s: exponential back-off bounds after a failure.
        on_status: called on every state change with (camera_id, state, message).
    """

    def __init__(
        self,
        source: CameraSource,
        view_index: int,
        buffer: FrameBuffer,
        resolution: tuple[int, int] | None = None,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_status: StatusCallback | None = None,
        read_timeout_s: float = 0.2,
    ) -> None:
        self.source, self.view_index, self.buffer = source, view_index, buffer
        self.camera_id = source.camera_id
        self.resolution = resolution
        self.reconnect_initial_s, self.reconnect_max_s = reconnect_initial_s, reconnect_max_s
        self.on_status = on_status
        self.read_timeout_s = read_timeout_s
        self.state = CameraState.STOPPED
        self.stats = CameraStats()
        self.finished = False  # a finite source reached its end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _set_state(self, state: CameraState, message: str = "") -> None:
        self.state = state
        level = {CameraState.BACKOFF: logging.WARNING, CameraState.CONNECTING: logging.DEBUG}.get(
            state, logging.INFO
        )
        log.log(level, "camera %s: %s %s", self.camera_id, state.value, message)
        if self.on_status is not None:
            try:
                self.on_status(self.camera_id, state.value, message)
            except Exception:  # a failing status sink must not kill the camera
                log.exception("camera %s: status callback failed", self.camera_id)

    def _normalise(self, frame: Frame) -> Frame | None:
        """The frame as (H, W, 3) uint8 BGR, or None (counted) when it is corrupt or of the wrong size.
        Mono cameras (H, W) / (H, W, 1) and BGRA frames are converted: the model takes 3 channels."""
        img = frame.image
        if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.size:
            if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            elif img.ndim == 3 and img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            self.stats.corrupt += 1
            if self.stats.corrupt in (1, 10, 100) or self.stats.corrupt % 1000 == 0:
                what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                log.warning("camera %s: frame %s is not 8-bit mono/BGR; skipped", self.camera_id, what)
            return None
        if self.resolution is not None and img.shape[:2] != self.resolution:
            self.stats.wrong_size += 1
            if self.stats.wrong_size in (1, 10, 100) or self.stats.wrong_size % 1000 == 0:
                log.warning(
                    "camera %s: frame %dx%d, configured %dx%d; skipped (%d so far)",
                    self.camera_id, img.shape[1], img.shape[0], self.resolution[1], self.resolution[0],
                    self.stats.wrong_size,
                )  # fmt: skip
            return None
        return frame if img is frame.image else dataclasses.replace(frame, image=img)

    def _run(self) -> None:
        delay = self.reconnect_initial_s
        state = CameraState.CONNECTING
        try:
            while not self._stop.is_set():
                if state == CameraState.CONNECTING:
                    self._set_state(state)
                    try:
                        self.source.open()
                    except Exception as e:  # CameraError, or anything a driver throws
                        self.stats.last_error = f"open failed: {e}"
                        state = CameraState.BACKOFF
                        continue
                    state = CameraState.STREAMING
                    self._set_state(state)
                elif state == CameraState.STREAMING:
                    try:
                        frame = self.source.read(self.read_timeout_s)
                    except CorruptFrame as e:
                        self.stats.corrupt += 1
                        log.warning("camera %s: corrupt frame skipped: %s", self.camera_id, e)
                        continue
                    except EndOfStream:
                        self.finished = True
                        break
                    except Exception as e:  # CameraError or a driver failure: reconnect
                        self.stats.last_error = f"{type(e).__name__}: {e}"
                        self._close_source()
                        state = CameraState.BACKOFF
                        continue
                    if frame is None:
                        continue
                    delay = self.reconnect_initial_s  # a frame arrived: the camera is healthy again
                    frame = self._normalise(frame)
                    if frame is None:
                        continue
                    if frame.view_index != self.view_index:
                        frame = dataclasses.replace(frame, view_index=self.view_index)
                    self.buffer.put(frame, self._stop)
                    self.stats.frames += 1
                    self.stats.fps_window.append(time.monotonic())
                elif state == CameraState.BACKOFF:
                    self.stats.reconnects += 1
                    wait = delay * random.uniform(0.8, 1.2)  # jitter: cameras do not reconnect in lockstep
                    self._set_state(state, f"{self.stats.last_error}; retry in {wait:.1f} s")
                    self._stop.wait(wait)
                    delay = min(delay * 2, self.reconnect_max_s)
                    state = CameraState.CONNECTING
        except Exception as e:  # never a dead thread without a word
            self.stats.last_error = f"camera thread crashed: {type(e).__name__}: {e}"
            log.exception("camera %s: thread crashed", self.camera_id)
        finally:
            self._close_source()
            self._set_state(CameraState.STOPPED, "end of stream" if self.finished else self.stats.last_error)
            self.buffer.wakeup.set()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.exception("camera %s: close failed", self.camera_id)
