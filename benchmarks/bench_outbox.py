"""Events/s through the durable outbox + broker (QoS 1) against bare paho QoS 1 publishing (ratio).

Starts its own Mosquitto on a free localhost port. Every figure is measured in the same run, so the
ratios compare like with like on whatever machine runs it.

    python benchmarks/bench_outbox.py --events 3000 [--out benchmarks/results/mqtt.md]

Measured (each: from the first publish until the broker acknowledged the last event):
- bare paho: ``client.publish(qos=1)`` of the same payloads, in-flight window as the publisher's;
- EventPublisher, outbox synchronous=FULL / NORMAL: ``publish_verdict`` per part (OK parts: one event
  each) until the outbox is empty (every event acknowledged and deleted);
- outbox append alone (no network), FULL / NORMAL: the cost the pipeline thread pays per verdict;
- latency from ``publish_verdict`` to a subscriber receiving the verdict at a paced 50 verdicts/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtvp_edge.messaging.config import MqttConfig  # noqa: E402
from rtvp_edge.messaging.events import RunningModel, StationIds, verdict_events  # noqa: E402
from rtvp_edge.messaging.outbox import Outbox  # noqa: E402
from rtvp_edge.messaging.publisher import EventPublisher  # noqa: E402
from tests.mqtt_broker import MODEL_INFO, MosquittoBroker, find_mosquitto, make_verdict  # noqa: E402

STATION = StationIds("bench", "glass", "st1")
WINDOW = 32


def bare_paho(broker: MosquittoBroker, payloads: list[bytes]) -> float:
    acked = threading.Semaphore(0)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.release()
    client.connect(broker.host, broker.port)
    client.loop_start()
    time.sleep(0.2)
    start = time.perf_counter()
    for payload in payloads:
        client.publish("rtvp/bench/glass/st1/verdict", payload, qos=1)
    for _ in payloads:
        acked.acquire()
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def through_outbox(broker: MosquittoBroker, n: int, workdir: Path, synchronous: str) -> float:
    cfg = MqttConfig(
        broker="external",
        host=broker.host,
        port=broker.port,
        max_inflight=WINDOW,
        outbox={"path": workdir / f"outbox-{synchronous}.sqlite", "synchronous": synchronous},
    )
    pub = EventPublisher(cfg, STATION, MODEL_INFO).start()
    verdicts = [make_verdict(i, n_defects=0) for i in range(n)]
    start = time.perf_counter()
    for verdict in verdicts:
        pub.publish_verdict(verdict)
    while pub.outbox_depth():
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    pub.stop(flush_timeout=1)
    return elapsed


def paced_latency(
    broker: MosquittoBroker, workdir: Path, synchronous: str, rate_hz: float, n: int
) -> list[float]:
    """Per-event latency (ms) from calling ``publish_verdict`` to a subscriber receiving it, at a line-like rate."""
    received: dict[int, float] = {}
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{synchronous}")
    sub.on_message = lambda c, u, m: received.setdefault(json.loads(m.payload)["seq"], time.perf_counter())
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe("rtvp/bench/+/+/verdict", qos=1)
    sub.loop_start()
    subscribed.wait(10)
    cfg = MqttConfig(
        broker="external",
        host=broker.host,
        port=broker.port,
        client_id=f"bench-paced-{synchronous}",
        outbox={"path": workdir / f"paced-{synchronous}.sqlite", "synchronous": synchronous},
    )
    pub = EventPublisher(cfg, STATION, MODEL_INFO).start()
    sent: dict[int, float] = {}
    period = 1.0 / rate_hz
    next_t = time.perf_counter()
    for i in range(n):
        next_t += period
        time.sleep(max(0.0, next_t - time.perf_counter()))
        t = time.perf_counter()
        (seq,) = pub.publish_verdict(make_verdict(i, n_defects=0))
        sent[seq] = t
    deadline = time.perf_counter() + 10
    while len(received) < n and time.perf_counter() < deadline:
        time.sleep(0.01)
    pub.stop(flush_timeout=1)
    sub.disconnect()
    sub.loop_stop()
    return sorted((received[s] - t) * 1000 for s, t in sent.items() if s in received)


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def append_only(n: int, workdir: Path, synchronous: str) -> float:
    model = RunningModel.model_validate(MODEL_INFO)
    batches = [verdict_events(make_verdict(i, n_defects=0), STATION, model, "r") for i in range(n)]
    with Outbox(workdir / f"append-{synchronous}.sqlite", synchronous=synchronous) as box:
        start = time.perf_counter()
        for batch in batches:
            box.append(batch)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--out", type=Path, help="write a markdown table here")
    args = parser.parse_args()
    binary = find_mosquitto()
    if binary is None:
        print("mosquitto not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    n = args.events
    model = RunningModel.model_validate(MODEL_INFO)
    payloads = []
    for i in range(n):
        (event,) = verdict_events(make_verdict(i, n_defects=0), STATION, model, "r")
        event.payload["seq"] = i + 1
        payloads.append(json.dumps(event.payload, separators=(",", ":")).encode())
    size = sum(map(len, payloads)) / n
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = MosquittoBroker(workdir / "broker", binary).start()
        try:
            rows = [
                ("bare paho publish, QoS 1", bare_paho(broker, payloads)),
                ("EventPublisher + outbox (FULL), QoS 1", through_outbox(broker, n, workdir, "FULL")),
                ("EventPublisher + outbox (NORMAL), QoS 1", through_outbox(broker, n, workdir, "NORMAL")),
                ("outbox append only (FULL), no network", append_only(n, workdir, "FULL")),
                ("outbox append only (NORMAL), no network", append_only(n, workdir, "NORMAL")),
            ]
            latencies = {sync: paced_latency(broker, workdir, sync, 50.0, 250) for sync in ("FULL", "NORMAL")}
        finally:
            broker.stop()
    base = n / rows[0][1]
    lines = [
        f"{n} events of {size:.0f} bytes (one OK verdict each), in-flight window {WINDOW}, Mosquitto on localhost, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| path | events/s | ratio to bare paho |",
        "|---|---:|---:|",
    ]
    for name, elapsed in rows:
        rate = n / elapsed
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")
    lines += [
        "",
        "Latency from `publish_verdict` to a subscriber receiving the verdict, 250 verdicts paced at 50/s:",
        "",
        "| outbox synchronous | received | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for sync, ms in latencies.items():
        lines.append(
            f"| {sync} | {len(ms)}/250 | {_pct(ms, 0.5):.1f} | {_pct(ms, 0.99):.1f} | {ms[-1]:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
