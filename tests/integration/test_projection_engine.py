"""Blue/green rebuilds on the event store's own database, SQLite and PostgreSQL: the
catalogue is rebuilt while commands are written and List* pages are read, reads never
fail or go backwards across the switch, and the result equals a from-scratch rebuild."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.application.events import EventLog
from ledger.application.queries import Queries
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.domain.listing import Listing
from ledger.domain.trade import Trade
from ledger.projections.catalogue import Catalogue
from ledger.projections.db import SqliteDatabase
from ledger.projections.engine import LIVE, ProjectionManager
from ledger.projections.leases import AlwaysHeld
from ledger.settings import Settings
from tests.market import ADMIN, Market, new_market, rid

CATALOGUE = Catalogue.name
WRITES_BEFORE = 600
WRITES_DURING = 300
DEADLINE_S = 90.0


def write_commands(market: Market, count: int) -> int:
    """Writes ``count`` commands (listings, sales, grants, suspensions); returns how many."""
    written = 0
    while written < count:
        listing_id = market.listed()
        trade_id = market.sell(listing_id)
        grant_id = market.grant(trade_id)
        market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id))
        written += 6
    return written


@dataclass
class Reader:
    """Pages through listings and trades, from a manager of its own (as a server process
    reading while a worker rebuilds), until told to stop."""

    queries: Queries
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[BaseException] = field(default_factory=list)
    scans: int = 0
    seen: list[int] = field(default_factory=list)

    def scan(self, cls: type[Listing] | type[Trade]) -> int:
        count, token = 0, ""
        for _ in range(10_000):
            page = self.queries.page(cls, {}, 50, token, ADMIN)
            count += len(page.items)
            token = page.next_page_token
            if not token:
                return count
        raise AssertionError("paging did not end")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                listings = self.scan(Listing)
                self.scan(Trade)
            except BaseException as error:
                self.failures.append(error)
                return
            self.seen.append(listings)
            self.scans += 1


@dataclass
class Writer:
    market: Market
    count: int
    failures: list[BaseException] = field(default_factory=list)
    written: int = 0

    def run(self) -> None:
        try:
            self.written = write_commands(self.market, self.count)
        except BaseException as error:
            self.failures.append(error)


class RebuildContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def apps(self, database_url: str) -> Iterator[tuple[MarketLedger, MarketLedger]]:
        """The writers' application and the readers' (each with connections of its own)."""
        settings = Settings(database_url=database_url)
        clock = FakeClock(datetime.now(tz=UTC) - timedelta(days=1))
        writers = build_application(settings, clock)
        readers = build_application(settings, FakeClock())
        yield writers, readers
        writers.close()
        readers.close()

    @pytest.fixture
    def engines(self, database_url: str) -> Iterator[Callable[[MarketLedger], ProjectionManager]]:
        """Opens projection engines on the store (each as a process would), closed after."""
        opened: list[ProjectionManager] = []

        def open_engine(app: MarketLedger) -> ProjectionManager:
            engine = build_projections(Settings(database_url=database_url), app)
            opened.append(engine)
            return engine

        yield open_engine
        for engine in opened:
            engine.leases.release()
            engine.db.close()

    def test_a_rebuild_under_concurrent_writes_and_reads_goes_live_without_a_failed_read(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
    ) -> None:
        app, reading_app = apps
        assert isinstance(app.clock, FakeClock)
        market = new_market(app, app.clock)
        write_commands(market, WRITES_BEFORE)
        engine = engines(app)
        engine.catch_up()
        engine.batch_size = 20  # many batches, so that writes and reads interleave
        reader = Reader(Queries(reading_app, engines(reading_app)))
        writer = Writer(market, WRITES_DURING)
        threads = [threading.Thread(target=reader.run), threading.Thread(target=writer.run)]
        deadline = time.monotonic() + DEADLINE_S
        for thread in threads:
            thread.start()
        try:
            old = engine.live(CATALOGUE)
            started, head_before = time.monotonic(), engine.log.head()
            scans_before = reader.scans
            new = engine.rebuild(CATALOGUE)
            batches = 0
            while not engine.generation(CATALOGUE, new.generation).live:
                assert time.monotonic() < deadline, "the rebuild did not go live in time"
                assert not reader.failures, reader.failures
                batches += 1 if engine.run_once() else 0
                engine.drop_retired()  # as the runner does whenever it is idle
            took = time.monotonic() - started
            rebuilt, head_at_switch = engine.live(CATALOGUE, max_age_s=0), engine.log.head()
            scans_during = reader.scans - scans_before
            # Readers that looked up the old generation just before keep reading it.
            switched_scans = reader.scans
            while reader.scans < switched_scans + 2 and not reader.failures:
                assert time.monotonic() < deadline, "the reader stalled after the switch"
                time.sleep(0.01)
        finally:
            for thread in threads[1:]:
                thread.join(timeout=DEADLINE_S)
            reader.stop.set()
            threads[0].join(timeout=DEADLINE_S)

        assert not writer.failures, writer.failures
        assert not reader.failures, reader.failures
        assert rebuilt.generation == new.generation != old.generation
        assert rebuilt.state == LIVE
        assert head_at_switch > head_before, "writes went on during the rebuild"
        assert reader.seen == sorted(reader.seen), "a read went backwards"
        print(
            f"\n{engine.db.dialect}: rebuilt {rebuilt.position} positions in {took:.2f}s "
            f"({batches} batches) while {head_at_switch - head_before} were written and "
            f"{scans_during} full scans were read; 0 failed reads of {reader.scans}"
        )

        engine.catch_up()
        digest = engine.digest(CATALOGUE)
        assert digest == from_scratch(engine), "a fresh rebuild on the same database"
        assert digest == in_memory(app), "an independent fold of the same log"

    def test_a_rebuild_started_by_a_process_that_stops_is_finished_by_another(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
    ) -> None:
        app, other_app = apps
        assert isinstance(app.clock, FakeClock)
        market = new_market(app, app.clock)
        write_commands(market, 30)
        first = engines(app)
        first.catch_up()
        new = first.rebuild(CATALOGUE)
        first.leases.release()  # the first process stops before the rebuild is done

        second = engines(other_app)
        assert second.rebuild(CATALOGUE).generation == new.generation
        second.catch_up()

        assert first.live(CATALOGUE, max_age_s=0).generation == new.generation
        assert first.digest(CATALOGUE) == in_memory(app)

    def test_two_engines_without_leases_following_one_store_apply_each_event_once(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
    ) -> None:
        app, other_app = apps
        assert isinstance(app.clock, FakeClock)
        market = new_market(app, app.clock)
        racing = [engines(app), engines(other_app)]
        for engine in racing:
            engine.leases = AlwaysHeld()  # as on SQLite, or a lease lost but not yet noticed
            engine.batch_size = 10
        written = threading.Event()
        failures: list[BaseException] = []

        def follow(engine: ProjectionManager) -> None:
            try:
                for _ in range(100_000):
                    if not engine.run_once() and written.is_set():
                        return
                    if written.wait(0.002):
                        continue
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=follow, args=(e,)) for e in racing]
        for thread in threads:
            thread.start()
        try:
            write_commands(market, 150)
        finally:
            written.set()
            for thread in threads:
                thread.join(timeout=DEADLINE_S)

        assert not failures, failures
        engine = racing[0]
        engine.catch_up()
        for name in engine.projections:
            live = engine.live(name, max_age_s=0)
            assert (live.state, live.position) == (LIVE, app.head_position()), live.error
            digest = engine.digest(name)
            engine.rebuild(name)
            engine.catch_up()
            assert engine.digest(name) == digest, f"{name} differs from a rebuild"
        assert engine.digest(CATALOGUE) == in_memory(app)

    def test_workers_that_start_and_rebuild_at_once_create_each_generation_once(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
    ) -> None:
        app, _ = apps
        assert isinstance(app.clock, FakeClock)
        write_commands(new_market(app, app.clock), 12)
        starting = 4
        barrier = threading.Barrier(starting, timeout=30)
        rebuilt: list[int] = []
        failures: list[BaseException] = []

        def start() -> None:
            try:
                barrier.wait()
                engine = engines(app)  # sets the projections up
                barrier.wait()
                rebuilt.append(engine.rebuild(CATALOGUE).generation)
            except BaseException as error:
                failures.append(error)
                barrier.abort()

        threads = [threading.Thread(target=start) for _ in range(starting)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert not failures, failures
        assert rebuilt == [2] * starting
        engine = engines(app)
        for name in engine.projections:
            expected = [(1, True)] + ([(2, False)] if name == CATALOGUE else [])
            assert [(g.generation, g.live) for g in engine.generations(name)] == expected


def from_scratch(engine: ProjectionManager) -> str:
    engine.rebuild(CATALOGUE)
    engine.catch_up()
    return engine.digest(CATALOGUE)


def in_memory(app: MarketLedger) -> str:
    scratch = ProjectionManager(SqliteDatabase(":memory:"), EventLog(app.recorder), [Catalogue()])
    scratch.setup()
    scratch.catch_up()
    return scratch.digest(CATALOGUE)


class TestSQLiteRebuild(RebuildContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"


@pytest.mark.postgres
class TestPostgresRebuild(RebuildContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url
