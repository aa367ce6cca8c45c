"""The hard-sample folder: raw frames of the parts worth labelling, with the line's predictions as a COCO
file that a labelling tool (CVAT, Label Studio) opens and ``rtvp-edge enroll --examples`` reads.

Which parts are kept (every view of the part, as captured):
- NG parts;
- parts with a detection scored within ``near_threshold_band`` of its class threshold, on either side
  (the ones the line nearly got wrong);
- a share ``ok_share`` of the OK parts, drawn by a generator seeded with ``seed``.
INCOMPLETE parts are not kept (their views are missing, their predictions partial).

Layout::

    <dir>/hard_samples.json                                      COCO: images, categories, annotations
    <dir>/<YYYY-MM-DD>/<HHMMSSmmm>_<part_id>_<trigger>_<camera>.png   lossless, the frame as captured

The UTC date and time of the decision in the name keep the frames of a new run (whose part ids start again)
from overwriting an earlier run's. COCO ``file_name`` is relative to the COCO file's folder. Every image
carries its part id, trigger, camera, view, verdict and why it was kept; every annotation is a prediction
with its ``score`` and ``below_threshold`` (in ``attributes`` too, which CVAT shows): true for a detection
kept only because it was near its threshold (the line did not report it). Categories are the running
vocabulary by name; a class added by a reload gets the next id, ids never change. ``info.model`` names the
model (``rtvp-edge enroll`` checks it).

Bounded like the evidence folder: at most ``max_files`` images, ``max_mb`` in all and ``retention_days``;
the oldest go first, with their annotations. A restart reads the COCO file back and goes on (image ids keep
growing).

Never in the line's way: the decision stage only selects and queues a part (no disk access); one writer
thread encodes and writes. A full queue skips the part (counted in ``skipped``); a failing disk is counted
(``errors``), logged and reported through ``status`` (component ``hard_samples``) and the next part is tried
again: verdicts never wait for it and never fail because of it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2

from rtvp_edge.messages import Detection, Frame, PartVerdict

log = logging.getLogger(__name__)

COCO_FILE = "hard_samples.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_STOP = object()

StatusCallback = Callable[[str, str, str], None]  # (component, state, message)


@dataclass(frozen=True)
class _Kept:
    verdict: PartVerdict
    frames: tuple[Frame, ...]
    why: tuple[str, ...]  # "NG", "near_threshold", "random_ok"


class HardSampleWriter:
    """Keeps hard samples (module docstring). A part sink: ``writer(verdict, frames)``.

    Args:
        directory: the folder (created if missing).
        class_names: the running vocabulary (COCO categories; ``set_vocabulary`` after a reload).
        model: ``{"name", "bundle_sha256", ...}`` of the running model, written to ``info``.
        near_band: keep parts with a detection within this of its threshold (``ViewResult.near_threshold``).
        ok_share: share of OK parts kept; seed: of the generator that draws them.
        max_files, max_bytes, retention_days: the bound (oldest images dropped first).
        queue_parts: parts waiting for the writer thread; more are skipped.
        status: ``(component, state, message)`` callback for disk errors and recovery.
        coco_every_s: the COCO file is rewritten when the queue runs empty or this long after the last write.
    Attributes:
        kept, written, skipped, errors, coco_errors, pruned: parts queued, images written, parts skipped
            (queue full), parts that failed on disk, failed writes of the COCO file, images dropped by the bound.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        class_names: Sequence[str],
        model: dict | None = None,
        *,
        near_band: float = 0.05,
        ok_share: float = 0.01,
        seed: int = 0,
        max_files: int = 2000,
        max_bytes: int = 2000 * 2**20,
        retention_days: float = 30.0,
        queue_parts: int = 8,
        status: StatusCallback | None = None,
        coco_every_s: float = 1.0,
    ) -> None:
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self.coco_path = self.root / COCO_FILE
        self.near_band, self.ok_share = near_band, ok_share
        self.max_files, self.max_bytes, self.retention_s = max_files, max_bytes, retention_days * 86400.0
        self.model = dict(model or {})
        self.status = status
        self.coco_every_s = coco_every_s
        self._rng = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(queue_parts)
        self._lock = threading.Lock()  # records, categories (the writer thread and set_vocabulary)
        self._categories: dict[str, int] = {}
        self._images: dict[int, dict] = {}  # image id -> COCO image record
        self._annotations: dict[int, list[dict]] = {}  # image id -> its annotations
        # (time written, path, bytes, image id or None for a file no record names), oldest first
        self._files: collections.deque[tuple[float, Path, int, int | None]] = collections.deque()
        self._bytes = 0
        self._next_image = self._next_ann = 1
        self.kept = self.written = self.skipped = self.errors = self.coco_errors = self.pruned = 0
        self._failing = False
        self._dirty = False
        self._restore()
        self.set_vocabulary(class_names)
        self._prune()
        self._thread = threading.Thread(target=self._run, name="hard-samples", daemon=True)
        self._thread.start()

    # -- the decision stage's side: select and queue, nothing else -------------------------------------
    def set_vocabulary(self, class_names: Sequence[str], model: dict | None = None) -> None:
        """The running vocabulary changed (a reload): new names get the next category ids."""
        with self._lock:
            for n in class_names:
                if n not in self._categories:
                    self._categories[n] = max(self._categories.values(), default=0) + 1
            if model is not None:
                self.model = dict(model)
            self._dirty = True

    def select(self, verdict: PartVerdict) -> tuple[str, ...]:
        """Why ``verdict``'s part is kept (empty: it is not). Draws the random OK share."""
        why = []
        if verdict.verdict == "NG":
            why.append("NG")
        if verdict.verdict != "INCOMPLETE" and any(v.near_threshold for v in verdict.views):
            why.append("near_threshold")
        if verdict.verdict == "OK" and not why and self._rng.random() < self.ok_share:
            why.append("random_ok")
        return tuple(why)

    def __call__(self, verdict: PartVerdict, frames: tuple[Frame, ...]) -> None:
        """Queue the part when it is worth keeping; never blocks, never raises."""
        try:
            why = self.select(verdict)
            if not why or not frames:
                return
            self._queue.put_nowait(_Kept(verdict, tuple(frames), why))
            self.kept += 1
        except queue.Full:
            self.skipped += 1
        except Exception:  # noqa: BLE001 - the line goes on whatever happens here
            self.errors += 1
            log.exception("hard samples: part %s not queued", verdict.part_id)

    def stats(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "written": self.written,
            "skipped": self.skipped,
            "errors": self.errors,
            "coco_errors": self.coco_errors,
            "pruned": self.pruned,
            "images": len(self._files),
            "bytes": self._bytes,
        }

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to ``timeout`` s), the COCO file last, and stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("hard samples: the writer did not drain its queue in %.0f s", timeout)
            return
        self._thread.join(timeout)

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        last_coco = time.monotonic()
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            try:
                self._write(item)
                if self._failing:
                    self._failing = False
                    self._report("OK", f"writing again to {self.root}")
            except Exception as e:  # noqa: BLE001 - a failing disk never stops the line
                self.errors += 1
                log.warning("hard samples: part %s not written to %s: %s", item.verdict.part_id, self.root, e)
                if not self._failing:  # once per failure spell, not once per part
                    self._failing = True
                    self._report("ERROR", f"part {item.verdict.part_id} not written to {self.root}: {e}")
            if self._dirty and (self._queue.empty() or time.monotonic() - last_coco >= self.coco_every_s):
                self._write_coco_logged()
                last_coco = time.monotonic()
        if self._dirty:
            self._write_coco_logged()

    def _report(self, state: str, message: str) -> None:
        if self.status is not None:
            try:
                self.status("hard_samples", state, message)
            except Exception:  # noqa: BLE001
                log.exception("status sink failed")

    def _write(self, item: _Kept) -> None:
        v = item.verdict
        decided = datetime.fromtimestamp(v.decided_time or time.time(), timezone.utc)
        day = decided.strftime("%Y-%m-%d")
        stamp = decided.strftime("%H%M%S") + f"{decided.microsecond // 1000:03d}"
        out_dir = self.root / day
        out_dir.mkdir(parents=True, exist_ok=True)
        views = {r.view_index: r for r in v.views}
        for f in item.frames:
            stem = _SAFE.sub("_", f"{stamp}_{v.part_id}_{v.trigger_seq}_{f.camera_id}")
            path = out_dir / f"{stem}.png"
            n = 1
            while path.exists():  # same part, same millisecond (a replayed run): never overwrite
                path, n = out_dir / f"{stem}-{n}.png", n + 1
            ok, data = cv2.imencode(".png", f.image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise OSError(f"{path}: the frame cannot be encoded as PNG")
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data.tobytes())
            os.replace(tmp, path)  # never a half-written image under the final name
            h, w = f.image.shape[:2]
            r = views.get(f.view_index)
            dets = r.detections if r is not None else ()
            near = r.near_threshold if r is not None else ()
            with self._lock:
                image_id = self._next_image
                self._next_image += 1
                self._images[image_id] = {
                    "id": image_id,
                    "file_name": f"{day}/{path.name}",
                    "width": int(w),
                    "height": int(h),
                    "date_captured": _iso(f.capture_time),
                    "part_id": v.part_id,
                    "trigger_seq": v.trigger_seq,
                    "camera_id": f.camera_id,
                    "view_index": f.view_index,
                    "verdict": v.verdict,
                    "kept_because": list(item.why),
                }
                self._annotations[image_id] = [self._annotation(image_id, d, False) for d in dets] + [
                    self._annotation(image_id, d, True) for d in near if d not in dets
                ]
                self._files.append((time.time(), path, len(data), image_id))
                self._bytes += len(data)
                self._dirty = True
            self.written += 1
        self._prune()

    def _annotation(self, image_id: int, d: Detection, below: bool) -> dict:
        """One prediction as a COCO annotation (called with ``_lock`` held)."""
        if d.class_name not in self._categories:  # a class of a vocabulary swapped in meanwhile
            self._categories[d.class_name] = max(self._categories.values(), default=0) + 1
        x1, y1, x2, y2 = d.box
        ann_id = self._next_ann
        self._next_ann += 1
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": self._categories[d.class_name],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "area": round((x2 - x1) * (y2 - y1), 2),
            "iscrowd": 0,
            "segmentation": [],
            "score": round(float(d.score), 4),
            "below_threshold": below,
            "attributes": {"score": round(float(d.score), 4), "below_threshold": below},
        }

    def _prune(self, now: float | None = None) -> None:
        """Drop the oldest images (and their annotations) beyond the bound."""
        now = time.time() if now is None else now
        while self._files and (
            len(self._files) > self.max_files
            or self._bytes > self.max_bytes
            or now - self._files[0][0] > self.retention_s
        ):
            with self._lock:
                _, path, size, image_id = self._files.popleft()
                self._bytes -= size
                if image_id is not None:
                    self._images.pop(image_id, None)
                    self._annotations.pop(image_id, None)
                self._dirty = True
            try:
                path.unlink()
                self.pruned += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("hard samples: cannot delete %s: %s", path, e)
        try:
            for d in self.root.iterdir():
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        except OSError as e:
            log.warning("hard samples: cannot tidy %s: %s", self.root, e)

    def coco(self) -> dict:
        """The COCO dict of the images kept now."""
        with self._lock:
            return {
                "info": {
                    "description": "rtvp-edge hard samples: raw frames with the line's predictions",
                    "model": self.model.get("name"),
                    "bundle_sha256": self.model.get("bundle_sha256"),
                    "date_created": _iso(time.time()),
                },
                "images": [self._images[i] for i in sorted(self._images)],
                "annotations": [a for i in sorted(self._annotations) for a in self._annotations[i]],
                "categories": [
                    {"id": cid, "name": n, "supercategory": "defect"}
                    for n, cid in sorted(self._categories.items(), key=lambda kv: kv[1])
                ],
            }

    def _write_coco_logged(self) -> None:
        try:
            self._write_coco()
        except Exception as e:  # noqa: BLE001
            self.coco_errors += 1
            log.warning("hard samples: %s not written: %s", self.coco_path, e)
            if not self._failing:
                self._failing = True
                self._report("ERROR", f"{self.coco_path} not written: {e}")

    def _write_coco(self) -> None:
        self._dirty = False
        data = json.dumps(self.coco())
        tmp = self.coco_path.with_name(self.coco_path.name + ".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.coco_path)

    # -- start: what an earlier run left ---------------------------------------------------------------
    def _restore(self) -> None:
        records: dict[str, dict] = {}
        if self.coco_path.exists():
            try:
                old = json.loads(self.coco_path.read_text())
                cats = {c["id"]: c["name"] for c in old["categories"]}
                self._categories = {n: i for i, n in cats.items()}
                anns: dict[int, list[dict]] = collections.defaultdict(list)
                for a in old["annotations"]:
                    anns[a["image_id"]].append(a)
                    self._next_ann = max(self._next_ann, int(a["id"]) + 1)
                for img in old["images"]:
                    records[img["file_name"]] = img
                    self._next_image = max(self._next_image, int(img["id"]) + 1)
            except (OSError, ValueError, KeyError, TypeError) as e:
                aside = self.coco_path.with_name(f"{COCO_FILE}.unreadable-{int(time.time())}")
                log.warning("hard samples: %s unreadable (%s); kept as %s", self.coco_path, e, aside.name)
                os.replace(self.coco_path, aside)
                records, anns, self._categories = {}, {}, {}
        found = []
        for p in self.root.glob("*/*.png"):
            try:
                st = p.stat()
            except OSError:
                continue
            found.append((st.st_mtime, p, st.st_size))
        for mtime, p, size in sorted(found):  # oldest first
            rec = records.get(f"{p.parent.name}/{p.name}")
            image_id = rec["id"] if rec is not None else None  # a file without a record is pruned like any
            if rec is not None:
                self._images[image_id] = rec
                self._annotations[image_id] = anns.get(image_id, [])
            self._files.append((mtime, p, size, image_id))
            self._bytes += size
        self._dirty = True


def _iso(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
