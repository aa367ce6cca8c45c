"""Event payloads published on MQTT: what PLC/MES subscribers rely on (DESIGN.md "Events on MQTT").

Topics under the station's root (default ``rtvp/{site}/{line}/{station}``):

    <root>/verdict   one per part (OK / NG / INCOMPLETE), defects of all views included   QoS 1, durable
    <root>/defect    one per defect, after its part's verdict                              QoS 1, durable
    <root>/status    retained; "online" on connect, "offline" on clean stop and as Last Will
    <root>/metrics   periodic telemetry (not queued in the outbox: a stale figure helps nobody)
    <root>/command/reload   subscribed: reload vocabulary and thresholds (rtvp_edge/reload.py); the outcome
                            is the next retained status (``reload``, ``vocabulary``)

Every payload is a JSON object with ``schema_version``, ``kind``, a unique ``event_id`` (uuid4;
consumers de-duplicate at-least-once delivery on it), ``ts`` (UTC, ISO 8601 with milliseconds) and
``station``. Verdict and defect events also carry ``seq``: one per-station counter over both kinds,
assigned by the outbox and persisted, so a consumer of both topics sees 1, 2, 3, ... and any gap is a
lost event. A verdict with ``defect_count`` = n is followed by its n defect events, so a consumer of
verdicts alone expects ``next_verdict.seq == verdict.seq + defect_count + 1``.

The JSON Schema is ``rtvp_edge/schemas/events.schema.json``; ``validate_payload`` checks against it.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rtvp_edge.messages import PartVerdict
from rtvp_edge.messaging.outbox import OutgoingEvent
from rtvp_edge.station import StationIds  # where the events come from

EVENT_SCHEMA_VERSION = (
    "1.2"  # 1.1: optional verdict.plc (what the PLC was told); 1.2: status.vocabulary/reload
)
TOPICS = ("verdict", "defect", "status", "metrics")


class RunningModel(BaseModel):
    """The model that produced the verdicts, as carried in every verdict/defect/status payload.

    Args:
        name: model name, e.g. ``"rtvpnet_s"``.
        version: model version from the bundle manifest.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"``, ...
        bundle_sha256: hash identifying the bundle (alias ``bundle_hash`` accepted).
        backend: inference backend, e.g. ``"openvino"`` (optional).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    precision: str = Field(min_length=1)
    bundle_sha256: str = Field(min_length=1, alias="bundle_hash")
    backend: str | None = None

    def as_dict(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


def topic_root(template: str, station: StationIds) -> str:
    """Fill ``{site}``, ``{line}``, ``{station}`` into the configured topic root.

    Raises ``ValueError`` naming the template for unknown placeholders, wildcards or empty levels.
    """
    try:
        root = template.format(**station.as_dict())
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"mqtt.topic_root {template!r}: only the placeholders {{site}}, {{line}}, {{station}} are known ({exc})"
        ) from None
    if root.startswith("$"):
        raise ValueError(
            f"mqtt.topic_root {template!r} gives {root!r}: topics starting with '$' (such as $SYS/...) are "
            "reserved for the broker, which acknowledges and drops client publishes there: subscribers "
            "would get nothing while the outbox empties"
        )
    if (
        any(c in root for c in "+#\0")
        or root.startswith("/")
        or root.endswith("/")
        or "//" in root
        or not root
    ):
        raise ValueError(
            f"mqtt.topic_root {template!r} gives {root!r}: a publish topic may not contain wildcards (+ #), "
            "empty levels or leading/trailing '/'"
        )
    return root


