"""Part assembler: complete parts as soon as all views are in, INCOMPLETE at the timeout, late and duplicate
frames counted, overflow bounded."""

from __future__ import annotations

import numpy as np

from rtvp_edge.assembler import PartAssembler
from rtvp_edge.messages import Frame

IMG = np.zeros((4, 4, 3), np.uint8)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(seq: int, view: int, part_id: str | None = None) -> Frame:
    return Frame(f"C{view}", view, seq, 1.7e9 + seq, IMG, part_id=part_id, monotonic=50.0 + seq)


def test_complete_part_emitted_on_last_view():
    a = PartAssembler(n_views=3, timeout_s=1.0, clock=Clock())
    assert a.add(frame(7, 2)) == [] and a.add(frame(7, 0)) == []
    (p,) = a.add(frame(7, 1))
    assert p.complete and p.trigger_seq == 7 and p.part_id == "T00000007"
    assert [f.view_index for f in p.frames] == [0, 1, 2]
    assert p.first_monotonic == 57.0
    assert a.open_parts == 0


def test_interleaved_parts_and_source_part_id():
    a = PartAssembler(n_views=2, timeout_s=1.0, clock=Clock())
    out = []
    for f in [frame(1, 0, "C000001"), frame(2, 0, "C000002"), frame(2, 1), frame(1, 1)]:
        out += a.add(f)
    assert [(p.trigger_seq, p.part_id) for p in out] == [(2, "C000002"), (1, "C000001")]


def test_incomplete_at_timeout_never_earlier():
    clock = Clock()
    a = PartAssembler(n_views=3, timeout_s=2.0, clock=clock)
    a.add(frame(1, 0))
    a.add(frame(1, 2))
    clock.t += 1.9
    assert a.poll() == []
    clock.t += 0.2
    (p,) = a.poll()
    assert not p.complete and p.missing_views == (1,) and p.reason == "timeout"
    # the missing view arriving later is a late frame, not a new part
    assert a.add(frame(1, 1)) == []
    assert a.stats.late_frames == 1 and a.stats.incomplete == 1


def test_duplicate_view_counted_and_ignored():
    a = PartAssembler(n_views=2, timeout_s=1.0, clock=Clock())
    a.add(frame(3, 0))
    assert a.add(frame(3, 0)) == []
    assert a.stats.duplicate_frames == 1
    assert len(a.add(frame(3, 1))) == 1


def test_overflow_emits_oldest_incomplete():
    a = PartAssembler(n_views=2, timeout_s=100.0, max_open_parts=2, clock=Clock())
    a.add(frame(1, 0))
    a.add(frame(2, 0))
    (p,) = a.add(frame(3, 0))
    assert p.trigger_seq == 1 and p.reason == "overflow" and p.missing_views == (1,)
    assert a.open_parts == 2


def test_flush_and_part_id_resolver():
    a = PartAssembler(n_views=2, timeout_s=100.0, resolve_part_id={5: "PLC-5"}.get, clock=Clock())
    a.add(frame(5, 0))
    a.add(frame(6, 1))
    ps = a.flush("runtime stopped")
    assert [(p.part_id, p.missing_views, p.reason) for p in ps] == [
        ("PLC-5", (1,), "runtime stopped"),
        ("T00000006", (0,), "runtime stopped"),
    ]


def test_trigger_gap_becomes_incomplete_parts():
    """Triggers 2 and 3 lost every view (dropped under overload): they still get a part each."""
    clock = Clock()
    a = PartAssembler(n_views=2, timeout_s=1.0, clock=clock)
    out = a.add(frame(1, 0)) + a.add(frame(1, 1))
    out += a.add(frame(4, 0))
    assert [p.trigger_seq for p in out] == [1] and a.open_parts == 3 and a.stats.gap_parts == 2
    out = a.add(frame(3, 1))  # a late view of a gap part still counts
    clock.t += 1.5
    gaps = a.poll()
    assert [(p.trigger_seq, p.missing_views) for p in gaps] == [(2, (0, 1)), (3, (0,)), (4, (1,))]
    assert gaps[0].frames == () and gaps[0].part_id == "T00000002"


def test_huge_jump_is_counted_not_tracked():
    a = PartAssembler(n_views=1, timeout_s=1.0, max_open_parts=8, clock=Clock())
    a.add(frame(0, 0))
    a.add(frame(1000, 0))
    assert a.stats.gap_parts == 4 and a.stats.lost_triggers == 995


def test_max_parts_accepts_only_the_first_triggers():
    a = PartAssembler(n_views=2, timeout_s=1.0, max_parts=2, clock=Clock())
    out = []
    for f in [frame(0, 0), frame(1, 0), frame(2, 0), frame(0, 1), frame(1, 1), frame(2, 1)]:
        out += a.add(f)
    assert [p.trigger_seq for p in out] == [0, 1] and a.open_parts == 0 and a.stats.ignored_frames == 2


def test_time_pairing_survives_a_lost_frame():
    """Free-running cameras: B loses the frame of part 2; pairing by capture time keeps every later view
    in its own part (pairing by frame numbers would shift B by one part from there on)."""
    import random

    from rtvp_edge.assembler import TimePairing

    rng = random.Random(0)
    period, offsets = 0.5, {"A": 0.0, "B": 0.0, "R": 0.25}  # R shoots after the turn
    frames = []
    for k in range(8):
        for view, cam in enumerate(("A", "B", "R")):
            if cam == "B" and k == 2:
                continue
            t = 10.0 + k * period + offsets[cam] + rng.uniform(-0.02, 0.02)
            frames.append(Frame(cam, view, -1, t, IMG, part_id=f"P{k}", monotonic=t))
    # each camera's frames in order, cameras interleaved as the assembler drains them
    frames.sort(key=lambda f: (f.monotonic // 1.0, f.camera_id))
    pairing = TimePairing(window_s=0.1, offsets_s=offsets)
    a = PartAssembler(n_views=3, timeout_s=5.0, clock=Clock())
    parts = []
    for f in frames:
        parts += a.add(pairing.assign(f))
    parts += a.flush("end")
    assert len(parts) == 8
    for p in parts:
        assert len({f.part_id for f in p.frames}) == 1  # never views of two containers in one part
    incomplete = [p for p in parts if p.missing_views]
    assert [(p.frames[0].part_id, p.missing_views) for p in incomplete] == [("P2", (1,))]
