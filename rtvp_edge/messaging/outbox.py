"""Durable outbox: every event is committed to SQLite before it is sent, and deleted only after the
broker acknowledged it (QoS 1 PUBACK). A crash, a power cut or a broker outage leaves the unsent events
on disk; the next start sends them, in order.

Why these SQLite settings:
- WAL journal: appends (the verdict path) do not block the sender's reads and deletes.
- ``synchronous=FULL`` by default: in WAL mode NORMAL survives a crashed *process* but may lose the
  last commits on a power cut or kernel panic, which is exactly when an edge cabinet loses events (an
  emergency stop cutting power). FULL costs one fsync per commit; a verdict and its defect events are
  one commit, so that is one fsync per part, far below a line's rate. NORMAL is offered for slow
  flash where the integrator accepts that risk.

The station's sequence number lives in the same database, assigned in the same transaction as the
insert, so it keeps increasing across restarts even when the queue was empty.

When the size limit is reached (``when_full``):
- ``drop_oldest`` (default): the oldest queued events are deleted to make room. The line keeps
  running and the newest verdicts, the ones a PLC reject gate acts on, still flow. Never silent: an
  ERROR log line per overflow, ``dropped_total`` persisted and reported in metrics and status, and
  subscribers see the gap in the sequence numbers.
- ``refuse``: ``append`` raises ``OutboxFullError`` and writes nothing; for plants where every part
  must be traceable and the runtime should stop the line instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _exclusive_lock(path: Path):
    """Hold ``<path>.lock`` exclusively while the outbox is open.

    Two processes draining one outbox would send every event twice and interleave their order (e.g.
    a second ``rtvp-edge run`` started by hand beside the service). The kernel drops the lock when
    the process dies, SIGKILL included, so a restart never finds a stale lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard
        return None
    lock_path = Path(f"{path}.lock")
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - kept open for the outbox's lifetime
    except OSError as exc:
        raise OutboxError(
            f"cannot create the outbox lock file {lock_path}: {exc.strerror or exc} (the outbox folder "
            f"{path.parent} must be writable by the user running rtvp-edge, uid {os.getuid()}; "
            "or set mqtt.outbox.path to a writable place)"
        ) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise OutboxError(
            f"outbox {path} is in use by another process (pid {owner}); one runtime per outbox "
            "(is this station already running?)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class OutboxError(RuntimeError):
    """The outbox database cannot be opened or written (message names the file)."""


class OutboxFullError(OutboxError):
    """``when_full="refuse"`` and the outbox is at its size limit; nothing was written. ``events``: how
    many events were refused."""

    def __init__(self, message: str, events: int = 0) -> None:
        super().__init__(message)
        self.events = events


@dataclass
class OutgoingEvent:
    """An event to queue. ``payload`` is a JSON-able dict; the outbox sets its ``"seq"`` key.

    Args:
        topic: full MQTT topic.
        payload: JSON object; ``payload["seq"]`` is overwritten with the station sequence number.
        event_id: unique id (uuid string), also inside ``payload``.
        qos: MQTT QoS to publish with.
        retain: MQTT retain flag.
    """

    topic: str
    payload: dict[str, Any]
    event_id: str
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class StoredEvent:
    """An event as it sits in the outbox (payload already encoded, sequence number assigned)."""

    seq: int
    event_id: str
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool
    created: float


class Outbox:
    """SQLite-backed FIFO of events waiting for the broker's acknowledgement. Thread-safe.

    Args:
        path: database file (created with its parent directory). ``":memory:"`` for tests only.
        max_events: queue limit in events (None: unlimited).
        max_bytes: queue limit in payload bytes (None: unlimited).
        when_full: ``"drop_oldest"`` or ``"refuse"`` (see the module docstring).
        synchronous: SQLite ``synchronous`` pragma, ``"FULL"`` or ``"NORMAL"``.
    """

    def __init__(
        self,
        path: str | Path,
        max_events: int | None = 100_000,
        max_bytes: int | None = None,
        when_full: Literal["drop_oldest", "refuse"] = "drop_oldest",
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if when_full not in ("drop_oldest", "refuse"):
            raise ValueError(f"outbox when_full must be 'drop_oldest' or 'refuse', got {when_full!r}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"outbox synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        for name, value in (("max_events", max_events), ("max_bytes", max_bytes)):
            if value is not None and value < 1:
                raise ValueError(f"outbox {name} must be >= 1 or None, got {value}")
        self.path = str(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._lock = threading.RLock()
        self._lock_file = None
        if self.path != ":memory:":
            p = Path(self.path)
            if p.is_dir():
                raise OutboxError(
                    f"outbox path {p} is a directory; give a file path such as {p / 'outbox.sqlite'}"
                )
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutboxError(f"cannot create the outbox directory {p.parent}: {exc}") from exc
            self._lock_file = _exclusive_lock(p)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS events (
                    seq INTEGER PRIMARY KEY,
                    event_id TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    payload BLOB NOT NULL,
                    qos INTEGER NOT NULL,
                    retain INTEGER NOT NULL,
                    created REAL NOT NULL
                );
                INSERT OR IGNORE INTO meta VALUES ('schema_version', 1);
                INSERT OR IGNORE INTO meta VALUES ('last_seq', 0);
                INSERT OR IGNORE INTO meta VALUES ('dropped_total', 0);
                """
            )
            version = self._meta("schema_version")
            if version != SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema version {version}, this runtime reads {SCHEMA_VERSION}"
                )
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events"
            ).fetchone()
        except OutboxError:
            self._release_lock()
            raise
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise OutboxError(
                f"cannot open the outbox database {self.path}: {exc} "
                "(move the file aside to start with an empty outbox; its unsent events are in it)"
            ) from exc
        self._depth, self._bytes = int(row[0]), int(row[1])

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def depth(self) -> int:
        """Number of events waiting for acknowledgement."""
        with self._lock:
            return self._depth

    def size_bytes(self) -> int:
        """Sum of the queued payload sizes in bytes."""
        with self._lock:
            return self._bytes

    @property
    def last_seq(self) -> int:
        """Sequence number of the last event ever appended (persisted; 0 for a new outbox)."""
        with self._lock:
            return self._meta("last_seq")

    @property
    def dropped_total(self) -> int:
        """Events deleted unsent because the outbox was full (persisted across restarts)."""
        with self._lock:
            return self._meta("dropped_total")

    # -- queue operations ----------------------------------------------------------------------------
    def append(self, events: Sequence[OutgoingEvent]) -> list[int]:
        """Commit ``events`` in one transaction (all or none) and return their sequence numbers.

        Sets ``payload["seq"]`` of each event (in place) before encoding it.
        Raises ``OutboxFullError`` (``when_full="refuse"``) or ``OutboxError`` (disk problems).
        """
        if not events:
            return []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._meta("last_seq")
                rows, seqs = [], []
                now = time.time()
                for event in events:
                    seq += 1
                    event.payload["seq"] = seq
                    data = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()
                    rows.append(
                        (seq, event.event_id, event.topic, data, int(event.qos), int(event.retain), now)
                    )
                    seqs.append(seq)
                new_bytes = sum(len(r[3]) for r in rows)
                dropped = self._make_room(len(rows), new_bytes)
                self._db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
                self._db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
                self._db.execute("COMMIT")
            except OutboxFullError:
                self._db.execute("ROLLBACK")
                raise
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise OutboxError(f"cannot write to the outbox {self.path}: {exc}") from exc
            self._depth += len(rows) - dropped[0]
            self._bytes += new_bytes - dropped[1]
        if dropped[0]:
            log.error(
                "outbox %s full (limit %s events / %s bytes): dropped the %d oldest unsent events; "
                "subscribers will see a sequence gap",
                self.path,
                self.max_events,
                self.max_bytes,
                dropped[0],
            )
        return seqs

    def _make_room(self, n_new: int, new_bytes: int) -> tuple[int, int]:
        """Inside a transaction: enforce the limits for ``n_new`` more events. Returns (events, bytes) dropped."""
        over_events = 0 if self.max_events is None else self._depth + n_new - self.max_events
        over_bytes = 0 if self.max_bytes is None else self._bytes + new_bytes - self.max_bytes
        if over_events <= 0 and over_bytes <= 0:
            return 0, 0
        if self.when_full == "refuse" or (self.max_events is not None and n_new > self.max_events):
            raise OutboxFullError(
                f"outbox {self.path} is full ({self._depth} events, {self._bytes} bytes; limits "
                f"{self.max_events} events, {self.max_bytes} bytes): refusing {n_new} new events "
                "(when_full: refuse). Is the broker reachable?",
                n_new,
            )
        n_drop, bytes_drop, last = 0, 0, 0
        for seq, size in self._db.execute("SELECT seq, LENGTH(payload) FROM events ORDER BY seq"):
            if n_drop >= over_events and bytes_drop >= over_bytes:
                break
            n_drop += 1
            bytes_drop += size
            last = seq
        if n_drop < over_events or bytes_drop < over_bytes:
            raise OutboxFullError(
                f"outbox {self.path}: {n_new} new events ({new_bytes} bytes) do not fit in the limit "
                f"of {self.max_bytes} bytes even with the queue emptied",
                n_new,
            )
        self._db.execute("DELETE FROM events WHERE seq <= ?", (last,))
        self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped_total'", (n_drop,))
        return n_drop, bytes_drop

    def peek(self, after_seq: int = 0, limit: int = 100) -> list[StoredEvent]:
        """The oldest queued events with ``seq > after_seq``, in sequence order (not removed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, topic, payload, qos, retain, created FROM events "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [StoredEvent(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6]) for r in rows]

    def ack(self, seqs: Sequence[int]) -> int:
        """Delete acknowledged events (one transaction). Unknown sequence numbers are ignored
        (an event dropped for room, or acknowledged twice after a resend). Returns the number deleted."""
        if not seqs:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                params = [(s,) for s in seqs]
                sizes = 0
                deleted = 0
                for (s,) in params:
                    row = self._db.execute("SELECT LENGTH(payload) FROM events WHERE seq=?", (s,)).fetchone()
                    if row is not None:
                        sizes += row[0]
                        deleted += 1
                self._db.executemany("DELETE FROM events WHERE seq=?", params)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise OutboxError(
                    f"cannot delete acknowledged events from the outbox {self.path}: {exc}"
                ) from exc
            self._depth -= deleted
            self._bytes -= sizes
            return deleted

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close. Safe to call twice."""
        with self._lock:
            if self._db is None:
                return
            # A checkpoint is an optimisation; the WAL is replayed on the next open anyway.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
