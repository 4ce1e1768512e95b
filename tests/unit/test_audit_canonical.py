"""The canonical form of events: the fast path is byte-identical to ``rfc8785.dumps``."""

from __future__ import annotations

import enum
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import orjson
import pytest
import rfc8785
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.audit import canonical
from ledger.audit.canonical import (
    CANONICAL_OPTIONS,
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_bytes,
    event_shape_error,
    fast_canonical_bytes,
    format_time,
    is_float_free,
    json_canonical_bytes,
    parse_time,
    parsed_is_plain,
)

# Characters where JSON serialisers are known to differ: controls, DEL, the JavaScript
# line separators, the private use area and the top of the BMP (which sort above
# surrogates in UTF-16), astral characters, lone surrogates, quotes and backslashes.
RISKY_CHARACTERS = [
    *map(chr, range(0x20)),
    "\x7f",
    "\u2028",
    "\u2029",
    "\ue000",
    "\uf8ff",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "\U00010000",
    "\U0010ffff",
    "\ud800",
    "\udfff",
    '"',
    "\\",
    "/",
    "é",
    "中",
    "a",
    "Z",
    "0",
]

characters = st.one_of(
    st.sampled_from(RISKY_CHARACTERS),
    st.characters(codec=None, exclude_categories=()),
)
texts = st.text(characters, max_size=24)
keys = st.text(st.one_of(st.sampled_from(RISKY_CHARACTERS), st.characters()), max_size=6)
integers = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from(
        [0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1]
    ),
    st.integers(min_value=-1000, max_value=1000),
)
scalars = st.one_of(
    texts,
    integers,
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1.0, 0.5, 1e21, -0.0]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=16,
)


@st.composite
def canonical_events(draw: st.DrawFn) -> dict[str, Any]:
    """Event-shaped dicts whose strings, integers and payload stress the serialisers."""
    return {
        "position": draw(integers),
        "aggregate_id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        "aggregate_type": draw(st.sampled_from(["Listing", "Trade", "Grant"])),
        "version": draw(integers),
        "type": draw(st.sampled_from(["SaleRecorded", "AccessGranted"])),
        "recorded_at": "2026-11-24T08:00:00.123456Z",
        "effective_at": draw(texts),
        "actor": draw(texts),
        "role": draw(texts),
        "request_id": draw(texts),
        "payload": draw(st.dictionaries(keys, values, max_size=6)),
    }


def reference(value: Any) -> bytes | None:
    try:
        result: bytes = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError):
        return None
    return result


@settings(max_examples=500, deadline=None)
@given(canonical_events())
def test_fast_path_equals_rfc8785_whenever_it_is_used(candidate: dict[str, Any]) -> None:
    expected = reference(candidate)
    fast = fast_canonical_bytes(candidate)
    event("fast path" if fast is not None else "fallback")
    if fast is not None:
        assert expected is not None
        assert fast == expected


@settings(max_examples=300, deadline=None)
@given(canonical_events())
def test_canonical_bytes_uses_the_reference_exactly_when_the_fast_path_declines(
    candidate: dict[str, Any],
) -> None:
    expected = reference(candidate)
    fast = fast_canonical_bytes(candidate)
    with mock.patch("ledger.audit.canonical.rfc8785.dumps", wraps=rfc8785.dumps) as spy:
        if expected is None:
            with pytest.raises(CanonicalizationError):
                canonical_bytes(candidate)
        else:
            assert canonical_bytes(candidate) == expected
    assert spy.call_count == (0 if fast is not None else 1)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_parsed_values_that_pass_the_check_serialise_as_rfc8785(payload: dict[str, Any]) -> None:
    try:
        text = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return  # not JSON at all (a lone surrogate or a huge integer)
    parsed = orjson.loads(text)
    if parsed_is_plain(parsed) or (text.isascii() and is_float_free(parsed)):
        # Equal bytes, or a failure where the reference fails too.
        try:
            fast: bytes | None = orjson.dumps(parsed, option=CANONICAL_OPTIONS)
        except orjson.JSONEncodeError:
            fast = None
        assert fast == reference(parsed)


