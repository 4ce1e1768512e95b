"""Canonical events and their RFC 8785 (JCS) bytes, the input of the audit hash chain.

``rfc8785.dumps`` is the reference. ``orjson`` with sorted keys is used instead only for
values where its output is proven byte-identical (see ``_is_plain``), because the
pure-Python reference manages only tens of thousands of events per second.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

import orjson
import rfc8785

EVENT_KEYS: Final = frozenset(
    {
        "position",
        "aggregate_id",
        "aggregate_type",
        "version",
        "type",
        "recorded_at",
        "effective_at",
        "actor",
        "role",
        "request_id",
        "payload",
    }
)
"""The keys of a canonical event object, exactly."""

# The type of each canonical event key, in sorted key order (the order of a canonical line).
EVENT_KEY_TYPES: Final[tuple[tuple[str, type], ...]] = tuple(
    (key, int if key in ("position", "version") else dict if key == "payload" else str)
    for key in sorted(EVENT_KEYS)
)

# JCS only admits integers that an IEEE 754 double holds exactly.
MAX_SAFE_INTEGER: Final = 2**53 - 1

CANONICAL_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
"""The ``orjson.dumps`` options of the fast path."""

_TIME_PATTERN: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z", re.ASCII
)

# Strings, keys, integer bounds and key orders on which orjson must agree with the
# reference before the fast path is trusted in this process (see ``_orjson_agrees``).
_PROBE: Final[dict[str, Any]] = {
    "".join(map(chr, range(0x80))): ["".join(map(chr, range(0x80))), *map(chr, range(0x80))],
    "\u2028\u2029\ufeff\uffff": ["x" * 40 + '\x00\x1f"\\\x7f\u2028' * 9, "\U0001f600", ""],
    "\U0001f600": {"\ue000": MAX_SAFE_INTEGER, "z": -MAX_SAFE_INTEGER, "": [{}, [], None]},
    "b": [True, False, 0, -1, "\u00e9\u4e2d\U0010ffff"],
}


class CanonicalizationError(ValueError):
    """A value has no RFC 8785 form: a float that is NaN or infinite, an integer beyond
    ±(2**53 - 1), a lone surrogate, a non-string key or an unsupported type."""


def canonical_bytes(event: Mapping[str, Any]) -> bytes:
    """Returns the RFC 8785 (JCS) UTF-8 bytes of ``event``, exactly as ``rfc8785.dumps``.

    Raises ``CanonicalizationError`` for values JCS cannot represent.
    """
    plain = event if type(event) is dict else dict(event)
    fast = fast_canonical_bytes(plain)
    if fast is not None:
        return fast
    try:
        return rfc8785.dumps(plain)
    except (rfc8785.CanonicalizationError, UnicodeError, RecursionError) as error:
        raise CanonicalizationError(str(error)) from error


def json_canonical_bytes(event: dict[str, Any]) -> bytes:
    """``canonical_bytes`` of a value made of JSON types only (dict, list, str, int,
    float, bool, None: what ``orjson.loads`` returns), such as the canonical events that
    the log's decoder builds, with a cheaper proof of the fast path.

    Where orjson's output is all ASCII, every key is ASCII, so the two key orders agree;
    JSON types leave floats as the only values the two serialise differently. So an
    ASCII output of a float-free value is its JCS form, and anything else gets the full
    proof. A value of another type (a datetime, a UUID) must go to ``canonical_bytes``:
    orjson would serialise it where the reference refuses it.
    """
    if _orjson_agrees():
        fast = _orjson_dumps(event)
        if fast is not None and fast.isascii() and is_float_free(event):
            return fast
    return canonical_bytes(event)


def fast_canonical_bytes(value: Mapping[str, Any]) -> bytes | None:
    """Returns the JCS bytes of ``value`` via orjson, or None where equality with
    ``rfc8785.dumps`` is not proven (the caller then uses the reference)."""
    try:
        if type(value) is not dict or not _is_plain(value) or not _orjson_agrees():
            return None
    except RecursionError:
        return None
    return _orjson_dumps(value)


def fast_path_enabled() -> bool:
    """Whether the installed orjson passed the self-check that guards the fast path."""
    return _orjson_agrees()


def is_float_free(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a container that ``orjson.loads`` returned holds no float at any depth.

    Parsed JSON holds only exact JSON types, so if its text was all ASCII (no key-order
    question) and it holds no float, ``orjson.dumps(value, option=CANONICAL_OPTIONS)``
    is its JCS form or fails where JCS fails; see ``_is_plain``.
    """
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        kind = type(item)
        # Strings and integers dominate payloads; settling them first is measurably faster.
        if kind is str or kind is int:
            continue
        if kind is float:
            return False
        if (kind is dict or kind is list) and not is_float_free(item):
            return False
    return True


