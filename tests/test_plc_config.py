"""The ``plc:`` section is validated like the rest of the line file; servers that cannot start are a clear
error naming the key, exit status 2; the PlcStation's deadline logic on its own (no servers)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from plc_helpers import free_port, line_file, recorded_line, wait_until
from test_backends import make_toy_bundle

from rtvp_edge import cli
from rtvp_edge.config import ConfigError, load_line_config
from rtvp_edge.messages import Detection, Frame, PartVerdict, ViewResult
from rtvp_edge.messaging.plc.station import PlcStation

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("plc-cfg") / "bundle")


def test_missing_certificate_names_the_key(tmp_path, bundle):
    rec = recorded_line(tmp_path, 1, set())
    plc = (
        "  opcua:\n    port: 4841\n    certificate: nowhere/server.der\n    private_key: nowhere/key.pem\n"
        "    trusted_clients: nowhere\n    users: [{username: plc, password_env: X_PLC_PW}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_line_config(line_file(tmp_path, bundle, rec, plc, None))
    assert "plc.opcua: certificate: no such file or folder" in str(e.value)
    assert "line.yaml:" in str(e.value)


@pytest.mark.parametrize(
    ("plc", "expected"),
    [
        ("  modbus: {port: 5020, prot: 1}\n", "plc.modbus.prot: unknown key"),
        ("  reject_deadline_ms: -5\n  modbus: {port: 5020}\n", "plc.reject_deadline_ms: Input should be greater"),
        ("  opcua: {port: 4840, security_policies: [None]}\n", "sends passwords unencrypted"),
        ("  heartbeat_ms: 100\n", "configure opcua and/or modbus"),
        ("  opcua: {port: 4840, security_policies: [None], allow_anonymous: true, users: []}\n"
         "  modbus: {port: 4840, host: 0.0.0.0}\n", "opcua.port and modbus.port are both 4840"),
    ],
)  # fmt: skip
def test_bad_plc_sections_are_refused_with_the_key(tmp_path, bundle, plc, expected):
    rec = recorded_line(tmp_path, 1, set())
    with pytest.raises(ConfigError) as e:
        load_line_config(line_file(tmp_path, bundle, rec, plc, None))
    assert expected in str(e.value)


def test_port_in_use_is_exit_2_naming_the_key(tmp_path, bundle, capsys):
    rec = recorded_line(tmp_path, 1, set())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = line_file(tmp_path, bundle, rec, f"  modbus: {{host: 127.0.0.1, port: {port}}}\n", None)
        code = cli.main(["run", "--line", str(line), "--parts", "1", "--no-mqtt", "--no-live"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"plc.modbus.port: cannot listen on 127.0.0.1:{port}: address already in use" in err


def test_unset_password_variable_is_exit_2_naming_the_key(tmp_path, bundle, capsys, monkeypatch):
    monkeypatch.delenv("X_UNSET_PLC_PW", raising=False)
    rec = recorded_line(tmp_path, 1, set())
    plc = (
        f"  opcua:\n    host: 127.0.0.1\n    port: {free_port()}\n    security_policies: [None]\n"
        "    allow_anonymous: true\n    users: [{username: plc, password_env: X_UNSET_PLC_PW}]\n"
    )
    code = cli.main(
        ["run", "--line", str(line_file(tmp_path, bundle, rec, plc, None)), "--no-mqtt", "--no-live"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "plc.opcua.users" in err and "X_UNSET_PLC_PW" in err


# -- PlcStation alone ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.results, self.alarms = [], []
        self.lock = threading.Lock()

    def present(self, r) -> None:
        with self.lock:
            self.results.append(r)

    def set_alarm(self, code, text) -> None:
        self.alarms.append((code, text))


def frame(seq: int) -> Frame:
    return Frame("A", 0, seq, 0.0, np.zeros((2, 2, 3), np.uint8), part_id=f"P{seq}")


def verdict(seq: int, v: str, dets=()) -> PartVerdict:
    return PartVerdict(f"P{seq}", seq, v, (ViewResult("A", 0, seq, 0.0, tuple(dets)),))


def test_station_deadline_late_verdict_and_in_time_pass():
    st = PlcStation(["oil", "bubble"], reject_deadline_ms=50)
    rec = Recorder()
    st.add_endpoint(rec)
    st.start()
    try:
        st.on_frame(frame(0))  # in time: decided OK before its deadline -> PASS
        v0 = st.on_verdict(verdict(0, "OK"))
        assert v0.plc["signal"] == "PASS" and v0.plc["late"] is False
        st.on_frame(frame(1))  # no verdict: the deadline rejects it
        wait_until(lambda: len(rec.results) == 2, what="deadline result")
        r = rec.results[1]
        assert (r.verdict, r.reject, r.reason, r.part_id, r.trigger_seq) == (
            "DEADLINE",
            True,
            "deadline",
            "P1",
            1,
        )
        assert r.trigger_to_signal_ms >= 50
        late = st.on_verdict(verdict(1, "OK"))  # late: the PLC is not told again; MES gets both facts
        assert late.verdict == "OK" and late.plc["signal"] == "REJECT" and late.plc["late"] is True
        assert len(rec.results) == 2
        st.on_frame(frame(2))  # NG decided in time, with per-class counts and the top class
        dets = [Detection(1, "bubble", 0.9, (0, 0, 1, 1)), Detection(0, "oil", 0.6, (0, 0, 1, 1))]
        st.on_verdict(verdict(2, "NG", dets))
        st.on_frame(frame(3))  # its deadline comes after 0's and 2's would have: they were not re-signalled
        wait_until(lambda: len(rec.results) == 4, what="deadline of part 3")
    finally:
        st.stop()
    ng = rec.results[2]
    assert (ng.verdict, ng.reject, ng.reason, ng.class_counts, ng.top_class) == (
        "NG",
        True,
        "defect",
        (1, 1),
        "bubble",
    )
    assert [r.trigger_seq for r in rec.results] == [0, 1, 2, 3] and rec.results[3].reason == "deadline"
    assert [r.result_seq for r in rec.results] == [1, 2, 3, 4]
    assert st.stats["signalled_pass"] == 1 and st.stats["deadline"] == 2 and st.stats["late_verdicts"] == 1


def test_station_plc_trigger_without_camera_frames_is_rejected_by_deadline():
    st = PlcStation(["oil"], reject_deadline_ms=30, trigger="plc")
    rec = Recorder()
    st.add_endpoint(rec)
    st.start()
    try:
        st.on_plc_trigger()  # a container passed the PLC's gate; no camera ever saw it
        wait_until(lambda: rec.results, what="deadline result")
        st.on_frame(frame(0))  # the cameras' trigger pairs with the PLC's (its clock started first)
        late = st.on_verdict(verdict(0, "OK"))
    finally:
        st.stop()
    (r,) = rec.results
    assert (r.verdict, r.reject, r.reason) == ("DEADLINE", True, "deadline")
    assert late.plc["late"] is True and late.plc["signal"] == "REJECT"


def test_station_alarm_from_camera_and_model_status():
    st = PlcStation(["oil"])
    rec = Recorder()
    st.add_endpoint(rec)
    st.on_status("camera/L2", "BACKOFF", "link down")
    st.on_status("inference", "ERROR", "device lost")
    assert st.alarm() == (1 | 2, "camera/L2: link down; model: device lost")
    st.on_status("camera/L2", "STREAMING", "")
    st.on_verdict(verdict(0, "OK"))  # a verdict without an inference failure: the model is back
    assert st.alarm() == (0, "") and rec.alarms[-1] == (0, "")
