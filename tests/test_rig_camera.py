"""The rig as six gate-triggered cameras (rtvp_edge.messages.CameraSource)."""

import threading

import numpy as np
import pytest

from rtvp_edge.messages import CameraError, CameraSource, EndOfStream
from rtvp_edge.rig import RigConfig, SimulatedRig, render_container

CFG = RigConfig(seed=3)


def _drain(cam, max_frames=100):
    frames = []
    for _ in range(max_frames):
        try:
            f = cam.read(timeout=1.0)
        except EndOfStream:
            return frames, "eos"
        except CameraError as e:
            return frames, e
        if f is not None:
            frames.append(f)
    return frames, None


def test_six_cameras_deliver_every_part_once_with_shared_ids():
    rig = SimulatedRig(CFG, line_rate_hz=5, n_containers=3, start_index=10, realtime=False)
    cams = rig.cameras()
    assert [c.camera_id for c in cams] == ["L1", "L2", "L3", "R1", "R2", "R3"]
    assert all(isinstance(c, CameraSource) for c in cams)
    results = {}

    def run(cam):
        cam.open()
        results[cam.camera_id] = _drain(cam)
        cam.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in cams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expected = {i: render_container(CFG, i) for i in (10, 11, 12)}
    for v, cam in enumerate(cams):
        frames, end = results[cam.camera_id]
        assert end == "eos"
        assert [f.trigger_seq for f in frames] == [10, 11, 12]
        for f in frames:
            assert f.camera_id == cam.camera_id and f.view_index == v
            assert f.part_id == f"C{f.trigger_seq:06d}"
            img, gts = expected[f.trigger_seq][v]
            assert np.array_equal(f.image, img) and f.ground_truth == gts
            assert f.capture_time > 1e9 and f.monotonic > 0
    assert rig.containers_sampled == 3  # each container sampled once, shared by the six cameras
    assert rig.frames_rendered == 18


def test_realtime_triggers_follow_the_line_rate_and_the_turn():
    rig = SimulatedRig(CFG, line_rate_hz=20, n_containers=2)
    left, right = rig.camera("L2"), rig.camera("R2")
    left.open()
    right.open()
    l0, l1 = left.read(5.0), left.read(5.0)
    r0 = right.read(5.0)
    # capture stamps are the trigger schedule: one period between parts, the turn between the banks
    assert l1.monotonic - l0.monotonic == pytest.approx(1 / 20, abs=1e-6)
    assert r0.monotonic - l0.monotonic == pytest.approx(rig.turn_delay_s, abs=1e-6)
    assert l1.capture_time - l0.capture_time == pytest.approx(1 / 20, abs=1e-6)
    assert r0.trigger_seq == l0.trigger_seq == 0 and l1.trigger_seq == 1
    with pytest.raises(EndOfStream):
        left.read(5.0)
    rig.camera("L1").close()


def test_read_returns_none_until_the_next_trigger():
    rig = SimulatedRig(CFG, line_rate_hz=0.2)  # one container every 5 s
    cam = rig.camera("L1")
    cam.open()
    assert cam.read(2.0).trigger_seq == 0  # the first container is at the gate now
    assert cam.read(0.05) is None  # the next one is seconds away
    cam.close()
    with pytest.raises(CameraError, match="L1"):
        cam.read(0.05)


def test_fail_camera_kills_one_camera_and_not_the_others():
    rig = SimulatedRig(CFG, line_rate_hz=5, n_containers=4, realtime=False)
    rig.fail_camera("R2", after_parts=2)
    for c in rig.cameras():
        c.open()
    frames, err = _drain(rig.camera("R2"))
    assert [f.trigger_seq for f in frames] == [0, 1]
    assert isinstance(err, CameraError) and "R2" in str(err)
    with pytest.raises(CameraError):
        rig.camera("R2").open()  # stays dead: no recovery time given
    frames, end = _drain(rig.camera("R1"))
    assert [f.trigger_seq for f in frames] == [0, 1, 2, 3] and end == "eos"


def test_failed_camera_recovers_after_the_given_time():
    rig = SimulatedRig(CFG, line_rate_hz=5, n_containers=4, realtime=False)
    rig.fail_camera("L3", after_parts=1, recover_after_s=0.0)
    cam = rig.camera("L3")
    cam.open()
    frames, err = _drain(cam)
    assert [f.trigger_seq for f in frames] == [0] and isinstance(err, CameraError)
    cam.open()  # reconnect succeeds
    frames, end = _drain(cam)
    assert [f.trigger_seq for f in frames] == [1, 2, 3] and end == "eos"


@pytest.mark.parametrize(
    "kind,check",
    [
        ("size", lambda im: im.shape == (410, 350, 3)),
        ("gray", lambda im: im.ndim == 2),
        ("truncated", lambda im: im.shape == (410, 700, 3)),
        ("dtype", lambda im: im.dtype == np.float32),
    ],
)
def test_corrupt_frame(kind, check):
    rig = SimulatedRig(CFG, n_containers=3, realtime=False)
    rig.corrupt_frame("L1", 1, kind)
    cam = rig.camera("L1")
    cam.open()
    frames, _ = _drain(cam)
    assert frames[0].image.shape == (820, 700, 3) and frames[2].image.shape == (820, 700, 3)
    assert check(frames[1].image)


def test_drop_frame_skips_one_trigger_of_one_camera():
    rig = SimulatedRig(CFG, n_containers=4, realtime=False)
    rig.drop_frame("R3", 2)
    r3, _ = _drain(_opened(rig.camera("R3")))
    l1, _ = _drain(_opened(rig.camera("L1")))
    assert [f.trigger_seq for f in r3] == [0, 1, 3]
    assert [f.trigger_seq for f in l1] == [0, 1, 2, 3]


def _opened(cam):
    cam.open()
    return cam


def test_a_subset_of_the_cameras():
    rig = SimulatedRig(CFG, camera_ids=("top", "back"), views=(1, 4), n_containers=2, realtime=False)
    f_top = _opened(rig.camera("top")).read(1.0)
    f_back = _opened(rig.camera("back")).read(1.0)
    full = render_container(CFG, 0)
    assert (f_top.view_index, f_back.view_index) == (1, 4)
    assert np.array_equal(f_top.image, full[1][0]) and np.array_equal(f_back.image, full[4][0])
    with pytest.raises(ValueError, match="views"):
        SimulatedRig(CFG, camera_ids=("a", "b"), views=(1, 9))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="line_rate_hz"):
        SimulatedRig(CFG, line_rate_hz=0)
    with pytest.raises(ValueError, match="camera_ids"):
        SimulatedRig(CFG, camera_ids=("A", "B"))
    rig = SimulatedRig(CFG)
    with pytest.raises(KeyError, match="X9"):
        rig.fail_camera("X9", 1)
    with pytest.raises(ValueError, match="kind"):
        rig.corrupt_frame("L1", 0, "melted")
