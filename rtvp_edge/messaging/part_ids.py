"""Part ids from the PLC over MQTT (``assembly.part_id: plc``): the PLC publishes one message per gate
trigger and the part assembler looks the id up when it emits the part (``PartAssembler(resolve_part_id=...)``).

Lives in the messaging wing because it holds a network client; the assembler only sees a callable.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

from rtvp_edge.messaging.client import build_client
from rtvp_edge.messaging.config import MqttConfig

log = logging.getLogger(__name__)


class PlcPartIds:
    """Part ids from the PLC: subscribes to ``topic`` on the line's broker, where the PLC publishes one
    JSON message per gate trigger, ``{"trigger_seq": 1234, "part_id": "B7-000123"}``.

    Used as ``PartAssembler(resolve_part_id=plc.resolve)``. A part whose id has not arrived when it is
    emitted keeps its trigger-derived id and the miss is counted (``missing``), so an absent PLC never
    blocks the line. Thread-safe (paho's network thread writes, the assembler thread reads).

    Args:
        mqtt_config: the line's ``mqtt:`` section (broker, TLS, credentials).
        topic: the PLC's topic.
        client_id: MQTT client id of the subscription.
        keep: how many recent trigger -> part id entries are kept.
    """

    def __init__(self, mqtt_config: MqttConfig, topic: str, client_id: str, keep: int = 4096) -> None:
        self.config, self.topic, self.client_id, self.keep = mqtt_config, topic, client_id, keep
        self._ids: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.received = 0
        self.malformed = 0
        self.missing = 0
        self._client = None

    def start(self, timeout: float = 10.0) -> PlcPartIds:
        """Connect and subscribe (QoS 1); waits up to ``timeout`` s for the subscription. An unreachable
        broker is not fatal: paho keeps reconnecting and re-subscribes on connect."""
        client = build_client(self.config, self.client_id)

        def on_connect(c, _u, _f, reason_code, _p):
            if not reason_code.is_failure:
                c.subscribe(self.topic, qos=1)
            else:
                log.error("PLC subscription refused by the broker: %s", reason_code)

        client.on_connect = on_connect
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.on_message = self._on_message
        try:
            client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)
        except OSError as e:
            log.warning("PLC topic %s: broker unreachable (%s); retrying in the background", self.topic, e)
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(timeout):
            log.warning(
                "PLC topic %s: not subscribed after %.0f s; parts use trigger ids meanwhile",
                self.topic,
                timeout,
            )
        return self

    def _on_message(self, _c, _u, msg) -> None:
        try:
            data = json.loads(msg.payload)
            seq, part_id = data["trigger_seq"], data["part_id"]
            if (
                not isinstance(seq, int)
                or isinstance(seq, bool)
                or not isinstance(part_id, str)
                or not part_id
            ):
                raise TypeError(f"trigger_seq must be an int and part_id a non-empty string, got {data!r}")
        except (ValueError, KeyError, TypeError) as e:
            self.malformed += 1
            log.warning("PLC message on %s ignored: %s", msg.topic, e)
            return
        with self._lock:
            self._ids[seq] = part_id
            self._ids.move_to_end(seq)
            while len(self._ids) > self.keep:
                self._ids.popitem(last=False)
            self.received += 1

    def resolve(self, trigger_seq: int) -> str | None:
        with self._lock:
            part_id = self._ids.get(trigger_seq)
        if part_id is None:
            self.missing += 1
        return part_id

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
