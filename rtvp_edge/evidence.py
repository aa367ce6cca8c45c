"""Annotated evidence images for NG parts, kept for ``retention_days`` and at most ``max_files`` files.

Layout: ``<dir>/<YYYY-MM-DD>/<HHMMSSmmm>_<part_id>_<trigger>_<camera>.jpg`` (UTC date and time of the
decision), one image per view with a detection, boxes and labels drawn in. The time in the name keeps the
images of a new run (whose part ids start again at C000000) from overwriting those of an earlier one, and
sorts a day's images in decision order. Labels sit on a filled background and are moved down until they
do not cover one another."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2

from rtvp_edge.messages import Frame, PartVerdict

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class EvidenceWriter:
    """Writes evidence images and prunes old ones.

    Args:
        directory: root of the evidence tree (created if missing).
        retention_days: files older than this are deleted.
        max_files: at most this many files are kept (oldest deleted first).
        jpeg_quality: 10-100.
    """

    def __init__(
        self,
        directory: str | Path,
        retention_days: float = 30.0,
        max_files: int = 10_000,
        jpeg_quality: int = 90,
    ) -> None:
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_days * 86400.0
        self.max_files, self.jpeg_quality = max_files, jpeg_quality
        existing = sorted(
            (p.stat().st_mtime, p)
            for p in self.root.glob("*/*.jpg")
            if p.is_file() and not p.name.endswith(".tmp.jpg")
        )  # oldest first
        self._files: collections.deque[tuple[float, Path]] = collections.deque(existing)
        self.written = 0
        self.prune()

    def write(self, verdict: PartVerdict, frames: tuple[Frame, ...]) -> PartVerdict:
        """Write one annotated image per view with detections of an NG part.

        Returns:
            the verdict with ``evidence_path`` set on the views written (unchanged for OK/INCOMPLETE
            parts without detections).
        """
        if verdict.verdict == "OK":
            return verdict
        by_view = {f.view_index: f for f in frames}
        decided = datetime.fromtimestamp(verdict.decided_time or time.time(), timezone.utc)
        out_dir = self.root / decided.strftime("%Y-%m-%d")
        stamp = decided.strftime("%H%M%S") + f"{decided.microsecond // 1000:03d}"
        views = []
        for v in verdict.views:
            f = by_view.get(v.view_index)
            if not v.detections or f is None:
                views.append(v)
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            name = _SAFE.sub("_", f"{stamp}_{verdict.part_id}_{verdict.trigger_seq}_{v.camera_id}") + ".jpg"
            path = out_dir / name
            img = f.image.copy()
            for d in v.detections:
                x1, y1, x2, y2 = (int(round(c)) for c in d.box)
                cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 2)
            placed: list[tuple[int, int, int, int]] = [(0, 0, 10_000, 28)]  # the header line
            for d in sorted(v.detections, key=lambda d: -d.score):
                x1, y1 = int(round(d.box[0])), int(round(d.box[1]))
                _label(img, f"{d.class_name} {d.score:.2f}", x1, y1, placed)
            cv2.putText(
                img, f"{verdict.part_id} {verdict.verdict} {v.camera_id}", (8, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2,
            )  # fmt: skip
            tmp = path.with_suffix(".tmp.jpg")
            if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]):
                raise OSError(f"{tmp}: cannot write evidence image")
            os.replace(tmp, path)  # never a half-written image under the final name
            self._files.append((time.time(), path))
            self.written += 1
            views.append(dataclasses.replace(v, evidence_path=str(path)))
        if self.written and self.written % 50 == 0 or len(self._files) > self.max_files:
            self.prune()
        return dataclasses.replace(verdict, views=tuple(views))

    def prune(self, now: float | None = None) -> int:
        """Delete files past retention or beyond ``max_files``. Returns how many were deleted."""
        now = time.time() if now is None else now
        removed = 0
        while self._files and (
            len(self._files) > self.max_files or now - self._files[0][0] > self.retention_s
        ):
            _, p = self._files.popleft()
            try:
                p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("evidence: cannot delete %s: %s", p, e)
        for d in self.root.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return removed


def _label(img, text: str, x: int, y_top: int, placed: list[tuple[int, int, int, int]]) -> None:
    """Draw ``text`` on a filled background just above ``(x, y_top)`` (a box corner), moved down until it
    overlaps no rectangle in ``placed`` (x1, y1, x2, y2), which it is then added to."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    h_img, w_img = img.shape[:2]
    x = max(0, min(x, w_img - w - 4))
    y = max(0, y_top - h - base - 4)  # top of the label

    def overlaps(y0: int) -> bool:
        return any(
            x < bx2 and x + w + 4 > bx1 and y0 < by2 and y0 + h + base + 4 > by1
            for bx1, by1, bx2, by2 in placed
        )

    for _ in range(64):  # bounded: at worst it overlaps after 64 moves
        if not overlaps(y):
            break
        y += h + base + 4
    y = min(y, max(0, h_img - h - base - 4))
    rect = (x, y, x + w + 4, y + h + base + 4)
    cv2.rectangle(img, rect[:2], rect[2:], (0, 0, 255), -1)
    cv2.putText(img, text, (x + 2, y + h + 2), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    placed.append(rect)
