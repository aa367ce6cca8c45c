"""``rtvp_edge.run_line``: a line run from Python with the integrator's own sinks. Every part reaches every
sink once, in the same verdicts the line publishes on MQTT (a real Mosquitto); a sink that raises is
counted and the others still get every verdict; ``stop_event`` stops an endless line cleanly."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from plc_helpers import CAMS, Collector, recorded_line, wait_until
from test_backends import make_toy_bundle

from rtvp_edge import run_line

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("runline") / "bundle")


def line(tmp_path: Path, bundle: Path, rec: Path, mqtt_port: int | None, loop: bool = False) -> Path:
    cams = "\n".join(
        f"  - {{id: {c}, source: {rec / c}, view: {i}, overflow: block, loop: {str(loop).lower()}}}"
        for i, c in enumerate(CAMS)
    )
    mqtt = (
        f"mqtt: {{broker: external, host: 127.0.0.1, port: {mqtt_port}, outbox: {{path: {tmp_path / 'ob.sqlite'}}}}}\n"
        if mqtt_port
        else ""
    )
    p = tmp_path / "line.yaml"
    p.write_text(
        f"line: {{site: s, line: l, station: st1}}\ncameras:\n{cams}\nassembly: {{views_per_part: 3}}\n"
        f"model: {{bundle: {bundle}, backend: openvino, threads: 1}}\ndetection: {{score_threshold: 0.5}}\n"
        f"evidence: {{enabled: false}}\n{mqtt}"
    )
    return p


def test_user_sinks_get_every_verdict_as_published_and_a_failing_sink_is_counted(tmp_path, bundle, mosquitto):
    n, ng = 5, {0, 3}
    rec = recorded_line(tmp_path, n, ng)
    mqtt = Collector(mosquitto.port)
    got, calls = [], []

    def broken(verdict):
        calls.append(verdict.part_id)
        raise RuntimeError("integrator bug")

    try:
        summary = run_line(line(tmp_path, bundle, rec, mosquitto.port), sinks=[broken, got.append])
        published = wait_until(lambda: len(mqtt.verdicts()) == n and mqtt.verdicts(), what="MQTT verdicts")
    finally:
        mqtt.close()
    assert summary.parts == n and summary.verdicts == {"OK": n - len(ng), "NG": len(ng), "INCOMPLETE": 0}
    assert sorted(v.trigger_seq for v in got) == list(
        range(n)
    )  # each part once, to the sink after the failing one
    assert sorted(calls) == sorted(v.part_id for v in got)
    ((name, count),) = summary.metrics["sink_errors"].items()
    assert name.endswith("<locals>.broken") and count == n
    for v in got:
        assert v.verdict == ("NG" if v.trigger_seq in ng else "OK")
        assert published[v.part_id]["verdict"] == v.verdict
        assert published[v.part_id]["trigger_seq"] == v.trigger_seq


def test_stop_event_ends_an_endless_line(tmp_path, bundle):
    rec = recorded_line(tmp_path, 2, {1})
    stop = threading.Event()
    got = []

    def sink(verdict):
        got.append(verdict)
        if len(got) == 4:
            stop.set()

    summary = run_line(
        line(tmp_path, bundle, rec, None, loop=True), sinks=[sink], use_mqtt=False, stop_event=stop
    )
    assert stop.is_set() and summary.parts == len(got) >= 4
    seqs = [v.trigger_seq for v in got]
    assert len(set(seqs)) == len(seqs)  # the looping replay keeps counting: no part judged twice
    complete = [v for v in got if not v.missing_views]
    assert len(complete) >= 4  # the loop replays 0, 1, 0, 1...: odd parts carry B's spot
    assert all(v.verdict == ("NG" if v.trigger_seq % 2 else "OK") for v in complete)
    for v in got:  # a part the stop cut short (or a view late under load) is INCOMPLETE, never a silent OK
        assert not v.missing_views or v.verdict == "INCOMPLETE", (v.verdict, v.reasons)
