"""Stored rows written straight to the wire (``encode_rows``) against the two steps they
stand for (``decode_rows``, then ``encode_event``): the same bytes and the same errors,
for realistic histories and for every state the fast path leaves to the reference."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application.app import MarketLedger
from ledger.application.events import StoredRow
from ledger.audit import wire
from ledger.audit.stored import LinkedRow, decode_rows
from ledger.audit.wire import encode_event, encode_rows
from ledger.bench.dataset import generate
from ledger.v1 import audit_pb2
from tests.unit.test_decode_speed_paths import (
    CASES,
    MARKER,
    envelope,
    row,
    tagged_time,
    tagged_times,
    values,
)

HASH = "5e" * 32


def linked(rows: list[StoredRow], hashes: list[str | None] | None = None) -> list[LinkedRow]:
    chain = hashes if hashes is not None else [HASH] * len(rows)
    return [(*stored, chain_hash) for stored, chain_hash in zip(rows, chain, strict=True)]


def in_two_steps(rows: list[LinkedRow]) -> list[bytes]:
    hashes = {r[0]: r[5] for r in rows}
    return [
        encode_event(event, hashes[event["position"]] or "")
        for event in decode_rows([r[:5] for r in rows])
    ]


def outcome(encode: Any, rows: list[LinkedRow]) -> tuple[str, Any]:
    try:
        return "bytes", encode(rows)
    except Exception as error:
        return "error", (type(error), str(error))


def assert_same(rows: list[LinkedRow]) -> None:
    assert outcome(encode_rows, rows) == outcome(in_two_steps, rows)


def test_a_generated_market_encodes_to_the_bytes_of_its_canonical_events(
    memory_app: MarketLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(memory_app, 2000, seed=3)
    notifications = memory_app.recorder.select_notifications(1, 10_000)
    rows = [
        (n.id, str(n.originator_id), n.originator_version, n.topic, n.state) for n in notifications
    ]
    hashes: list[str | None] = [f"{i:064x}" if i % 7 else None for i in range(len(rows))]
    expected = in_two_steps(linked(rows, hashes))

    def no_two_steps(stored: LinkedRow) -> bytes:
        raise AssertionError(f"position {stored[0]} left the fast path")

    # Stored states as the library's transcoder writes them all take the fast path.
    monkeypatch.setattr(wire, "_encode_generic", no_two_steps)
    encoded = encode_rows(linked(rows, hashes))
    assert encoded == expected
    assert len(encoded) == len(decode_rows(rows))
    message = audit_pb2.ReplayEventsResponse.FromString(b"".join(encoded))
    assert {e.type for e in message.events} >= {"SaleRecorded", "AccessGranted", "AccessUsed"}
    assert "" in {e.chain_hash for e in message.events}, "a row without a kept hash"


@pytest.mark.parametrize("state", CASES.values(), ids=list(CASES))
def test_each_kind_of_state_encodes_or_fails_as_the_two_steps_do(
    state: bytes | dict[str, Any],
) -> None:
    assert_same(linked([row(state)]))
    # The same within a batch, between states of the fast path, and after a marker.
    batch = [
        row(envelope(units=1), position=5),
        row(b"{}", topic=MARKER, position=6),
        row(state),
        row(envelope(units=2), position=8),
    ]
    assert_same(linked(batch, [HASH, None, "", HASH]))


def test_events_of_one_command_share_their_time_and_others_do_not() -> None:
    first = envelope(units=1)
    stamp = first["timestamp"]["_data_"]
    # The same second and another microsecond; another second and the same microsecond.
    times = [stamp, stamp, stamp[:20] + "654321+00:00", "2027" + stamp[4:], stamp]
    rows = [
        row({**first, "timestamp": tagged_time(text)}, position=number)
        for number, text in enumerate(times, 1)
    ]
    assert_same(linked(rows))


def test_an_unknown_topic_fails_at_its_position() -> None:
    rows = [
        row(envelope(units=1), position=1),
        row(envelope(), topic="ledger/Nonesuch", position=2),
    ]
    kind, (error, message) = outcome(encode_rows, linked(rows))
    assert (kind, error.__name__) == ("error", "UndecodableEvent")
    assert "position 2" in message
    assert_same(linked(rows))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.dictionaries(st.text(max_size=8), values, max_size=6),
    stamp=tagged_times(),
    effective=tagged_times(),
    chain_hash=st.sampled_from([HASH, "", None]),
)
def test_any_payload_encodes_or_fails_as_the_two_steps_do(
    payload: dict[str, Any],
    stamp: dict[str, str],
    effective: dict[str, str],
    chain_hash: str | None,
) -> None:
    state = {**envelope(), "timestamp": stamp, "effective_at": effective, **payload}
    for key in ("actor", "role", "request_id"):
        state.setdefault(key, "x")
    assert_same(linked([row(state), row(envelope(units=3), position=9)], [chain_hash, HASH]))


def _strptime_seconds(text: str) -> tuple[str, Any]:
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return "error", ValueError
    return "seconds", int(moment.timestamp())


def _epoch_seconds(text: str) -> tuple[str, Any]:
    try:
        return "seconds", wire._epoch_seconds(text)
    except ValueError:
        return "error", ValueError


@given(
    day=st.dates(min_value=date(1, 1, 2), max_value=date(9999, 12, 30)),
    clocks=st.lists(st.times(), min_size=2, max_size=4),
)
def test_times_are_read_as_strptime_reads_them_the_first_time_of_a_day_and_after(
    day: date, clocks: list[time]
) -> None:
    wire._days.clear()
    for clock in clocks:
        text = f"{day.isoformat()}T{clock.replace(microsecond=0).isoformat()}"
        assert _epoch_seconds(text) == _strptime_seconds(text), text


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24t08:00:01",
        "2026-11-24T24:00:00",
        "2026-11-24T08:60:00",
        "2026-11-24T08:00:60",
        "2026-11-24T08:00:0\u0663",
        "2026-11-24T\u06608:00:01",
        "2026-11-24T08-00-01",
        "2026-11-24T08:00:1 ",
        "2026-02-30T00:00:00",
        "\uff12026-11-24T08:00:01",
        "2026-11-24 08:00:01",
    ],
)
def test_an_unusual_time_is_read_as_strptime_reads_it(text: str) -> None:
    # The day of the text seen before, with an ordinary clock.
    wire._days.clear()
    assert (
        _epoch_seconds(text[:10] + "T12:00:00")[0] == _strptime_seconds(text[:10] + "T12:00:00")[0]
    )
    assert _epoch_seconds(text) == _strptime_seconds(text)
