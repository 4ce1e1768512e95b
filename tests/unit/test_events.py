"""Events are built without the frozen dataclass's ``__init__`` and aggregates from their
created event without the library's parameter matching: both must give what the
library's own construction gives."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.domain import ProgrammingError

from ledger.application import commands as c
from ledger.domain.base import Act, LedgerAggregate, create
from ledger.domain.trade import Trade
from tests.market import Market, rid

ACT = Act(
    "actor",
    "exchange",
    str(uuid.uuid4()),
    datetime(2026, 1, 2, tzinfo=UTC),
    datetime(2026, 1, 3, tzinfo=UTC),
)


def test_an_event_is_the_event_its_dataclass_constructor_builds() -> None:
    fields: dict[str, Any] = {
        "originator_id": uuid.uuid4(),
        "originator_version": 3,
        "timestamp": ACT.recorded_at,
        "effective_at": ACT.effective_at,
        "actor": ACT.actor,
        "role": ACT.role,
        "request_id": ACT.request_id,
        "settlement_ref": "PAY-1",
    }
    built = Trade.Settled.of(dict(reversed(fields.items())))
    constructed = Trade.Settled(**fields)
    assert built == constructed
    # Same field order, so the same stored state.
    assert list(vars(built)) == list(vars(constructed))


def test_an_event_needs_every_field_and_nothing_else() -> None:
    fields = {
        "originator_id": uuid.uuid4(),
        "originator_version": 2,
        "timestamp": ACT.recorded_at,
        "effective_at": ACT.effective_at,
        "actor": ACT.actor,
        "role": ACT.role,
        "request_id": ACT.request_id,
    }
    with pytest.raises(TypeError, match="missing fields \\['settlement_ref'\\]"):
        Trade.Settled.of(fields)
    with pytest.raises(TypeError, match="unexpected \\['colour'\\]"):
        Trade.Settled.of({**fields, "settlement_ref": "x", "colour": "red"})


def test_an_aggregate_id_is_a_uuid() -> None:
    with pytest.raises(TypeError):
        create(Trade, Trade.Created, "not-a-uuid", ACT)


def test_an_aggregate_init_takes_no_arguments() -> None:
    with pytest.raises(ProgrammingError, match="takes no arguments"):

        class Counter(LedgerAggregate):
            def __init__(self, start: int) -> None:
                self.count = start


def test_aggregates_replayed_from_the_store_equal_the_ones_the_commands_built(
    market: Market,
) -> None:
    listing_id, trade_id, grant_id = market.granted()
    market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="S-1"))
    app = market.app
    for value in (listing_id, trade_id, grant_id):
        aggregate_id = uuid.UUID(value)
        built: LedgerAggregate = app.repository.get(aggregate_id)
        events = app.recorder.select_events(aggregate_id)
        replayed: Any = None
        for stored in events:
            event: Any = app.mapper.to_domain_event(stored)
            replayed = event.mutate(replayed)
        assert replayed is not None
        assert {k: v for k, v in vars(replayed).items() if k != "_pending_events"} == {
            k: v for k, v in vars(built).items() if k != "_pending_events"
        }
        assert type(replayed) is type(built)
        assert replayed.version == len(events)
