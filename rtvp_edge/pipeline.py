"""The line pipeline: cameras -> part assembler -> batched inference -> verdict -> sinks.

::

    camera threads (one per camera, bounded buffer each, overflow policy)
        -> assembler thread (frames -> parts; INCOMPLETE at timeout)      -> part queue (bounded)
        -> inference thread (preprocess, backend.submit; OpenVINO: several parts in flight)
        -> result queue (bounded) -> decision thread (verdict, evidence, sinks: MQTT, live line, ...)

``build_pipeline(config)`` builds every collaborator once (bundle check, backend, self-test, sources,
publisher); ``Pipeline`` receives them already built, so tests hand it their own. Every stage puts a
sentinel downstream in ``finally``, so a stage that fails ends the run cleanly instead of hanging it; errors
inside a stage become status events and INCOMPLETE verdicts, never dead threads or silent OKs.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rtvp_edge.artifact_choice import (
    CACHE_FILE,
    ArtifactChoice,
    Capacity,
    ChoiceCache,
    PartTimer,
    PinError,
    backend_version,
    choice_key,
    choose_artifact,
    cpu_identity,
    default_cache_dir,
    paced_rate,
    part_timer,
)
from rtvp_edge.assembler import AssembledPart, PartAssembler, TimePairing
from rtvp_edge.backends import Backend, load_backend, load_embeddings
from rtvp_edge.bundle import Artifact, BundleManifest, load_manifest, sha256_file
from rtvp_edge.config import ConfigError, LineConfig
from rtvp_edge.detection_filter import DetectionFilter
from rtvp_edge.evidence import EvidenceWriter
from rtvp_edge.hard_samples import HardSampleWriter
from rtvp_edge.inference import PartInference
from rtvp_edge.messages import CameraSource, Frame, InferredPart, PartVerdict, ViewResult
from rtvp_edge.messaging.outbox import OutboxFullError
from rtvp_edge.metrics import RuntimeMetrics
from rtvp_edge.reload import LineModel, ReloadError, prepare_reload
from rtvp_edge.selftest import run_golden_selftest
from rtvp_edge.sources import CameraState, CameraWorker, FrameBuffer, build_sources
from rtvp_edge.station import StationIds
from rtvp_edge.verdict import VerdictRules

if TYPE_CHECKING:  # the network clients are imported only by build_pipeline, when a line uses them
    from rtvp_edge.messaging.part_ids import PlcPartIds
    from rtvp_edge.messaging.publisher import EventPublisher

log = logging.getLogger(__name__)

_SENTINEL = object()

Sink = Callable[[PartVerdict], None]
StatusSink = Callable[[str, str, str], None]  # (component, state, message)
PartSink = Callable[[PartVerdict, tuple[Frame, ...]], None]  # (verdict, the part's frames by view)


@dataclass(frozen=True)
class RunSummary:
    parts: int
    verdicts: dict[str, int]
    duration_s: float
    metrics: dict


class Pipeline:
    """A running line. Build it with ``build_pipeline`` (or by hand in tests), then ``run()``.

    Args:
        config: the line configuration (camera placement, assembly, runtime sizes).
        sources: {camera id: CameraSource}, not yet opened.
        inference: batched inference bound to the loaded backend.
        verdict_rules: the line's verdict rules (the decision stage judges every part with them).
        sinks: callables taking each ``PartVerdict`` (MQTT publisher, live line, user hooks); a sink that
            raises is counted and reported, the others still get the verdict.
        evidence: optional evidence writer for NG parts (runs before the sinks so events carry the paths).
        publisher: optional MQTT ``EventPublisher``; its ``publish_verdict`` is a sink, it also receives the
            periodic metrics and is flushed at stop.
        status_sinks: callables taking (component, state, message) for camera/stage state changes.
        model_info: bundle identity for logs and metrics.
        rig: the simulated rig when ``source: sim`` (for tests: ``rig.fail_camera``).
        plc: started PLC part-id subscription (``assembly.part_id: plc``), stopped by ``close``.
        part_sinks: like ``sinks`` but called as ``sink(verdict, frames)`` with the part's frames (images,
            capture metadata, the simulated rig's ground truth), e.g. ``--jsonl``.
        plc_station: optional started ``rtvp_edge.messaging.plc.PlcStation`` (the line file's ``plc:``): sees every
            accepted frame (arms the part's reject deadline) and every verdict first (signals the PLC),
            stopped by ``close``.
        hard_samples: optional ``HardSampleWriter`` (the line file's ``hard_samples:``): sees every verdict
            with its frames after the evidence, keeps the hard ones on its own thread; closed by ``close``.
    Attributes:
        model: the ``LineModel`` (vocabulary, thresholds, verdict rules, model identity) new parts are
            inferred with; ``request_reload`` swaps it (``rtvp_edge.reload``).
        exporter: the started ``PrometheusExporter`` when the line file has ``metrics.prometheus_port``
            (``build_pipeline`` sets it; its ``observe`` is a sink), stopped last by ``close``.
    """

    def __init__(
        self,
        config: LineConfig,
        sources: dict[str, CameraSource],
        inference: PartInference,
        verdict_rules: VerdictRules,
        sinks: Sequence[Sink] = (),
        evidence: EvidenceWriter | None = None,
        publisher=None,
        status_sinks: Sequence[StatusSink] = (),
        model_info: dict | None = None,
        rig=None,
        plc: PlcPartIds | None = None,
        part_sinks: Sequence[PartSink] = (),
        plc_station=None,
        hard_samples: HardSampleWriter | None = None,
    ) -> None:
        self.config, self.inference, self.verdict_rules = config, inference, verdict_rules
        self.plc_station = plc_station
        self.evidence, self.publisher, self.rig = evidence, publisher, rig
        self.hard_samples = hard_samples
        if hard_samples is not None and hard_samples.status is None:
            hard_samples.status = self._status
        self.model_info = model_info or {}
        self.model = LineModel(
            inference.manifest, inference.vocabulary, verdict_rules, self.model_info, config
        )
        self._published_generation = 0  # the LineModel generation the publisher's events carry
        self._reload_requests: queue.SimpleQueue = queue.SimpleQueue()  # SimpleQueue.put: signal-safe
        self.reloads: list[dict] = []  # every reload's outcome: {"source", "result", "reason"/"vocabulary"}
        self.sinks: list[Sink] = list(sinks)
        if publisher is not None:
            self.sinks.insert(0, publisher.publish_verdict)
        self.status_sinks = list(status_sinks)
        if plc_station is not None:
            self.status_sinks.append(plc_station.on_status)  # camera / model down -> PLC alarm
        self.part_sinks: list[PartSink] = list(part_sinks)
        self.metrics = RuntimeMetrics()
        self.exporter = None
        self._wakeup = threading.Event()
        self.workers: dict[str, CameraWorker] = {}
        for cam in config.cameras:
            if cam.id not in sources:
                raise ValueError(f"no source built for camera {cam.id!r}")
            res = (cam.resolution.height, cam.resolution.width) if cam.resolution else None
            self.workers[cam.id] = CameraWorker(
                sources[cam.id], cam.view, FrameBuffer(cam.buffer, cam.overflow, self._wakeup), res,
                cam.reconnect_initial_s, cam.reconnect_max_s, self._camera_status,
            )  # fmt: skip
        a = config.assembly
        self.plc = plc
        self.pairing = (
            TimePairing(a.pairing_window_s, {c.id: c.trigger_offset_s for c in config.cameras})
            if a.pairing == "time"
            else None
        )
        self.assembler = PartAssembler(
            a.views_per_part, a.timeout_s, a.part_id_format, a.max_open_parts, plc.resolve if plc else None
        )
        qs = config.runtime.queue_size
        self.part_queue: queue.Queue = queue.Queue(qs)
        # InferredPart per part, then _SENTINEL
        self.result_queue: queue.Queue = queue.Queue(qs + config.model.infer_requests)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._max_parts: int | None = None
        self._metrics_due = threading.Event()
        self.fatal: str | None = None  # why the run had to stop (e.g. the broker refused the login)
        # outbox full with when_full: refuse: verdicts and events not stored (the line stops)
        self.refused_parts = 0
        self.refused_events = 0
        self._refusal: str | None = None
        self._threads: list[threading.Thread] = []
        self._reload_thread: threading.Thread | None = None
        self._reload_lock = threading.Lock()  # one reload at a time
        self._swap_lock = threading.Lock()  # a swap never falls inside a part's submit
        # set by build_pipeline: the artifact chosen, what the box sustains, the rate a sim line was paced to
        self.artifact_choice: ArtifactChoice | None = None
        self.capacity: Capacity | None = None
        self.paced_rate_hz: float | None = None
        self._drops_seen = 0
        self._drops_checked = time.monotonic()

    # -- status --------------------------------------------------------------------------------------
    def _status(self, component: str, state: str, message: str) -> None:
        for s in self.status_sinks:
            try:
                s(component, state, message)
            except Exception:
                log.exception("status sink failed")

    def _camera_status(self, camera_id: str, state: str, message: str) -> None:
        self._status(f"camera/{camera_id}", state, message)
        if state in ("BACKOFF", "STREAMING", "STOPPED"):
            self._metrics_due.set()  # a camera failing or coming back shows on MQTT at once, not in 10 s

    # -- stages --------------------------------------------------------------------------------------
    def _assembler_stage(self) -> None:
        try:
            while True:
                self._wakeup.clear()  # before draining: a put after the drain re-sets it
                parts: list[AssembledPart] = []
                for w in self.workers.values():
                    while (f := w.buffer.get_nowait()) is not None:
                        if self.pairing is not None:
                            f = self.pairing.assign(f)
                        ignored = self.assembler.stats.ignored_frames
                        parts += self.assembler.add(f)
                        if self.plc_station is not None and self.assembler.stats.ignored_frames == ignored:
                            self.plc_station.on_frame(f)  # a new trigger arms its reject deadline
                parts += self.assembler.poll()
                for p in parts:
                    self.part_queue.put(p)  # blocks when inference lags: camera buffers then overflow
                workers = self.workers.values()
                buffered = any(len(w.buffer) for w in workers)
                workers_done = not any(w.alive for w in workers)
                # A recorded/finite line is over when its sources ended and the only cameras left are
                # failing ones (BACKOFF): their parts can no longer complete, waiting would hang the run.
                ended = any(w.finished for w in workers) and all(
                    not w.alive or w.state == CameraState.BACKOFF for w in workers
                )
                if (workers_done or ended) and not buffered:
                    reason = "runtime stopped" if self._stop.is_set() else "sources ended"
                    for p in self.assembler.flush(reason):
                        self.part_queue.put(p)
                    if not workers_done:
                        self.request_stop()
                    break
                if (
                    self._max_parts is not None
                    and self.assembler.stats.parts >= self._max_parts
                    and not self._stop.is_set()
                ):
                    self.request_stop()  # --parts N reached: the cameras can stop
                self._wakeup.wait(0.05)
        except Exception as e:
            self.metrics.stage_errors["assembler"] += 1
            log.exception("assembler stage failed")
            self._status("assembler", "ERROR", f"{type(e).__name__}: {e}")
            self.request_stop()
            try:  # the parts it held still get a verdict (INCOMPLETE), never silence
                for p in self.assembler.flush(f"assembler failed: {type(e).__name__}"):
                    self.part_queue.put(p)
            except Exception:
                log.exception("assembler flush after failure failed")
        finally:
            self.part_queue.put(_SENTINEL)

    def _inference_stage(self) -> None:
        try:
            while (part := self.part_queue.get()) is not _SENTINEL:
                # one LineModel per part: submit reads the inference's vocabulary, which a reload swaps
                # together with self.model under this lock (it waits while a submit blocks on the backend)
                with self._swap_lock:
                    lm = self.model
                    try:
                        self.inference.submit(part, functools.partial(self._on_inferred, model=lm))
                    except Exception as e:  # preprocessing or submit failed: that part is INCOMPLETE
                        self._on_inferred(part, None, e, {}, lm)
            self.inference.wait_all()
        except Exception as e:
            self.metrics.stage_errors["inference"] += 1
            log.exception("inference stage failed")
            self._status("inference", "ERROR", f"{type(e).__name__}: {e}")
            self.request_stop()
            # drain so the assembler is never blocked on a full queue, and every part still gets a verdict
            while (part := self.part_queue.get()) is not _SENTINEL:
                self._on_inferred(part, None, e, {})
        finally:
            self.result_queue.put(_SENTINEL)

    def _on_inferred(
        self,
        part: AssembledPart,
        views: list[ViewResult] | None,
        err: BaseException | None,
        timing: dict,
        model: LineModel | None = None,
    ) -> None:
        self.result_queue.put(InferredPart(part, None if views is None else tuple(views), err, timing, model))

    def _decide(self, inferred: InferredPart) -> PartVerdict:
        part, views, err = inferred.part, inferred.views, inferred.error
        lm = inferred.model if isinstance(inferred.model, LineModel) else self.model
        extra = []
        if err is not None:
            self.metrics.stage_errors["inference"] += 1
            extra.append(f"inference failed: {type(err).__name__}: {err}")
            self._status("inference", "ERROR", f"part {part.part_id}: {err}")
            views = tuple(
                ViewResult(f.camera_id, f.view_index, f.trigger_seq, f.capture_time, ()) for f in part.frames
            )
        if part.missing_views and part.reason and part.reason != "timeout":
            extra.append(f"part emitted incomplete: {part.reason}")
        latency = {k: round(v, 2) for k, v in inferred.timing_ms.items()}
        latency["trigger_to_verdict"] = round((time.monotonic() - part.first_monotonic) * 1e3, 2)
        first_capture = min((f.capture_time for f in part.frames), default=time.time())
        return lm.verdict_rules.decide(
            part.part_id, part.trigger_seq, views, part.missing_views, first_capture, latency, extra
        )

    def _decision_stage(self) -> None:
        try:
            while (item := self.result_queue.get()) is not _SENTINEL:
                part = item.part
                try:
                    verdict = self._decide(item)
                except Exception as e:  # never silently OK: a part we cannot judge is INCOMPLETE
                    log.exception("verdict failed for part %s", part.part_id)
                    self.metrics.stage_errors["verdict"] += 1
                    verdict = PartVerdict(
                        part.part_id, part.trigger_seq, "INCOMPLETE", (), part.missing_views,
                        (f"verdict failed: {type(e).__name__}: {e}",), decided_time=time.time(),
                    )  # fmt: skip
                if self.plc_station is not None:  # the PLC first: it has a reject gate to meet
                    try:
                        verdict = self.plc_station.on_verdict(verdict)
                    except Exception as e:
                        self.metrics.sink_errors["plc"] += 1
                        log.exception("PLC signal for part %s failed", part.part_id)
                        self._status("plc", "ERROR", f"{type(e).__name__}: {e}")
                if self.evidence is not None:
                    try:
                        verdict = self.evidence.write(verdict, part.frames)
                    except Exception as e:
                        self.metrics.sink_errors["evidence"] += 1
                        log.warning("evidence for part %s not written: %s", part.part_id, e)
                        self._status("evidence", "ERROR", str(e))
                if self.hard_samples is not None:
                    try:  # selects and queues only: the writer has its own thread
                        self.hard_samples(verdict, part.frames)
                    except Exception as e:
                        self.metrics.sink_errors["hard_samples"] += 1
                        log.warning("hard samples: part %s: %s", part.part_id, e)
                lm = item.model if isinstance(item.model, LineModel) else self.model
                if lm.generation != self._published_generation and self.publisher is not None:
                    # the first part of a reloaded vocabulary: its events carry the new bundle hash
                    try:
                        self.publisher.set_model(lm.info)
                    except Exception:
                        log.exception("publisher: model identity not updated")
                    self._published_generation = lm.generation
                self.metrics.count_verdict(verdict.verdict, verdict.latency_ms)
                for sink, with_frames in [(k, False) for k in self.sinks] + [
                    (k, True) for k in self.part_sinks
                ]:
                    try:
                        sink(verdict, part.frames) if with_frames else sink(verdict)
                    except OutboxFullError as e:
                        # every part must be traceable: a verdict the outbox cannot hold stops the line
                        self._refused(verdict, e)
                    except Exception as e:
                        name = getattr(sink, "__qualname__", repr(sink))
                        self.metrics.sink_errors[name] += 1
                        log.warning("sink %s failed on part %s: %s", name, verdict.part_id, e)
        except Exception as e:
            self.metrics.stage_errors["decision"] += 1
            log.exception("decision stage failed")
            self._status("decision", "ERROR", f"{type(e).__name__}: {e}")
            self.request_stop()
            while self.result_queue.get() is not _SENTINEL:  # keep upstream from blocking forever
                pass
        finally:
            self._done.set()

    def _refused(self, verdict: PartVerdict, e: OutboxFullError) -> None:
        self.refused_parts += 1
        self.refused_events += e.events
        self._refusal = str(e)
        log.error("part %s: verdict %s not stored, the line stops: %s", verdict.part_id, verdict.verdict, e)
        if not self.stopping:
            self._status("outbox", "FULL", str(e))
            self.request_stop()

    # -- reload --------------------------------------------------------------------------------------
    def request_reload(self, source: str = "request", request_id: str | None = None) -> None:
        """Ask the running line to reload its vocabulary and thresholds (``rtvp_edge.reload``). Returns at
        once (safe in a signal handler: one ``SimpleQueue.put``); the reload thread checks and swaps, and
        the outcome goes to the log, the status sinks (component ``reload``: ``APPLIED``, ``UNCHANGED`` or
        ``REFUSED``) and the MQTT status topic.

        Args:
            source: who asked, for the log and the announcement (``"SIGHUP"``, ``"mqtt"``, ...).
            request_id: echoed in the announcement (an MQTT command's ``request_id``).
        """
        self._reload_requests.put((source, request_id))

    def reload_now(self, source: str = "request", request_id: str | None = None) -> dict:
        """Run one reload in this thread (the reload thread calls it for each request). Returns its outcome
        (also appended to ``reloads``): ``{"source", "request_id", "result": "applied" | "unchanged" |
        "refused", "reason"?, "vocabulary"}``."""
        with self._reload_lock:
            running = self.model
            outcome: dict = {"source": source, "request_id": request_id}
            try:
                if self.config._source is None:
                    raise ReloadError("the line was not started from a line file: nothing to read again")
                new = prepare_reload(
                    running,
                    self.config.source,
                    self.inference.backend,
                    near_band=running.vocabulary.near_band,
                    fixed_classes=self.plc_station is not None,
                )
            except Exception as e:  # ReloadError, or anything unexpected: the old vocabulary stays
                reason = str(e) if isinstance(e, ReloadError) else f"{type(e).__name__}: {e}"
                outcome.update(result="refused", reason=reason, vocabulary=running.describe())
                log.error(
                    "reload (%s) refused: %s; the running vocabulary and thresholds stay", source, reason
                )
                self._status("reload", "REFUSED", reason)
                self._announce(f"reload refused: {reason}", outcome, running)
                self.reloads.append(outcome)
                return outcome
            same = (
                new.info.get("bundle_sha256") == running.info.get("bundle_sha256")
                and new.config.detection == running.config.detection
                and new.config.verdict == running.config.verdict
            )
            if same:
                outcome.update(result="unchanged", vocabulary=running.describe())
                msg = "reload: bundle and detection/verdict settings unchanged"
                log.info("%s (%s)", msg, source)
                self._status("reload", "UNCHANGED", msg)
                self._announce(msg, outcome, running)
                self.reloads.append(outcome)
                return outcome
            # the swap: parts submitted from here on use ``new``; those in flight finish with ``running``
            with self._swap_lock:  # between two submits (see _inference_stage)
                self.model = new
                self.inference.swap(new.vocabulary)
            self.verdict_rules, self.model_info = new.verdict_rules, new.info
            if self.hard_samples is not None:
                self.hard_samples.set_vocabulary(new.vocabulary.class_names, new.info)
            desc = new.describe()
            outcome.update(result="applied", vocabulary=desc)
            msg = (
                f"reload applied: vocabulary {desc['embeddings_sha256'] or desc['bundle_sha256']} with "
                f"{len(desc['classes'])} classes ({', '.join(desc['classes'])}), bundle {desc['bundle_sha256']}"
            )
            log.warning("%s (%s)", msg, source)
            self._status("reload", "APPLIED", msg)
            self._announce(msg, outcome, new)
            self.reloads.append(outcome)
            return outcome

    def _announce(self, reason: str, outcome: dict, model: LineModel) -> None:
        """The outcome on the retained MQTT status (``vocabulary`` and ``reload`` fields)."""
        if self.publisher is None or not hasattr(self.publisher, "announce"):
            return
        reload = {k: v for k, v in outcome.items() if k != "vocabulary" and v is not None}
        try:
            self.publisher.announce(reason, {"vocabulary": model.describe(), "reload": reload}, model.info)
        except Exception:
            self.metrics.sink_errors["reload announcement"] += 1
            log.exception("reload outcome not published on MQTT")

    def on_command(self, command: str, payload: dict) -> None:
        """An MQTT command for this station (``<root>/command/<command>``, JSON payload): ``reload`` asks
        for a reload (``payload["request_id"]``, optional, is echoed in the announcement)."""
        if command == "reload":
            rid = payload.get("request_id")
            self.request_reload("mqtt", None if rid is None else str(rid))
        else:
            log.warning("MQTT command %r unknown (known: reload); ignored", command)

    def _reload_stage(self) -> None:
        while (req := self._reload_requests.get()) is not _SENTINEL:
            try:
                self.reload_now(*req)
            except Exception:  # reload_now reports its own failures; this is a bug, not a stop
                log.exception("reload failed")

    # -- control -------------------------------------------------------------------------------------
    def start(self, max_parts: int | None = None) -> None:
        """Start cameras and stages. ``max_parts``: judge exactly this many parts, then stop."""
        self._max_parts = max_parts
        self.assembler.max_parts = max_parts  # only the first N triggers become parts: exactly N verdicts
        for w in self.workers.values():
            w.start()
        for name, fn in (
            ("assembler", self._assembler_stage),
            ("inference", self._inference_stage),
            ("decision", self._decision_stage),
        ):
            t = threading.Thread(target=fn, name=f"stage-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._reload_thread = threading.Thread(target=self._reload_stage, name="reload", daemon=True)
        self._reload_thread.start()
        self._status("pipeline", "RUNNING", f"{len(self.workers)} cameras")
        if self.artifact_choice is not None:
            self._status("model", "ARTIFACT", self.artifact_choice.describe())
        if self.capacity is not None:
            self._status("capacity", *self.capacity_state())

    def capacity_state(self) -> tuple[str, str]:
        """(state, message) of the line's rate against the box: ``OK``, ``PACED`` (a simulated line slowed
        to what the box sustains) or ``OVERLOADED`` (a real line faster than the box: frames will drop)."""
        c = self.capacity
        if c is None:
            return "UNKNOWN", "capacity not measured"
        if self.paced_rate_hz is not None:
            return "PACED", (
                f"simulated line paced to {self.paced_rate_hz:.2f} parts/s: {c.describe()}; the rig is slowed "
                "instead of overloading the box into INCOMPLETE parts"
            )
        if c.overloaded:
            return "OVERLOADED", (
                f"the line is faster than this box: {c.describe()}; frames will be dropped and parts "
                "become INCOMPLETE"
            )
        return "OK", c.describe()

    def _check_drops(self, every_s: float = 10.0) -> None:
        """Say, at most every ``every_s``, how many frames the camera buffers dropped and why."""
        now = time.monotonic()
        if now - self._drops_checked < every_s:
            return
        dropped = sum(w.buffer.dropped for w in self.workers.values())
        new = dropped - self._drops_seen
        self._drops_seen, self._drops_checked = dropped, now
        if new <= 0:
            return
        msg = (
            f"{new} frame(s) dropped by the camera buffers in the last {every_s:.0f} s: {self.drop_reason()}"
        )
        log.warning(msg)
        self._status("capacity", "DROPPING", msg)

    def drop_reason(self) -> str:
        c = self.capacity
        if c is not None and c.overloaded and self.paced_rate_hz is None:
            return (
                f"the line ({c.line_rate_hz:g} parts/s, {c.rate_source}) is faster than this box sustains "
                f"({c.parts_per_s:.2f} parts/s with this bundle)"
            )
        return "inference fell behind the cameras (queues full)"

    def request_stop(self) -> None:
        """Stop the cameras; parts already captured are still judged and published. Thread-safe,
        signal-safe (only sets flags)."""
        self._stop.set()
        for w in self.workers.values():
            w.stop()
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every part has gone through the sinks (after a stop or the end of the sources)."""
        return self._done.wait(timeout)

    def snapshot(self) -> dict:
        cams = {}
        for cid, w in self.workers.items():
            s = w.stats
            cams[cid] = {
                "state": w.state.value, "fps": round(s.fps(), 2), "frames": s.frames,
                "dropped": w.buffer.dropped, "corrupt": s.corrupt, "wrong_size": s.wrong_size,
                "reconnects": s.reconnects, "buffered": len(w.buffer),
            }  # fmt: skip
        queues = {
            "parts": self.part_queue.qsize(),
            "results": self.result_queue.qsize(),
            "open_parts": self.assembler.open_parts,
        }
        extra = {
            "late_frames": self.assembler.stats.late_frames,
            "duplicate_frames": self.assembler.stats.duplicate_frames,
            "gap_parts": self.assembler.stats.gap_parts,
            "lost_triggers": self.assembler.stats.lost_triggers,
        }
        if self.plc is not None:
            extra["plc"] = {
                "received": self.plc.received,
                "missing": self.plc.missing,
                "malformed": self.plc.malformed,
            }
        if self.artifact_choice is not None:
            extra["artifact"] = self.artifact_choice.as_dict()
        if self.capacity is not None:
            extra["capacity"] = {**self.capacity.as_dict(), "paced_rate_hz": self.paced_rate_hz}
        if self.plc_station is not None:
            extra["plc_signals"] = dict(self.plc_station.stats)
        if self.hard_samples is not None:
            extra["hard_samples"] = self.hard_samples.stats()
        extra["vocabulary_generation"] = self.model.generation
        if self.publisher is not None:
            try:
                extra["outbox_depth"] = self.publisher.outbox_depth()
            except Exception as e:
                extra["outbox_depth"] = f"unknown: {e}"
        return self.metrics.snapshot(cams, queues, **extra)

    def broker_state(self) -> str:
        if self.publisher is None:
            return "none"
        return str(getattr(self.publisher, "state", "?"))

    def publish_metrics(self) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish_metrics(self.snapshot())
        except Exception as e:
            self.metrics.sink_errors["metrics"] += 1
            log.warning("metrics not published: %s", e)

    def run(
        self,
        max_parts: int | None = None,
        duration_s: float | None = None,
        stop_event: threading.Event | None = None,
        on_tick: Callable[[Pipeline], None] | None = None,
        tick_s: float = 0.5,
    ) -> RunSummary:
        """Run until ``max_parts`` parts are judged, ``duration_s`` passed, ``stop_event`` is set, or every
        source ended; then stop cleanly (in-flight parts are judged and published).

        Args:
            on_tick: called every ``tick_s`` from this thread (the live line).
        """
        t0 = time.monotonic()
        self.start(max_parts)
        last_metrics = t0
        interval = self.config.mqtt.metrics_interval_s
        try:
            while not self._done.wait(tick_s):
                now = time.monotonic()
                if duration_s is not None and now - t0 >= duration_s and not self.stopping:
                    self.request_stop()
                if stop_event is not None and stop_event.is_set() and not self.stopping:
                    self.request_stop()
                # periodic, and early (at most once a second) after a camera changed state
                if now - last_metrics >= interval or (
                    self._metrics_due.is_set() and now - last_metrics >= 1.0
                ):
                    self._metrics_due.clear()
                    self.publish_metrics()
                    last_metrics = now
                if self.publisher is not None and getattr(self.publisher, "error", None) is not None:
                    # the broker refused us (credentials/TLS): stop rather than fill the outbox for hours
                    self.fatal = str(self.publisher.error)
                    self.request_stop()
                self._check_drops()
                if on_tick is not None:
                    on_tick(self)
        finally:
            self.request_stop()
            self._reload_requests.put(_SENTINEL)
            for w in self.workers.values():
                w.join(5.0)
            for t in self._threads:
                t.join(30.0)
            if self._reload_thread is not None:
                self._reload_thread.join(60.0)  # a reload in its self-test finishes (or is refused) first
        if self.refused_parts:
            self.fatal = (
                f"outbox full with when_full: refuse: the line stopped; {self.refused_parts} part verdict(s), "
                f"{self.refused_events} event(s), refused (not stored, not sent) ({self._refusal})"
            )
        self.publish_metrics()
        snap = self.snapshot()
        return RunSummary(self.metrics.parts, dict(self.metrics.verdicts), time.monotonic() - t0, snap)

    def close(self, flush_timeout: float = 10.0) -> None:
        """Stop the publisher (flushes the outbox or keeps it for the next start) and the backend."""
        if self.plc is not None:
            self.plc.stop()
        if self.hard_samples is not None:
            try:
                self.hard_samples.close()
            except Exception:
                log.exception("hard samples writer close failed")
        if self.plc_station is not None:
            try:
                self.plc_station.stop()
            except Exception:
                log.exception("PLC servers stop failed")
        if self.publisher is not None:
            try:
                self.publisher.stop(flush_timeout)
            except Exception:
                log.exception("publisher stop failed")
        try:
            self.inference.backend.close()
        except Exception:
            log.exception("backend close failed")
        if self.exporter is not None:  # last: the endpoint answers while the line shuts down
            self.exporter.stop()


# ---------------------------------------------------------------------------------------------------


def load_and_check_bundle(
    bundle_dir: str | Path,
    backend_name: str,
    device: str = "CPU",
    threads: int = 0,
    infer_requests: int = 2,
    selftest: bool = True,
    public_key: str | None = None,
) -> tuple[BundleManifest, Backend]:
    """Verify a bundle's hashes (and, with ``public_key``, its signature), load its backend and run the
    golden self-test.

    Raises:
        BundleError: tampered/incomplete/unsigned bundle, backend cannot load it, or the self-test fails.
    """
    manifest = load_manifest(bundle_dir, public_key=public_key)
    backend = load_backend(backend_name, bundle_dir, manifest, device, threads, infer_requests)
    if selftest:
        try:
            run_golden_selftest(bundle_dir, manifest, backend)
        except BaseException:
            backend.close()
            raise
    return manifest, backend


@dataclass
class LoadedModel:
    """A verified bundle with the artifact chosen for this machine loaded and self-tested.

    Attributes:
        info: the running model's identity for events, logs and metrics (``model_info``).
    """

    manifest: BundleManifest
    backend: Backend
    choice: ArtifactChoice
    capacity: Capacity
    info: dict


def line_rate(config: LineConfig) -> tuple[float | None, str | None]:
    """(parts/s the line delivers, the line-file key that says so): ``sim.line_rate_hz`` for a simulated
    line, else ``line.expected_rate_hz``; None when the line file does not say (or a simulated line runs
    with ``realtime: false``, as fast as the box takes its frames)."""
    if any(c.kind == "sim" for c in config.cameras):
        if not config.sim.realtime:
            return None, "sim.realtime: false, frames as fast as the box takes them"
        return config.sim.line_rate_hz, "sim.line_rate_hz"
    if config.line.expected_rate_hz is not None:
        return config.line.expected_rate_hz, "line.expected_rate_hz"
    return None, None


def load_model(
    config: LineConfig,
    *,
    time_part: PartTimer | None = None,
    loader=None,
    cache: ChoiceCache | None = None,
) -> LoadedModel:
    """Verify the line's bundle, choose and load its artifact (``model.artifact``; ``auto``: the fastest
    here within the accuracy budget, cached per machine), run the golden self-test, and measure what the box
    sustains (one part = one batch of ``assembly.views_per_part`` views).

    Args:
        time_part: seconds per part of a loaded backend (default: ``part_timer`` on the golden images).
        loader: ``loader(artifact) -> Backend`` (default: ``load_backend`` with the line's settings).
        cache: the artifact choice cache (default: ``$XDG_CACHE_HOME/rtvp-edge/artifact-choice.json``).
    Raises:
        BundleError: the bundle is refused or its self-test fails.
        ConfigError: ``model.artifact`` pins a precision the bundle lacks.
    """
    m = config.model
    manifest = load_manifest(m.bundle, public_key=m.public_key)
    views = config.assembly.views_per_part
    if loader is None:

        def loader(art):
            return load_backend(m.backend, m.bundle, manifest, m.device, m.threads, m.infer_requests, art)

    if time_part is None:
        time_part = part_timer(m.bundle, manifest, views, load_embeddings(m.bundle, manifest))
    cpu_model, cpu_flags = cpu_identity()
    bundle_hash = sha256_file(Path(m.bundle) / "manifest.json")
    key = choice_key(cpu_model, cpu_flags, m.backend, backend_version(m.backend), m.device, bundle_hash)
    cache = cache if cache is not None else ChoiceCache(default_cache_dir() / CACHE_FILE)
    try:
        choice, backend = choose_artifact(manifest, m.backend, loader, time_part, m.artifact, cache, key)
    except PinError as e:
        raise ConfigError(f"{config.source}: {e}") from None
    try:
        if m.selftest:
            run_golden_selftest(m.bundle, manifest, backend)
        part_s = choice.part_s[choice.precision] if choice.how == "measured" else time_part(backend)
        capacity = Capacity(float(part_s), views, *line_rate(config))
    except BaseException:
        backend.close()
        raise
    info = model_info(manifest, m.backend, bundle_hash, choice.artifact)
    return LoadedModel(manifest, backend, choice, capacity, info)


def model_info(
    manifest: BundleManifest, backend: str, bundle_sha256: str, artifact: Artifact | None = None
) -> dict:
    """Identity of the running model for events: name, version, precision (of ``artifact``, the one
    running; default the backend's first), backend and the bundle's hash ``bundle_sha256`` (sha256 of its
    manifest.json, which lists the sha256 of every file: ``sha256sum manifest.json``; ``load_model``
    hashes it once per start)."""
    have = {a.backend for a in manifest.artifacts}
    # TensorRT builds from the ONNX; OpenVINO reads the ONNX when the bundle ships no IR
    art = artifact or manifest.artifact(backend if backend in have else "onnxruntime")
    return {
        "name": manifest.model.name,
        "version": manifest.model.version,
        "precision": art.precision,
        "backend": backend,
        "bundle_sha256": bundle_sha256,
    }


def build_detection_filter(config: LineConfig, manifest: BundleManifest) -> DetectionFilter:
    """The line's ``detection:`` filters over the bundle's vocabulary and default thresholds.

    Raises:
        ConfigError: a class threshold names a class the bundle lacks (the message names the file).
    """
    try:
        return DetectionFilter(
            config.detection,
            [c.name for c in manifest.vocabulary.classes],
            manifest.thresholds.score,
            manifest.thresholds.class_scores,
        )
    except ValueError as e:
        raise ConfigError(f"{config.source}: {e}") from None


def build_verdict_rules(config: LineConfig, manifest: BundleManifest) -> VerdictRules:
    """The line's ``verdict:`` rules over the bundle's vocabulary.

    Raises:
        ConfigError: a rule names a class the bundle lacks (the message names the file).
    """
    try:
        return VerdictRules(config.verdict, [c.name for c in manifest.vocabulary.classes])
    except ValueError as e:
        raise ConfigError(f"{config.source}: {e}") from None


def build_pipeline(
    config: LineConfig,
    *,
    sinks: Sequence[Sink] = (),
    status_sinks: Sequence[StatusSink] = (),
    publisher=None,
    use_mqtt: bool = True,
    part_sinks: Sequence[PartSink] = (),
    time_part: PartTimer | None = None,
) -> Pipeline:
    """Build every collaborator of a line once: bundle (hash check), the artifact for this machine and its
    backend, golden self-test, capacity, detection filter and verdict rules, sources (a simulated line paced
    to what the box sustains), evidence writer and (when ``use_mqtt``) the MQTT event publisher.

    Args:
        time_part: seconds per part of a loaded backend (tests inject a slow or fast box); see ``load_model``.
    Raises:
        BundleError: the bundle is refused (tampered, missing artifact, self-test failed).
        ConfigError: the line file disagrees with the bundle (e.g. a class name the bundle lacks).
    """
    m = config.model
    loaded = load_model(config, time_part=time_part)
    manifest, backend, choice, capacity = loaded.manifest, loaded.backend, loaded.choice, loaded.capacity
    info = loaded.info
    log.info(
        "line %s/%s/%s: bundle %s (%s %s, %s), %s on %s %s, golden self-test %s",
        config.line.site, config.line.line, config.line.station, m.bundle, manifest.model.name,
        manifest.model.version, info["precision"], m.backend, m.device,
        backend.describe(), f"passed ({len(manifest.golden)} images)" if m.selftest else "DISABLED",
    )  # fmt: skip
    log.info("%s", choice.describe())
    hard_samples = None
    try:
        paced = None
        sources_config = config
        if capacity.overloaded and any(c.kind == "sim" for c in config.cameras):
            # a simulated line can be slowed: pace the rig instead of overloading the box into INCOMPLETE
            paced = paced_rate(capacity)
            sources_config = config.model_copy(
                update={"sim": config.sim.model_copy(update={"line_rate_hz": paced})}
            )
            log.warning(
                "capacity: %s: the simulated line is paced to %.2f parts/s", capacity.describe(), paced
            )
        elif capacity.overloaded:
            log.warning(
                "capacity: %s: the line is faster than this box; frames will be dropped and parts become "
                "INCOMPLETE (a faster box, a lighter artifact or fewer views per part would keep up)",
                capacity.describe(),
            )
        else:
            log.info("capacity: %s", capacity.describe())
        detection_filter = build_detection_filter(config, manifest)
        verdict_rules = build_verdict_rules(config, manifest)
        crops = {c.id: c.crop for c in config.cameras if c.crop is not None}
        hs = config.hard_samples
        inference = PartInference(
            backend, manifest, m.bundle, detection_filter, config.detection.iou_threshold, crops=crops,
            near_band=hs.near_threshold_band if hs.enabled else 0.0,
        )  # fmt: skip
        try:
            sources, rig = build_sources(sources_config)
        except ValueError as e:  # e.g. the rig refuses a setting the schema let through
            raise ConfigError(f"{config.source}: cameras: {e}") from None
        ev = config.evidence
        evidence = (
            EvidenceWriter(ev.dir, ev.retention_days, ev.max_files, ev.jpeg_quality) if ev.enabled else None
        )
        hard_samples = (
            HardSampleWriter(
                hs.dir,
                [c.name for c in manifest.vocabulary.classes],
                info,
                near_band=hs.near_threshold_band,
                ok_share=hs.ok_share,
                seed=hs.seed,
                max_files=hs.max_files,
                max_bytes=int(hs.max_mb * 2**20),
                retention_days=hs.retention_days,
                queue_parts=hs.queue_parts,
            )  # fmt: skip
            if hs.enabled
            else None
        )
        if publisher is None and use_mqtt:
            publisher = _build_publisher(config, info)
        plc = None
        if config.assembly.part_id == "plc":
            from rtvp_edge.messaging.part_ids import PlcPartIds

            ids = config.line
            plc = PlcPartIds(
                config.mqtt, config.assembly.plc_topic, f"rtvp-{ids.site}-{ids.line}-{ids.station}-plc"
            )
            plc.start()
        if config.plc is not None and config.plc.reject_deadline_ms is not None:
            _check_reject_deadline(config, inference)  # before the PLC servers listen
        plc_station = _build_plc_station(config, manifest) if config.plc is not None else None
        pipeline = Pipeline(
            config,
            sources,
            inference,
            verdict_rules,
            sinks,
            evidence,
            publisher,
            status_sinks,
            info,
            rig,
            plc,
            part_sinks,
            plc_station,
            hard_samples,
        )
        pipeline.artifact_choice, pipeline.capacity, pipeline.paced_rate_hz = choice, capacity, paced
        if publisher is not None and hasattr(publisher, "status_extra"):
            state, _ = pipeline.capacity_state()
            publisher.status_extra = {
                "artifact": choice.as_dict(),
                "capacity": {**capacity.as_dict(), "paced_rate_hz": paced, "state": state},
                "vocabulary": pipeline.model.describe(),
            }
        if publisher is not None and hasattr(publisher, "on_command"):
            publisher.on_command = pipeline.on_command  # <root>/command/reload
    except BaseException:
        if hard_samples is not None:
            hard_samples.close()
        backend.close()
        raise
    if config.metrics.prometheus_port is not None:
        try:
            _start_exporter(config, pipeline)
        except BaseException:
            pipeline.close(flush_timeout=0)
            raise
    return pipeline


def station_ids(config: LineConfig) -> StationIds:
    ids = config.line
    return StationIds(ids.site, ids.line, ids.station)  # without the line's expected rate


def _build_publisher(config: LineConfig, info: dict) -> EventPublisher:
    """The MQTT publisher (not started: ``Pipeline`` owners call ``start()``, which may raise
    ``MqttConnectError`` for refused credentials)."""
    from rtvp_edge.messaging.publisher import EventPublisher

    return EventPublisher(config.mqtt, station_ids(config), info)


def _start_exporter(config: LineConfig, pipeline: Pipeline) -> None:
    """The line file's Prometheus endpoint (``metrics:``), started and attached to ``pipeline``: its
    ``observe`` becomes a sink. An endpoint that cannot start is a ``ConfigError`` naming the key."""
    from rtvp_edge.prometheus import MetricsStartError, PrometheusExporter

    ids, info = config.line, pipeline.model_info
    labels = {"site": ids.site, "line": ids.line, "station": ids.station}
    labels |= {
        f"model_{k}" if k in ("name", "version") else k: str(info[k])
        for k in ("name", "version", "precision", "backend")
        if k in info
    }
    try:
        exporter = PrometheusExporter(pipeline, config.metrics.host, config.metrics.prometheus_port, labels)
        exporter.start()
    except MetricsStartError as e:
        raise ConfigError(f"{config.source}: {e}") from None
    pipeline.exporter = exporter
    pipeline.sinks.append(exporter.observe)


def _check_reject_deadline(config: LineConfig, inference: PartInference) -> None:
    """Time one part's inference (warm-up + 3 runs) against ``plc.reject_deadline_ms``: shorter than the
    best run is a ``ConfigError`` naming the key, shorter than 2x the median a warning (docs/plc.md)."""
    from rtvp_edge.messaging.plc import PlcStartError
    from rtvp_edge.messaging.plc.deadline import check_deadline, time_part_inference

    sizes = [(c.resolution.height, c.resolution.width) for c in config.cameras if c.resolution]
    size = max(sizes) if len(sizes) == len(config.cameras) else None  # unknown: the model's input size
    timing = time_part_inference(inference, config.assembly.views_per_part, size)
    try:
        check_deadline(config.plc.reject_deadline_ms, timing, f"{config.source}: ")  # type: ignore[union-attr]
    except PlcStartError as e:
        raise ConfigError(str(e)) from None


def _build_plc_station(config: LineConfig, manifest: BundleManifest):
    """The line file's ``plc:`` servers around one ``PlcStation`` (started). A server that cannot start
    (port in use, password variable unset, bad certificate) is a ``ConfigError`` naming the key."""
    from rtvp_edge.messaging.plc import PlcStartError, build_plc_station

    try:
        return build_plc_station(
            config.plc,
            config.line.station,
            [c.name for c in manifest.vocabulary.classes],
            config.assembly.part_id_format,
        )
    except PlcStartError as e:
        raise ConfigError(f"{config.source}: {e}") from None
