"""The line file's ``mqtt:`` section: broker, TLS, credentials, topic root, outbox (schema only).

No network client here: the line-file schema (``rtvp_edge.config``) imports this module, and the part logic
must load without paho. The client is built from it in ``rtvp_edge.messaging.client``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rtvp_edge.messaging.events import topic_root
from rtvp_edge.station import StationIds
from rtvp_edge.strict import StrictModel

__all__ = ["MqttConfig", "MqttConfigError", "OutboxConfig", "TlsConfig"]


class MqttConfigError(ValueError):
    """The ``mqtt:`` configuration cannot be used (message names the key and the value)."""


def _against_base_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths resolve against ``context["base_dir"]`` when the caller validates with one
    (the line-config loader passes the line file's directory), else they stay as written."""
    if value is None or value.is_absolute() or str(value) == ":memory:":
        return value
    base = (info.context or {}).get("base_dir")
    return Path(base) / value if base is not None else value


class TlsConfig(StrictModel):
    """TLS towards the broker.

    Args:
        ca: CA certificate (PEM) the broker's certificate must chain to; None: the system's CAs.
        cert: client certificate (PEM), for brokers that require client certificates.
        key: the client certificate's private key (PEM).
        insecure: do not check that the broker's certificate names ``host`` (the chain is still
            verified). Only for brokers reached by an address their certificate does not list.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    _paths = field_validator("ca", "cert", "key")(_against_base_dir)

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mqtt.tls: give both 'cert' and 'key' for a client certificate, or neither")
        return self


class OutboxConfig(StrictModel):
    """The durable outbox (see ``rtvp_edge.messaging.outbox`` for the policies and their reasoning).

    Args:
        path: SQLite file; relative paths are resolved against the line configuration's directory.
        max_events: size limit in events (100 000 ≈ 5.5 h of a 5 parts/s line with no broker).
        max_bytes: size limit in payload bytes (None: no byte limit).
        when_full: ``drop_oldest`` (default; counted, logged, visible as a sequence gap) or ``refuse``.
        synchronous: SQLite durability, ``FULL`` (survives power loss) or ``NORMAL``.
    """

    path: Path = Path("var/outbox.sqlite")
    max_events: int | None = Field(100_000, ge=1)
    max_bytes: int | None = Field(None, ge=1024)
    when_full: Literal["drop_oldest", "refuse"] = "drop_oldest"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"

    _paths = field_validator("path")(_against_base_dir)


class MqttConfig(StrictModel):
    """The line configuration's ``mqtt:`` section.

    Args:
        broker: ``embedded`` (the runtime starts an amqtt broker on ``host:port``, localhost only,
            no TLS/auth: the demo default) or ``external`` (a site broker such as Mosquitto).
        host, port: broker address.
        tls: TLS settings, or None for plain TCP.
        username: user name, or None for anonymous.
        password_env: name of the environment variable holding the password (never the password
            itself in a file), e.g. ``RTVP_MQTT_PASSWORD``.
        client_id: MQTT client id; default ``rtvp-<site>-<line>-<station>``.
        topic_root: template with ``{site}``, ``{line}``, ``{station}``.
        qos: QoS of verdict/defect events (1: at least once, the default).
        keepalive: seconds; also how fast the broker notices a dead publisher and sends the Last Will
            (after 1.5 x keepalive).
        outbox: the durable outbox.
        metrics_interval_s: how often the runtime publishes ``<root>/metrics``.
        max_inflight: unacknowledged events on the wire at a time.
        reconnect_min_s, reconnect_max_s: reconnect back-off (doubles from min to max).
        connect_timeout_s: how long ``start()`` waits for the broker's first answer before going on
            with events buffered in the outbox.
    """

    broker: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password_env: str | None = None
    client_id: str | None = Field(None, min_length=1, max_length=128)
    topic_root: str = "rtvp/{site}/{line}/{station}"
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5, le=3600)
    outbox: OutboxConfig = OutboxConfig()
    metrics_interval_s: float = Field(10.0, gt=0)
    max_inflight: int = Field(32, ge=1, le=1000)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(5.0, ge=0)

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                f"mqtt.password_env must be the NAME of an environment variable (e.g. RTVP_MQTT_PASSWORD), got {value!r}"
            )
        return value

    @field_validator("topic_root")
    @classmethod
    def _root(cls, value: str) -> str:
        topic_root(value, StationIds("site", "line", "station"))  # raises ValueError naming the template
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.broker == "embedded":
            if self.tls is not None or self.username is not None:
                raise ValueError(
                    "mqtt.broker 'embedded' is a localhost demo broker without TLS or passwords; "
                    "use broker: external for tls/username"
                )
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(
                    f"mqtt.broker 'embedded' listens on localhost only; host {self.host!r} is not local"
                )
        if self.password_env is not None and self.username is None:
            raise ValueError("mqtt.password_env is set but mqtt.username is not")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
        return self

    def resolve_paths(self, base_dir: str | Path) -> MqttConfig:
        """A copy with relative file paths (outbox, TLS files) made absolute against ``base_dir``."""
        base = Path(base_dir)

        def fix(p: Path | None) -> Path | None:
            return None if p is None or p.is_absolute() or str(p) == ":memory:" else base / p

        tls = None
        if self.tls is not None:
            tls = self.tls.model_copy(
                update={"ca": fix(self.tls.ca), "cert": fix(self.tls.cert), "key": fix(self.tls.key)}
            )
        outbox = self.outbox.model_copy(update={"path": fix(self.outbox.path) or self.outbox.path})
        return self.model_copy(update={"tls": tls, "outbox": outbox})

    def station_root(self, station: StationIds) -> str:
        """The topic root of ``station`` (``topic_root`` with its placeholders filled)."""
        return topic_root(self.topic_root, station)

    def password(self) -> str | None:
        """The password from the environment variable ``password_env`` (None without one)."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise MqttConfigError(
                f"mqtt.password_env: environment variable {self.password_env} is not set "
                f"(export {self.password_env}=... before starting)"
            )
        return value

    def check_files(self) -> None:
        """Raise ``MqttConfigError`` naming the key when a configured TLS file is missing."""
        if self.tls is None:
            return
        for key in ("ca", "cert", "key"):
            path = getattr(self.tls, key)
            if path is not None and not Path(path).is_file():
                raise MqttConfigError(f"mqtt.tls.{key}: file {path} not found")