def parsed_is_plain(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a container that ``orjson.loads`` returned holds no float and no object
    whose keys sort differently by UTF-16 code units than by code points.

    For such a value ``orjson.dumps(value, option=CANONICAL_OPTIONS)`` is its JCS form
    or fails where JCS fails; ``is_float_free`` suffices where the text was all ASCII.
    """
    if isinstance(value, dict):
        if not all(map(str.isascii, value)) and not _keys_sort_alike(value):
            return False
        items: Iterable[Any] = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str or kind is int:
            continue
        if kind is float:
            return False
        if (kind is dict or kind is list) and not parsed_is_plain(item):
            return False
    return True


def _orjson_dumps(value: dict[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(value, option=CANONICAL_OPTIONS)
    except orjson.JSONEncodeError:
        # An integer beyond the JCS range, a lone surrogate or deep nesting: the
        # reference decides whether that is an error.
        return None


def _is_plain(value: object) -> bool:
    """Whether orjson serialises ``value`` exactly as RFC 8785 does (or fails where the
    reference fails).

    Both escape strings identically (checked for every code point in the tests) and
    orjson rejects lone surrogates and, with ``OPT_STRICT_INTEGER``, exactly the integers
    outside JCS's range. They differ on floats (ECMAScript number formatting), on types
    orjson accepts and JCS does not (enums, UUIDs, datetimes, subclasses), and on key
    order: JCS sorts by UTF-16 code units, orjson by code points, which disagree when one
    key holds a character in U+E000..U+FFFF and another a character above U+FFFF.
    """
    kind = type(value)
    items: Iterable[Any]
    if kind is dict:
        mapping: dict[Any, Any] = value  # type: ignore[assignment]
        if not _keys_sort_alike(mapping):
            return False
        items = mapping.values()
    elif kind is list or kind is tuple:
        items = value  # type: ignore[assignment]
    else:
        return kind in _PLAIN_SCALARS
    # Scalars (nearly every value) are settled here, without a call each; a loop, as
    # all() over a generator costs more.
    leaves = _PLAIN_SCALARS
    for item in items:  # noqa: SIM110
        if type(item) not in leaves and not _is_plain(item):
            return False
    return True


# The exact types of the values both serialise alike (bool is not an int subclass here:
# ``type`` is compared, not ``isinstance``).
_PLAIN_SCALARS: Final = frozenset({str, int, bool, type(None)})
_STR: Final = frozenset({str})


def _keys_sort_alike(mapping: dict[Any, Any]) -> bool:
    """Whether the keys are exact strings whose code point order equals their UTF-16 order."""
    if not _STR.issuperset(map(type, mapping)):
        return False
    if "".join(mapping).isascii():
        return True
    try:
        by_utf16 = sorted(mapping, key=lambda key: key.encode("utf-16-be"))
    except UnicodeEncodeError:
        return False
    return by_utf16 == sorted(mapping)


@cache
def _orjson_agrees() -> bool:
    """Whether the installed orjson matches the reference on a probe of the risky cases.

    The tests prove equality for the pinned version; this guards a silent change in a
    later orjson release by turning the fast path off instead of forking the chain.
    """
    try:
        same = orjson.dumps(_PROBE, option=CANONICAL_OPTIONS) == rfc8785.dumps(_PROBE)
    except (orjson.JSONEncodeError, rfc8785.CanonicalizationError):
        return False
    for rejected in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, "\ud800"):
        try:
            orjson.dumps(rejected, option=CANONICAL_OPTIONS)
        except orjson.JSONEncodeError:
            continue
        return False
    return same


def format_time(moment: datetime) -> str:
    """Returns ``moment`` in UTC as RFC 3339 with six fractional digits and ``Z``, e.g.
    ``2026-11-24T08:00:00.123456Z``; naive datetimes are rejected with ``ValueError``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} is naive; pass an aware datetime, e.g. tzinfo=UTC")
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    """Returns the aware UTC datetime of a timestamp in the ``format_time`` form; any other
    form raises ``ValueError``."""
    match = _TIME_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 UTC time like 2026-11-24T08:00:00.123456Z")
    year, month, day, hour, minute, second, micro = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as error:
        raise ValueError(f"{text!r} is not a valid time: {error}") from error


def event_shape_error(event: Mapping[str, Any]) -> str | None:
    """Returns what makes ``event`` not a canonical event object (its keys or their
    JSON types), or None if its shape is right."""
    if not isinstance(event, Mapping):
        return f"an event must be a JSON object, not {type(event).__name__}"
    if event.keys() != EVENT_KEYS:
        missing = sorted(EVENT_KEYS - event.keys())
        extra = sorted(map(str, event.keys() - EVENT_KEYS))
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra)}" if extra else "",
        ]
        return "keys: " + "; ".join(part for part in parts if part)
    for key, expected in EVENT_KEY_TYPES:
        if type(event[key]) is not expected:
            return f"{key} must be {_JSON_TYPE_NAMES[expected]}, not {_json_type_name(event[key])}"
    if event["position"] < 1:
        return "position must be a positive integer"
    return None


_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    int: "an integer",
    str: "a string",
    dict: "an object",
    list: "an array",
    float: "a number with a fraction or exponent",
    bool: "a boolean",
    type(None): "null",
}


def _json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
