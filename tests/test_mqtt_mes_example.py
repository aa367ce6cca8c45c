"""examples/mes_subscriber.py: de-duplicates by event id (also across its own restarts), stores verdicts
and defects, detects sequence gaps; and runs as a program against a real broker."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from rtvp_edge.messaging.events import RunningModel, StationIds, verdict_events
from tests.mqtt_broker import MODEL_INFO, make_verdict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mes_subscriber.py"
STATION = StationIds("plant1", "glass", "st1")
ROOT = "rtvp/plant1/glass/st1"


def _load_example():
    spec = importlib.util.spec_from_file_location("mes_subscriber", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _messages(n: int, first_seq: int = 1) -> list[tuple[str, bytes]]:
    """Encoded verdict/defect events for parts 0..n-1 with consecutive seq, as the outbox would send them."""
    out, seq = [], first_seq
    for i in range(n):
        for event in verdict_events(make_verdict(i), STATION, RunningModel.model_validate(MODEL_INFO), ROOT):
            event.payload["seq"] = seq
            seq += 1
            out.append((event.topic, json.dumps(event.payload).encode()))
    return out


def test_store_deduplicates_and_detects_gaps(tmp_path):
    mes = _load_example()
    store = mes.MesStore(tmp_path / "mes.sqlite")
    msgs = _messages(6)  # 6 verdicts + 0+1+2+0+1+2 defects = 12 events
    assert [store.handle(t, p) for t, p in msgs[:4]] == ["stored"] * 4
    assert store.handle(*msgs[2]) == "duplicate"  # redelivery (same event id)
    lost = msgs[4:6]  # e.g. dropped from a full outbox upstream
    for t, p in msgs[6:]:
        store.handle(t, p)
    assert store.gaps() == [("plant1/glass/st1", 5, 6)]
    store.handle(*lost[0])  # a late arrival closes part of the gap
    assert store.gaps() == [("plant1/glass/st1", 6, 6)]
    store.close()
    # After a restart of the MES subscriber, a redelivered event is still recognised.
    store = mes.MesStore(tmp_path / "mes.sqlite")
    assert store.handle(*msgs[0]) == "duplicate"
    assert store.counter("duplicates") == 2
    assert store.db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 6
    assert store.db.execute("SELECT COUNT(*) FROM defects").fetchone()[0] == 5  # one defect event was lost
    assert store.handle("x/verdict", b"not json") == "ignored"
    store.close()


@pytest.mark.mqtt
def test_example_program_against_a_broker(mosquitto, tmp_path):
    db = tmp_path / "mes.sqlite"
    msgs = _messages(5)  # 5 verdicts + 0+1+2+0+1 defects = 9 events
    sent = msgs + [msgs[3], msgs[0]]  # two redeliveries
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", str(mosquitto.port), "--db", str(db),
         "--max-messages", str(len(sent)), "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # Wait until its persistent session exists, then publish (QoS 1) as the edge box would.
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fake-edge")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    deadline = time.monotonic() + 20
    while "Sending SUBACK to mes-subscriber" not in mosquitto.log_tail(400):
        assert time.monotonic() < deadline, mosquitto.log_tail()
        time.sleep(0.05)
    for topic, payload in sent:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    output, _ = proc.communicate(timeout=40)
    client.disconnect()
    client.loop_stop()
    assert proc.returncode == 0, output
    assert "11 messages, 5 verdicts stored, 2 duplicates ignored, open gaps: none" in output, output
    con = sqlite3.connect(db)
    parts = [r[0] for r in con.execute("SELECT part_id FROM verdicts ORDER BY seq")]
    assert parts == [f"C{i:06d}" for i in range(5)]
    assert con.execute("SELECT COUNT(*) FROM defects").fetchone()[0] == 4
    assert con.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0
    con.close()


@pytest.mark.mqtt
def test_example_default_database_goes_where_git_ignores_it(mosquitto, tmp_path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "--port", str(mosquitto.port), "--timeout", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "var" / "mes.sqlite").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "var/mes.sqlite"], cwd=EXAMPLE.parents[1], capture_output=True
    )
    assert ignored.returncode == 0, "var/mes.sqlite is not git-ignored"
