""" "Nothing lost" at the edges (issue 12): a full outbox with ``when_full: refuse`` stops the line and says how
much it refused; reserved topic roots, booleans for numbers and other loose types are refused at load with
file, line and key; a truncated image is a corrupt frame whose part is INCOMPLETE, never judged; a read-only
outbox folder is a clear error (exit 2) naming the path.

Real Mosquitto, real files, real permissions (a read-only folder is tested as an unprivileged user when the
tests run as root, since root writes anywhere).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import pytest
from test_backends import make_toy_bundle
from test_pipeline import CAMS, line_file, part_image
from test_pipeline_mqtt import rig_line

from rtvp_edge.config import ConfigError, load_line_config
from rtvp_edge.messaging.outbox import Outbox
from rtvp_edge.pipeline import build_pipeline

pytestmark = [pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("edges") / "bundle")


def cli(*args: str, timeout: float = 150, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtvp_edge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        **kw,
    )


# ---------------------------------------------------------------------------------------------------
# 4. when_full: refuse stops the line


def test_refuse_stops_the_line_with_a_nonzero_exit_and_the_count(tmp_path, bundle, mosquitto):
    mosquitto.stop()  # the broker is unreachable for the whole run: every event stays in the outbox
    line = rig_line(tmp_path, bundle, mosquitto.port, n=0)
    outbox = tmp_path / "outbox.sqlite"
    text = line.read_text()
    assert f"outbox: {{path: {outbox}}}" in text
    line.write_text(
        text.replace(
            f"outbox: {{path: {outbox}}}", f"outbox: {{path: {outbox}, max_events: 5, when_full: refuse}}"
        )
    )
    r = cli("run", "--line", str(line), "--parts", "100", "--no-live")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    m = re.search(
        r"when_full: refuse: the line stopped; (\d+) part verdict\(s\), (\d+) event\(s\), refused", r.stderr
    )
    assert m, r.stderr[-3000:]
    refused_parts, refused_events = int(m.group(1)), int(m.group(2))
    judged = int(re.search(r"done: (\d+) parts", r.stderr).group(1))
    assert refused_parts >= 1 and refused_events >= refused_parts
    assert judged < 100  # the line stopped instead of judging on with nowhere to keep the verdicts
    # every judged part is accounted for: its verdict is in the outbox (sent on the next start) or counted
    box = Outbox(outbox)
    try:
        stored = [e for e in box.peek(limit=1000) if e.topic.endswith("/verdict")]
        assert box.depth() <= 5
    finally:
        box.close()
    assert len(stored) + refused_parts == judged


# ---------------------------------------------------------------------------------------------------
# 5. reserved topic roots


@pytest.mark.parametrize("root", ["$SYS/rtvp/{site}", "$share/g/rtvp/{line}", "rtvp/+/{station}", "rtvp/#"])
def test_reserved_or_wildcard_topic_roots_are_refused_at_load(tmp_path, bundle, root):
    line = rig_line(tmp_path, bundle, 1883, n=0)
    text = line.read_text().replace("  broker: external\n", f"  broker: external\n  topic_root: '{root}'\n")
    line.write_text(text)
    n = text.splitlines().index(f"  topic_root: '{root}'") + 1
    with pytest.raises(ConfigError, match=re.escape(f"{line}:{n}: mqtt.topic_root")):
        load_line_config(line)
    r = cli("check", "--line", str(line))
    assert r.returncode == 2 and f"{line}:{n}: mqtt.topic_root" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------
# 6. a frame that did not decode whole is corrupt, its part INCOMPLETE


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_a_truncated_image_makes_its_part_incomplete_not_judged(tmp_path, bundle, ext):
    n, broken = 5, 2
    rec = tmp_path / "rec"
    for cam in CAMS:
        (rec / cam).mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(rec / cam / f"{k:04d}{ext}"), part_image(ng=False))
    victim = rec / "B" / f"{broken:04d}{ext}"
    data = victim.read_bytes()
    start = data.find(b"\xff\xda") + 2 if ext == ".jpg" else 0  # JPEG: keep the headers, cut the scan
    victim.write_bytes(data[: start + (len(data) - start) // 2])
    if ext == ".jpg":  # the silent case: libjpeg fills the missing half with grey and OpenCV returns it
        grey = cv2.imread(str(victim), cv2.IMREAD_COLOR)
        assert grey is not None and (grey[-1] == 128).all()
    cfg = load_line_config(line_file(tmp_path, bundle, rec, timeout=0.4))
    got = []
    p = build_pipeline(cfg, sinks=[got.append], use_mqtt=False)
    try:
        p.run(max_parts=n)
    finally:
        p.close()
    by_seq = {v.trigger_seq: v for v in got}
    assert sorted(by_seq) == list(range(n))
    assert by_seq[broken].verdict == "INCOMPLETE" and by_seq[broken].missing_views == (1,)
    assert {v.camera_id for v in by_seq[broken].views} == {"A", "C"}
    assert all(by_seq[s].verdict == "OK" for s in range(n) if s != broken)
    assert p.workers["B"].stats.corrupt == 1 and p.workers["A"].stats.corrupt == 0


# ---------------------------------------------------------------------------------------------------
# 7. strict types where people write YAML


@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ("timeout_s: 1.0", "timeout_s: yes", "assembly.timeout_s", "valid number (got True)"),
        ("timeout_s: 1.0", "timeout_s: '1.0'", "assembly.timeout_s", "valid number (got '1.0')"),
        (
            "metrics_interval_s: 0.5",
            "metrics_interval_s: on",
            "mqtt.metrics_interval_s",
            "valid number (got True)",
        ),
        ("port: {port}", "port: '{port}'", "mqtt.port", "valid integer"),
        ("seed: 3", "seed: 3.5", "sim.seed", "valid integer (got 3.5)"),
        ("realtime: false", "realtime: 0", "sim.realtime", "valid boolean (got 0)"),
        ("threads: 1", "threads: true", "model.threads", "valid integer (got True)"),
    ],
)
def test_loose_types_are_refused_with_file_line_and_key(tmp_path, bundle, old, new, key, says):
    line = rig_line(tmp_path, bundle, 18831, n=0)
    text = line.read_text()
    old, new = old.format(port=18831), new.format(port=18831)
    assert old in text
    line.write_text(text.replace(old, new))
    n = next(i for i, x in enumerate(line.read_text().splitlines(), 1) if new in x)
    with pytest.raises(ConfigError) as e:
        load_line_config(line)
    assert f"{line}:{n}: {key}: " in str(e.value) and says in str(e.value), str(e.value)


def test_strict_still_reads_numbers_people_write(tmp_path, bundle):
    line = rig_line(tmp_path, bundle, 18831, n=0)
    text = line.read_text().replace("timeout_s: 1.0", "timeout_s: 2, pairing_window_s: 5e-2")
    line.write_text(text)
    cfg = load_line_config(line)
    assert cfg.assembly.timeout_s == 2.0 and cfg.assembly.pairing_window_s == 0.05
    assert cfg.cameras[0].resolution.width == 700  # ints, nested models, paths, lists -> tuples as before


# ---------------------------------------------------------------------------------------------------
# 8. a read-only outbox folder


def test_read_only_outbox_folder_is_a_clear_error(bundle):
    # root writes into read-only folders: run the line as an unprivileged user then (files made readable)
    as_root = os.geteuid() == 0
    work = Path(tempfile.mkdtemp(prefix="rtvp-ro-"))
    try:
        work.chmod(0o755)
        b = work / "bundle"
        shutil.copytree(bundle, b)
        line = rig_line(work, b, 18832, n=0)
        ro = work / "ro"
        ro.mkdir()
        outbox = ro / "outbox.sqlite"
        line.write_text(line.read_text().replace(str(work / "outbox.sqlite"), str(outbox)))
        for p in [work, *work.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
            if as_root:
                os.chown(
                    p, 65534, 65534
                )  # the line's user owns its files; only the outbox folder is read-only
        ro.chmod(0o555)
        cmd = [sys.executable, "-m", "rtvp_edge", "run", "--line", str(line), "--parts", "1", "--no-live"]
        if as_root:
            setpriv = shutil.which("setpriv")  # util-linux
            assert setpriv, "running as root: setpriv (util-linux) is needed to test as an unprivileged user"
            cmd = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
        env = {**os.environ, "HOME": str(work)}
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=150, env=env)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "PermissionError" not in r.stderr and "Traceback" not in r.stderr
        assert f"cannot create the outbox lock file {outbox}.lock" in r.stderr, r.stderr[-3000:]
        assert f"the outbox folder {ro} must be writable" in r.stderr
    finally:
        ro_dir = work / "ro"
        if ro_dir.exists():
            ro_dir.chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)
