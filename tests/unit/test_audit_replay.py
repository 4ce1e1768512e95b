"""Replay of the log: filters against a fold of the whole log, message batching, the
wire form of events against messages built through the protobuf API, the decoding of
stored rows against ``canonical_event``, and following new events."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import Notification
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.api import convert
from ledger.application import commands as c
from ledger.application.events import EVENT_TYPES, CanonicalEvent, EventLog, canonical_event
from ledger.audit.canonical import canonical_bytes, parse_time
from ledger.audit.chain import ChainBuilder
from ledger.audit.replay import (
    DEFAULT_EVENTS_PER_MESSAGE,
    MAX_EVENTS_PER_MESSAGE,
    EventReplay,
    ReplayQuery,
)
from ledger.audit.stored import AuditReader, UndecodableEvent, decode_rows
from ledger.audit.wire import encode_event
from ledger.domain.errors import InvalidArgument, Unavailable
from ledger.projections.chain import AuditChain
from ledger.projections.db import SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.v1 import audit_pb2
from tests.market import Market, rid

Replayed = list[tuple[CanonicalEvent, str]]


@pytest.fixture
def chain(market: Market) -> ProjectionManager:
    """The chain projection over a market with several listings, sales and grants."""
    for _ in range(3):
        _, trade_id, grant_id = market.granted()
        market.run(
            c.RecordAccessUse(
                request_id=rid(),
                grant_id=grant_id,
                delivery_mode="API",
                scenario="credit-risk-scoring",
                units=3,
            )
        )
        market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="PAY-1"))
    manager = ProjectionManager(
        SqliteDatabase(":memory:"), EventLog(market.app.recorder), [AuditChain()]
    )
    manager.setup()
    manager.catch_up()
    return manager


def replay_of(market: Market, manager: ProjectionManager, **kw: Any) -> EventReplay:
    reader = AuditReader(EventLog(market.app.recorder), manager.db.transaction)
    return EventReplay(reader, market.app.head_position, **kw)


def folded(market: Market) -> Replayed:
    """Every event of the log with the chain hash of a fold from the genesis."""
    events, _ = EventLog(market.app.recorder).read(0, 100_000)
    builder = ChainBuilder()
    return [(event, builder.append(event)) for event in events]


def replayed(replay: EventReplay, query: ReplayQuery) -> Replayed:
    return [pair for batch in replay.batches(query) for pair in batch]


def by_hand(log: Replayed, **kw: Any) -> Replayed:
    """The filters of a replay, written out plainly over the folded log."""
    first, last = kw.get("from_position", 0), kw.get("to_position")
    ids, types = set(kw.get("aggregate_ids", ())), set(kw.get("event_types", ()))
    since, until = kw.get("since"), kw.get("until")
    return [
        (event, chain_hash)
        for event, chain_hash in log
        if event["position"] >= first
        and (last is None or event["position"] <= last)
        and (not ids or event["aggregate_id"] in ids)
        and (not types or event["type"] in types)
        and (since is None or parse_time(event["recorded_at"]) >= since)
        and (until is None or parse_time(event["recorded_at"]) < until)
    ]


# --- filters ----------------------------------------------------------------------------


def test_an_unfiltered_replay_is_the_whole_log_with_the_chain_of_a_fold(
    market: Market, chain: ProjectionManager
) -> None:
    log = folded(market)
    assert len(log) > 30
    assert replayed(replay_of(market, chain), ReplayQuery()) == log


@pytest.mark.parametrize(
    "name",
    ["from_position", "to_position", "aggregate_ids", "event_types", "since", "until"],
)
def test_each_filter_keeps_exactly_the_events_it_names(
    market: Market, chain: ProjectionManager, name: str
) -> None:
    log = folded(market)
    middle = log[len(log) // 2][0]
    values: dict[str, Any] = {
        "from_position": middle["position"],
        "to_position": middle["position"],
        "aggregate_ids": [middle["aggregate_id"], log[0][0]["aggregate_id"]],
        "event_types": ["SaleRecorded", "AccessUsed"],
        "since": parse_time(middle["recorded_at"]),
        "until": parse_time(middle["recorded_at"]),
    }
    kw = {name: values[name]}
    expected = by_hand(log, **kw)
    assert 0 < len(expected) < len(log)
    assert replayed(replay_of(market, chain), ReplayQuery.create(**kw)) == expected


def test_random_combinations_of_filters_agree_with_the_fold(
    market: Market, chain: ProjectionManager
) -> None:
    log = folded(market)
    replay = replay_of(market, chain, read_batch=7)  # many small batches
    rng = random.Random(20261124)
    ids = sorted({event["aggregate_id"] for event, _ in log})
    types = sorted({event["type"] for event, _ in log})
    times = sorted({parse_time(event["recorded_at"]) for event, _ in log})
    positions = [event["position"] for event, _ in log]
    for _ in range(150):
        kw: dict[str, Any] = {}
        if rng.random() < 0.5:
            kw["from_position"] = rng.choice(positions)
        if rng.random() < 0.5:
            kw["to_position"] = max(rng.choice(positions), kw.get("from_position", 1))
        if rng.random() < 0.4:
            kw["aggregate_ids"] = rng.sample(ids, rng.randint(1, 4))
        if rng.random() < 0.4:
            kw["event_types"] = rng.sample(types, rng.randint(1, 3))
        if rng.random() < 0.4:
            kw["since"] = rng.choice(times) - timedelta(microseconds=rng.randint(0, 1))
        if rng.random() < 0.4:
            kw["until"] = rng.choice(times) + timedelta(seconds=rng.randint(1, 5))
            if "since" in kw and kw["until"] <= kw["since"]:
                del kw["until"]
        assert replayed(replay, ReplayQuery.create(**kw)) == by_hand(log, **kw), kw


def test_an_upper_bound_beyond_the_head_ends_at_the_head(
    market: Market, chain: ProjectionManager
) -> None:
    log = folded(market)
    query = ReplayQuery.create(to_position=market.head + 1000)
    assert replayed(replay_of(market, chain), query) == log


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"from_position": -1}, "from_position"),
        ({"from_position": 9, "to_position": 8}, "to_position"),
        ({"aggregate_ids": ["not-a-uuid"]}, "aggregate_ids"),
        ({"event_types": ["SaleRecorded", "SaleMade"]}, "event_types"),
        ({"max_events_per_message": -5}, "max_events_per_message"),
    ],
)
def test_a_malformed_query_is_an_invalid_argument_naming_its_field(
    kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        ReplayQuery.create(**kw)
    assert [v.field for v in raised.value.violations] == [field]


def test_until_must_come_after_since() -> None:
    moment = parse_time("2026-11-24T08:00:00.000000Z")
    with pytest.raises(InvalidArgument) as raised:
        ReplayQuery.create(since=moment, until=moment)
    assert [v.field for v in raised.value.violations] == ["until"]


def test_the_event_type_filter_knows_every_catalogue_name() -> None:
    assert ReplayQuery.create(event_types=sorted(EVENT_TYPES)).event_types == EVENT_TYPES


def test_ids_are_matched_in_lowercase_and_message_sizes_default_and_cap() -> None:
    upper = str(uuid.uuid4()).upper()
    assert ReplayQuery.create(aggregate_ids=[upper]).aggregate_ids == {upper.lower()}
    assert ReplayQuery.create().max_events_per_message == DEFAULT_EVENTS_PER_MESSAGE
    capped = ReplayQuery.create(max_events_per_message=10**6)
    assert capped.max_events_per_message == MAX_EVENTS_PER_MESSAGE


# --- messages and their wire form -------------------------------------------------------


def test_messages_hold_at_most_the_asked_number_of_events_in_log_order(
    market: Market, chain: ProjectionManager
) -> None:
    log = folded(market)
    replay = replay_of(market, chain, read_batch=40)
    query = ReplayQuery.create(max_events_per_message=7)
    messages = [audit_pb2.ReplayEventsResponse.FromString(m) for m in replay.messages(query)]
    assert all(1 <= len(m.events) <= 7 for m in messages)
    received = [convert.event_from_pb(e) for m in messages for e in m.events]
    assert received == log


def test_the_wire_form_of_every_event_is_the_message_the_protobuf_api_builds(
    market: Market,
) -> None:
    for event, chain_hash in folded(market):
        built = audit_pb2.ReplayEventsResponse(events=[convert.event_pb(event, chain_hash)])
        assert audit_pb2.ReplayEventsResponse.FromString(encode_event(event, chain_hash)) == built


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=30), json_values, max_size=8),
    position=st.integers(min_value=1, max_value=2**62),
    version=st.integers(min_value=1, max_value=2**31),
    micros=st.integers(min_value=0, max_value=999_999),
    actor=st.text(max_size=200),
)
def test_any_json_payload_has_the_wire_form_of_the_api_message(
    payload: dict[str, Any], position: int, version: int, micros: int, actor: str
) -> None:
    event = {
        "position": position,
        "aggregate_id": str(uuid.uuid4()),
        "aggregate_type": "Trade",
        "version": version,
        "type": "SaleRecorded",
        "recorded_at": f"2026-11-24T08:00:00.{micros:06d}Z",
        "effective_at": "1999-01-01T00:00:00.000000Z",
        "actor": actor,
        "role": "exchange",
        "request_id": str(uuid.uuid4()),
        "payload": payload,
    }
    built = audit_pb2.ReplayEventsResponse(events=[convert.event_pb(event, "ab" * 32)])
    parsed = audit_pb2.ReplayEventsResponse.FromString(encode_event(event, "ab" * 32))
    assert parsed == built


def test_a_long_payload_string_keeps_its_length_prefix_right() -> None:
    event = {**_an_event(), "payload": {"note": "数据" * 10_000, "n": 7}}
    parsed = audit_pb2.ReplayEventsResponse.FromString(encode_event(event, ""))
    assert parsed.events[0].payload["note"] == "数据" * 10_000
    assert parsed.events[0].chain_hash == ""


def test_integral_struct_numbers_come_back_as_the_integers_they_were(
    market: Market,
) -> None:
    for event, chain_hash in folded(market):
        back, back_hash = convert.event_from_pb(convert.event_pb(event, chain_hash))
        assert (back, back_hash) == (event, chain_hash)
        assert canonical_bytes(back) == canonical_bytes(event)
    fractional = {**_an_event(), "payload": {"ratio": 0.25, "big": 2.0**60}}
    back, _ = convert.event_from_pb(convert.event_pb(fractional, ""))
    assert back["payload"] == {"ratio": 0.25, "big": 2.0**60}


def _an_event() -> dict[str, Any]:
    return {
        "position": 3,
        "aggregate_id": str(uuid.uuid4()),
        "aggregate_type": "Listing",
        "version": 1,
        "type": "ListingSubmitted",
        "recorded_at": "2026-11-24T08:00:00.000001Z",
        "effective_at": "2026-11-24T08:00:00.000000Z",
        "actor": "exchange-01",
        "role": "exchange",
        "request_id": str(uuid.uuid4()),
        "payload": {},
    }


class FailingReader(AuditReader):
    """Reads the log as ``AuditReader`` does, and fails from its ``fail_at``-th read on."""

    def __init__(self, reader: AuditReader, fail_at: int) -> None:
        super().__init__(reader._log, reader.snapshot)
        self.reads = 0
        self.fail_at = fail_at

    def read_linked(self, *args: Any) -> Any:
        self.reads += 1
        if self.reads >= self.fail_at:
            raise Unavailable("the store went away")
        return super().read_linked(*args)


def replay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "replay-read" and t.is_alive()]


def test_filtered_and_unfiltered_messages_are_the_same_bytes(
    market: Market, chain: ProjectionManager
) -> None:
    replay = replay_of(market, chain, read_batch=9)
    everything = ReplayQuery.create(max_events_per_message=4)
    unfiltered = b"".join(replay.messages(everything))
    # A filter that keeps every event takes the path of the filters.
    kept = ReplayQuery.create(event_types=sorted(EVENT_TYPES), max_events_per_message=4)
    assert b"".join(replay.messages(kept)) == unfiltered
    parsed = audit_pb2.ReplayEventsResponse.FromString(unfiltered)
    assert [convert.event_from_pb(e) for e in parsed.events] == folded(market)


def test_an_error_while_reading_ahead_is_raised_after_the_messages_before_it(
    market: Market, chain: ProjectionManager
) -> None:
    reader = FailingReader(AuditReader(EventLog(market.app.recorder), chain.db.transaction), 3)
    replay = EventReplay(reader, market.app.head_position, read_batch=5)
    received: list[CanonicalEvent] = []

    def receive() -> None:
        for message in replay.messages(ReplayQuery.create(max_events_per_message=5)):
            parsed = audit_pb2.ReplayEventsResponse.FromString(message)
            received.extend(convert.event_from_pb(e)[0] for e in parsed.events)

    with pytest.raises(Unavailable, match="the store went away"):
        receive()
    assert received == [event for event, _ in folded(market)][: len(received)]
    assert 0 < len(received) <= 10, "the two batches read before the failure"
    _wait(lambda: not replay_threads())


def test_the_readers_stop_when_the_client_leaves_or_stops_taking_messages(
    market: Market, chain: ProjectionManager
) -> None:
    for _ in range(3):
        market.granted()
    chain.catch_up()
    replay = replay_of(market, chain, read_batch=2)
    active = threading.Event()
    active.set()
    # A stalled client: it took one message, and the readers wait to hand over the next.
    stalled = replay.messages(ReplayQuery.create(max_events_per_message=1), active.is_set)
    assert next(stalled)
    _wait(lambda: len(replay_threads()) == 2)
    active.clear()
    _wait(lambda: not replay_threads())
    # A client that stops taking messages (the stream is closed).
    abandoned = replay.messages(ReplayQuery.create(max_events_per_message=1))
    assert isinstance(abandoned, Generator)
    assert next(abandoned)
    abandoned.close()
    _wait(lambda: not replay_threads())


# --- stored rows ------------------------------------------------------------------------


def rows_of(market: Market) -> list[tuple[int, str, int, str, bytes]]:
    return [
        (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
        for n in market.app.recorder.select_notifications(1, 100_000)
    ]


def reference(rows: list[tuple[int, str, int, str, bytes]]) -> list[CanonicalEvent]:
    notifications = [
        Notification(id=p, originator_id=uuid.UUID(o), originator_version=v, topic=t, state=s)
        for p, o, v, t, s in rows
    ]
    return [e for n in notifications if (e := canonical_event(n)) is not None]


def test_stored_rows_decode_to_the_canonical_events_of_the_log(market: Market) -> None:
    market.granted()
    rows = rows_of(market)
    assert decode_rows(rows) == reference(rows)


def test_rows_outside_the_fast_path_decode_by_the_generic_rules(market: Market) -> None:
    market.granted()
    rows = rows_of(market)
    position, originator, version, topic, state = next(
        row for row in rows if row[3] == "ledger/SaleRecorded"
    )
    data = orjson.loads(state)
    tagged_time = data["term_end"]
    variants = {
        "nested tag": {**data, "extra": {"when": tagged_time, "ids": [tagged_time]}},
        "uuid tag": {**data, "ref": {"_type_": "uuid_hex", "_data_": uuid.uuid4().hex}},
        "other tag": {**data, "odd": {"_type_": "decimal_str", "_data_": "1.5"}},
        "untagged envelope": {**data, "timestamp": {"_data_": data["timestamp"]["_data_"]}},
        "tag name in a key": {**data, "note": {"_type_": "x"}},
    }
    for name, variant in variants.items():
        row = (position, originator, version, topic, orjson.dumps(variant))
        assert decode_rows([row]) == reference([row]), name


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s[:-1],
        lambda s: s.replace(b'"actor"', b'"actxr"'),
        lambda s: s.replace(b"+00:00", b"+01:00", 1),
        lambda s: b"[]",
    ],
)
def test_a_damaged_row_is_undecodable_at_its_position(market: Market, damage: Any) -> None:
    rows = rows_of(market)
    index = next(i for i, row in enumerate(rows) if row[3] == "ledger/ParticipantRegistered")
    position, originator, version, topic, state = rows[index]
    rows[index] = (position, originator, version, topic, damage(state))
    with pytest.raises(UndecodableEvent) as raised:
        decode_rows(rows)
    assert raised.value.position == position


def test_an_unknown_topic_is_undecodable() -> None:
    row = (5, uuid.uuid4().hex, 1, "ledger/Unheard", b"{}")
    with pytest.raises(UndecodableEvent) as raised:
        decode_rows([row])
    assert raised.value.position == 5


# --- following ----------------------------------------------------------------------------


def test_a_following_replay_receives_events_written_after_it_started(
    market: Market, chain: ProjectionManager
) -> None:
    head_events = len(folded(market))
    active = threading.Event()
    active.set()
    replay = replay_of(market, chain, follow_poll_s=0.005)
    received: list[CanonicalEvent] = []

    def follow() -> None:
        query = ReplayQuery.create(follow=True)
        for batch in replay.batches(query, active.is_set):
            received.extend(event for event, _ in batch)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        _wait(lambda: len(received) >= head_events)
        participant = market.participant("late-comer", "BUYER")
        chain.catch_up()
        _wait(lambda: any(e["aggregate_id"] == participant for e in received))
    finally:
        active.clear()
        thread.join(timeout=5)
    assert not thread.is_alive(), "the stream did not end when its client went away"
    assert [e["position"] for e in received] == sorted({e["position"] for e in received})
    assert [(e, h) for e, h in folded(market)] == [
        (e, h) for e, h in replayed(replay_of(market, chain), ReplayQuery())
    ]


def test_a_following_replay_ends_at_its_upper_bound(
    market: Market, chain: ProjectionManager
) -> None:
    last = folded(market)[-1][0]["position"]
    query = ReplayQuery.create(to_position=last, follow=True)
    batches: Iterator[Replayed] = replay_of(market, chain).batches(query)
    assert [e for batch in batches for e, _ in batch][-1]["position"] == last


def test_a_replay_that_waits_for_the_chain_too_long_is_unavailable(market: Market) -> None:
    from ledger.domain.errors import Unavailable

    manager = ProjectionManager(
        SqliteDatabase(":memory:"), EventLog(market.app.recorder), [AuditChain()]
    )
    manager.setup()  # set up, never run: nothing is hashed
    replay = replay_of(market, manager, chain_wait_s=0.05, follow_poll_s=0.01)
    with pytest.raises(Unavailable):
        list(replay.batches(ReplayQuery()))


def _wait(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
