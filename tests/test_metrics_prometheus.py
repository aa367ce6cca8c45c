"""The Prometheus endpoint of a real line (recorded cameras, the toy bundle, a real Mosquitto broker, a
real Modbus client as the PLC), scraped over HTTP with urllib: the figures match what the line did, and
the endpoint keeps answering while the broker is down (the outbox grows, ``rtvp_mqtt_connected`` is 0).
Line-file errors name the ``metrics`` key; a port in use is exit status 2."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from plc_helpers import CAMS, free_port, recorded_line, wait_until
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import ModbusTcpClient
from test_backends import make_toy_bundle

from rtvp_edge import cli
from rtvp_edge.config import ConfigError, load_line_config
from rtvp_edge.pipeline import build_pipeline
from rtvp_edge.prometheus import PrometheusExporter

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("prom") / "bundle")


def metrics_line(
    tmp_path: Path, bundle: Path, rec: Path, metrics: str, mqtt_port: int | None, plc: str = ""
) -> Path:
    cams = "\n".join(
        f"  - {{id: {c}, source: {rec / c}, view: {i}, overflow: block, resolution: {{width: 80, height: 80}}}}"
        for i, c in enumerate(CAMS)
    )
    mqtt = (
        f"mqtt: {{broker: external, host: 127.0.0.1, port: {mqtt_port}, outbox: {{path: {tmp_path / 'ob.sqlite'}}}}}"
        if mqtt_port
        else ""
    )
    p = tmp_path / "line.yaml"
    p.write_text(
        f"""\
