"""Part assembler: groups the frames of one gate trigger (or one PLC part id) into one part of N views.

A part is emitted as soon as all its views are there, or at ``timeout_s`` after its first frame with
the missing views listed (the verdict stage then makes it INCOMPLETE, never silently OK). Frames that
arrive for a part already emitted are counted as late and dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rtvp_edge.messages import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssembledPart:
    """The frames of one part.

    Args:
        part_id: part id (from the source, a PLC message, or formatted from the trigger sequence).
        trigger_seq: gate trigger sequence.
        frames: the frames that arrived, ordered by view index.
        missing_views: view indices that did not arrive (empty when complete).
        reason: why the part was emitted incomplete ("timeout", "stopped", "overflow", "sources ended").
        first_monotonic: ``time.monotonic()`` of the earliest capture (latency reference).
    """

    part_id: str
    trigger_seq: int
    frames: tuple[Frame, ...]
    missing_views: tuple[int, ...] = ()
    reason: str = ""
    first_monotonic: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.missing_views


@dataclass
class _Open:
    trigger_seq: int
    opened: float  # monotonic time the first frame reached the assembler
    frames: dict[int, Frame] = field(default_factory=dict)
    part_id: str | None = None


@dataclass
class AssemblerStats:
    parts: int = 0
    incomplete: int = 0
    late_frames: int = 0
    duplicate_frames: int = 0
    gap_parts: int = 0  # triggers no camera delivered a frame for (every view dropped or lost)
    lost_triggers: int = 0  # gaps too large to track part by part (counted only)
    ignored_frames: int = 0  # frames of triggers beyond max_parts


class PartAssembler:
    """Not thread-safe: owned by the assembler stage's thread.

    Args:
        n_views: views per part (the rig: 6).
        timeout_s: seconds after the first frame of a part after which it is emitted incomplete.
        part_id_format: ``str.format`` pattern with ``trigger_seq`` for parts whose source names none.
        max_open_parts: bound on parts waiting for views; beyond it the oldest is emitted incomplete.
        fill_gaps: a trigger sequence that jumps (frames of triggers 10, 11, 14) means triggers 12 and 13
            lost every view (dropped under overload, or missed); they become parts with no frames, emitted
            INCOMPLETE at their timeout, so every trigger gets a verdict. Sources must number triggers
            contiguously (all built-in sources do).
        max_parts: accept at most this many distinct triggers (``run --parts N``); later frames are ignored.
        resolve_part_id: optional ``trigger_seq -> part id | None`` (a PLC subscription).
        clock: monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        n_views: int,
        timeout_s: float,
        part_id_format: str = "T{trigger_seq:08d}",
        max_open_parts: int = 64,
        resolve_part_id: Callable[[int], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fill_gaps: bool = True,
        max_parts: int | None = None,
    ) -> None:
        self.n_views, self.timeout_s = n_views, timeout_s
        self.part_id_format, self.max_open_parts = part_id_format, max_open_parts
        self.resolve_part_id, self.clock = resolve_part_id, clock
        self._open: dict[int, _Open] = {}
        # Recently emitted triggers, to recognise late frames (bounded: a long run does not grow it).
        self._done: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.stats = AssemblerStats()
        self.fill_gaps, self.max_parts = fill_gaps, max_parts
        self._max_seen: int | None = None  # highest trigger sequence seen
        self._accepted = 0  # distinct triggers opened

    @property
    def open_parts(self) -> int:
        return len(self._open)

    def add(self, frame: Frame) -> list[AssembledPart]:
        """Take one frame. Returns the parts this frame completed (or pushed out by overflow)."""
        seq = frame.trigger_seq
        if seq in self._done:
            self.stats.late_frames += 1
            return []
        out: list[AssembledPart] = []
        part = self._open.get(seq)
        if part is None:
            if self.max_parts is not None and self._accepted >= self.max_parts:
                self.stats.ignored_frames += 1
                return []
            if self.fill_gaps and self._max_seen is not None and seq > self._max_seen + 1:
                out += self._open_gap(self._max_seen + 1, seq)
                if self.max_parts is not None and self._accepted >= self.max_parts:
                    self.stats.ignored_frames += 1
                    return out
            part = self._open_part(seq, out)
        if self._max_seen is None or seq > self._max_seen:
            self._max_seen = seq
        if frame.view_index in part.frames:
            self.stats.duplicate_frames += 1
            return out
        part.frames[frame.view_index] = frame
        if frame.part_id and part.part_id is None:
            part.part_id = frame.part_id
        if len(part.frames) >= self.n_views:
            out.append(self._emit(seq, ""))
        return out

    def _open_part(self, seq: int, out: list[AssembledPart]) -> _Open:
        if len(self._open) >= self.max_open_parts:
            out.append(self._emit(min(self._open), "overflow"))
        self._accepted += 1
        part = self._open[seq] = _Open(seq, self.clock())
        return part

    def _open_gap(self, first: int, end: int) -> list[AssembledPart]:
        """Open parts without frames for the triggers ``first..end-1`` that no camera delivered."""
        out: list[AssembledPart] = []
        limit = max(1, self.max_open_parts // 2)  # a huge jump (a source restarted its counter) is not parts
        if end - first > limit:
            self.stats.lost_triggers += end - first - limit
            log.warning(
                "trigger sequence jumped from %d to %d; %d triggers not tracked",
                first - 1,
                end,
                end - first - limit,
            )
            first = end - limit
        for seq in range(first, end):
            if seq in self._open or seq in self._done:
                continue
            if self.max_parts is not None and self._accepted >= self.max_parts:
                break
            self._open_part(seq, out)
            self.stats.gap_parts += 1
        return out

    def poll(self) -> list[AssembledPart]:
        """Emit every part whose timeout expired (incomplete), oldest first."""
        now = self.clock()
        due = sorted(s for s, p in self._open.items() if now - p.opened >= self.timeout_s)
        return [self._emit(s, "timeout") for s in due]

    def flush(self, reason: str) -> list[AssembledPart]:
        """Emit every open part now (at stop, or when every source has ended)."""
        return [self._emit(s, reason) for s in sorted(self._open)]

    def _emit(self, seq: int, reason: str) -> AssembledPart:
        p = self._open.pop(seq)
        self._done[seq] = None
        while len(self._done) > 4 * self.max_open_parts + 1024:
            self._done.popitem(last=False)
        part_id = p.part_id
        if part_id is None and self.resolve_part_id is not None:
            part_id = self.resolve_part_id(seq)
        if part_id is None:
            part_id = self.part_id_format.format(trigger_seq=seq)
        frames = tuple(p.frames[v] for v in sorted(p.frames))
        missing = tuple(v for v in range(self.n_views) if v not in p.frames)
        self.stats.parts += 1
        if missing:
            self.stats.incomplete += 1
        first = min((f.monotonic for f in frames if f.monotonic), default=p.opened)
        return AssembledPart(part_id, seq, frames, missing, reason if missing else "", first)


class TimePairing:
    """Pairs frames by capture time instead of trigger numbers (``assembly.pairing: time``).

    A free-running camera that loses a frame shifts its own numbering; pairing by number would then put
    its views into the wrong parts. Here a frame joins the part whose reference time (its first frame's
    ``monotonic`` minus that camera's trigger offset) is within ``window_s`` and that has no view from this
    camera yet; otherwise it opens a new part. Parts are numbered by this pairing, in order of first frame.

    Args:
        window_s: the largest capture-time spread of one part's views after offsets (< half the period).
        offsets_s: camera id -> delay of its shot after the trigger (default 0).
        keep: recent parts remembered for pairing.
    """

    def __init__(self, window_s: float, offsets_s: dict[str, float] | None = None, keep: int = 256) -> None:
        self.window_s, self.offsets_s = window_s, dict(offsets_s or {})
        self._recent: collections.deque[tuple[int, float, set[int]]] = collections.deque(maxlen=keep)
        self._next = 0

    def assign(self, frame: Frame) -> Frame:
        """``frame`` with ``trigger_seq`` set to the part it belongs to."""
        t = frame.monotonic - self.offsets_s.get(frame.camera_id, 0.0)
        best = None
        for seq, t_ref, views in self._recent:
            d = abs(t - t_ref)
            if d <= self.window_s and frame.view_index not in views and (best is None or d < best[0]):
                best = (d, seq, views)
        if best is None:
            seq, views = self._next, set()
            self._next += 1
            self._recent.append((seq, t, views))
        else:
            _, seq, views = best
        views.add(frame.view_index)
        return dataclasses.replace(frame, trigger_seq=seq)
