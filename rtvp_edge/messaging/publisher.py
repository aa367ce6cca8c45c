"""MQTT publishing: the ``EventPublisher`` (the ``mqtt:`` section's schema is ``messaging/config.py``).

Delivery guarantee (DESIGN.md "Events on MQTT"): at least once, in order, nothing lost silently.

    publish_verdict ──▶ Outbox (SQLite, committed) ──▶ sender thread ──▶ paho ──▶ broker
                              ▲                                            │
                              └──────────── delete on PUBACK (on_publish) ◀┘

- ``publish_verdict`` only writes to the outbox, so the pipeline never waits for the network.
- The sender thread hands the oldest unsent events to paho while connected, at most ``max_inflight``
  unacknowledged at a time. paho maps each PUBACK to its message id; ``on_publish`` maps the id back
  to the event's sequence number and the event is deleted from the outbox.
- On a lost connection paho keeps its unacknowledged messages and resends them first after the
  reconnect (same message ids, DUP flag), then the sender continues with the next events, so order is
  kept. A process restart resends everything still in the outbox, oldest first. Either way a
  subscriber may see an event twice (same ``event_id``) but never out of order or missing.

paho-mqtt >= 2 is used as its docs recommend: ``CallbackAPIVersion.VERSION2``, ``loop_start()``,
``reconnect_delay_set()``, ``will_set()`` (the retained "offline" status as the Last Will).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from rtvp_edge.messages import PartVerdict
from rtvp_edge.messaging.client import MqttConnectError, build_client, tls_hint
from rtvp_edge.messaging.config import MqttConfig
from rtvp_edge.messaging.events import (
    RunningModel,
    metrics_payload,
    status_payload,
    topic_root,
    verdict_events,
)
from rtvp_edge.messaging.outbox import Outbox
from rtvp_edge.station import StationIds

log = logging.getLogger(__name__)

__all__ = ["EventPublisher"]


class EventPublisher:
    """Publishes a station's events through the durable outbox. One per station; thread-safe.

    Args:
        config: the ``mqtt:`` section (relative paths already resolved, see ``MqttConfig.resolve_paths``).
        station: site/line/station ids (fill the topic root and every payload).
        model_info: ``{"name", "version", "precision", "bundle_sha256" (or "bundle_hash"), "backend"?}``.
        client: a paho ``Client`` (VERSION2 callbacks, not connected) to use instead of building one
            from ``config`` (tests; custom transports). Its callbacks and Last Will are set here.
        outbox: an ``Outbox`` to use instead of opening ``config.outbox.path``.

    Usage::

        pub = EventPublisher(cfg, StationIds("plant1", "glass", "st1"), model_info)
        pub.start()                    # raises MqttConnectError for a refused login / bad TLS
        pub.publish_verdict(verdict)   # durable once it returns
        pub.stop(flush_timeout=5)      # status "offline"; returns the events left in the outbox
    """

    def __init__(
        self,
        config: MqttConfig,
        station: StationIds,
        model_info: dict[str, Any] | RunningModel,
        client: paho.Client | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self.station = station
        self.model = (
            model_info if isinstance(model_info, RunningModel) else RunningModel.model_validate(model_info)
        )
        self.root = topic_root(config.topic_root, station)
        self.client_id = config.client_id or f"rtvp-{station.site}-{station.line}-{station.station}"
        self.outbox = outbox or Outbox(
            config.outbox.path,
            max_events=config.outbox.max_events,
            max_bytes=config.outbox.max_bytes,
            when_full=config.outbox.when_full,
            synchronous=config.outbox.synchronous,
        )
        self._client = client
        # extra fields of the "online" status, set before ``start`` (build_pipeline: the artifact chosen
        # for this machine and the capacity against the line rate)
        self.status_extra: dict[str, Any] = {}
        # commands for this station: ``on_command(name, payload dict)`` for each message on
        # <root>/command/<name> (build_pipeline: ``reload``); None: no subscription
        self.on_command: Callable[[str, dict[str, Any]], None] | None = None
        self._cond = threading.Condition()
        self._inflight: dict[int, int | None] = {}  # paho mid -> outbox seq (None: status/metrics)
        self._early_acks: set[int] = set()  # PUBACKs that arrived before publish() returned the mid
        self._publishing = 0  # publish() calls in progress
        self._acked: list[int] = []  # seqs acknowledged, not yet deleted from the outbox
        self._last_handed = 0  # highest seq given to paho
        self._last_appended = self.outbox.last_seq
        self._connected = False
        self._state = "new"
        self._error: MqttConnectError | None = None
        self._first_answer = threading.Event()
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._connects = 0
        self.metrics_skipped = 0

    # -- public API ----------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Broker connection state for the live line, e.g. ``"connected"``, ``"disconnected (...); retrying"``,
        ``"refused: Not authorized"``."""
        return self._state

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def error(self) -> MqttConnectError | None:
        """Set when the broker refused the login (the runtime should exit non-zero with its message)."""
        return self._error

    @property
    def reconnects(self) -> int:
        return max(0, self._connects - 1)

    def outbox_depth(self) -> int:
        """Events written but not yet acknowledged by the broker."""
        return self.outbox.depth()

    def topic(self, name: str) -> str:
        """Full topic of ``verdict``, ``defect``, ``status`` or ``metrics``."""
        return f"{self.root}/{name}"

    def start(self) -> EventPublisher:
        """Connect (in the background) and start sending what the outbox holds.

        Waits up to ``connect_timeout_s`` for the broker's answer. Raises ``MqttConnectError`` when the
        broker refuses the credentials or TLS fails, ``MqttConfigError`` for unusable settings. An
        unreachable broker is not an error: the publisher keeps retrying and events wait in the outbox.
        """
        if self._client is None:
            self._client = build_client(self.config, self.client_id)
        client = self._client
        client.max_inflight_messages_set(self.config.max_inflight + 16)  # + status/metrics
        client.max_queued_messages_set(0)
        self._arm_will()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._state = "connecting"
        host, port = self.config.host, self.config.port
        try:
            client.connect(host, port, keepalive=self.config.keepalive)
        except ssl.SSLError as exc:
            self._state = f"refused: TLS: {exc}"
            self._error = MqttConnectError(
                f"TLS handshake with MQTT broker {host}:{port} failed: {exc} ({tls_hint(exc)})"
            )
            raise self._error from exc
        except (TimeoutError, OSError) as exc:
            # Not fatal: a line must start (and buffer) while the broker is down or still booting.
            self._state = f"connecting (broker {host}:{port} unreachable: {exc}); retrying"
            log.warning(
                "MQTT broker %s:%s unreachable (%s); events wait in the outbox, retrying", host, port, exc
            )
        client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox-sender", daemon=True)
        self._sender.start()
        self._first_answer.wait(self.config.connect_timeout_s)
        if self._error is not None:
            self._shutdown_client()
            raise self._error
        return self

    def publish_verdict(self, verdict: PartVerdict) -> list[int]:
        """Queue a part's verdict and one event per defect (one outbox transaction). Durable on return.

        Returns the sequence numbers. Raises ``OutboxFullError`` (``when_full: refuse``) or ``OutboxError``.
        """
        if self._state == "stopped":
            raise RuntimeError("EventPublisher.publish_verdict called after stop()")
        events = verdict_events(verdict, self.station, self.model, self.root, self.config.qos)
        seqs = self.outbox.append(events)
        with self._cond:
            self._last_appended = max(self._last_appended, seqs[-1])
            self._cond.notify_all()
        return seqs

    def publish_metrics(self, metrics: dict[str, Any]) -> bool:
        """Publish ``<root>/metrics`` now (QoS 0, not queued: skipped and counted while disconnected).

        The publisher adds its own figures: outbox_depth, outbox_dropped_total, broker_state,
        reconnects, metrics_skipped. Returns whether it was handed to the network.
        """
        figures = {
            **metrics,
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped_total": self.outbox.dropped_total,
            "broker_state": self._state,
            "reconnects": self.reconnects,
            "metrics_skipped": self.metrics_skipped,
        }
        payload = metrics_payload(figures, self.station, self.config.metrics_interval_s)
        if not self._connected or self._client is None:
            self.metrics_skipped += 1
            return False
        return self._publish_tracked(self.topic("metrics"), json.dumps(payload).encode(), 0, False, None)

    def stop(self, flush_timeout: float = 5.0) -> int:
        """Stop cleanly: wait up to ``flush_timeout`` s for the outbox to drain, publish the retained
        "offline" status, disconnect. Returns the number of events left in the outbox (sent on next start)."""
        if self._state == "stopped":
            return 0
        deadline = time.monotonic() + flush_timeout
        with self._cond:
            while self.outbox.depth() > 0 and self._error is None and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                self._flush_acks_locked()
        if self._connected and self._client is not None:
            info = self._client.publish(
                self.topic("status"),
                json.dumps(self._status("offline", "clean stop")),
                qos=1,
                retain=True,
            )
            # If the connection dropped meanwhile, the Last Will says offline instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(1.0, deadline - time.monotonic()))
        self._shutdown_client()
        left = self.outbox.depth()
        if left:
            log.warning(
                "MQTT publisher stopped with %d events in the outbox %s; they are sent on the next start",
                left,
                self.outbox.path,
            )
        self.outbox.close()
        self._state = "stopped"
        return left

    # -- internals -----------------------------------------------------------------------------------
    def set_model(self, model_info: dict[str, Any] | RunningModel) -> None:
        """The model identity verdict, defect and status events carry from now on (after a reload, set by
        the decision stage before the first part of the new vocabulary is published)."""
        self.model = (
            model_info if isinstance(model_info, RunningModel) else RunningModel.model_validate(model_info)
        )

    def announce(self, reason: str, extra: dict[str, Any], model_info: dict[str, Any] | None = None) -> bool:
        """Publish the retained "online" status now with ``reason`` and ``extra`` (e.g. a reload's outcome
        and the running vocabulary); ``extra`` stays in every later status (reconnects). ``model_info``: the
        model the status names (default the publisher's). Returns whether it was handed to the network
        (disconnected: the next connection's status carries ``extra``)."""
        self.status_extra.update(extra)
        if not self._connected or self._client is None:
            return False
        model = RunningModel.model_validate(model_info) if model_info is not None else None
        payload = json.dumps(self._status("online", reason, model)).encode()
        return self._publish_tracked(self.topic("status"), payload, 1, True, None)

    def _status(self, state: str, reason: str, model: RunningModel | None = None) -> dict[str, Any]:
        return status_payload(
            state,
            self.station,
            model or self.model,
            self.client_id,
            reason,
            extra={
                **self.status_extra,
                "outbox_depth": self.outbox.depth(),
                "outbox_dropped_total": self.outbox.dropped_total,
                "last_seq": self.outbox.last_seq,
            },
        )

    def _arm_will(self) -> None:
        """(Re)set the Last Will before each connection attempt: a fresh event id per connection, so a
        consumer de-duplicating on event ids does not drop the will of a later death. Its ``ts`` is when
        the connection was set up (the broker publishes the will verbatim)."""
        will = status_payload(
            "offline", self.station, self.model, self.client_id, "connection lost (last will)"
        )
        self._client.will_set(self.topic("status"), json.dumps(will), qos=1, retain=True)

    def _shutdown_client(self) -> None:
        self._stopping = True
        with self._cond:
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._connected = False
        with self._cond:
            self._flush_acks_locked()

    def _publish_tracked(self, topic: str, payload: bytes, qos: int, retain: bool, seq: int | None) -> bool:
        """Hand one message to paho and remember its mid; never called with ``self._cond`` held
        (paho takes its own locks; on_publish takes ours)."""
        with self._cond:
            self._publishing += 1
        info = None
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        finally:
            # The mid is recorded and _publishing lowered under one lock hold, so a PUBACK handled
            # at any moment finds either the mapping or an open publish.
            with self._cond:
                self._publishing -= 1
                sent = info is not None and not (qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS)
                if info is not None and info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    if seq is not None and sent:
                        self._acked.append(seq)
                        self._cond.notify_all()
                elif sent:
                    self._inflight[info.mid] = seq
                if not self._publishing:
                    self._early_acks.clear()
        return sent  # False: QoS 0 dropped by paho while disconnected (not kept for a resend)

    def _flush_acks_locked(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.ack(acked)

    def _events_in_flight(self) -> int:
        return sum(1 for s in self._inflight.values() if s is not None)

    def _send_loop(self) -> None:
        window = self.config.max_inflight
        while True:
            with self._cond:
                while not (
                    self._stopping
                    or self._acked
                    or (
                        self._connected
                        and self._last_appended > self._last_handed
                        and self._events_in_flight() < window
                    )
                ):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                # Deleting inside the lock keeps depth() consistent with what stop() waits for.
                self._flush_acks_locked()
                room = window - self._events_in_flight() if self._connected else 0
                after, target = self._last_handed, self._last_appended
            if room <= 0:
                continue
            batch = self.outbox.peek(after_seq=after, limit=room)
            for event in batch:
                if not self._connected:
                    break
                if not self._publish_tracked(event.topic, event.payload, event.qos, event.retain, event.seq):
                    break
                with self._cond:
                    self._last_handed = event.seq
            else:
                if len(batch) < room:
                    # Everything committed up to ``target`` was in the batch (appends commit before
                    # they raise _last_appended); the rest was dropped for room or already acked.
                    with self._cond:
                        self._last_handed = max(self._last_handed, target)

    # -- paho callbacks (run in paho's network thread) ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            who = f"user {self.config.username!r}" if self.config.username else "anonymous login"
            self._error = MqttConnectError(
                f"MQTT broker {self.config.host}:{self.config.port} refused the connection: {reason_code} "
                f"(client id {self.client_id!r}, {who}; check mqtt.username / the {self.config.password_env or 'password'} variable)"
            )
            self._state = f"refused: {reason_code}"
            log.error("%s", self._error)
            self._first_answer.set()
            return
        self._error = None
        self._connects += 1
        self._state = "connected"
        log.info("MQTT connected to %s:%s as %s", self.config.host, self.config.port, self.client_id)
        if self.on_command is not None:  # (again) on every connection: the session may be clean
            client.subscribe(self.topic("command/+"), qos=1)
        self._publish_tracked(
            self.topic("status"), json.dumps(self._status("online", "connected")).encode(), 1, True, None
        )
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        self._first_answer.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._stopping:
            self._arm_will()  # paho reconnects from this thread after the callback returns
        if not self._stopping and self._error is None:
            if self._connects == 0:
                # Closed before any CONNACK: a TLS listener spoken to in plain MQTT, a broker wanting a
                # client certificate (TLS 1.3 refuses it after the handshake), or not an MQTT port.
                hint = (
                    "does the broker require a client certificate (mqtt.tls.cert/key)?"
                    if self.config.tls is not None
                    else "is it a TLS port (set mqtt.tls) or not an MQTT port?"
                )
                self._state = f"disconnected before the broker answered ({reason_code}): {hint}; retrying"
            else:
                self._state = f"disconnected ({reason_code}); retrying"
            log.warning("MQTT connection to %s:%s: %s", self.config.host, self.config.port, self._state)

    def _on_connect_fail(self, client, userdata) -> None:
        if self._error is None and not self._stopping:
            self._state = f"connecting (broker {self.config.host}:{self.config.port} unreachable); retrying"

    def _on_message(self, client, userdata, msg) -> None:
        """A command on <root>/command/<name>: JSON object payload (empty: {}); others are logged, ignored."""
        name = msg.topic.rsplit("/", 1)[-1]
        try:
            payload = json.loads(msg.payload) if msg.payload.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError(f"a JSON object, not {type(payload).__name__}")
        except ValueError as e:
            log.warning("MQTT command on %s ignored: payload is not a JSON object (%s)", msg.topic, e)
            return
        if self.on_command is None:
            return
        try:
            self.on_command(name, payload)
        except Exception:  # noqa: BLE001 - paho's network thread must go on
            log.exception("MQTT command %s failed", msg.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            if mid in self._inflight:
                seq = self._inflight.pop(mid)
                if seq is not None:
                    self._acked.append(seq)
                    self._cond.notify_all()
            elif self._publishing:
                # The PUBACK overtook publish() returning its mid; remembered only while a publish is
                # in progress, so a stray id cannot acknowledge a later event that reuses it.
                self._early_acks.add(mid)
