"""The fast decoding of stored events (``canonical_rows``) against the reference
(``canonical_event``): the same canonical events, byte for byte in their canonical JSON,
and the same errors, for realistic histories and for every state the fast path leaves to
the reference (nested or unknown tags, escapes, times without a fraction, damage)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import Notification
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import events
from ledger.application.app import MarketLedger
from ledger.application.events import (
    ENVELOPE,
    EVENT_TOPICS,
    SKIPPED_TOPICS,
    CanonicalEvent,
    EventLog,
    StoredRow,
    canonical_event,
    canonical_rows,
)
from ledger.audit.canonical import canonical_bytes
from ledger.bench.dataset import generate
from ledger.clock import FakeClock
from tests.unit.test_projection_ownership import new_history, random_steps

TOPIC = "ledger/AccessUsed"
assert TOPIC in EVENT_TOPICS
MARKER = sorted(SKIPPED_TOPICS)[0]
AGGREGATE = "6f1d0c58-1e0a-4f5e-9a43-0e1f2a3b4c5d"

# The stored state as the library's transcoder writes it.
encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def tagged_time(text: str) -> dict[str, str]:
    return {"_type_": "datetime_iso", "_data_": text}


def envelope(**payload: Any) -> dict[str, Any]:
    return {
        "timestamp": tagged_time("2026-01-02T03:04:05.123456+00:00"),
        "effective_at": tagged_time("2026-01-02T03:04:05.123456+00:00"),
        "actor": "exchange-1",
        "role": "exchange",
        "request_id": "0a5d2f34-6baa-4455-a3e7-0682c2094cac",
        **payload,
    }


def row(state: bytes | dict[str, Any], topic: str = TOPIC, position: int = 7) -> StoredRow:
    data = state if isinstance(state, bytes) else encoder.encode(state).encode()
    return (position, AGGREGATE, 3, topic, data)


def reference(rows: list[StoredRow]) -> list[CanonicalEvent]:
    events = []
    for position, aggregate_id, version, topic, state in rows:
        notification = Notification(
            id=position,
            originator_id=uuid.UUID(aggregate_id),
            originator_version=version,
            topic=topic,
            state=state,
        )
        event = canonical_event(notification)
        if event is not None:
            events.append(event)
    return events


def outcome(decode: Any, rows: list[StoredRow]) -> tuple[str, Any]:
    """The events, or the error raised, as comparable values."""
    try:
        return "events", [canonical_bytes(e) for e in decode(rows)]
    except Exception as error:
        return "error", (type(error), str(error))


def assert_same(rows: list[StoredRow]) -> None:
    fast, slow = outcome(canonical_rows, rows), outcome(reference, rows)
    assert fast == slow
    if fast[0] == "events":
        assert canonical_rows(rows) == reference(rows)


# --- realistic histories ----------------------------------------------------------------


def read_all(log: EventLog, batch: int) -> tuple[list[CanonicalEvent], list[int]]:
    events: list[CanonicalEvent] = []
    lasts: list[int] = []
    position = 0
    while True:
        found, last = log.read(position, batch)
        if last == position:
            return events, lasts
        events += found
        lasts.append(last)
        position = last


def reference_read(app: MarketLedger, batch: int) -> tuple[list[CanonicalEvent], list[int]]:
    events: list[CanonicalEvent] = []
    lasts: list[int] = []
    position = 0
    while True:
        notifications = app.recorder.select_notifications(position + 1, batch)
        if not notifications:
            return events, lasts
        for notification in notifications:
            event = canonical_event(notification)
            if event is not None:
                events.append(event)
        position = notifications[-1].id
        lasts.append(position)


def test_a_generated_market_decodes_to_the_reference_events_byte_for_byte(
    memory_app: MarketLedger, clock: FakeClock
) -> None:
    generate(memory_app, 3000, seed=5)
    history = new_history(memory_app, clock)
    for step in random_steps(random.Random(5), 60):
        history.step(*step)
    log = EventLog(memory_app.recorder)

    for batch in (1, 97, 1000):
        fast, fast_lasts = read_all(log, batch)
        slow, slow_lasts = reference_read(memory_app, batch)
        assert fast_lasts == slow_lasts
        assert fast == slow
        assert [canonical_bytes(e) for e in fast] == [canonical_bytes(e) for e in slow]
    types = {e["type"] for e in fast}
    assert {"AccessGranted", "AccessUsed", "SaleRecorded", "RightsLicensed"} <= types
    assert len(fast) < log.head(), "the history has markers, which are left out"


def test_stored_states_as_the_transcoder_writes_them_take_the_fast_path(
    memory_app: MarketLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(memory_app, 1000, seed=6)
    notifications = memory_app.recorder.select_notifications(1, 10_000)
    expected = reference(
        [
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in notifications
        ]
    )

    def no_reference(notification: Notification) -> None:
        raise AssertionError(f"position {notification.id} left the fast path")

    monkeypatch.setattr(events, "canonical_event", no_reference)
    assert EventLog(memory_app.recorder).read(0, 10_000)[0] == expected


# --- states the fast path leaves to the reference ---------------------------------------

CASES: dict[str, bytes | dict[str, Any]] = {
    "plain": envelope(units=3, scenario="fraud-detection"),
    "top-level times and UUIDs": envelope(
        used_at=tagged_time("2026-01-02T03:04:05.000001+00:00"),
        grant={"_type_": "uuid_hex", "_data_": "6f1d0c581e0a4f5e9a430e1f2a3b4c5d"},
    ),
    "a time without a fraction": envelope(used_at=tagged_time("2026-01-02T03:04:05+00:00")),
    "an envelope time without a fraction": {
        **envelope(),
        "timestamp": tagged_time("2026-01-02T03:04:05+00:00"),
    },
    "a nested time": envelope(term={"start": tagged_time("2026-01-02T03:04:05.5+00:00")}),
    "times in a list": envelope(at=[tagged_time("2026-01-02T03:04:05.123456+00:00")]),
    "an unknown tag": envelope(price={"_type_": "decimal_str", "_data_": "1.50"}),
    "an untagged envelope time": {**envelope(), "timestamp": {"_data_": "x+00:00"}},
    "a tag as a value": envelope(note="_type_"),
    "a tag key in a plain object": envelope(meta={"_type_": "x", "other": 1}),
    "a tagged time with more members": envelope(
        at={"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05.123456+00:00", "x": 1}
    ),
    "originator topic": {**envelope(units=1), "originator_topic": "ledger/AccessGrant"},
    "non-ASCII text": envelope(note="数据交易所 \u2028 é 😀"),
    "control characters": envelope(note="tab\tnew\nnull\x00bell\x07"),
    "an escaped tag key": (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-02T03:04:05.123456+00:00"},'
        b'"effective_at":{"_type_":"datetime_iso","_data_":"2026-01-02T03:04:05.123456+00:00"},'
        b'"actor":"a","role":"r","request_id":"q",'
        b'"at":{"_typ\\u0065_":"datetime_iso","_data_":"2026-01-02T03:04:05.123456+00:00"}}'
    ),
    "an escaped envelope tag": (
        b'{"timestamp":{"\\u005ftype_":"datetime_iso","_data_":"2026-01-02T03:04:05.1+00:00"},'
        b'"effective_at":{"_type_":"datetime_iso","_data_":"2026-01-02T03:04:05.123456+00:00"},'
        b'"actor":"a","role":"r","request_id":"q","units":1}'
    ),
    # Damage: each must raise what the reference raises.
    "a time not in UTC": envelope(used_at=tagged_time("2026-01-02T03:04:05.123456+08:00")),
    "an envelope time not in UTC": {
        **envelope(),
        "effective_at": tagged_time("2026-01-02T11:04:05.123456+08:00"),
    },
    "no actor": {k: v for k, v in envelope().items() if k != "actor"},
    "no timestamp": {k: v for k, v in envelope().items() if k != "timestamp"},
    "a timestamp that is text": {**envelope(), "timestamp": "2026-01-02T03:04:05Z"},
    "a timestamp that is a number": {**envelope(), "timestamp": 5},
    "a timestamp without data": {**envelope(), "timestamp": {"_type_": "datetime_iso"}},
    "not JSON": b'{"timestamp":',
    "not an object": b"[1, 2]",
    "not UTF-8": b'{"a":"\xff"}',
}


@pytest.mark.parametrize("state", CASES.values(), ids=list(CASES))
def test_each_kind_of_state_decodes_or_fails_as_the_reference_does(
    state: bytes | dict[str, Any],
) -> None:
    assert_same([row(state)])
    # The same within a batch, between states of the fast path.
    plain = row(envelope(units=1), position=6)
    assert_same([plain, row(state), row(envelope(units=2), position=8)])


def test_markers_are_left_out_and_an_unknown_topic_fails_at_its_position() -> None:
    rows = [row(envelope(units=1), position=1), row(b"{}", topic=MARKER, position=2)]
    assert [e["position"] for e in canonical_rows(rows)] == [1]
    assert_same(rows)
    unknown = [*rows, row(envelope(units=2), topic="ledger/Nonesuch", position=3)]
    with pytest.raises(ValueError, match="position 3: unknown event topic 'ledger/Nonesuch'"):
        canonical_rows(unknown)
    assert_same(unknown)


# --- any payload ------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)
offsets = st.sampled_from([timedelta(0), timedelta(0), timedelta(hours=8)])


@st.composite
def tagged_times(draw: st.DrawFn) -> dict[str, str]:
    """A stored time, mostly in UTC (with or without a fraction), sometimes not."""
    return tagged_time(draw(times).astimezone(timezone(draw(offsets))).isoformat())


tagged_uuids = st.uuids().map(lambda u: {"_type_": "uuid_hex", "_data_": u.hex})
keys = st.sampled_from(["_type_", "_data_", "a", "at", "é", "", *ENVELOPE]) | st.text(max_size=6)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(max_size=12)
    | st.sampled_from(["_type_", '"_type_"', "datetime_iso", "\\u"])
    | tagged_times()
    | tagged_uuids
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.dictionaries(keys, values, max_size=6),
    stamp=tagged_times(),
    originator=st.booleans(),
)
def test_any_payload_decodes_or_fails_as_the_reference_does(
    payload: dict[str, Any], stamp: dict[str, str], originator: bool
) -> None:
    state = {**envelope(), "timestamp": stamp, **payload}
    if originator:
        state["originator_topic"] = "ledger/AccessGrant"
    for key in ("actor", "role", "request_id"):
        state.setdefault(key, "x")
    assert_same([row(state)])
