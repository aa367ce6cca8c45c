"""A real Mosquitto broker for tests, plus a small collecting subscriber.

``MosquittoBroker`` writes a mosquitto.conf into a temporary directory, starts ``/usr/sbin/mosquitto`` on
a free localhost port and can be stopped and started again on the same port (persistence on, so
subscribers with a persistent session get what was published while they were away). Variants: TLS
(a throw-away CA and server certificate made with the ``openssl`` CLI) and username/password (a
password file made with ``mosquitto_passwd``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None when it is not installed."""
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_test_ca(directory: Path, server_names: str = "DNS:localhost,IP:127.0.0.1") -> dict[str, Path]:
    """A CA, a server certificate for ``server_names`` and a client certificate (EC P-256, one day).

    Returns PEM paths ``{"ca", "cert", "key", "client_cert", "client_key"}``. Uses the ``openssl`` CLI.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca_crt,
            "-days",
            "1",
            "-subj",
            "/CN=rtvp test CA",
        ]
    ]
    out = {"ca": ca_crt}
    for name, cn, ext in (
        ("server", "localhost", f"subjectAltName={server_names}\nbasicConstraints=CA:FALSE\n"),
        ("client", "rtvp-edge-test-client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
    ):
        key, csr, crt, extfile = (directory / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
        extfile.write_text(ext)
        commands += [
            ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial"]
            + ["-out", crt, "-days", "1", "-extfile", extfile],
        ]
        prefix = "" if name == "server" else "client_"
        out[f"{prefix}cert"], out[f"{prefix}key"] = crt, key
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return out


class PortInUse(RuntimeError):
    """mosquitto could not listen: its port was taken meanwhile."""


@dataclass
class MosquittoBroker:
    """One mosquitto process on ``127.0.0.1:port`` with its config, data and log in ``workdir``.

    Args:
        workdir: directory for mosquitto.conf, the persistence database and the log.
        binary: path of the mosquitto executable.
        port: TCP port (a free one when 0).
        tls: ``{"ca", "cert", "key"}`` paths (see ``make_test_ca``) for a TLS-only listener, or None.
        users: username -> password; when given, anonymous clients are refused.
        require_client_cert: with ``tls``, refuse clients without a certificate signed by the CA.
    """

    workdir: Path
    binary: str
    port: int = 0
    tls: dict[str, Path] | None = None
    users: dict[str, str] | None = None
    require_client_cert: bool = False
    host: str = "127.0.0.1"
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path.write_text(self._config_text())

    def _config_text(self) -> str:
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type all",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to the 'mosquitto' user, which cannot read our temp dir.
            lines.append("user root")
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for name, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwd), name, password], check=True, capture_output=True
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [
                f"cafile {self.tls['ca']}",
                f"certfile {self.tls['cert']}",
                f"keyfile {self.tls['key']}",
            ]
            if self.require_client_cert:
                lines.append("require_certificate true")
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _runs_logged(self) -> int:
        """How many times this broker's log says it is running (one line per successful start)."""
        if not self.log_path.exists():
            return 0
        return sum(
            1 for line in self.log_path.read_text(errors="replace").splitlines() if line.endswith(" running")
        )

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start (or restart, on the same port) and wait until it logs that it runs (it listens: another
        process on the port cannot pass for it) and the port accepts connections."""
        if self.running:
            return self
        runs_before = self._runs_logged()
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                text = f"{err}\n{self.log_tail()}"  # mosquitto logs to stderr until its log file is open
                kind = PortInUse if "Address already in use" in text else RuntimeError
                raise kind(f"mosquitto exited with {self._process.returncode}: {text}")
            if self._runs_logged() > runs_before:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not open port {self.port} within {timeout} s\n{self.log_tail()}")

    def start_on_a_free_port(self, attempts: int = 5, timeout: float = 10.0) -> MosquittoBroker:
        """First start. A port found free may be taken by another process before mosquitto binds it (other
        test runs on the machine): then pick another free port and start again. Restarts use ``start``
        (same port: clients reconnect to it)."""
        for attempt in range(attempts):
            try:
                return self.start(timeout)
            except PortInUse:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.config_path.write_text(self._config_text())
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: mosquitto saves its persistence database)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


class Collector:
    """A subscriber that records every message (topic, payload bytes, retain flag) it receives.

    Uses a persistent session (clean_session=False, QoS 1) so messages published while the broker
    restarts or while this client reconnects are delivered once it is back.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: str | list[str] = "#",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            clean_session=not persistent,
        )
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.tls["ca"]))
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("test collector could not connect to the broker")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        for topic in self._topics:
            client.subscribe(topic, qos=1)
        # on_subscribe is not awaited on purpose: SUBACK ordering guarantees the subscription exists
        # before any later PUBLISH from this connection is processed; give the broker a moment anyway.
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def payloads(self, suffix: str | None = None) -> list[dict]:
        """JSON payloads received so far, optionally only those whose topic ends with ``/suffix``."""
        with self._cond:
            msgs = list(self.messages)
        return [json.loads(p) for t, p, _ in msgs if suffix is None or t.endswith("/" + suffix)]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        """Wait until ``predicate(self)`` is true; returns its final value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


MODEL_INFO = {"name": "rtvpnet_s", "version": "test-1", "precision": "int8", "bundle_sha256": "ab" * 32}


def make_verdict(index: int, n_defects: int | None = None, incomplete: bool = False):
    """A ``PartVerdict`` for container ``index``: six views (L1..R3), ``n_defects`` detections
    (default ``index % 3``) spread over the views; NG when it has defects, INCOMPLETE if asked."""
    from rtvp_edge.messages import Detection, PartVerdict, ViewResult

    n = index % 3 if n_defects is None else n_defects
    t0 = 1_763_700_000.0 + index * 0.2
    cams = ("L1", "L2", "L3", "R1", "R2", "R3")
    views = []
    for v, cam in enumerate(cams):
        if incomplete and v >= 4:
            continue
        dets = tuple(
            Detection(
                k % 5,
                ("oil", "black spot", "bubble", "plastering thread", "quenched grain")[k % 5],
                0.5 + 0.01 * k,
                (10.0 + k, 20.0, 60.5 + k, 80.25),
            )
            for k in range(n)
            if k % len(cams) == v
        )
        views.append(ViewResult(cam, v, index, t0 + 0.01 * v, dets))
    verdict = "INCOMPLETE" if incomplete else ("NG" if n else "OK")
    return PartVerdict(
        part_id=f"C{index:06d}",
        trigger_seq=index,
        verdict=verdict,
        views=tuple(views),
        missing_views=(4, 5) if incomplete else (),
        reasons=("bubble score 0.51 >= 0.50 on L1",) if n else (),
        first_capture_time=t0,
        decided_time=t0 + 0.15,
        latency_ms={"inference": 41.5, "trigger_to_verdict": 150.0},
    )
