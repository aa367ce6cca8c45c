"""The ``plc:`` section of the line file: OPC UA and Modbus TCP servers, reject deadline, heartbeat.

Schema only (pydantic): the servers themselves live in ``rtvp_edge.messaging.plc.opcua`` / ``rtvp_edge.messaging.plc.modbus``
and are imported only when a line asks for them, so reading a line file never imports a network library.
Passwords come from environment variables (``password_env``), never from the line file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rtvp_edge.strict import StrictModel


def _resolve(v: str | None, info: ValidationInfo) -> str | None:
    if v is None:
        return None
    p = Path(v)
    if not p.is_absolute():
        p = Path((info.context or {}).get("base_dir", ".")) / p
    return str(p.resolve())


class OpcUaUser(StrictModel):
    """One OPC UA login: the password is read from the environment variable ``password_env`` at start."""

    username: str = Field(min_length=1)
    password_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def password(self) -> str:
        value = os.environ.get(self.password_env)
        if not value:
            raise ValueError(
                f"user {self.username!r}: environment variable {self.password_env} (password_env) is not set"
            )
        return value


SecurityPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]


class OpcUaConfig(StrictModel):
    """``plc.opcua``: an OPC UA server with one object per station (node table: docs/plc.md)."""

    host: str = "0.0.0.0"
    port: int = Field(4840, ge=1, le=65535)
    namespace: str = "urn:rtvp-edge:plc"
    application_uri: str = "urn:rtvp-edge:server"  # must match the URI in the server certificate
    # endpoints offered; "None" (no signing/encryption) is refused unless allow_anonymous or listed here
    security_policies: list[SecurityPolicy] = Field(["Basic256Sha256_SignAndEncrypt"], min_length=1)
    certificate: str | None = None  # server certificate (DER or PEM), needed by Sign/SignAndEncrypt
    private_key: str | None = None  # its private key (PEM)
    trusted_clients: str | None = None  # folder of trusted client certificates (DER/PEM); others refused
    users: list[OpcUaUser] = []
    allow_anonymous: bool = False

    @field_validator("certificate", "private_key", "trusted_clients")
    @classmethod
    def _relative_to_line_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaConfig:
        secured = [p for p in self.security_policies if p != "None"]
        if secured:
            for key in ("certificate", "private_key", "trusted_clients"):
                value = getattr(self, key)
                if value is None:
                    raise ValueError(f"{key} is required by security policy {secured[0]}")
                if not Path(value).exists():
                    raise ValueError(f"{key}: no such file or folder: {value}")
            if not Path(self.trusted_clients).is_dir():  # type: ignore[arg-type]
                raise ValueError(f"trusted_clients must be a folder of certificates: {self.trusted_clients}")
        if "None" in self.security_policies and not self.allow_anonymous and not secured:
            # an unencrypted endpoint would carry passwords in clear text
            raise ValueError(
                "security_policies [None] sends passwords unencrypted; add Basic256Sha256_SignAndEncrypt "
                "(with certificate, private_key, trusted_clients) or set allow_anonymous: true knowingly"
            )
        if not self.users and not self.allow_anonymous:
            raise ValueError("no way to log in: list users (username + password_env) or set allow_anonymous")
        names = [u.username for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"users: usernames must be unique, got {names}")
        return self


class ModbusConfig(StrictModel):
    """``plc.modbus``: a Modbus TCP server (register map: docs/plc.md)."""

    host: str = "0.0.0.0"
    port: int = Field(502, ge=1, le=65535)


class PlcConfig(StrictModel):
    """``plc:``: what the PLC that rejects parts is told, and how.

    ``reject_deadline_ms``: from a part's trigger (its first camera frame; with ``trigger: plc`` the earlier
    of that and the PLC's trigger) to the moment the PLC needs an answer (conveyor distance to the reject
    gate / conveyor speed, minus the PLC's own reaction time). No decided OK by then -> REJECT, reason
    ``deadline``. None: no deadline (the PLC gets each verdict when it is decided).
    """

    reject_deadline_ms: float | None = Field(None, gt=0)
    trigger: Literal["gate", "plc"] = "gate"
    heartbeat_ms: int = Field(500, ge=50, le=60_000)
    opcua: OpcUaConfig | None = None
    modbus: ModbusConfig | None = None

    @model_validator(mode="after")
    def _some_server(self) -> PlcConfig:
        if self.opcua is None and self.modbus is None:
            raise ValueError("plc: configure opcua and/or modbus (or remove the plc section)")
        o, m = self.opcua, self.modbus
        if o is not None and m is not None and (o.port, o.host) == (m.port, m.host):
            raise ValueError(f"opcua.port and modbus.port are both {self.modbus.port}")
        return self
