"""The base of every pydantic schema the runtime reads (line file sections, bundle manifest): unknown keys
are errors that name the key, and a validated object cannot change afterwards."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    # protected_namespaces=(): fields such as ``model`` are the domain's words, not pydantic's
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
