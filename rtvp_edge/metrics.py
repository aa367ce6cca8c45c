"""Runtime metrics: verdict counts, latencies (p50/p99 over a sliding window), per-camera frames/s and
drops, queue depths. ``snapshot()`` is what the periodic metrics event and the live line show."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np


class LatencyWindow:
    """The last ``size`` latencies of one stage, in milliseconds."""

    def __init__(self, size: int = 1000) -> None:
        self._v: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._v.append(ms)

    def percentiles(self) -> dict[str, float | None]:
        with self._lock:
            v = np.fromiter(self._v, dtype=np.float64)
        if not len(v):
            return {"p50": None, "p99": None, "n": 0}
        p50, p99 = np.percentile(v, [50, 99])
        return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "n": int(len(v))}


class RuntimeMetrics:
    """Counters and latency windows, updated from the stage threads."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.verdicts = collections.Counter({"OK": 0, "NG": 0, "INCOMPLETE": 0})
        self.latency = collections.defaultdict(LatencyWindow)  # stage -> window
        self.sink_errors = collections.Counter()
        self.stage_errors = collections.Counter()
        self._recent: collections.deque[float] = collections.deque(maxlen=200)  # verdict times
        self._lock = threading.Lock()

    def count_verdict(self, verdict: str, latency_ms: dict[str, float]) -> None:
        with self._lock:
            self.verdicts[verdict] += 1
            self._recent.append(time.monotonic())
        for k, v in latency_ms.items():
            self.latency[k].add(v)

    @property
    def parts(self) -> int:
        return sum(self.verdicts.values())

    def parts_per_s(self) -> float:
        with self._lock:
            r = list(self._recent)
        if len(r) < 2:
            return 0.0
        return (len(r) - 1) / max(r[-1] - r[0], 1e-6)

    def snapshot(self, cameras: dict | None = None, queues: dict | None = None, **extra) -> dict:
        """A JSON-ready dict: parts, verdict counts, parts/s, latencies p50/p99 per stage, cameras
        ({id: {state, fps, frames, dropped, corrupt, wrong_size, reconnects}}), queue depths."""
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "parts": self.parts,
            "verdicts": dict(self.verdicts),
            "parts_per_s": round(self.parts_per_s(), 3),
            "latency_ms": {k: w.percentiles() for k, w in sorted(self.latency.items())},
            "cameras": cameras or {},
            "queues": queues or {},
            "sink_errors": dict(self.sink_errors),
            "stage_errors": dict(self.stage_errors),
            **extra,
        }
