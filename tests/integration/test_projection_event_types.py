"""A projection that names the event types its fold reads is given only those: its tables
are the same as when it is given every event, the engine decodes no event that none of
the projections sharing a read folds, and a projection without the list gets them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ledger.application.app import MarketLedger
from ledger.application.events import EVENT_TYPES, CanonicalEvent, EventLog
from ledger.projections.db import SqliteDatabase, Tx, WriteTx
from ledger.projections.engine import ProjectionManager, Tables
from ledger.projections.registry import all_projections
from ledger.settings import Settings
from tests.integration.test_projection_batches import history  # noqa: F401 (fixture)

DECLARING = ("catalogue", "ownership", "access", "compliance")


class Unfiltered:
    """A projection as given, without its list of event types."""

    def __init__(self, projection: Any) -> None:
        self.projection = projection
        self.name = projection.name
        self.version = projection.version
        self.seen: set[str] = set()

    def tables(self) -> Sequence[str]:
        result: Sequence[str] = self.projection.tables()
        return result

    def create(self, tx: Tx, t: Tables) -> None:
        self.projection.create(tx, t)

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.seen.update(e["type"] for e in events)
        self.projection.apply(tx, t, events)


class Seeing(Unfiltered):
    """A projection as given, list included, noting the types it is given."""

    @property
    def event_types(self) -> frozenset[str]:
        types: frozenset[str] = self.projection.event_types
        return types


class Counting:
    """A projection that reads every event and names no types."""

    name: ClassVar[str] = "counting"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def tables(self) -> Sequence[str]:
        return ()

    def create(self, tx: Tx, t: Tables) -> None:
        return None

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.seen.update(e["type"] for e in events)


def fold(app: MarketLedger, projections: Sequence[Any], batch_size: int) -> ProjectionManager:
    manager = ProjectionManager(
        SqliteDatabase(":memory:"), EventLog(app.recorder), projections, batch_size
    )
    manager.setup()
    manager.catch_up(timeout_s=300)
    return manager


def test_each_projection_given_its_types_alone_folds_the_same_tables(
    history: MarketLedger,  # noqa: F811
) -> None:
    by_name = {p.name: p for p in all_projections(Settings())}
    for name in DECLARING:
        types = by_name[name].event_types  # type: ignore[attr-defined]
        assert types
        assert types <= EVENT_TYPES
        for batch_size in (10_000, 37):
            seeing = Seeing(by_name[name])
            unfiltered = Unfiltered(by_name[name])
            filtered_digest = fold(history, [seeing], batch_size).digest(name)
            assert fold(history, [unfiltered], batch_size).digest(name) == filtered_digest
            assert seeing.seen <= types, name
            assert unfiltered.seen - types, name  # the log has events it skips


def test_a_shared_read_decodes_the_types_any_of_its_projections_folds(
    history: MarketLedger,  # noqa: F811
) -> None:
    by_name = {p.name: p for p in all_projections(Settings())}
    ownership, access = Seeing(by_name["ownership"]), Seeing(by_name["access"])
    fold(history, [ownership, access], 10_000)
    either = ownership.event_types | access.event_types
    assert ownership.seen | access.seen <= either
    assert ownership.seen - access.event_types  # each is given the other's types too

    counting, catalogue = Counting(), Seeing(by_name["catalogue"])
    fold(history, [counting, catalogue], 10_000)
    everything = {e["type"] for e in EventLog(history.recorder).read(0, 10**9)[0]}
    assert counting.seen == everything
    assert catalogue.seen == everything
