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

    def __init__(self, site: str, line: str, station: str, **extra) -> None:
        super().__init__(site=site, line=line, station=station, **extra)

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
