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


def metrics_summary(m: dict[str, Any]) -> str:
    """The figures an operator looks at, short: parts and rate, verdict counts, the trigger-to-verdict
    latency, cameras (only the ones not streaming, and drops), outbox and broker when not normal, errors.
    Empty and zero fields are left out; the full figures are in the metrics payload.

    Example: ``12 parts 3.9/s (10 OK, 2 NG)  latency p50 150 p99 210 ms  cameras 5/6 streaming (R2 BACKOFF)``
    """
    fields = []
    rate = m.get("parts_per_s")
    head = f"{m.get('parts', 0)} parts" + (f" {_num(rate)}/s" if rate else "")
    verdicts = ", ".join(f"{n} {k}" for k, n in (m.get("verdicts") or {}).items() if n)
    fields.append(head + (f" ({verdicts})" if verdicts else ""))
    latency = (m.get("latency_ms") or {}).get("trigger_to_verdict") or {}
    if latency.get("p50") is not None:
        fields.append(f"latency p50 {latency['p50']:.0f} p99 {latency['p99']:.0f} ms")
    cameras = m.get("cameras") or {}
    if cameras:
        states = {c: str(v.get("state", "?")) for c, v in cameras.items() if isinstance(v, dict)}
        streaming = sum(1 for s in states.values() if s == "STREAMING")
        odd = " ".join(f"{c} {s}" for c, s in states.items() if s != "STREAMING")
        text = f"cameras {streaming}/{len(cameras)} streaming" + (f" ({odd})" if odd else "")
        dropped = sum(int(v.get("dropped") or 0) for v in cameras.values() if isinstance(v, dict))
        if dropped:
            text += f", {dropped} frames dropped"
        fields.append(text)
    depth = m.get("outbox_depth")
    if depth:
        fields.append(f"outbox {depth}")
    if m.get("outbox_dropped_total"):
        fields.append(f"outbox dropped {m['outbox_dropped_total']}")
    broker = m.get("broker_state")
    if broker and broker != "connected":
        fields.append(f"broker {broker}")
    errors = {**(m.get("stage_errors") or {}), **(m.get("sink_errors") or {})}
    errors = {k: v for k, v in errors.items() if v}
    if errors:
        fields.append("errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    return "  ".join(fields)


def _score(d: dict) -> float:
    try:
        return float(d.get("score", 0))
    except (TypeError, ValueError):
        return 0.0


def _defects_text(defects: list, max_defects: int | None, min_score: float) -> str:
    """The verdict line's defects: highest score first, those under ``min_score`` and beyond the first
    ``max_defects`` counted, not listed (the event itself keeps them all)."""
    defects = sorted((d for d in defects if isinstance(d, dict)), key=_score, reverse=True)
    shown = [d for d in defects if _score(d) >= min_score]
    low = len(defects) - len(shown)
    more = 0
    if max_defects is not None and len(shown) > max_defects:
        more, shown = len(shown) - max_defects, shown[:max_defects]
    text = "; ".join(
        f"{d.get('camera_id')} {d.get('class_name')} {_score(d):.2f} {_box(d.get('box', []))}" for d in shown
    )
    rest = []
    if more:
        rest.append(f"{more} more")
    if low:
        rest.append(f"{low} under {min_score:.2f}")
    if rest:
        text += ("; " if text else "") + "+ " + ", ".join(rest)
    return "  " + text if text else ""


def format_event(
    topic: str,
    payload: bytes,
    seen_before: bool = False,
    colour: bool = False,
    max_defects: int | None = 3,
    min_score: float = 0.0,
) -> str | None:
    """One human-readable line for one message (None for per-defect events: the verdict line lists them).

    Args:
        topic: MQTT topic.
        payload: raw payload bytes.
        seen_before: the event id was printed already (a redelivery).
        colour: ANSI colours for OK/NG/INCOMPLETE.
        max_defects: list at most this many of a verdict's defects, highest score first (None: all); the
            rest are counted ("+ 4 more").
        min_score: defects scored under this are counted, not listed (the line's own thresholds already
            decided what was reported; this only shortens what a person reads).
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
        parts.append(_defects_text(event.get("defects") or [], max_defects, min_score))
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
        return f"{_clock(event.get('ts'))}  {station}  metrics  " + metrics_summary(
            event.get("metrics") or {}
        )
    return f"{_clock(event.get('ts'))}  {topic}: {json.dumps(event)[:200]}"


def run_listen(
    mqtt_config: MqttConfig,
    topic_root: str,
    out: TextIO = sys.stdout,
    max_messages: int | None = None,
    timeout: float | None = None,
    show_defects: bool = False,
    colour: bool | None = None,
    wait_for_broker: float = 0.0,
    until_offline: bool = False,
    max_defects: int | None = 3,
    min_score: float = 0.0,
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
        wait_for_broker: seconds to keep trying while the broker is unreachable (e.g. listening before
            the demo started its embedded broker); 0 gives up at once.
        until_offline: stop after a station's clean "offline" status published while listening (not the
            retained one of an earlier run that a new subscription receives).
        max_defects, min_score: how many of a verdict's defects its line lists (see ``format_event``).

    Returns:
        The number of messages received. Raises ``MqttConnectError`` when the broker cannot be
        reached (within ``wait_for_broker``) or refuses the login, ``MqttConfigError`` for unusable settings.
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
    client.on_message = lambda c, u, m: inbox.put((m.topic, bytes(m.payload), bool(m.retain)))
    where = f"{mqtt_config.host}:{mqtt_config.port}"
    give_up = time.monotonic() + max(0.0, wait_for_broker)
    said_waiting = False
    while True:
        try:
            client.connect(mqtt_config.host, mqtt_config.port, keepalive=mqtt_config.keepalive)
            break
        except ssl.SSLError as exc:
            raise MqttConnectError(f"TLS handshake with MQTT broker {where} failed: {exc}") from exc
        except OSError as exc:
            if time.monotonic() < give_up:
                if not said_waiting:
                    print(
                        f"waiting for the MQTT broker at {where} (up to {wait_for_broker:.0f} s) ...",
                        file=out,
                        flush=True,
                    )
                    said_waiting = True
                time.sleep(0.5)
                continue
            hint = (
                " (broker: embedded runs inside `rtvp-edge run`; is the line running?)"
                if mqtt_config.broker == "embedded"
                else ""
            )
            waited = f" (waited {wait_for_broker:.0f} s)" if wait_for_broker > 0 else ""
            raise MqttConnectError(f"cannot reach MQTT broker {where}{waited}: {exc}{hint}") from exc
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
        shown = {"max_defects": max_defects, "min_score": min_score}
        return _print_loop(inbox, out, max_messages, timeout, show_defects, colour, until_offline, shown)
    finally:
        client.disconnect()
        client.loop_stop()


def _is_clean_stop(payload: bytes) -> bool:
    with contextlib.suppress(ValueError, AttributeError, UnicodeDecodeError):
        event = json.loads(payload)
        return (
            event.get("kind") == "status"
            and event.get("state") == "offline"
            and event.get("reason") == "clean stop"
        )
    return False


def _print_loop(inbox, out, max_messages, timeout, show_defects, colour, until_offline, shown) -> int:
    min_score = shown["min_score"]
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
        topic, payload, retained = item
        count += 1
        event_id = None
        with contextlib.suppress(ValueError, AttributeError, UnicodeDecodeError):
            event_id = json.loads(payload).get("event_id")
        seen_before = event_id is not None and event_id in seen
        if event_id is not None:
            seen[event_id] = None
            if len(seen) > 10_000:
                seen.popitem(last=False)
        line = format_event(
            topic,
            payload,
            seen_before=seen_before,
            colour=colour,
            **shown,
        )
        if line is None and show_defects:
            d = json.loads(payload)
            if _score(d) < min_score:
                continue
            line = (
                f"{_clock(d.get('ts'))}  {d['station']['station']}  {d.get('part_id')}  defect "
                f"{d.get('camera_id')} {d.get('class_name')} {float(d.get('score', 0)):.2f} {_box(d.get('box', []))}"
            )
        if line is not None:
            print(line, file=out, flush=True)
        if until_offline and not retained and _is_clean_stop(payload):
            print("the station stopped cleanly: done (rtvp-edge listen --follow keeps listening)", file=out)
            break
    return count
