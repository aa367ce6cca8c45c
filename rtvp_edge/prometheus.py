"""The Prometheus scrape endpoint of a running line (the line file's ``metrics.prometheus_port``).

One ``PrometheusExporter`` per pipeline, with its own ``CollectorRegistry`` (never the process-global one,
so several lines, or several tests, run in one process). Two kinds of figures::

    decision stage --observe(verdict)--> latency histograms (trigger-to-verdict, inference), as parts pass
    HTTP GET /metrics --collect()------> read at scrape time from the pipeline: frames and drops per
                                         camera, parts by verdict, queue and outbox depth, broker and PLC
                                         connection state, PLC signals, acknowledgements missed

Scrape-time figures come from counters and lengths the stages already keep (no lock held across I/O, no
network call), so the endpoint keeps answering while the MQTT broker is down or a camera is backing off.
``prometheus_client`` is imported only when a line asks for the endpoint (the ``metrics`` extra).
Names, labels and units: docs/runtime.md.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator

from rtvp_edge.messages import PartVerdict

log = logging.getLogger(__name__)

# Histogram buckets in seconds: a part takes tens to hundreds of ms on an edge CPU; a reject gate is
# typically 0.5-2 s after the camera gate.
TRIGGER_TO_VERDICT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class MetricsStartError(RuntimeError):
    """The endpoint cannot start; the message names the line-file key (``metrics.prometheus_port``...)."""


class PrometheusExporter:
    """Serve a pipeline's figures on ``http://host:port/metrics``.

    Args:
        pipeline: the ``Pipeline`` whose figures are read at scrape time (workers, metrics, queues,
            publisher, plc_station).
        host, port: where to listen (``metrics.host``, ``metrics.prometheus_port``).
        labels: constant labels of the ``rtvp_line_info`` gauge (site, line, station, model, ...).
    """

    def __init__(self, pipeline, host: str, port: int, labels: dict[str, str] | None = None) -> None:
        try:
            import prometheus_client as pc
        except ImportError as e:
            raise MetricsStartError(
                f"metrics.prometheus_port needs prometheus-client: pip install 'rtvp-edge[metrics]' ({e})"
            ) from None
        self._pc = pc
        self.pipeline, self.host, self.port = pipeline, host, port
        self.labels = dict(labels or {})
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self.trigger_to_verdict = pc.Histogram(
            "rtvp_trigger_to_verdict_seconds",
            "From a part's trigger (first frame) to its verdict",
            buckets=TRIGGER_TO_VERDICT_BUCKETS,
            registry=self.registry,
        )
        self.inference = pc.Histogram(
            "rtvp_inference_seconds",
            "Model inference of one part (all its views in one batch)",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LineCollector(self))
        self._server = None
        self._thread = None

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> PrometheusExporter:
        """Listen. Raises ``MetricsStartError`` naming the key (port in use, host unknown)."""
        try:
            socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise MetricsStartError(f"metrics.host: cannot resolve {self.host!r}: {e}") from None
        try:
            self._server, self._thread = self._pc.start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as e:
            why = "address already in use" if e.errno == errno.EADDRINUSE else str(e)
            if e.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges; the usual one is 9108)"
            key = "metrics.host" if e.errno == errno.EADDRNOTAVAIL else "metrics.prometheus_port"
            raise MetricsStartError(f"{key}: cannot listen on {self.host}:{self.port}: {why}") from None
        log.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    # -- a pipeline sink -------------------------------------------------------------------------------
    def observe(self, verdict: PartVerdict) -> None:
        """Record one part's latencies (``verdict.latency_ms``: trigger_to_verdict, inference, ...)."""
        lat = verdict.latency_ms or {}
        if "trigger_to_verdict" in lat:
            self.trigger_to_verdict.observe(lat["trigger_to_verdict"] / 1e3)
        if "inference" in lat:
            self.inference.observe(lat["inference"] / 1e3)


