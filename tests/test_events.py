"""Event payloads: content, topics, timestamps, and the JSON Schema (which must reject bad payloads)."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from rtvp_edge.messaging.events import (
    RunningModel,
    StationIds,
    metrics_payload,
    status_payload,
    topic_root,
    utc_iso,
    validate_payload,
    verdict_events,
)
from tests.mqtt_broker import MODEL_INFO, make_verdict

STATION = StationIds("plant1", "glass", "st1")
MODEL = RunningModel.model_validate(MODEL_INFO)


def _with_seq(events):
    for i, e in enumerate(events, start=1):
        e.payload["seq"] = i
    return [e.payload for e in events]


def test_verdict_then_one_event_per_defect():
    verdict = make_verdict(7, n_defects=4)
    events = verdict_events(verdict, STATION, MODEL, "rtvp/plant1/glass/st1")
    assert [e.topic for e in events] == ["rtvp/plant1/glass/st1/verdict"] + [
        "rtvp/plant1/glass/st1/defect"
    ] * 4
    head, *defects = _with_seq(events)
    assert head["verdict"] == "NG" and head["part_id"] == "C000007" and head["trigger_seq"] == 7
    assert head["defect_count"] == 4 and len(head["defects"]) == 4
    assert head["model"]["bundle_sha256"] == "ab" * 32
    assert {d["verdict_event_id"] for d in defects} == {head["event_id"]}
    assert len({e.event_id for e in events}) == 5
    assert [d["defect_index"] for d in defects] == [0, 1, 2, 3]
    assert defects[1]["camera_id"] == "L2" and defects[1]["box"] == [11.0, 20.0, 61.5, 80.25]
    for payload in [head, *defects]:
        validate_payload(payload)


@pytest.mark.parametrize("kind", ["OK", "INCOMPLETE"])
def test_ok_and_incomplete_validate(kind):
    verdict = make_verdict(3, n_defects=0, incomplete=kind == "INCOMPLETE")
    (head,) = _with_seq(verdict_events(verdict, STATION, MODEL, "r"))
    assert head["verdict"] == kind
    assert head["missing_views"] == ([4, 5] if kind == "INCOMPLETE" else [])
    validate_payload(head)


def test_status_and_metrics_validate():
    validate_payload(status_payload("online", STATION, MODEL, "cid", "connected"))
    validate_payload(metrics_payload({"parts_per_s": 4.9, "cameras": {"L1": {"fps": 5.0}}}, STATION, 10.0))
    import numpy as np

    odd = metrics_payload({"p99": np.float32(2.5), "hist": np.arange(3), "since": STATION}, STATION)
    assert odd["metrics"]["p99"] == 2.5 and odd["metrics"]["hist"] == [0, 1, 2]
    assert "plant1" in odd["metrics"]["since"]
    with pytest.raises(ValueError, match="online"):
        status_payload("maybe", STATION, MODEL, "cid", "x")


def test_schema_rejects_broken_payloads():
    (head, defect) = _with_seq(verdict_events(make_verdict(1, n_defects=1), STATION, MODEL, "r"))
    broken = []
    for mutate in (
        lambda p: p.pop("event_id"),
        lambda p: p.update(seq=0),
        lambda p: p.update(verdict="MAYBE"),
        lambda p: p.update(ts="2026-11-21 05:00:00"),
        lambda p: p["defects"][0].update(score=1.5),
        lambda p: p["defects"][0].update(box=[1, 2, 3]),
        lambda p: p.update(unexpected=1),
    ):
        p = copy.deepcopy(head)
        mutate(p)
        broken.append(p)
    d = copy.deepcopy(defect)
    d.pop("camera_id")
    broken.append(d)
    for p in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate_payload(p)


def test_timestamps_are_utc_with_milliseconds():
    assert utc_iso(1700000000.1234) == "2023-11-14T22:13:20.123Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"


def test_topic_root_and_ids():
    assert topic_root("rtvp/{site}/{line}/{station}", STATION) == "rtvp/plant1/glass/st1"
    with pytest.raises(ValueError, match="placeholders"):
        topic_root("rtvp/{plant}", STATION)
    with pytest.raises(ValueError, match="wildcards"):
        topic_root("rtvp/+/{station}", STATION)
    with pytest.raises(ValueError, match="station"):
        StationIds("plant 1", "glass", "st1")
    with pytest.raises(ValueError):
        RunningModel.model_validate({"name": "x", "version": "1", "precision": "int8"})
    alias = {k: v for k, v in MODEL_INFO.items() if k != "bundle_sha256"} | {"bundle_hash": "cd"}
    assert RunningModel.model_validate(alias).bundle_sha256 == "cd"
