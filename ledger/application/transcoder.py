"""Event state encoding: the library's JSON, byte for byte, written by orjson.

The library writes event state with ``json`` and a Python callback for each time stamp,
which made encoding the largest cost of a write. orjson writes the same bytes for the
values events hold (strings, integers, booleans, None, lists, dicts and time stamps,
tagged as the library tags them); anything orjson would write differently, or cannot
write, goes to the library's encoder, so what is stored never depends on which one ran.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder

# Time stamps and dataclasses go to ``default`` (the library's tagging); everything
# else orjson writes itself.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# The tagged form of recent UTC time stamps. The events of one command share their
# recorded and effective times, and the commands of a batch often share their terms:
# formatting a time stamp cost more than writing the rest of the event.
_TAGS_KEPT = 4096


class _Different(Exception):
    """A value orjson would write unlike the library's encoder."""


class FastJSONTranscoder(JSONTranscoder):
    def __init__(self) -> None:
        super().__init__()
        self._utc_tags: dict[datetime, dict[str, str]] = {}

    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self._tagged, option=_OPTIONS)
        except (orjson.JSONEncodeError, _Different):
            return super().encode(obj)

    def _tagged(self, o: Any) -> Any:
        if type(o) is datetime and type(self.types.get(datetime)) is DatetimeAsISO:
            if o.tzinfo is not UTC:
                return {"_type_": DatetimeAsISO.name, "_data_": o.isoformat()}
            # Equal datetimes in UTC have equal fields, so they format alike.
            tag = self._utc_tags.get(o)
            if tag is None:
                if len(self._utc_tags) >= _TAGS_KEPT:
                    self._utc_tags = {}
                tag = self._utc_tags[o] = {"_type_": DatetimeAsISO.name, "_data_": o.isoformat()}
            return tag
        if type(o) in self.types:
            return self._encode_obj(o)
        raise _Different
