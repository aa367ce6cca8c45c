"""Who is speaking: the site, line and station ids of a line file's ``line:`` section, also carried in every
MQTT event (``rtvp_edge.messaging.events``) and its default topic root ``rtvp/<site>/<line>/<station>``."""

from __future__ import annotations

import re

from pydantic import field_validator

from rtvp_edge.strict import StrictModel

# ids become MQTT topic levels and file names: no '/', '+', '#', spaces
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
_ID_RE = re.compile(ID_PATTERN)


class StationIds(StrictModel):
    """Site, line and station ids; letters, digits, ``_``, ``-`` and ``.`` only.

    Built positionally (``StationIds("plant1", "glass", "st1")``) or by keyword.

    Raises:
        pydantic.ValidationError (a ValueError): an id is not usable in an MQTT topic (the message names it).
    """

    site: str
    line: str
    station: str

    def __init__(self, *ids: str, **fields) -> None:
        # Positional ids are a convenience; pydantic also calls this with the file's keys, so a missing
        # key must reach validation (an error naming it), not fail here as a TypeError.
        if len(ids) > 3:
            raise TypeError(f"StationIds takes site, line and station, got {len(ids)} ids")
        super().__init__(**dict(zip(("site", "line", "station"), ids, strict=False)), **fields)

    @field_validator("site", "line", "station", mode="before")
    @classmethod
    def _topic_level(cls, value, info):
        if not isinstance(value, str) or not _ID_RE.match(value):
            raise ValueError(
                f"station id {info.field_name}={value!r} is not usable in an MQTT topic "
                "(letters, digits, '_', '-', '.' only)"
            )
        return value

    def as_dict(self) -> dict[str, str]:
        return {"site": self.site, "line": self.line, "station": self.station}