line: {{site: s, line: l, station: st1}}
cameras:
{cams}
assembly: {{views_per_part: 3, timeout_s: 30}}
model: {{bundle: {bundle}, backend: openvino, threads: 1}}
detection: {{score_threshold: 0.5}}
evidence: {{enabled: false}}
{mqtt}
{plc}
metrics:
{metrics}
"""
    )
    return p


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics over HTTP; {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def test_scrape_a_running_line_also_while_the_broker_is_down(tmp_path, bundle, mosquitto):
    n, ng, stop_at, hold_at = 10, {1, 5, 8}, 2, 6
    rec = recorded_line(tmp_path, n, ng)
    port, mb_port = free_port(), free_port()
    plc = f"plc:\n  modbus: {{host: 127.0.0.1, port: {mb_port}}}\n"
    line = metrics_line(
        tmp_path, bundle, rec, f"  prometheus_port: {port}\n  host: 127.0.0.1", mosquitto.port, plc
    )
    p = build_pipeline(load_line_config(line))
    plc_client = ModbusTcpClient("127.0.0.1", port=mb_port, timeout=10)
    held, scraped = threading.Event(), threading.Event()
    got: list = []

    def sink(v):  # runs in the decision stage, after the exporter's own sink
        got.append(v)
        if v.trigger_seq == stop_at:  # the broker goes away; the line goes on
            mosquitto.stop()
            wait_until(lambda: not p.publisher.connected, what="publisher to see the broker gone")
        if v.trigger_seq == hold_at:  # hold the line here until the test has scraped
            held.set()
            assert scraped.wait(120), "test never scraped"

    p.sinks.append(sink)
    try:
        assert plc_client.connect(), "Modbus client could not connect"
        p.publisher.start()
        before = scrape(port)  # answers before the first part
        assert value(before, "rtvp_mqtt_connected") == 1.0
        assert value(before, "rtvp_camera_frames_total", camera="A") == 0
        assert value(before, "rtvp_plc_clients", protocol="modbus") == 1
        summary = {}
        t = threading.Thread(target=lambda: summary.update(s=p.run(max_parts=n)), daemon=True)
        t.start()
        assert held.wait(120), "line never reached the held part"
        down = scrape(port)  # broker down, line mid-run
        assert value(down, "rtvp_mqtt_connected") == 0.0
        assert value(down, "rtvp_outbox_depth") >= hold_at - stop_at  # one verdict event per part at least
        judged = sum(v for (name, _), v in down.items() if name == "rtvp_parts_total")
        assert judged == hold_at + 1  # parts 0..hold_at counted, the decision stage waits in our sink
        assert value(down, "rtvp_trigger_to_verdict_seconds_count") == hold_at + 1
        scraped.set()
        mosquitto.start()
        t.join(120)
        assert not t.is_alive(), "line did not finish"
        wait_until(lambda: p.publisher.outbox_depth() == 0, what="outbox to drain after the broker came back")
        end = scrape(port)
        second = PrometheusExporter(p, "127.0.0.1", free_port()).start()  # own registry: no clash
        try:
            assert value(scrape(second.port), "rtvp_camera_frames_total", camera="B") == n
        finally:
            second.stop()
    finally:
        plc_client.close()
        p.close()
    verdicts = {v: sum(1 for g in got if g.verdict == v) for v in ("OK", "NG")}
    assert summary["s"].parts == n and verdicts == {"OK": n - len(ng), "NG": len(ng)}
    for cam in CAMS:
        assert value(end, "rtvp_camera_frames_total", camera=cam) == n
        assert value(end, "rtvp_camera_dropped_frames_total", camera=cam) == 0
    assert value(end, "rtvp_parts_total", verdict="OK") == n - len(ng)
    assert value(end, "rtvp_parts_total", verdict="NG") == len(ng)
    assert value(end, "rtvp_parts_total", verdict="INCOMPLETE") == 0
    assert value(end, "rtvp_trigger_to_verdict_seconds_count") == n
    assert value(end, "rtvp_inference_seconds_count") == n
    assert value(end, "rtvp_inference_seconds_bucket", le="+Inf") == n
    slowest = max(v.latency_ms["trigger_to_verdict"] for v in got) / 1e3
    assert value(end, "rtvp_trigger_to_verdict_seconds_sum") <= slowest * n
    assert value(end, "rtvp_mqtt_connected") == 1.0 and value(end, "rtvp_outbox_depth") == 0
    assert value(end, "rtvp_plc_signals_total", signal="reject") == len(ng)
    assert value(end, "rtvp_plc_signals_total", signal="pass") == n - len(ng)
    assert value(end, "rtvp_plc_acks_missed_total", protocol="modbus") == n - 1  # the client never acked
    assert value(end, "rtvp_line_info", site="s", line="l", station="st1", model_name="toy_rtvp", model_version="test",
                 precision="fp32", backend="openvino") == 1  # fmt: skip
    with pytest.raises(OSError):  # closed with the line
        scrape(port)


@pytest.mark.parametrize(
    ("metrics", "key", "message"),
    [
        ("  prometheus_port: 70000", "metrics.prometheus_port", "less than or equal to 65535"),
        ("  prometheus_port: nine", "metrics.prometheus_port", "valid integer"),
        ("  prometheus_prot: 9108", "metrics.prometheus_prot", "unknown key"),
        ("  prometheus_port: 9108\n  host: ''", "metrics.host", "at least 1 character"),
    ],
)
def test_bad_metrics_section_names_the_key(tmp_path, bundle, metrics, key, message):
    rec = recorded_line(tmp_path, 1, set())
    line = metrics_line(tmp_path, bundle, rec, metrics, None)
    with pytest.raises(ConfigError) as e:
        load_line_config(line)
    assert f"{key}: " in str(e.value) and message in str(e.value), str(e.value)
    assert cli.main(["check", "--line", str(line)]) == 2


def test_metrics_port_in_use_is_exit_2_naming_the_key(tmp_path, bundle, capsys):
    rec = recorded_line(tmp_path, 2, set())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = metrics_line(tmp_path, bundle, rec, f"  prometheus_port: {port}\n  host: 127.0.0.1", None)
        code = cli.main(["run", "--line", str(line), "--no-mqtt", "--no-live", "--parts", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"metrics.prometheus_port: cannot listen on 127.0.0.1:{port}: address already in use" in err


def test_unknown_metrics_host_is_exit_2_naming_the_key(tmp_path, bundle, capsys):
    rec = recorded_line(tmp_path, 2, set())
    line = metrics_line(
        tmp_path, bundle, rec, f"  prometheus_port: {free_port()}\n  host: no-such-host.invalid", None
    )
    code = cli.main(["run", "--line", str(line), "--no-mqtt", "--no-live", "--parts", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "metrics.host: cannot resolve 'no-such-host.invalid'" in err
