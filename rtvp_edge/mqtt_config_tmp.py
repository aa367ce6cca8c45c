"""Placeholder for ``rtvp_edge.mqtt.MqttConfig`` until the MQTT side lands on main.

``rtvp_edge.config`` imports the real ``MqttConfig`` when it exists and only falls back to this one, so a
line file written against this schema keeps working. Delete once ``rtvp_edge/mqtt.py`` is on main.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: Literal["embedded", "external"] = "external"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    topic_root: str | None = None
    qos: int = Field(1, ge=0, le=2)
    keepalive_s: int = Field(30, ge=5)
    username: str | None = None
    password_env: str | None = None
    tls: bool = False
    outbox_path: str = "outbox.sqlite"
    outbox_max_events: int = Field(100_000, gt=0)
