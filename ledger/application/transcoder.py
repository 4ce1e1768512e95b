"""Event state encoding: the library's JSON, byte for byte, written by orjson.

The library writes event state with ``json`` and a Python callback for each time stamp,
which made encoding the largest cost of a write. orjson writes the same bytes for the
values events hold (strings, integers, booleans, None, lists, dicts and time stamps,
tagged as the library tags them); anything orjson would write differently, or cannot
write, goes to the library's encoder, so what is stored never depends on which one ran.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder

# Time stamps and dataclasses go to ``default`` (the library's tagging); everything
# else orjson writes itself.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class _Different(Exception):
    """A value orjson would write unlike the library's encoder."""


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self._tagged, option=_OPTIONS)
        except (orjson.JSONEncodeError, _Different):
            return super().encode(obj)

    def _tagged(self, o: Any) -> Any:
        if type(o) is datetime and type(self.types.get(datetime)) is DatetimeAsISO:
            return {"_type_": DatetimeAsISO.name, "_data_": o.isoformat()}
        if type(o) in self.types:
            return self._encode_obj(o)
        raise _Different
