"""The durable outbox: order, acknowledgement, persistence of the sequence, size limits, bad files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from rtvp_edge.messaging.outbox import Outbox, OutboxError, OutboxFullError, OutgoingEvent


def _events(n: int, tag: str = "e", size: int = 0) -> list[OutgoingEvent]:
    return [OutgoingEvent("t/verdict", {"i": f"{tag}{i}", "pad": "x" * size}, f"{tag}{i}") for i in range(n)]


def test_append_peek_ack_keeps_order(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        seqs = box.append(_events(5))
        assert seqs == [1, 2, 3, 4, 5]
        got = box.peek(limit=10)
        assert [e.seq for e in got] == seqs
        assert [json.loads(e.payload)["i"] for e in got] == ["e0", "e1", "e2", "e3", "e4"]
        assert all(json.loads(e.payload)["seq"] == e.seq for e in got)
        assert [e.seq for e in box.peek(after_seq=3)] == [4, 5]
        assert box.ack([2, 4, 99]) == 2  # unknown seq ignored
        assert [e.seq for e in box.peek()] == [1, 3, 5]
        assert box.depth() == 3


def test_sequence_and_content_survive_reopen(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.append(_events(3))
    box.ack([1, 2, 3])
    box.append(_events(2, "f"))
    box.close()
    # Reopened (a restart): the unsent events are there and the sequence continues after 5.
    box = Outbox(path)
    assert [e.seq for e in box.peek()] == [4, 5]
    assert box.depth() == 2 and box.size_bytes() > 0
    assert box.append(_events(1, "g")) == [6]
    box.ack([4, 5, 6])
    box.close()
    assert Outbox(path).last_seq == 6


def test_drop_oldest_is_counted_and_persisted(tmp_path, caplog):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_events=4, when_full="drop_oldest")
    box.append(_events(3))
    with caplog.at_level("ERROR"):
        box.append(_events(3, "n"))
    assert "dropped the 2 oldest" in caplog.text
    assert [e.seq for e in box.peek()] == [3, 4, 5, 6]
    assert box.dropped_total == 2 and box.depth() == 4
    box.close()
    assert Outbox(path, max_events=4).dropped_total == 2


def test_byte_limit_drops_oldest(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_events=None, max_bytes=2000)
    box.append(_events(3, size=500))
    box.append(_events(2, "n", size=500))
    assert box.size_bytes() <= 2000
    assert box.peek()[0].seq > 1 and box.peek()[-1].seq == 5


def test_refuse_when_full_writes_nothing(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_events=3, when_full="refuse")
    box.append(_events(3))
    with pytest.raises(OutboxFullError, match="full"):
        box.append(_events(1, "n"))
    assert box.depth() == 3 and box.last_seq == 3
    box.ack([1])
    assert box.append(_events(1, "n")) == [4]


def test_bad_paths_and_corrupt_file_are_clear_errors(tmp_path):
    with pytest.raises(OutboxError, match="is a directory"):
        Outbox(tmp_path)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=str(corrupt)):
        Outbox(corrupt)
    with pytest.raises(ValueError, match="when_full"):
        Outbox(tmp_path / "x.sqlite", when_full="ignore")


def test_uses_wal_and_full_sync(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, synchronous="FULL")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    box.append(_events(1))
    # Another connection (another process after a crash) sees the committed event.
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    other.close()


def test_one_process_per_outbox(tmp_path):
    path = tmp_path / "o.sqlite"
    first = Outbox(path)
    script = (
        "import sys; sys.path.insert(0, '.');"
        "from rtvp_edge.messaging.outbox import Outbox, OutboxError\n"
        f"try:\n    Outbox({str(path)!r})\nexcept OutboxError as e:\n    print(e); sys.exit(3)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "in use by another process" in result.stdout and str(os.getpid()) in result.stdout
    first.close()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
