"""The live terminal line of ``rtvp-edge run``: parts/s, OK/NG/INCOMPLETE, latency, broker state.

On a terminal it rewrites one line in place; when the output is a file or a pipe (systemd, CI) it prints a
full line at most every ``interval_s`` so logs stay readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_line(snapshot: dict, broker: str = "-") -> str:
    v = snapshot.get("verdicts", {})
    lat = snapshot.get("latency_ms", {}).get("trigger_to_verdict", {})
    inf = snapshot.get("latency_ms", {}).get("inference", {})

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    cams = snapshot.get("cameras", {})
    down = [c for c, s in cams.items() if s.get("state") in ("BACKOFF", "CONNECTING")]
    dropped = sum(s.get("dropped", 0) for s in cams.values())
    return (
        f"parts {snapshot.get('parts', 0)} ({snapshot.get('parts_per_s', 0):.2f}/s) | "
        f"OK {v.get('OK', 0)} NG {v.get('NG', 0)} INCOMPLETE {v.get('INCOMPLETE', 0)} | "
        f"latency p50 {ms(lat.get('p50'))} p99 {ms(lat.get('p99'))} ms (infer p50 {ms(inf.get('p50'))}) | "
        f"dropped {dropped} | cameras down {','.join(down) or '0'} | broker {broker}"
    )


class LiveLine:
    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.interval_s = interval_s
        self._last = 0.0
        self._width = 0

    def update(self, snapshot: dict, broker: str = "-", force: bool = False) -> None:
        line = format_line(snapshot, broker)
        now = time.monotonic()
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self.stream.flush()
        elif force or now - self._last >= self.interval_s:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last = now

    def close(self, snapshot: dict, broker: str = "-") -> None:
        if self.tty:
            self.stream.write("\n")
        self.update(snapshot, broker, force=not self.tty)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
