"""The protobuf wire form of replayed events, written directly.

Building ``ledger.v1.Event`` messages (a ``Struct`` per payload) through the protobuf
API costs about 40 µs an event in Python, which caps a replay near 25,000 events/s.
Replay therefore writes the bytes of each ``Event`` itself: the fields in order, each
payload as the ``Struct`` it stands for (numbers as doubles, ``null``, booleans,
strings, nested objects and arrays), and ``ReplayEvents`` is registered with a
pass-through serializer (``add_audit_service``). The tests parse these bytes with the
generated classes and compare them with messages built through the API.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

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
# google.protobuf.Struct / Value / ListValue
_FIELDS_ENTRY: Final = b"\x0a"
_ENTRY_KEY: Final = b"\x0a"
_ENTRY_VALUE: Final = b"\x12"
_NULL: Final = b"\x08\x00"
_NUMBER: Final = b"\x11"
_STRING: Final = b"\x1a"
_TRUE: Final = b"\x20\x01"
_FALSE: Final = b"\x20\x00"
_STRUCT: Final = b"\x2a"
_LIST: Final = b"\x32"
_LIST_ITEM: Final = b"\x0a"


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
# Varints of every length below 16 KiB: lengths are by far the most frequent varints.
_VARINTS: Final[tuple[bytes, ...]] = tuple(_varint_slow(n) for n in range(_SHORT))


def varint(value: int) -> bytes:
    """Returns the protobuf varint of a non-negative int (or an int64 in ten bytes)."""
    return _VARINTS[value] if 0 <= value < _SHORT else _varint_slow(value)


_CACHE_LIMIT: Final = 65_536
# Encoded Values of strings and encoded map keys: enum names, ids and keys repeat.
_string_values: dict[str, bytes] = {}
_keys: dict[str, bytes] = {}
# Encoded seconds fields (b"\x08" + varint) of "YYYY-MM-DDTHH:MM:SS" prefixes.
_seconds: dict[str, bytes] = {}


def _string_value(text: str) -> bytes:
    value = _string_values.get(text)
    if value is None:
        data = text.encode()
        size = len(data)
        value = _STRING + (_VARINTS[size] if size < _SHORT else _varint_slow(size)) + data
        if size <= 64:
            if len(_string_values) >= _CACHE_LIMIT:
                _string_values.clear()
            _string_values[text] = value
    return value


def _key(text: str) -> bytes:
    key = _keys.get(text)
    if key is None:
        data = text.encode()
        key = _ENTRY_KEY + varint(len(data)) + data
        if len(_keys) >= _CACHE_LIMIT:
            _keys.clear()
        _keys[text] = key
    return key


def _value(value: Any) -> bytes:
    """Returns the bytes of a google.protobuf.Value holding a JSON value."""
    kind = type(value)
    if kind is str:
        return _string_value(value)
    if kind is int or kind is float:
        return _NUMBER + _pack_double(value)
    if kind is bool:
        return _TRUE if value else _FALSE
    if value is None:
        return _NULL
    if kind is dict:
        body = _struct(value)
        return _STRUCT + varint(len(body)) + body
    if kind is list:
        items = []
        for item in value:
            encoded = _value(item)
            items.append(_LIST_ITEM + varint(len(encoded)) + encoded)
        body = b"".join(items)
        return _LIST + varint(len(body)) + body
    raise TypeError(f"a payload holds JSON values only, not {kind.__name__}")


def _struct(mapping: Mapping[str, Any]) -> bytes:
    """Returns the bytes of a google.protobuf.Struct holding a JSON object."""
    parts: list[bytes] = []
    append = parts.append
    for name, item in mapping.items():
        key = _keys.get(name) or _key(name)
        encoded = _string_value(item) if type(item) is str else _value(item)
        size = len(encoded)
        entry_size = len(key) + 1 + (1 if size < 0x80 else len(varint(size))) + size
        append(_FIELDS_ENTRY)
        append(varint(entry_size))
        append(key)
        append(_ENTRY_VALUE)
        append(_VARINTS[size] if size < _SHORT else _varint_slow(size))
        append(encoded)
    return b"".join(parts)


def _timestamp(text: str) -> bytes:
    """Returns the body of a google.protobuf.Timestamp for a canonical time text."""
    seconds = _seconds.get(text[:19])
    if seconds is None:
        moment = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        seconds = b"\x08" + varint(int(moment.timestamp()))
        if len(_seconds) >= _CACHE_LIMIT:
            _seconds.clear()
        _seconds[text[:19]] = seconds
    micros = text[20:26]
    if micros == "000000":
        return seconds
    return seconds + b"\x10" + varint(int(micros) * 1000)


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
    body = b"".join(
        (
            _POSITION,
            varint(event["position"]),
            _text(_AGGREGATE_ID, event["aggregate_id"]),
            _kinds.get(kinds) or _cached(_kinds, kinds, _AGGREGATE_TYPE + _TYPE),
            _VERSION,
            varint(event["version"]),
            _RECORDED_AT,
            _VARINTS[len(recorded)],
            recorded,
            _EFFECTIVE_AT,
            _VARINTS[len(effective)],
            effective,
            _actors.get(actor) or _cached(_actors, actor, _ACTOR + _ROLE),
            _text(_REQUEST_ID, event["request_id"]),
            _PAYLOAD,
            varint(len(payload)),
            payload,
            _text(_CHAIN_HASH, chain_hash) if chain_hash else b"",
        )
    )
    return _EVENTS + varint(len(body)) + body


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
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, _ReplayPassThrough(server))
