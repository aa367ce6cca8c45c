"""The start-up check of ``plc.reject_deadline_ms`` against the measured inference of one part: shorter
than the best run is exit status 2 naming the key (and no PLC server is left listening), shorter than 2x
the median a warning naming the key and the measured time, a comfortable deadline says nothing."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from plc_helpers import free_port, line_file, recorded_line
from test_backends import make_toy_bundle

from rtvp_edge import cli
from rtvp_edge.backends.openvino import OpenVINOBackend
from rtvp_edge.config import load_line_config
from rtvp_edge.messaging.plc import PlcStartError
from rtvp_edge.messaging.plc.deadline import PartTiming, check_deadline
from rtvp_edge.pipeline import build_pipeline

pytestmark = [pytest.mark.timeout(240)]

TIMING = PartTiming(best_ms=40.0, median_ms=50.0, runs=3, views=6, image_size=(820, 700))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("plc-dl") / "bundle")


def test_check_deadline_error_warning_or_nothing(caplog):
    with pytest.raises(PlcStartError) as e:
        check_deadline(39.0, TIMING, "line.yaml: ")
    assert str(e.value).startswith("line.yaml: plc.reject_deadline_ms: 39 ms is shorter than")
    assert "40.0 ms at best, 50.0 ms median over 3 timed runs" in str(e.value)
    assert "6 views of 700x820" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="rtvp_edge.messaging.plc.deadline"):
        warning = check_deadline(40.0, TIMING)  # the best case fits, the typical one with headroom not
    assert warning and warning.startswith("plc.reject_deadline_ms: 40 ms leaves little room")
    assert "50.0 ms median" in warning and warning in caplog.text
    assert check_deadline(99.9, TIMING) is not None
    assert check_deadline(100.0, TIMING) is None


def test_deadline_shorter_than_inference_is_exit_2_and_no_server_listens(tmp_path, bundle, capsys):
    rec = recorded_line(tmp_path, 2, set())
    port = free_port()
    plc = f"  reject_deadline_ms: 0.001\n  modbus: {{host: 127.0.0.1, port: {port}}}\n"
    line = line_file(tmp_path, bundle, rec, plc, None)
    code = cli.main(["run", "--line", str(line), "--no-mqtt", "--no-live", "--parts", "2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{line}: plc.reject_deadline_ms: 0.001 ms is shorter than the model's inference" in err
    assert "3 views of 80x80" in err and "every part would be rejected by deadline" in err
    with socket.socket() as s:  # refused before the Modbus server started: its port is free
        s.bind(("127.0.0.1", port))


def test_deadline_with_little_headroom_warns_naming_key_and_time(tmp_path, bundle, monkeypatch, caplog):
    slow_s, deadline_ms = 0.5, 600  # a part takes >= 500 ms: the best run fits, 2x the median does not
    infer = OpenVINOBackend._infer

    def slow_infer(self, batch, embeddings):
        if len(batch) == 3:  # a part's views (the golden self-test runs single images)
            time.sleep(slow_s)
        return infer(self, batch, embeddings)

    monkeypatch.setattr(OpenVINOBackend, "_infer", slow_infer)
    rec = recorded_line(tmp_path, 1, set())
    plc = f"  reject_deadline_ms: {deadline_ms}\n  modbus: {{host: 127.0.0.1, port: {free_port()}}}\n"
    with caplog.at_level(logging.WARNING, logger="rtvp_edge.messaging.plc.deadline"):
        p = build_pipeline(load_line_config(line_file(tmp_path, bundle, rec, plc, None)), use_mqtt=False)
    p.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "rtvp_edge.messaging.plc.deadline"]
    assert len(warnings) == 1, warnings
    assert f"plc.reject_deadline_ms: {deadline_ms} ms leaves little room" in warnings[0]
    assert "3 views of 80x80" in warnings[0] and " ms median over 3 timed runs" in warnings[0]


def test_comfortable_deadline_starts_without_warning(tmp_path, bundle, caplog):
    rec = recorded_line(tmp_path, 1, set())
    plc = f"  reject_deadline_ms: 60000\n  modbus: {{host: 127.0.0.1, port: {free_port()}}}\n"
    with caplog.at_level(logging.INFO, logger="rtvp_edge.messaging.plc.deadline"):
        p = build_pipeline(load_line_config(line_file(tmp_path, bundle, rec, plc, None)), use_mqtt=False)
    p.close()
    records = [r for r in caplog.records if r.name == "rtvp_edge.messaging.plc.deadline"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert "plc.reject_deadline_ms 60000 ms: one part (3 views of 80x80)" in records[0].getMessage()