@settings(max_examples=500, deadline=None)
@given(canonical_events())
def test_json_canonical_bytes_of_json_typed_events_equals_rfc8785_or_fails_as_it_does(
    candidate: dict[str, Any],
) -> None:
    try:
        parsed = orjson.loads(orjson.dumps(candidate))
    except orjson.JSONEncodeError:
        return  # not JSON at all (a lone surrogate or a huge integer)
    expected = reference(parsed)
    event("ascii" if orjson.dumps(parsed).isascii() else "not ascii")
    if expected is None:
        with pytest.raises(CanonicalizationError):
            json_canonical_bytes(parsed)
    else:
        assert json_canonical_bytes(parsed) == expected


def test_json_canonical_bytes_takes_the_full_proof_for_a_float_or_a_non_ascii_key() -> None:
    plain: dict[str, Any] = {"b": [1, {"c": "x"}], "a": "y", "n": None, "t": True}
    # orjson writes 1e+21 where JCS writes 1e21; the key pair sorts apart by UTF-16.
    declined: list[dict[str, Any]] = [{"f": 1e21}, {"\ue000": 1, "\U0001f600": 2}]
    expected = [rfc8785.dumps(value) for value in (plain, *declined)]
    with mock.patch("ledger.audit.canonical.rfc8785.dumps", wraps=rfc8785.dumps) as spy:
        assert json_canonical_bytes(plain) == expected[0]
        assert spy.call_count == 0
        assert [json_canonical_bytes(value) for value in declined] == expected[1:]
        assert spy.call_count == 2


def all_scalar_values() -> list[list[str]]:
    """Every Unicode scalar value, in blocks of 4096 consecutive code points."""
    blocks = []
    for start in range(0, 0x110000, 0x1000):
        block = [chr(c) for c in range(start, start + 0x1000) if not 0xD800 <= c <= 0xDFFF]
        if block:
            blocks.append(block)
    return blocks


def test_orjson_escapes_every_scalar_value_as_rfc8785_does() -> None:
    # Each character as its own string proves per-character equality; the joined block
    # covers orjson's vectorised path for long strings; the dict covers keys.
    for block in all_scalar_values():
        assert orjson.dumps(block) == rfc8785.dumps(block)
        joined = "".join(block)
        assert orjson.dumps(joined) == rfc8785.dumps(joined)
        as_keys = dict.fromkeys(block, 0)
        assert orjson.dumps(as_keys, option=CANONICAL_OPTIONS) == rfc8785.dumps(as_keys)


def test_orjson_strict_integers_have_exactly_the_jcs_range() -> None:
    for accepted in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER):
        assert orjson.dumps(accepted, option=CANONICAL_OPTIONS) == rfc8785.dumps(accepted)
    for rejected in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64):
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(rejected, option=CANONICAL_OPTIONS)
        with pytest.raises(rfc8785.CanonicalizationError):
            rfc8785.dumps(rejected)


def test_orjson_sorts_keys_by_code_point_where_jcs_sorts_by_utf16() -> None:
    keys_in_conflict = {"\ue000": 1, "\U0001f600": 2}
    assert orjson.dumps(keys_in_conflict, option=CANONICAL_OPTIONS) != rfc8785.dumps(
        keys_in_conflict
    )
    assert fast_canonical_bytes(keys_in_conflict) is None
    assert canonical_bytes(keys_in_conflict) == rfc8785.dumps(keys_in_conflict)
    assert canonical_bytes(keys_in_conflict).startswith('{"\U0001f600"'.encode())


class Colour(enum.Enum):
    RED = "RED"


class Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {"amount": 1.0},
        {"amount": 1e21},
        {"big": MAX_SAFE_INTEGER + 1},
        {"text": "lone \ud800 surrogate"},
        {"\ue000": 1, "\U0001f600": 2},
        {"colour": Colour.RED},
        {"id": uuid.UUID(int=1)},
        {"at": datetime(2026, 1, 1, tzinfo=UTC)},
        {"ordered": OrderedDict(a=1)},
        {"name": Name("x")},
        {1: "non-string key"},
        {Name("key"): "a key of a str subclass"},
        {"nested": [{"deep": [0.25]}]},
        {"in a tuple": ("a", (1, {"x": [True, None, 0.5]}))},
        {"a": 1, "b": [1, 2], "c": {"d": "e"}, "f": float("inf")},
    ],
)
def test_fast_path_declines_what_it_cannot_prove(value: dict[Any, Any]) -> None:
    assert fast_canonical_bytes(value) is None


@pytest.mark.parametrize(
    "value",
    [
        {"amount": float("nan")},
        {"big": 2**53},
        {"text": "\udfff"},
        {"colour": Colour.RED},
        {"\ud800": 1},
        {1: "non-string key"},
    ],
)
def test_values_without_a_jcs_form_are_rejected(value: dict[Any, Any]) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_bytes(value)


def test_fast_path_is_used_for_a_typical_event() -> None:
    typical: dict[str, Any] = {
        "position": 7,
        "aggregate_id": "0b7e8f2c-6a1d-4c55-9e8b-2f1f5f7a9d10",
        "aggregate_type": "Trade",
        "version": 1,
        "type": "SaleRecorded",
        "recorded_at": "2026-11-24T08:00:00.123456Z",
        "effective_at": "2026-11-24T08:00:00.000000Z",
        "actor": "exchange-01",
        "role": "exchange",
        "request_id": "5b0c1f7e-2d7a-4d1e-8a7e-3c9b8f0a1e22",
        "payload": {
            "price": {"currency": "CNY", "amount_minor": 1250000},
            "rights": ["ACCESS", "RESALE"],
            "title": "上海港\n日报",
            "note": None,
        },
    }
    assert fast_canonical_bytes(typical) == rfc8785.dumps(typical)
    assert canonical._orjson_agrees()


def test_canonical_bytes_accepts_any_mapping() -> None:
    class Frozen(dict[str, Any]):
        pass

    assert canonical_bytes(Frozen(b=1, a=[])) == b'{"a":[],"b":1}'


def test_format_time_writes_utc_with_six_digits_and_z() -> None:
    moment = datetime(2026, 11, 24, 16, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    assert format_time(moment) == "2026-11-24T08:00:00.123456Z"
    assert format_time(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00.000000Z"
    assert format_time(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000000Z"


def test_format_time_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 24, 8, 0))


@given(st.datetimes(timezones=st.just(UTC)))
def test_parse_time_inverts_format_time(moment: datetime) -> None:
    assert parse_time(format_time(moment)) == moment


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T08:00:00Z",
        "2026-11-24T08:00:00.123Z",
        "2026-11-24T08:00:00.123456+00:00",
        "2026-11-24T08:00:00.123456z",
        "2026-11-24 08:00:00.123456Z",
        "2026-02-30T08:00:00.000000Z",
        "2026-11-24T08:00:60.000000Z",
        "\uff12\uff10\uff12\uff16-11-24T08:00:00.123456Z",
        " 2026-11-24T08:00:00.123456Z",
    ],
)
def test_parse_time_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"2026|valid|RFC 3339"):
        parse_time(text)


def test_event_shape_error_names_the_problem() -> None:
    good: dict[str, Any] = {
        "position": 1,
        "aggregate_id": "a",
        "aggregate_type": "Trade",
        "version": 1,
        "type": "SaleRecorded",
        "recorded_at": "t",
        "effective_at": "t",
        "actor": "x",
        "role": "exchange",
        "request_id": "r",
        "payload": {},
    }
    assert event_shape_error(good) is None
    assert event_shape_error({k: v for k, v in good.items() if k != "role"}) == (
        "keys: missing role"
    )
    assert event_shape_error({**good, "extra": 1}) == "keys: unexpected extra"
    assert event_shape_error({**good, "position": True}) == (
        "position must be an integer, not a boolean"
    )
    assert event_shape_error({**good, "version": 1.0}) == (
        "version must be an integer, not a number with a fraction or exponent"
    )
    assert event_shape_error({**good, "payload": []}) == "payload must be an object, not an array"
