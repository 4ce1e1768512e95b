"""The protobuf wire form of replayed events, written directly.

Building ``ledger.v1.Event`` messages (a ``Struct`` per payload) through the protobuf
API costs about 40 µs an event in Python, which caps a replay near 25,000 events/s.
Replay therefore writes the bytes of each ``Event`` itself: the fields in order, each
payload as the ``Struct`` it stands for (numbers as doubles, ``null``, booleans,
strings, nested objects and arrays), and ``ReplayEvents`` is registered with a
pass-through serializer (``add_audit_service``). The tests parse these bytes with the
generated classes and compare them with messages built through the API.

``encode_rows`` goes further for a whole replay: it writes each stored row (its JSON
state and its kept chain hash) as the ``Event`` that ``encode_event`` writes for the row's
canonical event, without building the canonical event in between; a row outside the
fast path of ``canonical_rows`` is encoded from ``decode_rows``' canonical event instead.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from ledger.application.events import EVENT_TOPICS, SKIPPED_TOPICS, split_state
from ledger.audit.stored import LinkedRow, decode_rows

if TYPE_CHECKING:
    # Imported where they are used: replay's worker processes encode, and never serve.
    import grpc

    from ledger.v1 import audit_pb2_grpc

_pack_double: Final = struct.Struct("<d").pack

# Protobuf keys (field number << 3 | wire type) of ledger.v1.Event, in field order.
_POSITION: Final = b"\x08"
_AGGREGATE_ID: Final = b"\x12"
_AGGREGATE_TYPE: Final = b"\x1a"
_VERSION: Final = b"\x20"
_TYPE: Final = b"\x2a"
_RECORDED_AT: Final = b"\x32"
_EFFECTIVE_AT: Final = b"\x3a"
_ACTOR: Final = b"\x42"
_ROLE: Final = b"\x4a"
_REQUEST_ID: Final = b"\x52"
_PAYLOAD: Final = b"\x5a"
_CHAIN_HASH: Final = b"\x62"
_EVENTS: Final = b"\x0a"  # ReplayEventsResponse.events
# google.protobuf.Struct / Value / ListValue. Values are handled "sized": the varint of
# their length followed by their bytes, which is how both a map entry's value and a list
# item embed them.
_ENTRY: Final = b"\x0a"  # Struct.fields entry; also the entry's key and ListValue.values
_ENTRY_VALUE: Final = b"\x12"
_STRING: Final = b"\x1a"
_STRUCT: Final = b"\x2a"
_LIST: Final = b"\x32"
_SIZED_NUMBER: Final = b"\x09\x11"  # 9 bytes: the key of number_value and a double
_SIZED_TRUE: Final = b"\x02\x20\x01"
_SIZED_FALSE: Final = b"\x02\x20\x00"
_SIZED_NULL: Final = b"\x02\x08\x00"


def _varint_slow(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 fields encode negatives in ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT: Final = 1 << 14
# Varints of every value below 16 KiB: lengths are by far the most frequent varints.
_VARINTS: Final[tuple[bytes, ...]] = tuple(_varint_slow(n) for n in range(_SHORT))
# The head of a Struct entry of each length below 16 KiB: its key and its length.
_ENTRY_HEADS: Final[tuple[bytes, ...]] = tuple(_ENTRY + v for v in _VARINTS)


# The low 14 bits of a larger value, as the first two bytes of its varint.
_LOW_14: Final[tuple[bytes, ...]] = tuple(
    bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(_SHORT)
)


def varint(value: int) -> bytes:
    """Returns the protobuf varint of a non-negative int (or an int64 in ten bytes)."""
    if 0 <= value < _SHORT:
        return _VARINTS[value]
    # Positions, seconds and nanoseconds: the varint of a value is the two bytes of its
    # low 14 bits followed by the varint of the rest.
    if 0 < value < 1 << 28:
        return _LOW_14[value & 0x3FFF] + _VARINTS[value >> 14]
    if 0 < value < 1 << 42:
        return _LOW_14[value & 0x3FFF] + _LOW_14[value >> 14 & 0x3FFF] + _VARINTS[value >> 28]
    return _varint_slow(value)


_CACHE_LIMIT: Final = 65_536
# Sized string Values, and Struct keys with the value's key after them: enum names, ids
# and keys repeat.
_sized_strings: dict[str, bytes] = {}
_keys: dict[str, bytes] = {}
# Encoded seconds fields (b"\x08" + varint) of "YYYY-MM-DDTHH:MM:SS" prefixes.
_seconds: dict[str, bytes] = {}


def _sized_string(text: str) -> bytes:
    data = text.encode()
    value = _STRING + varint(len(data)) + data
    sized = varint(len(value)) + value
    if len(data) <= 64:
        if len(_sized_strings) >= _CACHE_LIMIT:
            _sized_strings.clear()
        _sized_strings[text] = sized
    return sized


def _key(text: str) -> bytes:
    data = text.encode()
    key = _ENTRY + varint(len(data)) + data + _ENTRY_VALUE
    if len(_keys) >= _CACHE_LIMIT:
        _keys.clear()
    _keys[text] = key
    return key


def _sized(value: Any) -> bytes:
    """Returns a google.protobuf.Value holding a JSON value, after its length."""
    kind = type(value)
    if kind is str:
        return _sized_strings.get(value) or _sized_string(value)
    if kind is int or kind is float:
        return _SIZED_NUMBER + _pack_double(value)
    if kind is bool:
        return _SIZED_TRUE if value else _SIZED_FALSE
    if value is None:
        return _SIZED_NULL
    if kind is dict:
        body = _struct(value)
        encoded = _STRUCT + varint(len(body)) + body
    elif kind is list:
        parts = []
        for item in value:
            parts.append(_ENTRY)
            parts.append(_sized(item))
        body = b"".join(parts)
        encoded = _LIST + varint(len(body)) + body
    else:
        raise TypeError(f"a payload holds JSON values only, not {kind.__name__}")
    return varint(len(encoded)) + encoded


def _struct(mapping: Mapping[str, Any]) -> bytes:
    """Returns the bytes of a google.protobuf.Struct holding a JSON object."""
    parts: list[bytes] = []
    append = parts.append
    keys, string_heads = _keys, _string_heads
    for name, item in mapping.items():
        if type(item) is str:
            data = item.encode()
            size = len(data)
            if size < _SHORT_STRING:
                # A string's entry is the head its key has for its length, then the
                # string itself: no lookup of the string.
                heads = string_heads.get(name) or _new_string_heads(name)
                append(heads[size] or _string_head(name, heads, size))
                append(data)
                continue
        key = keys.get(name) or _key(name)
        value = _sized(item)
        append(_entry_head(len(key) + len(value)))
        append(key)
        append(value)
    return b"".join(parts)


def _entry_head(size: int) -> bytes:
    return _ENTRY_HEADS[size] if size < _SHORT else _ENTRY + _varint_slow(size)


_SHORT_STRING: Final = 128
_STRING_HEAD_KEYS: Final = 1024
# For each Struct key, the bytes before a string of each length below 128 bytes (the
# entry's tag and length, the key, the Value's tag and length, the string's tag and
# length), filled in as lengths occur.
_string_heads: dict[str, list[bytes | None]] = {}


def _new_string_heads(name: str) -> list[bytes | None]:
    heads: list[bytes | None] = [None] * _SHORT_STRING
    if len(_string_heads) >= _STRING_HEAD_KEYS:
        _string_heads.clear()
    _string_heads[name] = heads
    return heads


def _string_head(name: str, heads: list[bytes | None], size: int) -> bytes:
    key = _keys.get(name) or _key(name)
    value = _STRING + _VARINTS[size]
    sized = _VARINTS[len(value) + size] + value
    head = _entry_head(len(key) + len(sized) + size) + key + sized
    heads[size] = head
    return head


def _timestamp(text: str) -> bytes:
    """Returns the body of a google.protobuf.Timestamp for a canonical time text."""
    seconds = _seconds.get(text[:19])
    if seconds is None:
        seconds = b"\x08" + varint(_epoch_seconds(text[:19]))
        if len(_seconds) >= _CACHE_LIMIT:
            _seconds.clear()
        _seconds[text[:19]] = seconds
    micros = text[20:26]
    if micros == "000000":
        return seconds
    return seconds + b"\x10" + varint(int(micros) * 1000)


_SECONDS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
_CLOCK: Final = re.compile(r"T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])")
# The epoch seconds of the midnight that starts each "YYYY-MM-DD" that ``strptime`` read.
_days: dict[str, int] = {}


def _epoch_seconds(text: str) -> int:
    """The seconds since the epoch of "YYYY-MM-DDTHH:MM:SS" in UTC, as ``strptime`` reads
    it (which raises ``ValueError`` for what is not such a time).

    A log's events have nearly as many distinct seconds as events (one in seven here), so
    most seconds are seen once: a day read before and a well-formed clock are added up
    instead of parsed (``strptime`` costs about 6 µs)."""
    clock = _CLOCK.fullmatch(text, 10)
    day = _days.get(text[:10])
    if day is not None and clock is not None:
        hours, minutes, seconds = clock.groups()
        return day + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    moment = datetime.strptime(text, _SECONDS_FORMAT).replace(tzinfo=UTC)
    epoch = int(moment.timestamp())
    if clock is not None:
        if len(_days) >= _CACHE_LIMIT:
            _days.clear()
        _days[text[:10]] = epoch - (moment.hour * 3600 + moment.minute * 60 + moment.second)
    return epoch


def _text(key: bytes, text: str) -> bytes:
    data = text.encode()
    size = len(data)
    return key + (_VARINTS[size] if size < _SHORT else _varint_slow(size)) + data


# Encoded (aggregate_type, type) and (actor, role) fields: few distinct values.
_kinds: dict[tuple[str, str], bytes] = {}
_actors: dict[tuple[str, str], bytes] = {}


def _cached(cache: dict[tuple[str, str], bytes], pair: tuple[str, str], keys: bytes) -> bytes:
    encoded = cache.get(pair)
    if encoded is None:
        encoded = _text(keys[0:1], pair[0]) + _text(keys[1:2], pair[1])
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[pair] = encoded
    return encoded


def encode_event(event: Mapping[str, Any], chain_hash: str) -> bytes:
    """Returns one ``ledger.v1.Event`` of a canonical event and its chain hash, framed as
    an element of ``ReplayEventsResponse.events`` (concatenate them into a message).

    An empty ``chain_hash`` leaves the field unset.
    """
    payload = _struct(event["payload"])
    recorded_text = event["recorded_at"]
    recorded = _timestamp(recorded_text)
    effective_text = event["effective_at"]
    effective = recorded if effective_text == recorded_text else _timestamp(effective_text)
    kinds = (event["aggregate_type"], event["type"])
    actor = (event["actor"], event["role"])
    return _framed(
        event["position"],
        event["aggregate_id"],
        _kinds.get(kinds) or _cached(_kinds, kinds, _AGGREGATE_TYPE + _TYPE),
        event["version"],
        recorded,
        effective,
        _actors.get(actor) or _cached(_actors, actor, _ACTOR + _ROLE),
        event["request_id"],
        payload,
        chain_hash,
    )


def _framed(
    position: int,
    aggregate_id: str,
    kinds: bytes,
    version: int,
    recorded: bytes,
    effective: bytes,
    actor: bytes,
    request_id: str,
    payload: bytes,
    chain_hash: str | None,
) -> bytes:
    """One framed ``Event`` from its fields, the repeated ones already encoded (``kinds``:
    aggregate_type and type; ``actor``: actor and role; the two Timestamps; the Struct).
    No ``chain_hash`` (None or empty) leaves the field unset."""
    body = b"".join(
        (
            _POSITION,
            varint(position),
            _text(_AGGREGATE_ID, aggregate_id),
            kinds,
            _VERSION,
            varint(version),
            _RECORDED_AT,
            _VARINTS[len(recorded)],
            recorded,
            _EFFECTIVE_AT,
            _VARINTS[len(effective)],
            effective,
            actor,
            _text(_REQUEST_ID, request_id),
            _PAYLOAD,
            varint(len(payload)),
            payload,
            _text(_CHAIN_HASH, chain_hash) if chain_hash else b"",
        )
    )
    return _EVENTS + varint(len(body)) + body


# The aggregate_type and type fields of each event topic.
_TOPIC_KINDS: Final[dict[str, bytes]] = {
    topic: _text(_AGGREGATE_TYPE, aggregate_type) + _text(_TYPE, event_type)
    for topic, (event_type, aggregate_type) in EVENT_TOPICS.items()
}


def encode_rows(rows: Iterable[LinkedRow]) -> list[bytes]:
    """Returns the framed ``Event`` of each stored business row with its kept chain hash,
    in order, markers left out: each the bytes of ``encode_event(event, chain_hash or "")``
    for the row's canonical event (``decode_rows``), whose errors it raises too."""
    framed: list[bytes] = []
    append = framed.append
    loads = orjson.loads
    kinds_of = _TOPIC_KINDS
    actors = _actors
    last_time, last_timestamp = "", b""
    for row in rows:
        position, aggregate_id, version, topic, state, chain_hash = row
        kinds = kinds_of.get(topic)
        if kinds is None:
            if topic not in SKIPPED_TOPICS:
                append(_encode_generic(row))  # raises the row's error
            continue
        # The fast path of ``canonical_rows``: the envelope taken out of the state leaves
        # the payload, and the stored times are UTC with microseconds.
        try:
            split = split_state(loads(state), state, topic)
            if split is None:
                raise _Generic
            data, recorded_at, effective_at, actor_id, role, request_id = split
            actor = (actor_id, role)
            if (
                len(recorded_at) != 32
                or recorded_at[26:] != "+00:00"
                or len(effective_at) != 32
                or effective_at[26:] != "+00:00"
            ):
                raise _Generic
        except (_Generic, ValueError, KeyError, TypeError, AttributeError):
            append(_encode_generic(row))
            continue
        # A stored time and its canonical text share the parts a Timestamp is made of.
        # The events of one command share their time, so the last one is kept.
        if recorded_at != last_time:
            last_time, last_timestamp = recorded_at, _timestamp(recorded_at)
        recorded = last_timestamp
        effective_ts = recorded if effective_at == recorded_at else _timestamp(effective_at)
        append(
            _framed(
                position,
                aggregate_id,
                kinds,
                version,
                recorded,
                effective_ts,
                actors.get(actor) or _cached(actors, actor, _ACTOR + _ROLE),
                request_id,
                _struct(data),
                chain_hash,
            )
        )
    return framed


