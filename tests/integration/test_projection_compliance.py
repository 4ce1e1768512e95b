"""The compliance projection on the event store's own database, SQLite and PostgreSQL:
the same report as an in-memory fold of the same log, the same after a rebuild, and
rejection counters that accumulate under the backend's upsert."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ledger.application import commands as c
from ledger.application.events import EventLog
from ledger.bootstrap import build_application, postgres_conninfo, store_env
from ledger.clock import FakeClock
from ledger.projections.compliance import (
    Compliance,
    Report,
    record_rejection,
    rejections,
    time_text,
)
from ledger.projections.db import Database, PostgresDatabase, SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import Market, new_market, rid


@dataclass
class World:
    market: Market
    manager: ProjectionManager
    compliance: Compliance

    def report(self, at: datetime, exchange_id: str | None = None) -> Report:
        self.manager.catch_up()
        tables = self.manager.live(Compliance.name).tables
        with self.manager.db.transaction() as tx:
            return self.compliance.report(tx, tables, exchange_id, time_text(at))


def in_memory(market: Market) -> World:
    """A fresh in-memory fold of the same log, to compare with."""
    compliance = Compliance()
    manager = ProjectionManager(
        SqliteDatabase(":memory:"), EventLog(market.app.recorder), [compliance]
    )
    manager.setup()
    manager.catch_up()
    return World(market, manager, compliance)


def a_market_with_every_finding(m: Market) -> datetime:
    """R17 (expired certification, then cleared), R18 (wrong mode), R19 (open and
    cleared); returns the time the checks read at."""
    buyer = m.participant("dealer-buyer", "BUYER", "DATA_DEALER")
    expiry = m.later(10)
    m.certify(buyer, days=10)
    listing = m.listed(classification="IMPORTANT")
    trade = m.sell(listing, buyer_id=buyer)
    grant = m.grant(trade)
    m.run(
        c.RecordAccessUse(
            request_id=rid(),
            grant_id=grant,
            delivery_mode="PRIVACY_COMPUTE",
            scenario="clinical-research",
        )
    )
    m.sell(m.listed())  # never settled
    m.clock.set(expiry + timedelta(days=2))
    m.run(c.SettleTrade(request_id=rid(), trade_id=trade, settlement_ref="PAY-1"))
    m.run(c.SuspendAccess(request_id=rid(), grant_id=grant))
    m.clock.advance(timedelta(days=1))
    return m.clock.now()


class ComplianceContract:
    """Subclasses provide ``database_url`` and ``projection_db`` for their backend."""

    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def projection_db(self, database_url: str) -> Iterator[Database]:
        raise NotImplementedError

    @pytest.fixture
    def world(
        self, database_url: str, projection_db: Database, clock: FakeClock
    ) -> Iterator[World]:
        app = build_application(Settings(database_url=database_url), clock)
        compliance = Compliance()
        manager = ProjectionManager(projection_db, EventLog(app.recorder), [compliance])
        manager.setup()
        yield World(new_market(app, clock), manager, compliance)
        app.close()

    def test_the_report_is_the_same_as_an_in_memory_fold(self, world: World) -> None:
        m = world.market
        at = a_market_with_every_finding(m)
        report = world.report(at)
        reference = in_memory(m)

        assert report == reference.report(at)
        # Row for row the same tables, whatever the backend's types.
        assert world.manager.digest(Compliance.name) == reference.manager.digest(Compliance.name)
        assert report.findings_by_rule() == {"R17": 1, "R18": 2, "R19": 2}
        r17 = next(f for f in report.findings if f.rule == "R17")
        assert r17.cleared_time is not None
        assert {f.is_open for f in report.findings if f.rule == "R19"} == {True, False}
        exchange = m.ids["exchange"]
        assert world.report(at, exchange) == reference.report(at, exchange)
        earlier = at - timedelta(days=5)
        assert world.report(earlier) == reference.report(earlier)

    def test_a_rebuild_reproduces_every_row(self, world: World) -> None:
        at = a_market_with_every_finding(world.market)
        report = world.report(at)
        digest = world.manager.digest(Compliance.name)

        world.manager.rebuild(Compliance.name)
        world.manager.catch_up()
        assert world.manager.digest(Compliance.name) == digest
        assert world.report(at) == report

    def test_rejections_accumulate_per_rule_exchange_and_day(self, world: World) -> None:
        with world.manager.db.transaction() as tx:
            for _ in range(3):
                record_rejection(tx, "2026-11-24", "R08", "ex-1")
            record_rejection(tx, "2026-11-24", "R05", "ex-2")
            record_rejection(tx, "2026-11-25", "R08", None)
        with world.manager.db.transaction() as tx:
            assert rejections(tx, "ex-1", "2026-11-24") == {"R08": 3}
            assert rejections(tx, None, "2026-11-24") == {"R05": 1, "R08": 3}
            assert rejections(tx, None, "2026-11-25") == {"R05": 1, "R08": 4}
        report = world.report(datetime.fromisoformat("2026-11-25T00:00:00+00:00"))
        assert report.rejections == {"R05": 1, "R08": 4}


class TestSQLiteCompliance(ComplianceContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"

    @pytest.fixture
    def projection_db(self, tmp_path: Path) -> Iterator[Database]:
        db = SqliteDatabase(str(tmp_path / "ledger.db"))
        yield db
        db.close()


@pytest.mark.postgres
class TestPostgresCompliance(ComplianceContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url

    @pytest.fixture
    def projection_db(self, database_url: str) -> Iterator[Database]:
        env = store_env(Settings(database_url=database_url))
        db = PostgresDatabase(postgres_conninfo(env, 5), env["POSTGRES_SCHEMA"])
        yield db
        db.close()
