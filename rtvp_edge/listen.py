"""``rtvp-edge listen``: subscribe to a station's topics and print its events as a person reads them.

One line per verdict (time, station, part, OK/NG/INCOMPLETE, the defects with camera/class/score),
one line per status change and per metrics message. Times are UTC, as in the payloads. Repeated
deliveries of the same event (at-least-once) are marked ``(again)`` instead of being hidden.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import ssl
import sys
import time
import uuid
from collections import OrderedDict
from typing import Any, TextIO

from rtvp_edge.mqtt import MqttConfig, MqttConnectError, build_client

_COLOURS = {"OK": "\033[32m", "NG": "\033[31;1m", "INCOMPLETE": "\033[33;1m"}
_RESET = "\033[0m"


def _clock(ts: str | None) -> str:
    """``"2026-11-21T05:10:43.123Z"`` -> ``"05:10:43.123"``."""
    if not ts or "T" not in ts:
        return "--:--:--.---"
    return ts.split("T", 1)[1].rstrip("Z")


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _box(box: list[float]) -> str:
    return "(" + ",".join(f"{v:.0f}" for v in box) + ")"


def format_event(topic: str, payload: bytes, seen_before: bool = False, colour: bool = False) -> str | None:
    """One human-readable line for one message (None for per-defect events: the verdict line lists them).

    Args:
        topic: MQTT topic.
        payload: raw payload bytes.
        seen_before: the event id was printed already (a redelivery).
        colour: ANSI colours for OK/NG/INCOMPLETE.
    """
    try:
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError):
        text = payload[:60].decode("utf-8", "replace")
        return f"{'':12}  {topic}: unreadable payload ({len(payload)} bytes): {text!r}"
    kind = event.get("kind")
    station = (event.get("station") or {}).get("station", "?")
    again = "  (again)" if seen_before else ""
    if kind == "verdict":
        verdict = str(event.get("verdict"))
        shown = f"{_COLOURS.get(verdict, '')}{verdict:<10}{_RESET}" if colour else f"{verdict:<10}"
        parts = [
            f"{_clock(event.get('decided_ts'))}  {station}  {event.get('part_id')}  {shown} seq {event.get('seq')}"
        ]
        defects = event.get("defects") or []
        if defects:
            parts.append(
                "  "
                + "; ".join(
                    f"{d.get('camera_id')} {d.get('class_name')} {float(d.get('score', 0)):.2f} {_box(d.get('box', []))}"
                    for d in defects
                )
            )
        if event.get("missing_views"):
            parts.append("  missing views " + ",".join(str(v) for v in event["missing_views"]))
        latency = (event.get("latency_ms") or {}).get("trigger_to_verdict")
        if latency is not None:
            parts.append(f"  [{latency:.0f} ms]")
        return "".join(parts) + again
    if kind == "defect":
        return None
    if kind == "status":
        model = event.get("model") or {}
        what = " ".join(str(model[k]) for k in ("name", "version", "precision") if k in model)
        extra = f"  outbox {event['outbox_depth']}" if "outbox_depth" in event else ""
        return (
            f"{_clock(event.get('ts'))}  {station}  status {str(event.get('state')).upper()}"
            f"  ({event.get('reason')})  {what}{extra}{again}"
        )
    if kind == "metrics":
        fields = []
        for key, value in (event.get("metrics") or {}).items():
            if isinstance(value, dict):
                inner = ", ".join(
                    f"{k} " + " ".join(f"{kk}={_num(vv)}" for kk, vv in v.items())
                    if isinstance(v, dict)
                    else f"{k}={_num(v)}"
                    for k, v in value.items()
                )
                fields.append(f"{key}: {inner}")
            else:
                fields.append(f"{key}={_num(value)}")
        return f"{_clock(event.get('ts'))}  {station}  metrics  " + " | ".join(fields)
    return f"{_clock(event.get('ts'))}  {topic}: {json.dumps(event)[:200]}"


def run_listen(
    mqtt_config: MqttConfig,
    topic_root: str,
    out: TextIO = sys.stdout,
    max_messages: int | None = None,
    timeout: float | None = None,
    show_defects: bool = False,
    colour: bool | None = None,
) -> int:
    """Subscribe to ``<topic_root>/#`` and print every event until ``max_messages`` or ``timeout``.

    Args:
        mqtt_config: broker address, TLS and credentials (the line configuration's ``mqtt:`` section).
        topic_root: a station's root (``rtvp/plant1/glass/st1``, see ``MqttConfig.station_root``), a
            filter with wildcards (``rtvp/+/+/+`` for every station), or the unfilled template
            (``{site}``-style placeholders become ``+``).
        out: where lines go.
        max_messages: stop after this many messages (None: run until interrupted).
        timeout: stop after this many seconds (None: no limit).
        show_defects: also print one line per defect event.
        colour: ANSI colours; default when ``out`` is a terminal.

    Returns:
        The number of messages received. Raises ``MqttConnectError`` when the broker cannot be
        reached or refuses the login, ``MqttConfigError`` for unusable settings.
    """
    if colour is None:
        colour = hasattr(out, "isatty") and out.isatty()
    inbox: queue.Queue = queue.Queue()
    answer: dict[str, Any] = {}
    client_id = f"{mqtt_config.client_id or 'rtvp'}-listen-{uuid.uuid4().hex[:8]}"
    client = build_client(mqtt_config, client_id)
    # An unfilled template ("rtvp/{site}/{line}/{station}") listens to every station it could name.
    topic_filter = re.sub(r"\{[a-z_]+\}", "+", topic_root).rstrip("/") + "/#"

    def on_connect(c, userdata, flags, reason_code, properties):
        answer["reason"] = reason_code
        if reason_code.is_failure:
            inbox.put(None)
        else:
            c.subscribe(topic_filter, qos=1)

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        inbox.put(None)  # SUBACK: from here on nothing published is missed

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload)))
    where = f"{mqtt_config.host}:{mqtt_config.port}"
    try:
        client.connect(mqtt_config.host, mqtt_config.port, keepalive=mqtt_config.keepalive)
    except ssl.SSLError as exc:
        raise MqttConnectError(f"TLS handshake with MQTT broker {where} failed: {exc}") from exc
    except OSError as exc:
        hint = (
            " (broker: embedded runs inside `rtvp-edge run`; is the line running?)"
            if mqtt_config.broker == "embedded"
            else ""
        )
        raise MqttConnectError(f"cannot reach MQTT broker {where}: {exc}{hint}") from exc
    client.loop_start()
    try:
        try:
            first = inbox.get(timeout=max(mqtt_config.connect_timeout_s, 1.0))
        except queue.Empty:
            raise MqttConnectError(
                f"MQTT broker {where} did not answer within {mqtt_config.connect_timeout_s} s"
            ) from None
        if first is None and answer["reason"].is_failure:
            raise MqttConnectError(f"MQTT broker {where} refused the connection: {answer['reason']}")
        print(f"listening on {where} to {topic_filter} (times UTC, Ctrl-C to stop)", file=out, flush=True)
        return _print_loop(inbox, out, max_messages, timeout, show_defects, colour)
    finally:
        client.disconnect()
        client.loop_stop()


def _print_loop(inbox, out, max_messages, timeout, show_defects, colour) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: OrderedDict[str, None] = OrderedDict()  # recent event ids, bounded
    count = 0
    while max_messages is None or count < max_messages:
        wait = 0.5 if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            break
        try:
            item = inbox.get(timeout=min(wait, 0.5))
        except queue.Empty:
            continue
        if item is None:  # a reconnect's SUBACK
            continue
        topic, payload = item
        count += 1
        event_id = None
        with contextlib.suppress(ValueError, AttributeError, UnicodeDecodeError):
            event_id = json.loads(payload).get("event_id")
        seen_before = event_id is not None and event_id in seen
        if event_id is not None:
            seen[event_id] = None
            if len(seen) > 10_000:
                seen.popitem(last=False)
        line = format_event(topic, payload, seen_before=seen_before, colour=colour)
        if line is None and show_defects:
            d = json.loads(payload)
            line = (
                f"{_clock(d.get('ts'))}  {d['station']['station']}  {d.get('part_id')}  defect "
                f"{d.get('camera_id')} {d.get('class_name')} {float(d.get('score', 0)):.2f} {_box(d.get('box', []))}"
            )
        if line is not None:
            print(line, file=out, flush=True)
    return count
