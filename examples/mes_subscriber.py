"""A MES-side subscriber for rtvp-edge events: stores verdicts and defects in SQLite, exactly once.

What a consumer of at-least-once MQTT must do, shown end to end:
- a persistent session (clean_session=False, fixed client id, QoS 1): the broker queues events while
  this subscriber is down and delivers them when it is back;
- de-duplication by ``event_id``, with the seen ids persisted in the same transaction as the data, so a
  redelivery after a crash of this subscriber is recognised too;
- the event is committed before ``on_message`` returns; paho sends the PUBACK only after that, so an
  event is never acknowledged before it is stored;
- sequence-gap detection per station over ``seq`` (one counter over verdict and defect events): a gap
  means events were lost upstream (e.g. the edge box's outbox overflowed); it is recorded and logged,
  and a late arrival closes it.

Run (against the demo line's embedded broker, or a site broker)::

    python examples/mes_subscriber.py --port 18830       # the demo's broker; stores into var/mes.sqlite
    python examples/mes_subscriber.py                    # localhost:1883, all stations
    python examples/mes_subscriber.py --host broker.plant --port 8883 --ca ca.pem \\
        --username mes --password-env MES_MQTT_PASSWORD --topic-root 'rtvp/plant1/+/+'

Then e.g. ``sqlite3 var/mes.sqlite 'select part_id, verdict, defect_count from verdicts order by seq'``
(``var/`` is ignored by git).
Uses only paho-mqtt and the Python standard library, so it runs on a MES host without rtvp-edge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sqlite3
import ssl
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

log = logging.getLogger("mes_subscriber")

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_events (event_id TEXT PRIMARY KEY, received_ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    event_id TEXT PRIMARY KEY, station TEXT NOT NULL, seq INTEGER NOT NULL, part_id TEXT NOT NULL,
    trigger_seq INTEGER NOT NULL, verdict TEXT NOT NULL, decided_ts TEXT NOT NULL,
    defect_count INTEGER NOT NULL, model TEXT NOT NULL, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS defects (
    event_id TEXT PRIMARY KEY, verdict_event_id TEXT NOT NULL, station TEXT NOT NULL, seq INTEGER NOT NULL,
    part_id TEXT NOT NULL, camera_id TEXT NOT NULL, view_index INTEGER NOT NULL, class_name TEXT NOT NULL,
    score REAL NOT NULL, x1 REAL, y1 REAL, x2 REAL, y2 REAL);
CREATE TABLE IF NOT EXISTS stations (station TEXT PRIMARY KEY, last_seq INTEGER NOT NULL DEFAULT 0,
    state TEXT, state_ts TEXT);
CREATE TABLE IF NOT EXISTS gaps (station TEXT NOT NULL, first_missing INTEGER NOT NULL,
    last_missing INTEGER NOT NULL, detected_ts REAL NOT NULL, PRIMARY KEY (station, first_missing));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class MesStore:
    """The MES side's durable store. ``handle(topic, payload)`` is idempotent per event id.

    Args:
        path: SQLite file (created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # stored means stored: the PUBACK follows the commit
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> str:
        """Store one message. Returns ``"stored"``, ``"duplicate"``, ``"status"`` or ``"ignored"``."""
        try:
            event = json.loads(payload)
            kind = event["kind"]
            st = event["station"]
            station = f"{st['site']}/{st['line']}/{st['station']}"
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable message on %s (%d bytes): %s", topic, len(payload), exc)
            self._count("unreadable")
            return "ignored"
        with self.lock:
            if kind == "status":
                self.db.execute(
                    "INSERT INTO stations(station, state, state_ts) VALUES (?,?,?) "
                    "ON CONFLICT(station) DO UPDATE SET state=excluded.state, state_ts=excluded.state_ts",
                    (station, event.get("state"), event.get("ts")),
                )
                return "status"
            if kind not in ("verdict", "defect"):
                return "ignored"  # metrics: not stored by this example
            self.db.execute("BEGIN IMMEDIATE")
            try:
                fresh = self.db.execute(
                    "INSERT OR IGNORE INTO seen_events VALUES (?, ?)", (event["event_id"], time.time())
                ).rowcount
                if not fresh:
                    self._count("duplicates")
                    self.db.execute("COMMIT")
                    return "duplicate"
                self._check_sequence(station, int(event["seq"]))
                if kind == "verdict":
                    self.db.execute(
                        "INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            event["event_id"], station, event["seq"], event["part_id"], event["trigger_seq"],
                            event["verdict"], event["decided_ts"], event["defect_count"],
                            json.dumps(event["model"]), payload.decode(),
                        ),
                    )  # fmt: skip
                else:
                    x1, y1, x2, y2 = event["box"]
                    self.db.execute(
                        "INSERT INTO defects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            event["event_id"], event["verdict_event_id"], station, event["seq"], event["part_id"],
                            event["camera_id"], event["view_index"], event["class_name"], event["score"],
                            x1, y1, x2, y2,
                        ),
                    )  # fmt: skip
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return "stored"

    def _check_sequence(self, station: str, seq: int) -> None:
        row = self.db.execute("SELECT last_seq FROM stations WHERE station=?", (station,)).fetchone()
        last = row[0] if row else 0
        if row is None:
            self.db.execute("INSERT INTO stations(station, last_seq) VALUES (?, 0)", (station,))
        if seq > last + 1 and last > 0:
            self.db.execute(
                "INSERT OR REPLACE INTO gaps VALUES (?,?,?,?)", (station, last + 1, seq - 1, time.time())
            )
            log.warning("%s: events %d..%d missing (sequence gap)", station, last + 1, seq - 1)
        elif seq <= last:
            self._close_gap(station, seq)  # a late arrival (not a duplicate: its id is new)
        self.db.execute("UPDATE stations SET last_seq=MAX(last_seq, ?) WHERE station=?", (seq, station))

    def _close_gap(self, station: str, seq: int) -> None:
        row = self.db.execute(
            "SELECT first_missing, last_missing FROM gaps WHERE station=? AND first_missing<=? AND last_missing>=?",
            (station, seq, seq),
        ).fetchone()
        if row is None:
            log.warning("%s: seq %d arrived after %d and fills no gap (was the edge box's outbox reset?)",
                        station, seq, self.db.execute("SELECT last_seq FROM stations WHERE station=?",
                                                      (station,)).fetchone()[0])  # fmt: skip
            return
        first, last = row
        self.db.execute("DELETE FROM gaps WHERE station=? AND first_missing=?", (station, first))
        now = time.time()
        if first < seq:
            self.db.execute("INSERT INTO gaps VALUES (?,?,?,?)", (station, first, seq - 1, now))
        if seq < last:
            self.db.execute("INSERT INTO gaps VALUES (?,?,?,?)", (station, seq + 1, last, now))

    def _count(self, name: str) -> None:
        self.db.execute(
            "INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value=value+1", (name,)
        )

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return row[0] if row else 0

    def gaps(self) -> list[tuple[str, int, int]]:
        """Open sequence gaps: (station, first missing seq, last missing seq)."""
        return self.db.execute(
            "SELECT station, first_missing, last_missing FROM gaps ORDER BY 1, 2"
        ).fetchall()

    def close(self) -> None:
        self.db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic-root", default="rtvp/+/+/+", help="station root or filter (default: all)")
    parser.add_argument(
        "--db", default="var/mes.sqlite", help="SQLite file for verdicts and defects (default var/mes.sqlite)"
    )
    parser.add_argument("--client-id", default="mes-subscriber", help="fixed: the broker keeps its session")
    parser.add_argument("--username")
    parser.add_argument("--password-env", help="environment variable holding the password")
    parser.add_argument("--ca", help="CA certificate (PEM) to connect with TLS")
    parser.add_argument("--max-messages", type=int, help="exit after this many messages")
    parser.add_argument("--timeout", type=float, help="exit after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = MesStore(args.db)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False)
    if args.username:
        password = os.environ.get(args.password_env) if args.password_env else None
        if args.password_env and password is None:
            print(f"error: environment variable {args.password_env} is not set", file=sys.stderr)
            return 2
        client.username_pw_set(args.username, password)
    if args.ca:
        client.tls_set_context(ssl.create_default_context(cafile=args.ca))
    client.reconnect_delay_set(0.5, 30)
    done = threading.Event()
    count = [0]
    refused: list[str] = []

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            refused.append(str(reason_code))
            done.set()
            return
        c.subscribe([(f"{args.topic_root}/verdict", 1), (f"{args.topic_root}/defect", 1),
                     (f"{args.topic_root}/status", 1)])  # fmt: skip
        log.info("connected to %s:%s, session present: %s", args.host, args.port, flags.session_present)

    def on_message(c, userdata, message):
        result = store.handle(message.topic, bytes(message.payload))
        if result == "duplicate":
            log.info("duplicate ignored on %s", message.topic)
        count[0] += 1
        if args.max_messages and count[0] >= args.max_messages:
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        client.connect(args.host, args.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        print(f"error: cannot connect to MQTT broker {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop cleanly, print the summary
        done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if refused:
        print(
            f"error: MQTT broker {args.host}:{args.port} refused the connection: {refused[0]}",
            file=sys.stderr,
        )
        return 1
    verdicts = store.db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    log.info("%d messages, %d verdicts stored, %d duplicates ignored, open gaps: %s",
             count[0], verdicts, store.counter("duplicates"), store.gaps() or "none")  # fmt: skip
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
