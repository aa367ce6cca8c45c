"""``run_listen``: a person-readable line per verdict/status/metrics, from a real broker."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from rtvp_edge.listen import format_event, metrics_summary, run_listen
from rtvp_edge.mqtt import EventPublisher, MqttConfig, MqttConnectError, StationIds
from tests.mqtt_broker import MODEL_INFO, MosquittoBroker, find_mosquitto, free_port, make_verdict

pytestmark = pytest.mark.mqtt


def _config(broker, tmp_path):
    return MqttConfig(
        broker="external", host=broker.host, port=broker.port, outbox={"path": tmp_path / "o.sqlite"}
    )


def test_listen_prints_verdicts_status_and_metrics(mosquitto, tmp_path):
    cfg = _config(mosquitto, tmp_path)
    out = io.StringIO()
    result = {}
    listener = threading.Thread(
        target=lambda: result.setdefault(
            "n", run_listen(cfg, cfg.topic_root, out=out, max_messages=8, timeout=20)
        )
    )
    listener.start()
    deadline = time.monotonic() + 10
    while "listening" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    pub = EventPublisher(cfg, StationIds("plant1", "glass", "st1"), MODEL_INFO).start()  # status online: 1
    pub.publish_verdict(make_verdict(0))  # OK: 1 message
    pub.publish_verdict(make_verdict(2))  # NG with 2 defects: 3 messages
    pub.publish_verdict(make_verdict(3, n_defects=0, incomplete=True))  # 1 message
    while pub.outbox_depth():  # metrics (QoS 0, not queued) would otherwise overtake queued verdicts
        time.sleep(0.01)
    pub.publish_metrics(
        {"parts_per_s": 4.91, "cameras": {"L1": {"state": "STREAMING", "fps": 5.0, "dropped": 0}}}
    )
    pub.stop(flush_timeout=5)  # status offline: 1 -> 8 in all
    listener.join(timeout=30)
    assert result["n"] == 8, out.getvalue()
    lines = out.getvalue().splitlines()[1:]
    assert len(lines) == 6  # defect events are folded into their verdict's line
    assert "status ONLINE" in lines[0] and "rtvpnet_s test-1 int8" in lines[0]
    assert "C000000  OK" in lines[1] and "seq 1" in lines[1]
    assert (
        "C000002  NG" in lines[2]
        and "L2 black spot 0.51 (11,20,62,80); L1 oil 0.50 (10,20,60,80)" in lines[2]
    )  # highest first
    assert "[150 ms]" in lines[2]
    assert "C000003  INCOMPLETE" in lines[3] and "missing views 4,5" in lines[3]
    assert "metrics  0 parts 4.91/s  cameras 1/1 streaming" in lines[4], lines[4]
    assert len(lines[4]) < 120  # short: the full figures are in the payload
    assert "status OFFLINE  (clean stop)" in lines[5]


def test_format_marks_redeliveries_and_unreadable_payloads():
    line = format_event(
        "rtvp/a/b/c/verdict", b'{"kind": "verdict", "verdict": "OK", "part_id": "P1", "seq": 4}', True
    )
    assert "P1" in line and line.endswith("(again)")
    assert "unreadable payload (5 bytes)" in format_event("rtvp/a/b/c/verdict", b"\xff\xfeabc")
    assert format_event("rtvp/a/b/c/defect", b'{"kind": "defect"}') is None


def _ng(scores):
    defects = [
        {"camera_id": f"R{i}", "class_name": "stone", "score": sc, "box": [1, 2, 3, 4]}
        for i, sc in enumerate(scores)
    ]
    return json.dumps(
        {"kind": "verdict", "verdict": "NG", "part_id": "P9", "seq": 1, "defects": defects}
    ).encode()


def test_verdict_line_lists_the_highest_scored_defects_and_counts_the_rest():
    payload = _ng([0.05, 0.91, 0.40, 0.03, 0.77, 0.12])
    line = format_event("rtvp/a/b/c/verdict", payload)  # default: the three highest
    assert "R1 stone 0.91" in line and "R4 stone 0.77" in line and "R2 stone 0.40" in line
    assert (
        "0.12" not in line
        and "0.05" not in line
        and line.index("0.91") < line.index("0.77") < line.index("0.40")
    )
    assert line.endswith("+ 3 more")
    line = format_event("rtvp/a/b/c/verdict", payload, max_defects=None, min_score=0.1)
    assert "0.12" in line and "0.05" not in line and line.endswith("+ 2 under 0.10")
    line = format_event("rtvp/a/b/c/verdict", payload, max_defects=0)
    assert "stone" not in line and line.endswith("+ 6 more")
    assert "more" not in format_event("rtvp/a/b/c/verdict", _ng([0.5, 0.6]))


@pytest.mark.parametrize(("flag", "value", "message"), [("--show", "-1", "--show must be >= 0, got -1"),
                                                        ("--min-score", "1.5", "--min-score must be between 0 and 1, got 1.5")])  # fmt: skip
def test_listen_flags_out_of_range_are_named(tmp_path, capsys, flag, value, message):
    from rtvp_edge import cli

    line = tmp_path / "line.yaml"  # never read: the flag is refused first
    assert cli.main(["listen", "--line", str(line), flag, value]) == 2
    assert message in capsys.readouterr().err


def test_listen_errors_are_clear(mosquitto_factory, tmp_path, monkeypatch):
    port = free_port()
    with pytest.raises(
        MqttConnectError, match=f"cannot reach MQTT broker 127.0.0.1:{port}.*is the line running"
    ):
        run_listen(MqttConfig(port=port), "rtvp/a/b/c", out=io.StringIO(), timeout=1)
    broker = mosquitto_factory(users={"mes": "right"})
    monkeypatch.setenv("RTVP_TEST_PW", "wrong")
    cfg = MqttConfig(broker="external", port=broker.port, username="mes", password_env="RTVP_TEST_PW")
    with pytest.raises(MqttConnectError, match="(?i)refused the connection: not authorized"):
        run_listen(cfg, "rtvp/a/b/c", out=io.StringIO(), timeout=1)


def _wait_for_text(out: io.StringIO, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.02)


def _listen_in_thread(cfg, out, **kwargs):
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("n", run_listen(cfg, cfg.topic_root, out=out, **kwargs)), daemon=True
    )
    thread.start()
    return thread, result


def test_listen_waits_for_the_broker_to_come_up(tmp_path):
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(workdir=tmp_path / "broker", binary=binary)  # configured, not started
    cfg = _config(broker, tmp_path)
    out = io.StringIO()
    thread, result = _listen_in_thread(cfg, out, wait_for_broker=120, max_messages=1, timeout=120)
    _wait_for_text(out, f"waiting for the MQTT broker at 127.0.0.1:{broker.port}")
    assert thread.is_alive()  # still waiting, not failed
    broker.start()
    try:
        _wait_for_text(out, "listening on")
        pub = EventPublisher(cfg, StationIds("plant1", "glass", "st1"), MODEL_INFO).start()  # status online
        thread.join(timeout=60)
        pub.stop(flush_timeout=30)
    finally:
        broker.stop()
    assert result["n"] == 1 and "status ONLINE" in out.getvalue()


def test_listen_without_waiting_fails_at_once_with_the_address():
    port = free_port()
    with pytest.raises(MqttConnectError, match=f"cannot reach MQTT broker 127.0.0.1:{port}"):
        run_listen(MqttConfig(port=port), "rtvp/a/b/c", out=io.StringIO(), wait_for_broker=0)


def test_listen_exits_after_the_stations_clean_stop_not_an_earlier_retained_one(mosquitto, tmp_path):
    cfg = _config(mosquitto, tmp_path)
    station = StationIds("plant1", "glass", "st1")
    # An earlier run left its retained "offline, clean stop": a new listener receives it first.
    EventPublisher(cfg, station, MODEL_INFO).start().stop(flush_timeout=30)
    out = io.StringIO()
    thread, result = _listen_in_thread(cfg, out, until_offline=True, timeout=300)
    _wait_for_text(out, "status OFFLINE")  # the retained one
    assert thread.is_alive()
    pub = EventPublisher(cfg, station, MODEL_INFO).start()
    pub.publish_verdict(make_verdict(1))
    pub.stop(flush_timeout=30)
    thread.join(timeout=60)
    assert not thread.is_alive(), "listen did not exit after the clean stop"
    text = out.getvalue()
    assert "C000001  NG" in text and text.count("status OFFLINE") == 2 and "stopped cleanly: done" in text


def test_metrics_summary_is_short_and_skips_empty_fields():
    line = metrics_summary(
        {
            "uptime_s": 61.2,
            "parts": 12,
            "verdicts": {"OK": 10, "NG": 2, "INCOMPLETE": 0},
            "parts_per_s": 3.912,
            "latency_ms": {"trigger_to_verdict": {"p50": 150.4, "p99": 210.0, "n": 12}},
            "cameras": {
                "L1": {"state": "STREAMING", "fps": 4.0, "dropped": 0},
                "R2": {"state": "BACKOFF", "fps": 0.0, "dropped": 3},
            },
            "queues": {"parts": 0, "results": 0, "open_parts": 1},
            "sink_errors": {},
            "stage_errors": {},
            "outbox_depth": 0,
            "outbox_dropped_total": 0,
            "broker_state": "connected",
            "reconnects": 0,
        }
    )
    assert line == (
        "12 parts 3.91/s (10 OK, 2 NG)  latency p50 150 p99 210 ms  "
        "cameras 1/2 streaming (R2 BACKOFF), 3 frames dropped"
    )
    assert "outbox 5" in metrics_summary({"parts": 0, "outbox_depth": 5, "broker_state": "connecting"})
