"""Recorded cameras: a folder of images or a video file, replayed at a given rate.

Used to re-run a line on recorded production data, and in tests. The n-th image (or video frame) of
every camera belongs to the n-th part (``trigger_seq = n``), so each camera's folder holds one image per
part, sorted by name.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from rtvp_edge.messages import CameraError, CameraSource, EndOfStream, Frame
from rtvp_edge.sources.camera import CorruptFrame

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk and its CRC: a PNG's last 12 bytes


def truncation(data: bytes) -> str | None:
    """Why an encoded image is not whole, or None when its container says it ends where it should.

    libjpeg fills a truncated JPEG's missing rows with grey and only says so on stderr (OpenCV returns the
    image); a defect model then judges the grey edge. So the encoded bytes are checked before decoding:
    a JPEG must end with its EOI marker (FF D9; zero padding after it is tolerated), a PNG with its IEND
    chunk, a BMP must hold the file size its header states. TIFF has no end marker; its decoder refuses
    missing strips itself.
    """
    if data[:3] == b"\xff\xd8\xff":
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "JPEG without its end-of-image marker (truncated)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if not data.endswith(_PNG_END):
            return "PNG without its IEND chunk (truncated)"
    elif data[:2] == b"BM" and len(data) >= 6:
        size = int.from_bytes(data[2:6], "little")
        if len(data) < size:
            return f"BMP of {len(data)} bytes, its header says {size} (truncated)"
    return None


def decode_whole(path: Path) -> np.ndarray:
    """Read and decode one image file as (H, W, 3) uint8 BGR, refusing one that is not whole.

    Raises:
        CorruptFrame: unreadable, truncated (``truncation``) or undecodable; the message names the file.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFrame(f"{path}: cannot read ({e.strerror or e})") from None
    why = truncation(data)
    if why is not None:
        raise CorruptFrame(f"{path}: {why}; not judged")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptFrame(f"{path}: not a readable image")
    return img


class _Paced:
    """Frame n is due at start + n / fps (None: as fast as the consumer takes them)."""

    def __init__(self, fps: float | None) -> None:
        self.fps = fps
        self._t0: float | None = None

    def wait_due(self, n: int, timeout: float) -> bool:
        if self.fps is None:
            return True
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - n / self.fps
        due = self._t0 + n / self.fps
        if due - now > timeout:
            time.sleep(timeout)
            return False
        if due > now:
            time.sleep(due - now)
        return True


class FolderReplay(CameraSource):
    """Images of one folder in name order, one per trigger.

    Args:
        camera_id / view_index: configured camera.
        folder: directory of images.
        fps: replay rate, None for as fast as possible.
        loop: start again at the first image after the last (trigger_seq keeps counting).
    """

    def __init__(
        self,
        camera_id: str,
        view_index: int,
        folder: str | Path,
        fps: float | None = None,
        loop: bool = False,
    ) -> None:
        self.camera_id, self.view_index, self.folder = camera_id, view_index, Path(folder)
        self.loop = loop
        self._pace = _Paced(fps)
        self._files: list[Path] = []
        self._n = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"camera {self.camera_id}: folder {self.folder} not found")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise CameraError(f"camera {self.camera_id}: no images in {self.folder}")

    def read(self, timeout: float) -> Frame | None:
        if self._n >= len(self._files) and not self.loop:
            raise EndOfStream
        if not self._pace.wait_due(self._n, timeout):
            return None
        n = self._n
        self._n += 1
        path = self._files[n % len(self._files)]
        img = decode_whole(path)  # a truncated image is a corrupt frame: its part is INCOMPLETE, not judged
        return Frame(self.camera_id, self.view_index, n, time.time(), img, monotonic=time.monotonic())

    def close(self) -> None:
        pass  # reopening continues where it stopped: a replayed line does not rewind on a hiccup


class VideoReplay(CameraSource):
    """Frames of a video file, one per trigger, at ``fps`` (None: as fast as possible)."""

    def __init__(
        self, camera_id: str, view_index: int, path: str | Path, fps: float | None = None, loop: bool = False
    ) -> None:
        self.camera_id, self.view_index, self.path, self.loop = camera_id, view_index, Path(path), loop
        self._pace = _Paced(fps)
        self._cap: cv2.VideoCapture | None = None
        self._n = 0

    def open(self) -> None:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {self.camera_id}: cannot open video {self.path}")
        # Resume after a reconnect instead of replaying parts already judged.
        if self._n:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self._n)
        self._cap = cap

    def read(self, timeout: float) -> Frame | None:
        if self._cap is None:
            raise CameraError(f"camera {self.camera_id}: not open")
        if not self._pace.wait_due(self._n, timeout):
            return None
        ok, img = self._cap.read()
        if not ok:
            if not self.loop:
                raise EndOfStream
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self._cap.read()
            if not ok:
                raise EndOfStream
        n = self._n
        self._n += 1
        return Frame(self.camera_id, self.view_index, n, time.time(), img, monotonic=time.monotonic())

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
