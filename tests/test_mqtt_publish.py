"""EventPublisher against a real Mosquitto: delivery, order, broker restarts, SIGKILL of the publisher,
the retained status with its Last Will, and metrics."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rtvp_edge.messaging.client import build_client
from rtvp_edge.messaging.config import MqttConfig
from rtvp_edge.messaging.events import validate_payload
from rtvp_edge.messaging.publisher import EventPublisher
from rtvp_edge.station import StationIds
from tests.mqtt_broker import MODEL_INFO, Collector, make_verdict

pytestmark = pytest.mark.mqtt
STATION = StationIds("plant1", "glass", "st1")
ROOT = "rtvp/plant1/glass/st1"


def _config(broker, tmp_path: Path, **kw) -> MqttConfig:
    return MqttConfig(
        broker="external",
        host=broker.host,
        port=broker.port,
        outbox={"path": tmp_path / "outbox.sqlite"},
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        keepalive=5,
        **kw,
    )


def _first_occurrences(values):
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _expected_events(n: int) -> int:
    return sum(1 + i % 3 for i in range(n))  # make_verdict(i) has i % 3 defects


def test_every_event_arrives_in_order_and_validates(mosquitto, tmp_path):
    collector = Collector(mosquitto, f"{ROOT}/#")
    pub = EventPublisher(_config(mosquitto, tmp_path), STATION, MODEL_INFO).start()
    assert pub.state == "connected"
    n = 40
    for i in range(n):
        pub.publish_verdict(make_verdict(i))
    assert collector.wait_for(
        lambda c: len(c.payloads("defect")) + len(c.payloads("verdict")) >= _expected_events(n)
    )
    assert pub.publish_metrics({"parts_per_s": 5.0, "inference_ms_p50": 40.0})
    assert collector.wait_for(lambda c: c.payloads("metrics"))
    assert pub.stop(flush_timeout=30) == 0
    assert collector.wait_for(lambda c: [s["state"] for s in c.payloads("status")][-1:] == ["offline"])
    collector.close()

    for _topic, payload, _ in collector.messages:
        validate_payload(payload)
    events = [p for p in collector.payloads() if "seq" in p]
    assert [p["seq"] for p in events] == list(range(1, _expected_events(n) + 1))  # no loss, no reorder
    verdicts = collector.payloads("verdict")
    assert [v["part_id"] for v in verdicts] == [f"C{i:06d}" for i in range(n)]
    assert [v["verdict"] for v in verdicts[:3]] == ["OK", "NG", "NG"]
    metrics = collector.payloads("metrics")[0]["metrics"]
    assert metrics["parts_per_s"] == 5.0 and metrics["broker_state"] == "connected"
    statuses = [
        (json.loads(p)["state"], retain) for t, p, retain in collector.messages if t.endswith("/status")
    ]
    assert statuses[0][0] == "online" and statuses[-1][0] == "offline"
    # A subscriber arriving later gets the retained status: offline after the clean stop.
    late = Collector(mosquitto, f"{ROOT}/status", persistent=False)
    assert late.wait_for(lambda c: c.messages, timeout=30)
    topic, payload, retained = late.messages[0]
    assert (
        retained
        and json.loads(payload)["state"] == "offline"
        and json.loads(payload)["reason"] == "clean stop"
    )
    late.close()


def test_broker_restart_mid_run_loses_nothing_and_keeps_order(mosquitto, tmp_path):
    collector = Collector(mosquitto, [f"{ROOT}/verdict", f"{ROOT}/defect"])
    pub = EventPublisher(_config(mosquitto, tmp_path), STATION, MODEL_INFO).start()
    n = 150
    published = threading.Event()

    def line():  # the pipeline keeps deciding parts while the broker is away
        for i in range(n):
            pub.publish_verdict(make_verdict(i))
            time.sleep(0.002)
        published.set()

    thread = threading.Thread(target=line)
    thread.start()
    assert collector.wait_for(lambda c: len(c.payloads("verdict")) >= 30)
    mosquitto.stop()
    # the publisher notices the lost connection (a state to wait for, not a time)
    deadline = time.monotonic() + 30
    while (pub.connected or "retrying" not in pub.state) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pub.connected and "retrying" in pub.state
    mosquitto.start()
    thread.join()
    assert published.is_set()
    total = _expected_events(n)
    assert collector.wait_for(
        lambda c: len(_first_occurrences(p["event_id"] for p in c.payloads())) >= total, 30
    )
    assert pub.stop(flush_timeout=30) == 0
    assert pub.reconnects >= 1
    collector.close()
    payloads = collector.payloads()
    seqs = _first_occurrences(p["seq"] for p in payloads)
    assert seqs == list(range(1, total + 1))
    # A resent event is the same event: same id for the same seq.
    ids = {}
    for p in payloads:
        assert ids.setdefault(p["seq"], p["event_id"]) == p["event_id"]


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from rtvp_edge.messaging.config import MqttConfig
    from rtvp_edge.messaging.publisher import EventPublisher
    from rtvp_edge.station import StationIds
    from tests.mqtt_broker import MODEL_INFO, make_verdict
    cfg = MqttConfig.model_validate_json({config!r})
    first, count, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    pub = EventPublisher(cfg, StationIds("plant1", "glass", "st1"), MODEL_INFO).start()
    for i in range(first, first + count):
        pub.publish_verdict(make_verdict(i))
        print("queued", i, flush=True)
        time.sleep(delay)
    print("done", flush=True)
    if sys.argv[4] == "drain":
        print("left", pub.stop(flush_timeout=20), flush=True)
    else:
        time.sleep(600)  # wait to be killed
    """
)


