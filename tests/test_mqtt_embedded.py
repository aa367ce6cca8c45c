"""The embedded amqtt broker (``broker: embedded``): paho QoS 1 round trip with the publisher."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest

from rtvp_edge.messaging.broker import BrokerError, EmbeddedBroker, broker_for
from rtvp_edge.messaging.config import MqttConfig
from rtvp_edge.messaging.events import validate_payload
from rtvp_edge.messaging.publisher import EventPublisher
from rtvp_edge.station import StationIds
from tests.mqtt_broker import MODEL_INFO, free_port, make_verdict


def _subscriber(port: int, topic: str):
    received = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="embedded-sub")
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: received.append((m.topic, json.loads(m.payload), m.qos))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert subscribed.wait(10)
    return client, received


def test_publisher_round_trips_through_embedded_broker(tmp_path):
    port = free_port()
    config = MqttConfig(broker="embedded", port=port, outbox={"path": tmp_path / "o.sqlite"})
    with broker_for(config) as broker:
        assert isinstance(broker, EmbeddedBroker)
        sub, received = _subscriber(port, "rtvp/#")
        pub = EventPublisher(config, StationIds("demo", "glass", "st1"), MODEL_INFO).start()
        assert pub.connected
        expected = 0
        for i in range(10):
            expected += len(pub.publish_verdict(make_verdict(i)))
        assert pub.stop(flush_timeout=30) == 0  # every event acknowledged (PUBACK) by amqtt
        deadline = time.monotonic() + 30
        while len([r for r in received if r[1].get("seq")]) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        sub.disconnect()
        sub.loop_stop()
    events = [p for _, p, _ in received if "seq" in p]
    assert [p["seq"] for p in events] == list(range(1, expected + 1))
    assert all(qos == 1 for t, _, qos in received if not t.endswith("/status"))
    for _, payload, _ in received:
        validate_payload(payload)
    states = [p["state"] for t, p, _ in received if t.endswith("/status")]
    assert states[0] == "online" and states[-1] == "offline"


def test_port_in_use_is_a_clear_error():
    port = free_port()
    with EmbeddedBroker("127.0.0.1", port), pytest.raises(BrokerError, match=f"127.0.0.1:{port}"):
        EmbeddedBroker("127.0.0.1", port).start()