class _Generic(Exception):
    """A stored row outside the fast path of ``encode_rows``."""


def _encode_generic(row: LinkedRow) -> bytes:
    """Encodes one row from its canonical event, or raises ``UndecodableEvent``."""
    (event,) = decode_rows([row[:5]])
    return encode_event(event, row[5] or "")


def encode_message(framed_events: Sequence[bytes]) -> bytes:
    """Returns a ``ReplayEventsResponse`` of events framed by ``encode_event``."""
    return b"".join(framed_events)


def _pass_through(message: bytes) -> bytes:
    return message


class _ReplayPassThrough:
    """Stands in for the server while the generated code registers the AuditService,
    and registers its handlers with ``ReplayEvents`` sending bytes as they are."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Ignored: the same handlers arrive through ``add_registered_method_handlers``."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        import grpc

        replaced = dict(handlers)
        replay = replaced["ReplayEvents"]
        replaced["ReplayEvents"] = grpc.unary_stream_rpc_method_handler(
            replay.unary_stream,
            request_deserializer=replay.request_deserializer,
            response_serializer=_pass_through,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, replaced),)
        )
        self._server.add_registered_method_handlers(service, replaced)


def add_audit_service(servicer: audit_pb2_grpc.AuditServiceServicer, server: grpc.Server) -> None:
    """Registers the AuditService as the generated code does, except that
    ``ReplayEvents`` sends the bytes its servicer yields (``encode_message``) as they are."""
    from ledger.v1 import audit_pb2_grpc

    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, _ReplayPassThrough(server))