def _spawn(config: MqttConfig, first: int, count: int, delay: float, mode: str) -> subprocess.Popen:
    script = PUBLISHER_SCRIPT.format(
        root=str(Path(__file__).resolve().parents[1]), config=config.model_dump_json()
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(first), str(count), str(delay), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen, prefix: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            raise AssertionError(f"publisher exited {proc.returncode}: {proc.stderr.read()}")
    raise AssertionError(f"publisher did not print {prefix!r} in time")


def _outbox_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()


def test_sigkill_then_restart_delivers_what_the_outbox_held(mosquitto, tmp_path):
    config = _config(mosquitto, tmp_path)
    collector = Collector(mosquitto, f"{ROOT}/#")
    n = 120
    # 1) killed while publishing: the broker is up, some events are acknowledged, some in flight.
    proc = _spawn(config, 0, n, 0.003, "wait")
    assert collector.wait_for(lambda c: len(c.payloads("verdict")) >= 20, 30)
    proc.kill()
    proc.wait()
    # The Last Will: the broker sees the dead connection and publishes the retained "offline".
    assert collector.wait_for(lambda c: any(s["state"] == "offline" for s in c.payloads("status")), 10)
    will = [s for s in collector.payloads("status") if s["state"] == "offline"][0]
    assert will["reason"] == "connection lost (last will)"
    validate_payload(will)
    late = Collector(mosquitto, f"{ROOT}/status", persistent=False)  # the will is retained
    assert late.wait_for(lambda c: c.messages, timeout=30)
    assert late.messages[0][2] and json.loads(late.messages[0][1])["reason"] == "connection lost (last will)"
    late.close()
    # 2) killed with the broker down: everything it decided is only in the outbox.
    mosquitto.stop()
    proc = _spawn(config, n, 30, 0.0, "wait")
    _read_until(proc, "done")
    proc.kill()
    proc.wait()
    held = _outbox_rows(tmp_path / "outbox.sqlite")
    assert held >= _expected_events(n + 30) - _expected_events(n)
    # 3) restarted: it sends what the outbox held, then stops cleanly with nothing left.
    mosquitto.start()
    proc = _spawn(config, 0, 0, 0.0, "drain")
    assert _read_until(proc, "left").split() == ["left", "0"]
    proc.wait(timeout=30)
    # Every event ever written to the outbox arrives (what the killed process had not yet written
    # was never an event): seq 1..last_seq, with the parts in the order they were decided.
    total = _outbox_meta(tmp_path / "outbox.sqlite", "last_seq")
    assert collector.wait_for(lambda c: len(set(p["seq"] for p in c.payloads() if "seq" in p)) >= total, 20)
    collector.close()
    written = [p for p in collector.payloads() if "seq" in p]
    seqs = _first_occurrences(p["seq"] for p in written)
    assert seqs == list(range(1, total + 1))
    parts = _first_occurrences(p["part_id"] for p in written if p["kind"] == "verdict")
    killed_at = parts.index(f"C{n:06d}")
    assert killed_at >= 20
    assert parts == [f"C{i:06d}" for i in range(killed_at)] + [f"C{i:06d}" for i in range(n, n + 30)]
    assert _outbox_rows(tmp_path / "outbox.sqlite") == 0


def _outbox_meta(path: Path, key: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]
    finally:
        db.close()


def test_broker_down_at_start_buffers_then_delivers(mosquitto, tmp_path):
    mosquitto.stop()
    pub = EventPublisher(_config(mosquitto, tmp_path, connect_timeout_s=0.5), STATION, MODEL_INFO).start()
    assert not pub.connected and "unreachable" in pub.state
    for i in range(5):
        pub.publish_verdict(make_verdict(i, n_defects=0))
    assert pub.outbox_depth() == 5
    assert not pub.publish_metrics({"parts_per_s": 1.0}) and pub.metrics_skipped == 1
    mosquitto.start()
    collector = Collector(mosquitto, f"{ROOT}/verdict")
    assert collector.wait_for(lambda c: len(c.payloads()) >= 5, 20)
    assert pub.stop(flush_timeout=30) == 0
    collector.close()
    assert [p["seq"] for p in collector.payloads()] == [1, 2, 3, 4, 5]


def test_injected_client_and_restart_continues_the_sequence(mosquitto, tmp_path):
    config = _config(mosquitto, tmp_path, client_id="injected-1")
    client = build_client(config, "injected-1")
    pub = EventPublisher(config, STATION, MODEL_INFO, client=client).start()
    assert pub.publish_verdict(make_verdict(0, n_defects=1)) == [1, 2]
    assert pub.stop(flush_timeout=30) == 0
    # A new process on the same outbox: the station sequence continues, it never restarts at 1.
    pub = EventPublisher(config, STATION, MODEL_INFO).start()
    assert pub.publish_verdict(make_verdict(1, n_defects=0)) == [3]
    assert pub.stop(flush_timeout=30) == 0


def test_full_outbox_drops_oldest_loudly(mosquitto, tmp_path, caplog):
    mosquitto.stop()
    config = _config(mosquitto, tmp_path, connect_timeout_s=0.2)
    config = config.model_copy(update={"outbox": config.outbox.model_copy(update={"max_events": 5})})
    pub = EventPublisher(config, STATION, MODEL_INFO).start()
    with caplog.at_level("ERROR"):
        for i in range(8):
            pub.publish_verdict(make_verdict(i, n_defects=0))
    assert "dropped the 1 oldest" in caplog.text and pub.outbox.dropped_total == 3
    mosquitto.start()
    collector = Collector(mosquitto, f"{ROOT}/#")
    assert collector.wait_for(lambda c: len(c.payloads("verdict")) >= 5, 20)
    assert pub.publish_metrics({})
    assert collector.wait_for(lambda c: c.payloads("metrics"))
    pub.stop(flush_timeout=5)
    collector.close()
    assert [p["seq"] for p in collector.payloads("verdict")] == [4, 5, 6, 7, 8]  # the gap is visible
    assert collector.payloads("metrics")[0]["metrics"]["outbox_dropped_total"] == 3
    online = [p for p in collector.payloads("status") if p["state"] == "online"][-1]
    assert online["outbox_dropped_total"] == 3


def _read_packet(conn) -> tuple[int, bytes]:
    """One MQTT control packet: (packet type, body)."""
    header = conn.recv(1)
    if not header:
        raise ConnectionError("closed")
    length, shift = 0, 0
    while True:  # variable-length "remaining length"
        byte = conn.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return header[0] >> 4, body


def test_in_flight_window_is_bounded(tmp_path):
    """Against a 'broker' that accepts the connection but never acknowledges, the publisher puts at most
    max_inflight events on the wire, and keeps the rest in the outbox."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    publishes = []

    def silent_broker():
        conn, _ = server.accept()
        conn.settimeout(60.0)  # reads until the publisher disconnects (the end of the test)
        assert _read_packet(conn)[0] == 1  # CONNECT
        conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK, accepted
        try:
            while True:
                kind, body = _read_packet(conn)
                if kind == 3:  # PUBLISH: topic length (2 bytes) + topic
                    publishes.append(body[2 : 2 + int.from_bytes(body[:2], "big")].decode())
        except (TimeoutError, ConnectionError, IndexError):
            conn.close()

    thread = threading.Thread(target=silent_broker, daemon=True)
    thread.start()
    cfg = MqttConfig(broker="external", port=port, max_inflight=4, outbox={"path": tmp_path / "o.sqlite"})
    pub = EventPublisher(cfg, STATION, MODEL_INFO).start()
    for i in range(10):
        pub.publish_verdict(make_verdict(i, n_defects=0))

    def events():
        return [t for t in list(publishes) if not t.endswith("/status")]

    # Wait for the state, not a time: the window is full on the wire.
    deadline = time.monotonic() + 60
    while len(events()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pub._cond:
        handed = pub._last_handed  # the sender hands nothing more while the window is full
    assert handed == 4 and pub.outbox_depth() == 10
    pub.stop(flush_timeout=0.1)  # disconnects: the silent broker reads to the end of the stream
    thread.join(timeout=60)
    assert len(events()) == 4
    server.close()