class _LineCollector:
    """Figures read from the pipeline at scrape time."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def describe(self):  # names only; values come with collect()
        return list(self._families(describe=True))

    def collect(self):
        return list(self._families(describe=False))

    def _families(self, describe: bool) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        ex, p = self.exporter, self.exporter.pipeline
        info = InfoMetricFamily("rtvp_line", "Which line, station and model this endpoint reports")
        frames = CounterMetricFamily("rtvp_camera_frames", "Frames received per camera", labels=["camera"])
        dropped = CounterMetricFamily(
            "rtvp_camera_dropped_frames",
            "Frames dropped by the camera buffer's overflow policy",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            "rtvp_camera_reconnects", "Camera reconnections after a failure", labels=["camera"]
        )
        streaming = GaugeMetricFamily(
            "rtvp_camera_streaming", "1 while the camera delivers frames, 0 otherwise", labels=["camera"]
        )
        parts = CounterMetricFamily("rtvp_parts", "Parts judged, by verdict", labels=["verdict"])
        queues = GaugeMetricFamily("rtvp_queue_depth", "Items waiting between stages", labels=["queue"])
        stage_errors = CounterMetricFamily("rtvp_stage_errors", "Stage failures", labels=["stage"])
        sink_errors = CounterMetricFamily("rtvp_sink_errors", "Sink failures", labels=["sink"])
        outbox = GaugeMetricFamily("rtvp_outbox_depth", "Events written, not yet acknowledged by the broker")
        broker = GaugeMetricFamily("rtvp_mqtt_connected", "1 while connected to the MQTT broker")
        plc_clients = GaugeMetricFamily(
            "rtvp_plc_clients", "PLC clients connected, per protocol", labels=["protocol"]
        )
        plc_acks_missed = CounterMetricFamily(
            "rtvp_plc_acks_missed",
            "Results replaced before the PLC acknowledged them, per protocol",
            labels=["protocol"],
        )
        plc_signals = CounterMetricFamily(
            "rtvp_plc_signals", "Results signalled to the PLC, by signal", labels=["signal"]
        )
        plc_deadline = CounterMetricFamily(
            "rtvp_plc_deadline_rejects", "Parts rejected because no verdict came by the deadline"
        )
        plc_late = CounterMetricFamily("rtvp_plc_late_verdicts", "Verdicts decided after their deadline")
        plc_alarm = GaugeMetricFamily("rtvp_plc_error_code", "PLC ErrorCode bits (docs/plc.md); 0 none")
        families = [
            info, frames, dropped, reconnects, streaming, parts, queues, stage_errors, sink_errors,
            outbox, broker, plc_clients, plc_acks_missed, plc_signals, plc_deadline, plc_late, plc_alarm,
        ]  # fmt: skip
        if describe:
            yield from families
            return
        info.add_metric([], {k: str(v) for k, v in ex.labels.items()})
        for cid, w in p.workers.items():
            frames.add_metric([cid], w.stats.frames)
            dropped.add_metric([cid], w.buffer.dropped)
            reconnects.add_metric([cid], w.stats.reconnects)
            streaming.add_metric([cid], 1.0 if w.state.value == "STREAMING" else 0.0)
        for verdict, n in sorted(p.metrics.verdicts.items()):
            parts.add_metric([verdict], n)
        queues.add_metric(["parts"], p.part_queue.qsize())
        queues.add_metric(["results"], p.result_queue.qsize())
        queues.add_metric(["open_parts"], p.assembler.open_parts)
        for stage, n in sorted(p.metrics.stage_errors.items()):
            stage_errors.add_metric([stage], n)
        for sink, n in sorted(p.metrics.sink_errors.items()):
            sink_errors.add_metric([str(sink)], n)
        yield from (info, frames, dropped, reconnects, streaming, parts, queues, stage_errors, sink_errors)
        if p.publisher is not None:  # in-memory figures: answers while the broker is down
            outbox.add_metric([], p.publisher.outbox_depth())
            broker.add_metric([], 1.0 if p.publisher.connected else 0.0)
            yield from (outbox, broker)
        station = p.plc_station
        if station is not None:
            for server in station.servers:
                proto = getattr(server, "protocol", type(server).__name__)
                plc_clients.add_metric([proto], server.clients())
                plc_acks_missed.add_metric([proto], server.stats["acks_missed"])
            stats = station.stats
            plc_signals.add_metric(["pass"], stats["signalled_pass"])
            plc_signals.add_metric(["reject"], stats["signalled_reject"])
            plc_deadline.add_metric([], stats["deadline"])
            plc_late.add_metric([], stats["late_verdicts"])
            plc_alarm.add_metric([], station.alarm()[0])
            yield from (plc_clients, plc_acks_missed, plc_signals, plc_deadline, plc_late, plc_alarm)
