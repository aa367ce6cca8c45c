"""Shared pieces of the PLC tests: free ports, a recorded line whose cameras shoot only when the test (the
PLC's gate) lets them, line files with a ``plc:`` section, an MQTT collector, waiting on conditions."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho

from rtvp_edge.config import load_line_config
from rtvp_edge.pipeline import Pipeline, build_pipeline
from rtvp_edge.sources import FolderReplay

CAMS = ("A", "B", "C")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def part_image(ng: bool) -> np.ndarray:
    img = np.full((80, 80, 3), 210, np.uint8)
    if ng:
        img[20:40, 40:60] = 5  # a black spot the toy model detects
    return img


def recorded_line(root: Path, n_parts: int, ng_parts: set[int]) -> Path:
    for cam in CAMS:
        d = root / "rec" / cam
        d.mkdir(parents=True)
        for k in range(n_parts):
            cv2.imwrite(str(d / f"{k:04d}.png"), part_image(ng=(k in ng_parts and cam == "B")))
    return root / "rec"


def line_file(tmp_path: Path, bundle: Path, rec: Path, plc_yaml: str, mqtt_port: int | None) -> Path:
    cams = "\n".join(
        f"  - {{id: {c}, source: {rec / c}, view: {i}, overflow: block, resolution: {{width: 80, height: 80}}}}"
        for i, c in enumerate(CAMS)
    )
    mqtt = (
        f"mqtt: {{broker: external, host: 127.0.0.1, port: {mqtt_port}, outbox: {{path: {tmp_path / 'ob.sqlite'}}}}}"
        if mqtt_port
        else ""
    )
    text = f"""\
line: {{site: s, line: l, station: st1}}
cameras:
{cams}
assembly: {{views_per_part: 3, timeout_s: 30}}
model: {{bundle: {bundle}, backend: openvino, threads: 1}}
detection: {{score_threshold: 0.5}}
evidence: {{enabled: false}}
{mqtt}
plc:
{plc_yaml}
"""
    p = tmp_path / "line.yaml"
    p.write_text(text)
    return p


class GatedReplay(FolderReplay):
    """A recorded camera that shoots only when the gate lets one container through (``Gate.pass_one``)."""

    def __init__(self, *a, gate: threading.Semaphore, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = gate

    def read(self, timeout: float):
        if self._n >= len(self._files):
            return super().read(timeout)  # EndOfStream
        if not self.gate.acquire(timeout=timeout):
            return None
        return super().read(timeout)


class Gate:
    """The photoelectric gate: one ``pass_one()`` = every camera shoots the next container."""

    def __init__(self) -> None:
        self.sems = {c: threading.Semaphore(0) for c in CAMS}

    def pass_one(self) -> None:
        for s in self.sems.values():
            s.release()


def gated_pipeline(line: Path, rec: Path, use_mqtt: bool = True) -> tuple[Pipeline, Gate, list]:
    """The line of ``line`` with gated cameras; its PLC servers started, its publisher started."""
    cfg = load_line_config(line)
    base = build_pipeline(cfg, use_mqtt=use_mqtt)
    gate = Gate()
    sources = {c: GatedReplay(c, i, rec / c, gate=gate.sems[c]) for i, c in enumerate(CAMS)}
    got: list = []
    p = Pipeline(
        cfg, sources, base.inference, base.verdict_rules, sinks=[got.append], publisher=base.publisher,
        plc_station=base.plc_station,
    )  # fmt: skip
    if p.publisher is not None:
        p.publisher.start()
    return p, gate, got


def run_in_thread(p: Pipeline, parts: int) -> threading.Thread:
    t = threading.Thread(target=p.run, kwargs={"max_parts": parts}, daemon=True)
    t.start()
    return t


class Collector:
    """MQTT subscriber of ``<root>/#`` keeping every payload by topic kind."""

    def __init__(self, port: int, root: str = "rtvp/s/l/st1") -> None:
        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"plc-test-{id(self)}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{root}/#", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(20), "collector could not subscribe"

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def verdicts(self) -> dict[str, dict]:
        with self._lock:
            return {p["part_id"]: p for t, p in self.messages if t.endswith("/verdict")}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
