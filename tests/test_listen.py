"""``run_listen``: a person-readable line per verdict/status/metrics, from a real broker."""

from __future__ import annotations

import io
import threading
import time

import pytest

from rtvp_edge.listen import format_event, run_listen
from rtvp_edge.mqtt import EventPublisher, MqttConfig, MqttConnectError, StationIds
from tests.mqtt_broker import MODEL_INFO, free_port, make_verdict

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
    pub.publish_metrics({"parts_per_s": 4.91, "cameras": {"L1": {"fps": 5.0, "dropped": 0}}})  # 1
    pub.stop(flush_timeout=5)  # status offline: 1 -> 8 in all
    listener.join(timeout=30)
    assert result["n"] == 8, out.getvalue()
    lines = out.getvalue().splitlines()[1:]
    assert len(lines) == 6  # defect events are folded into their verdict's line
    assert "status ONLINE" in lines[0] and "rtvpnet_s test-1 int8" in lines[0]
    assert "C000000  OK" in lines[1] and "seq 1" in lines[1]
    assert "C000002  NG" in lines[2] and "L1 oil 0.50 (10,20,60,80); L2 black spot 0.51" in lines[2]
    assert "[150 ms]" in lines[2]
    assert "C000003  INCOMPLETE" in lines[3] and "missing views 4,5" in lines[3]
    assert "metrics" in lines[4] and "parts_per_s=4.91" in lines[4] and "L1 fps=5 dropped=0" in lines[4]
    assert "status OFFLINE  (clean stop)" in lines[5]


def test_format_marks_redeliveries_and_unreadable_payloads():
    line = format_event(
        "rtvp/a/b/c/verdict", b'{"kind": "verdict", "verdict": "OK", "part_id": "P1", "seq": 4}', True
    )
    assert "P1" in line and line.endswith("(again)")
    assert "unreadable payload (5 bytes)" in format_event("rtvp/a/b/c/verdict", b"\xff\xfeabc")
    assert format_event("rtvp/a/b/c/defect", b'{"kind": "defect"}') is None


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