def utc_iso(epoch_seconds: float) -> str:
    """``1700000000.1234`` -> ``"2023-11-14T22:13:20.123Z"`` (UTC, milliseconds)."""
    return (
        datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _envelope(kind: str, station: StationIds, ts: float) -> dict[str, Any]:
    return {
        "schema_version": EVENT_SCHEMA_VERSION,
        "kind": kind,
        "event_id": str(uuid.uuid4()),
        "ts": utc_iso(ts),
        "station": station.as_dict(),
    }


def _box(box: tuple[float, float, float, float]) -> list[float]:
    return [round(float(v), 2) for v in box]


def verdict_events(
    verdict: PartVerdict, station: StationIds, model: RunningModel, root: str, qos: int = 1
) -> list[OutgoingEvent]:
    """The events for one part: its verdict, then one defect event per detection (view order).

    Args:
        verdict: the part's decision with the detections of every view (boxes in camera pixels).
        station: station ids.
        model: model identity carried in every payload.
        root: topic root (already filled, see ``topic_root``).
        qos: MQTT QoS for these events.

    Returns:
        ``[verdict_event, defect_event, ...]``; ``seq`` is set later by the outbox.
    """
    if verdict.verdict not in ("OK", "NG", "INCOMPLETE"):
        raise ValueError(
            f"part {verdict.part_id}: verdict must be OK, NG or INCOMPLETE, got {verdict.verdict!r}"
        )
    decided = verdict.decided_time or datetime.now(timezone.utc).timestamp()
    head = _envelope("verdict", station, decided)
    defects: list[dict[str, Any]] = []
    for view in verdict.views:
        for det in view.detections:
            defects.append(
                {
                    "camera_id": view.camera_id,
                    "view_index": int(view.view_index),
                    "class_id": int(det.class_id),
                    "class_name": det.class_name,
                    "score": round(float(det.score), 4),
                    "box": _box(det.box),
                }
            )
    latency = {str(k): round(float(v), 3) for k, v in verdict.latency_ms.items()}
    head.update(
        {
            "seq": 0,
            "part_id": verdict.part_id,
            "trigger_seq": int(verdict.trigger_seq),
            "verdict": verdict.verdict,
            "first_capture_ts": utc_iso(verdict.first_capture_time or decided),
            "decided_ts": utc_iso(decided),
            "views": [
                {
                    "camera_id": v.camera_id,
                    "view_index": int(v.view_index),
                    "trigger_seq": int(v.trigger_seq),
                    "capture_ts": utc_iso(v.capture_time),
                    "defect_count": len(v.detections),
                    "evidence_path": v.evidence_path,
                }
                for v in verdict.views
            ],
            "missing_views": [int(i) for i in verdict.missing_views],
            "reasons": list(verdict.reasons),
            "defect_count": len(defects),
            "defects": defects,
            "model": model.as_dict(),
            "latency_ms": latency,
        }
    )
    if verdict.plc is not None:  # what the PLC was told (REJECT by deadline when the verdict came late)
        head["plc"] = dict(verdict.plc)
    events = [OutgoingEvent(f"{root}/verdict", head, head["event_id"], qos)]
    capture = {v.view_index: v.capture_time for v in verdict.views}
    for index, defect in enumerate(defects):
        payload = _envelope("defect", station, decided)
        payload.update(
            {
                "seq": 0,
                "part_id": verdict.part_id,
                "trigger_seq": int(verdict.trigger_seq),
                "verdict": verdict.verdict,
                "verdict_event_id": head["event_id"],
                "defect_index": index,
                "capture_ts": utc_iso(capture[defect["view_index"]]),
                **defect,
                "model": model.as_dict(),
                "latency_ms": latency,
            }
        )
        events.append(OutgoingEvent(f"{root}/defect", payload, payload["event_id"], qos))
    return events


def status_payload(
    state: str,
    station: StationIds,
    model: RunningModel | None,
    client_id: str,
    reason: str,
    ts: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retained status: ``state`` is ``"online"`` or ``"offline"``; ``reason`` says why (e.g. ``"connected"``,
    ``"clean stop"``, ``"connection lost (last will)"``)."""
    if state not in ("online", "offline"):
        raise ValueError(f"status state must be 'online' or 'offline', got {state!r}")
    payload = _envelope("status", station, ts if ts is not None else datetime.now(timezone.utc).timestamp())
    payload.update({"state": state, "reason": reason, "client_id": client_id})
    if model is not None:
        payload["model"] = model.as_dict()
    if extra:
        payload.update(extra)
    return payload


def metrics_payload(
    metrics: dict[str, Any], station: StationIds, interval_s: float | None = None, ts: float | None = None
) -> dict[str, Any]:
    """Periodic metrics. ``metrics`` is a flat-ish JSON object (numbers, strings, nested objects for
    per-camera figures), e.g. ``{"parts_per_s": 4.9, "inference_ms_p50": 41.0, "cameras": {"L1": {...}}}``."""
    payload = _envelope("metrics", station, ts if ts is not None else datetime.now(timezone.utc).timestamp())
    payload["interval_s"] = interval_s
    payload["metrics"] = json.loads(json.dumps(metrics, default=_jsonable))
    return payload


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/lists; anything else unknown -> its string."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of all payloads (``rtvp_edge/schemas/events.schema.json``)."""
    text = resources.files("rtvp_edge").joinpath("schemas/events.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_payload(payload: dict[str, Any] | bytes | str) -> dict[str, Any]:
    """Validate one payload (dict or JSON text) against the schema; returns it as a dict.

    Raises ``jsonschema.ValidationError`` with the failing path.
    """
    import jsonschema  # runtime dependency, imported lazily: only validation needs it

    if isinstance(payload, (bytes, str)):
        payload = json.loads(payload)
    schema = load_schema()
    jsonschema.validators.validator_for(schema)(schema).validate(payload)
    return payload
