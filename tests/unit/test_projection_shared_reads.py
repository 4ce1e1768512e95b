"""Generations at one position share a read of the log: ``run_once`` reads each batch
once for all of them, each still applies it in a transaction of its own, in turn or side
by side (exactly once, a failure stopping only its own projection at the failing event,
found by halving the batch), and a generation behind the others catches up on reads of
its own until it is level with them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent, EventLog
from ledger.audit.canonical import canonical_bytes
from ledger.bench.dataset import generate
from ledger.projections.db import SqliteDatabase, Tx
from ledger.projections.engine import FAILED, LIVE, ProjectionManager, Tables
from ledger.projections.registry import all_projections
from ledger.settings import Settings
from tests.market import Market
from tests.unit.test_projection_engine import Counter, Faulty, applied


class CountingLog(EventLog):
    """The log, counting its reads and keeping what they returned."""

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self.reads = 0
        self.returned: list[tuple[int, list[CanonicalEvent]]] = []

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        self.reads += 1
        events, last = super().read(after, limit, stop)
        self.returned.append((after, events))
        return events, last


class Second(Counter):
    name: ClassVar[str] = "second"


class Third(Counter):
    name: ClassVar[str] = "third"


class FaultyThird(Faulty):
    name: ClassVar[str] = "third"


def positions(log: EventLog) -> list[int]:
    events, _ = log.read(0, 1_000_000)
    return [e["position"] for e in events]


def folded(manager: ProjectionManager, name: str) -> list[int]:
    table = manager.live(name, max_age_s=0).tables("applied")
    with manager.db.transaction() as tx:
        return [int(r[0]) for r in tx.fetchall(f"SELECT position FROM {table} ORDER BY 1")]


def open_manager(log: EventLog, projections: Sequence[Any], batch_size: int) -> ProjectionManager:
    manager = ProjectionManager(SqliteDatabase(":memory:"), log, projections, batch_size)
    manager.setup()
    return manager


def test_generations_at_one_position_read_each_batch_once_and_each_apply_it_once(
    market: Market,
) -> None:
    for _ in range(3):
        market.listed()
    log = CountingLog(market.app.recorder)
    manager = open_manager(log, [Counter(), Second(), Third()], batch_size=10)
    batches = -(-market.head // 10)

    manager.catch_up()

    assert log.reads == batches + 1  # and the read that finds nothing more
    for name in ("counter", "second", "third"):
        live = manager.live(name, max_age_s=0)
        assert (live.state, live.position) == (LIVE, market.head)
        assert folded(manager, name) == positions(log)


def test_a_failing_projection_stops_at_its_event_and_holds_back_none_of_the_others(
    market: Market,
) -> None:
    market.listed()
    market.listed()
    log = CountingLog(market.app.recorder)
    failing = next(e for e in log.read(0, 10_000)[0] if e["type"] == "ListingApproved")
    manager = open_manager(log, [Counter(), Second(), FaultyThird("ListingApproved")], 7)

    manager.catch_up()

    for name in ("counter", "second"):
        live = manager.live(name, max_age_s=0)
        assert (live.state, live.position) == (LIVE, market.head)
        assert folded(manager, name) == positions(log)
    third = manager.live("third", max_age_s=0)
    assert third.state == FAILED
    assert third.error_position == failing["position"]
    assert folded(manager, "third") == [p for p in positions(log) if p < failing["position"]]


def test_a_generation_behind_catches_up_on_its_own_reads_then_shares_them(
    market: Market,
) -> None:
    for _ in range(4):
        market.listed()
    log = CountingLog(market.app.recorder)
    manager = open_manager(log, [Counter(), Second()], batch_size=6)
    manager.catch_up()
    rebuilding = manager.rebuild("second")

    reads = []
    while True:
        before = log.reads
        if not manager.run_once():
            break
        reads.append(log.reads - before)
        gens = {g.generation: g for g in manager.generations("second")}
        if rebuilding.generation in gens and gens[rebuilding.generation].live:
            break

    # While behind, the rebuild reads alone (the live generations are at the head).
    assert reads
    assert all(n == 2 for n in reads)
    assert manager.live("second", max_age_s=0).generation == rebuilding.generation
    assert folded(manager, "second") == folded(manager, "counter") == positions(log)
    market.listed()
    before = log.reads
    assert manager.run_once() > 0
    assert log.reads - before == 1, "level with the others, it shares their read"


def test_a_generation_behind_reads_no_further_than_the_next_one_so_they_meet(
    market: Market,
) -> None:
    while market.head < 40:
        market.listed()
    log = CountingLog(market.app.recorder)
    manager = open_manager(log, [Counter(), Second()], batch_size=10)
    ahead = manager.live("second")
    assert manager.step(ahead) == 10
    assert manager.step(manager.live("second", max_age_s=0)) == 10
    assert manager.step(manager.live("counter")) == 10

    manager.batch_size = 15
    manager.run_once()

    assert manager.live("counter", max_age_s=0).position == 20, "stopped where second was"
    assert manager.live("second", max_age_s=0).position == 35
    manager.catch_up()
    assert folded(manager, "counter") == folded(manager, "second") == positions(log)


def test_a_worker_with_a_stale_view_of_one_generation_still_advances_the_others(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    market.listed()
    log = EventLog(market.app.recorder)
    db = SqliteDatabase(":memory:")
    first = ProjectionManager(db, log, [Counter(), Second()], batch_size=5)
    second = ProjectionManager(db, log, [Counter(), Second()], batch_size=5)
    first.setup()
    second.setup()
    stale = second.generations()
    first.step(first.live("counter"))  # moves counter on under the second worker

    monkeypatch.setattr(second, "generations", lambda name=None: stale)
    assert second.run_once() == 5, "the second projection advanced, the counter lost its race"

    first_batch = [p for p in positions(log) if p <= 5]
    assert applied(first) == folded(first, "second") == first_batch


def test_the_projections_leave_the_shared_events_as_they_were(memory_app: MarketLedger) -> None:
    generate(memory_app, 2000, seed=3)
    log = CountingLog(memory_app.recorder)
    manager = open_manager(log, all_projections(Settings()), batch_size=500)

    manager.catch_up()

    assert len(manager.generations()) == 5
    assert all(g.position == log.head() for g in manager.generations())
    fresh = EventLog(memory_app.recorder)
    for after, events in log.returned:
        folded_events = [canonical_bytes(e) for e in events]
        assert folded_events == [canonical_bytes(e) for e in fresh.read(after, 500)[0]]


class Unreachable(Counter):
    """A projection whose database is gone (as an outage looks to a fold)."""

    name: ClassVar[str] = "archive"  # first in the registry's order

    def apply(self, tx: Tx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        raise sqlite3.OperationalError("database is locked")


@pytest.mark.parametrize("workers", [1, 3])
def test_each_batch_is_applied_once_by_each_generation_side_by_side_or_in_turn(
    market: Market, workers: int
) -> None:
    for _ in range(3):
        market.listed()
    log = CountingLog(market.app.recorder)
    manager = ProjectionManager(
        SqliteDatabase(":memory:"),
        log,
        [Counter(), Second(), FaultyThird("ListingApproved")],
        batch_size=4,
        workers=workers,
    )
    manager.setup()
    events = EventLog(market.app.recorder).read(0, 10_000)[0]
    failing = next(e for e in events if e["type"] == "ListingApproved")

    manager.catch_up()

    afters = [after for after, _ in log.returned]
    assert len(afters) == len(set(afters)), "no batch read twice"
    assert applied(manager) == folded(manager, "second") == positions(log)
    third = manager.live("third", max_age_s=0)
    assert (third.state, third.error_position) == (FAILED, failing["position"])
    assert folded(manager, "third") == [p for p in positions(log) if p < failing["position"]]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_database_error_of_one_fold_is_raised_after_the_others_applied_the_batch(
    market: Market, workers: int
) -> None:
    market.listed()
    log = EventLog(market.app.recorder)
    manager = ProjectionManager(
        SqliteDatabase(":memory:"), log, [Counter(), Unreachable(), Second()], workers=workers
    )
    manager.setup()

    with pytest.raises(sqlite3.OperationalError):
        manager.run_once()

    assert applied(manager) == folded(manager, "second") == positions(log)
    unreachable = manager.live("archive", max_age_s=0)
    assert (unreachable.state, unreachable.position) != (FAILED, market.head)
    assert unreachable.position == 0, "not failed: the batch is tried again"


class FailsAt(Counter):
    """Cannot fold the event at one position; counts the batches it was given."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.batches = 0

    def apply(self, tx: Tx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.batches += 1
        super().apply(tx, t, events)

    def check(self, event: CanonicalEvent) -> None:
        if event["position"] == self.position:
            raise RuntimeError(f"cannot fold position {self.position}")


def test_a_failure_in_a_large_batch_is_found_in_a_few_transactions_and_stops_there(
    market: Market,
) -> None:
    while market.head < 120:
        market.listed()
    log = EventLog(market.app.recorder)
    business = positions(log)
    for failing in (business[0], business[1], business[len(business) // 3], business[-1]):
        projection = FailsAt(failing)
        manager = open_manager(log, [projection], batch_size=10_000)

        manager.catch_up()

        gen = manager.live("counter", max_age_s=0)
        before = [p for p in business if p < failing]
        assert (gen.state, gen.error_position) == (FAILED, failing)
        assert gen.position == (before[-1] if before else 0)
        assert applied(manager) == before
        # The whole batch, then two halves per halving at most, down to one event.
        assert projection.batches <= 1 + 2 * len(business).bit_length()
