"""The simulated rig as six cameras driven by photoelectric-gate triggers at a line rate.

Container ``k`` (counting from ``start_index``) reaches the gate at ``t0 + k / line_rate_hz``: the left-bank
cameras (views 0-2) capture then, the right-bank cameras (views 3-5) capture ``turn_delay_s`` later, after
the 180 degree turn. Each camera is a ``CameraSource`` read from its own thread; a container is sampled
once (thread-safe, shared by the six cameras) and each camera renders only its own view of it, so the
rendering load spreads over the camera threads.

Fault injection for the runtime's tests: ``fail_camera`` kills a camera after a number of parts (its
``read`` raises ``CameraError`` from then on, and ``open`` too until an optional recovery time has passed),
``corrupt_frame`` makes one camera emit a wrongly sized / wrongly shaped / wrongly typed image,
``drop_frame`` makes one camera miss one trigger.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from rtvp_edge.messages import CameraError, CameraSource, EndOfStream, Frame
from rtvp_edge.rig.render import ContainerSpec, RigConfig, bank_of, part_id_for, render_view, sample_container

DEFAULT_CAMERA_IDS = ("L1", "L2", "L3", "R1", "R2", "R3")
CORRUPTION_KINDS = ("size", "gray", "truncated", "dtype")


@dataclass
class _Failure:
    after_index: int  # first container index the camera no longer delivers
    recover_after_s: float | None
    failed_at: float | None = None  # monotonic time the failure was first seen


class SimulatedRig:
    """Six cameras of the rotating glass-container rig.

    Args:
        config: what the rig renders (seed, image size, defect-free share, classes...).
        line_rate_hz: containers per second through the gate (trigger rate).
        camera_ids: one id per view, in view order (default L1 L2 L3 R1 R2 R3).
        n_containers: finite number of containers, after which ``read`` raises ``EndOfStream``;
            None = endless.
        start_index: index (and trigger sequence) of the first container.
        realtime: True: frames are released at their trigger times (a live line). False: as fast as
            they are read (tests, data generation); capture times are then the read times.
        turn_delay_s: time between the left-bank and the right-bank shots of one container; default
            half a trigger period, at most 0.25 s.
        cache_size: containers kept sampled for cameras that lag behind the others.
        views: view index of each camera id (default 0..n_views-1 in order); a subset of the six views
            runs fewer cameras.
    """

    def __init__(
        self,
        config: RigConfig,
        line_rate_hz: float = 2.0,
        camera_ids: tuple[str, ...] = DEFAULT_CAMERA_IDS,
        n_containers: int | None = None,
        start_index: int = 0,
        realtime: bool = True,
        turn_delay_s: float | None = None,
        cache_size: int = 64,
        views: tuple[int, ...] | None = None,
    ) -> None:
        if not line_rate_hz > 0:
            raise ValueError(f"line_rate_hz must be > 0, got {line_rate_hz!r}")
        if views is None:
            if len(camera_ids) != config.n_views:
                raise ValueError(
                    f"camera_ids needs {config.n_views} ids (one per view), got {list(camera_ids)}; "
                    "pass views= to run a subset of the cameras"
                )
            views = tuple(range(config.n_views))
        views = tuple(views)
        if len(views) != len(camera_ids):
            raise ValueError(f"views {list(views)} needs one view index per camera id {list(camera_ids)}")
        if len(set(views)) != len(views) or not all(0 <= v < config.n_views for v in views):
            raise ValueError(f"views {list(views)} must be distinct view indices in 0..{config.n_views - 1}")
        if len(set(camera_ids)) != len(camera_ids):
            raise ValueError(f"camera_ids must be unique, got {list(camera_ids)}")
        if n_containers is not None and n_containers < 0:
            raise ValueError(f"n_containers must be >= 0 or None, got {n_containers}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.config = config
        self.line_rate_hz = float(line_rate_hz)
        self.period_s = 1.0 / self.line_rate_hz
        self.turn_delay_s = min(0.5 * self.period_s, 0.25) if turn_delay_s is None else float(turn_delay_s)
        if not self.turn_delay_s >= 0:
            raise ValueError(f"turn_delay_s must be >= 0, got {turn_delay_s!r}")
        self.n_containers = n_containers
        self.start_index = start_index
        self.realtime = realtime
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._specs: OrderedDict[int, ContainerSpec] = OrderedDict()
        self._t0_mono: float | None = None
        self._t0_wall = 0.0
        self._failures: dict[str, _Failure] = {}
        self._corruptions: dict[tuple[str, int], str] = {}
        self._drops: set[tuple[str, int]] = set()
        self.frames_rendered = 0
        self.containers_sampled = 0
        self._cameras = [SimulatedCamera(self, cid, v) for cid, v in zip(camera_ids, views, strict=True)]

    # -- the line -------------------------------------------------------------------------------------

    def cameras(self) -> list[SimulatedCamera]:
        """The rig's cameras, in view order."""
        return list(self._cameras)

    def camera(self, camera_id: str) -> SimulatedCamera:
        for c in self._cameras:
            if c.camera_id == camera_id:
                return c
        raise KeyError(
            f"no camera {camera_id!r} on this rig; cameras: {[c.camera_id for c in self._cameras]}"
        )

    def start(self) -> None:
        """Start the trigger clock (done by the first camera ``open``); container ``start_index`` triggers now."""
        with self._lock:
            if self._t0_mono is None:
                self._t0_mono = time.monotonic()
                self._t0_wall = time.time()

    def trigger_time(self, index: int, view: int) -> float:
        """Monotonic time at which ``view`` of container ``index`` is captured (realtime mode)."""
        if self._t0_mono is None:
            raise RuntimeError("the rig has not started: open a camera first")
        t = self._t0_mono + (index - self.start_index) * self.period_s
        return t + (self.turn_delay_s if bank_of(view, self.config.n_views) == 1 else 0.0)

    def due_index(self) -> int:
        """Index of the most recent container that has passed the gate (realtime mode)."""
        if self._t0_mono is None:
            return self.start_index
        return self.start_index + max(0, int((time.monotonic() - self._t0_mono) / self.period_s))

    def container(self, index: int) -> ContainerSpec:
        """Container ``index``, sampled once and shared by the cameras (thread-safe)."""
        with self._lock:
            spec = self._specs.get(index)
            if spec is not None:
                self._specs.move_to_end(index)
                return spec
            spec = sample_container(self.config, index)
            self.containers_sampled += 1
            self._specs[index] = spec
            while len(self._specs) > self._cache_size:
                self._specs.popitem(last=False)
            return spec

    # -- fault injection ------------------------------------------------------------------------------

    def fail_camera(self, camera_id: str, after_parts: int, recover_after_s: float | None = None) -> None:
        """Kill ``camera_id`` once it has delivered ``after_parts`` parts (counted from ``start_index``).

        From then on its ``read`` raises ``CameraError``, and so does ``open`` until ``recover_after_s``
        seconds have passed since the failure (None: the camera stays dead). A recovered camera resumes
        at the container currently at the gate (realtime) or where it stopped (not realtime).
        """
        self.camera(camera_id)  # names the camera if unknown
        if after_parts < 0:
            raise ValueError(f"after_parts must be >= 0, got {after_parts}")
        self._failures[camera_id] = _Failure(self.start_index + after_parts, recover_after_s)

    def corrupt_frame(self, camera_id: str, index: int, kind: str = "size") -> None:
        """Make ``camera_id`` emit a corrupt image for container ``index``.

        Kinds: ``size`` (half-size image), ``gray`` (2-D single-channel image), ``truncated`` (only the
        top half of the rows arrived), ``dtype`` (float32 instead of uint8).
        """
        self.camera(camera_id)
        if kind not in CORRUPTION_KINDS:
            raise ValueError(f"unknown corruption kind {kind!r}; known: {list(CORRUPTION_KINDS)}")
        self._corruptions[(camera_id, index)] = kind

    def drop_frame(self, camera_id: str, index: int) -> None:
        """Make ``camera_id`` miss the trigger of container ``index``: it never delivers that frame and
        goes on with the next container (a missed trigger; the part should end up INCOMPLETE)."""
        self.camera(camera_id)
        self._drops.add((camera_id, index))

    def _corrupt(self, image: np.ndarray, kind: str) -> np.ndarray:
        h, w = image.shape[:2]
        if kind == "size":
            return np.ascontiguousarray(image[::2, ::2])
        if kind == "gray":
            return np.ascontiguousarray(image[..., 1])
        if kind == "truncated":
            return np.ascontiguousarray(image[: h // 2])
        return image.astype(np.float32)

    def __enter__(self) -> SimulatedRig:
        return self

    def __exit__(self, *exc) -> None:
        for c in self._cameras:
            c.close()


class SimulatedCamera(CameraSource):
    """One camera of a ``SimulatedRig`` (build them with ``SimulatedRig.cameras()``)."""

    def __init__(self, rig: SimulatedRig, camera_id: str, view_index: int) -> None:
        self.rig = rig
        self.camera_id = camera_id
        self.view_index = view_index
        self._next = rig.start_index
        self._open = False
        self._closed = threading.Event()
        self.frames_delivered = 0

    def _failure_state(self) -> _Failure | None:
        f = self.rig._failures.get(self.camera_id)
        if f is None or self._next < f.after_index:
            return None
        if f.failed_at is None:
            f.failed_at = time.monotonic()
        return f

    def open(self) -> None:
        f = self._failure_state()
        if f is not None:
            if f.recover_after_s is None or time.monotonic() - f.failed_at < f.recover_after_s:
                raise CameraError(f"camera {self.camera_id}: no response (simulated failure)")
            # recovered: the camera comes back at the container now at the gate
            del self.rig._failures[self.camera_id]
            if self.rig.realtime:
                self._next = max(self._next, self.rig.due_index())
        self.rig.start()
        self._closed.clear()
        self._open = True

    def read(self, timeout: float) -> Frame | None:
        if not self._open:
            raise CameraError(f"camera {self.camera_id}: read before open (or after close)")
        rig, view = self.rig, self.view_index
        while (self.camera_id, self._next) in rig._drops:  # a missed trigger: that frame never comes
            self._next += 1
        index = self._next
        if rig.n_containers is not None and index >= rig.start_index + rig.n_containers:
            raise EndOfStream(f"camera {self.camera_id}: all {rig.n_containers} containers delivered")
        if self._failure_state() is not None:
            self._open = False
            raise CameraError(f"camera {self.camera_id}: frame transfer failed (simulated failure)")
        if rig.realtime:
            due = rig.trigger_time(index, view)
            wait = due - time.monotonic()
            if wait > timeout:
                self._closed.wait(max(timeout, 0.0))
                return None
            if wait > 0 and self._closed.wait(wait):
                return None  # closed while waiting for the trigger
            mono = due
            wall = rig._t0_wall + (due - rig._t0_mono)
        else:
            mono, wall = time.monotonic(), time.time()
        spec = rig.container(index)
        image, gts = render_view(rig.config, spec, view)
        with rig._lock:
            rig.frames_rendered += 1
        kind = rig._corruptions.get((self.camera_id, index))
        if kind is not None:
            image = rig._corrupt(image, kind)
        self._next = index + 1
        self.frames_delivered += 1
        return Frame(
            camera_id=self.camera_id,
            view_index=view,
            trigger_seq=index,
            capture_time=wall,
            image=image,
            part_id=part_id_for(index),
            monotonic=mono,
            ground_truth=gts,
        )

    def close(self) -> None:
        self._open = False
        self._closed.set()
