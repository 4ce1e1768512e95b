"""CheckAccess as a server answers it, on each real backend: the head of the log, the
access projection's position and its rows come from one statement, and the answer
reflects every acknowledged write even when another process applies the projection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ledger.application import commands as c
from ledger.application.app import Actor, MarketLedger
from ledger.application.queries import Queries
from ledger.bootstrap import build_application, build_projections, postgres_conninfo, store_env
from ledger.clock import FakeClock
from ledger.domain.errors import NotFound, Unavailable
from ledger.projections.access import Decision
from ledger.projections.db import PostgresDatabase
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import Market, new_market, rid

ACCESS = "access"
CHANGES = 12
DEADLINE_S = 60.0


class CheckAccessContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def engines(self, database_url: str) -> Iterator[Callable[[MarketLedger], ProjectionManager]]:
        """Opens projection engines on the store (each as a server process would)."""
        opened: list[ProjectionManager] = []

        def open_engine(app: MarketLedger) -> ProjectionManager:
            engine = build_projections(Settings(database_url=database_url), app)
            opened.append(engine)
            return engine

        yield open_engine
        for engine in opened:
            engine.leases.release()
            engine.db.close()

    @pytest.fixture
    def apps(
        self, database_url: str, clock: FakeClock
    ) -> Iterator[tuple[MarketLedger, MarketLedger]]:
        """The writers' application and the readers' (connections of their own), on one
        clock so that both see the same validity windows."""
        writers = build_application(Settings(database_url=database_url), clock)
        readers = build_application(Settings(database_url=database_url), clock)
        yield writers, readers
        writers.close()
        readers.close()

    def test_a_reader_reflects_each_acknowledged_write_applied_by_another_process(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
        clock: FakeClock,
    ) -> None:
        app, reading_app = apps
        market = new_market(app, clock)
        listing_id, _, grant_id = market.granted()
        worker = engines(app)
        reader = Queries(reading_app, engines(reading_app))
        assert reader.head_sql is not None, "the head is read with the rows"
        stop = threading.Event()
        runner = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        runner.start()
        try:
            first = check(reader, market, listing_id)
            assert first[0].allowed
            assert first[0].grant_id == grant_id
            expected = "ACTIVE"
            for n in range(CHANGES):
                if expected == "ACTIVE":
                    outcome = market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id))
                    expected = "SUSPENDED"
                else:
                    outcome = market.run(c.ReinstateAccess(request_id=rid(), grant_id=grant_id))
                    expected = "ACTIVE"
                # Asked at once: the reader's engine applies nothing itself.
                decision, position = check(reader, market, listing_id)
                assert position >= outcome.position, n
                assert decision.allowed == (expected == "ACTIVE"), (n, decision)
                if not decision.allowed:
                    assert decision.reason == "GRANT_SUSPENDED"
            outcome = market.run(
                c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason="MISUSE_DETECTED")
            )
            revoked, position = check(reader, market, listing_id)
            assert (revoked.allowed, revoked.reason) == (False, "R16_GRANT_REVOKED")
            assert position >= outcome.position
            before, at = check(reader, market, listing_id, as_of_position=first[1])
            assert before.allowed
            assert at == first[1]
        finally:
            stop.set()
            worker.wake()
            runner.join(DEADLINE_S)

    def test_a_check_never_answers_from_a_projection_behind_an_acknowledged_write(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
        clock: FakeClock,
    ) -> None:
        app, _ = apps
        market = new_market(app, clock)
        listing_id, _, grant_id = market.granted()
        engine = engines(app)
        engine.catch_up()
        queries = Queries(app, engine, consistency_timeout_s=0.2)
        assert check(queries, market, listing_id)[0].allowed
        applied = market.head
        # No runner applies the revocation: the check fails rather than allow.
        revoked = market.run(
            c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason="MISUSE_DETECTED")
        )
        with pytest.raises(Unavailable, match="access projection is behind"):
            check(queries, market, listing_id)
        # Up to a position it has applied, it still answers.
        assert check(queries, market, listing_id, as_of_position=applied)[0].allowed
        engine.catch_up()
        decision, position = check(queries, market, listing_id)
        assert decision.reason == "R16_GRANT_REVOKED"
        assert position >= revoked.position

    def test_a_venue_scoped_caller_sees_only_listings_of_its_venues(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
        clock: FakeClock,
    ) -> None:
        app, _ = apps
        market = new_market(app, clock)
        listing_id, _, _ = market.granted()
        ungranted = market.listed()
        engine = engines(app)
        engine.catch_up()
        queries = Queries(app, engine)
        venue = Actor("venue", "exchange", frozenset({market.ids["exchange"]}))
        elsewhere = Actor("other", "exchange", frozenset({rid()}))

        assert check(queries, market, listing_id, actor=venue)[0].allowed
        assert check(queries, market, ungranted, actor=venue)[0].reason == "NO_GRANT"
        for listing in (listing_id, ungranted, rid()):
            with pytest.raises(NotFound, match="listing"):
                check(queries, market, listing, actor=elsewhere)
        # An unscoped caller learns only that there is no grant.
        assert check(queries, market, rid())[0].reason == "NO_GRANT"

    def test_checks_answer_the_same_across_a_rebuild_of_the_access_projection(
        self,
        apps: tuple[MarketLedger, MarketLedger],
        engines: Callable[[MarketLedger], ProjectionManager],
        clock: FakeClock,
    ) -> None:
        app, _ = apps
        market = new_market(app, clock)
        allowed, _, _ = market.granted()
        suspended, _, grant_id = market.granted()
        market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id))
        engine = engines(app)
        engine.catch_up()
        queries = Queries(app, engine)
        answers = [check(queries, market, listing)[0] for listing in (allowed, suspended)]
        old = engine.live(ACCESS, max_age_s=0)

        engine.rebuild(ACCESS)
        engine.catch_up()
        new = engine.live(ACCESS, max_age_s=0)
        assert new.generation != old.generation
        assert [check(queries, market, listing)[0] for listing in (allowed, suspended)] == answers
        assert [a.allowed for a in answers] == [True, False]


def check(
    queries: Queries,
    market: Market,
    listing_id: str,
    actor: Actor | None = None,
    as_of_position: int | None = None,
) -> tuple[Decision, int]:
    return queries.check_access(
        market.ids["buyer"],
        listing_id,
        "API",
        "credit-risk-scoring",
        None,
        None,
        as_of_position,
        actor or market.actor,
    )


class TestSQLiteFileCheckAccess(CheckAccessContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"


class TestPostgresCheckAccess(CheckAccessContract):
    pytestmark = pytest.mark.postgres

    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url

    def test_a_read_on_a_connection_that_died_is_answered_on_another(
        self, database_url: str, postgres_url: str
    ) -> None:
        env = store_env(Settings(database_url=database_url))
        # One reader connection, so that the next read takes the one that dies.
        db = PostgresDatabase(postgres_conninfo(env, 2), env["POSTGRES_SCHEMA"], read_pool_size=1)
        try:
            ((pid,),) = db.query("SELECT pg_backend_pid()")
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                deadline = time.monotonic() + DEADLINE_S
                while admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone():
                    assert time.monotonic() < deadline, "the backend did not end"
            # Reads are not preceded by a ping: the read finds the connection dead and is
            # answered on a new one.
            ((other,),) = db.query("SELECT pg_backend_pid()")
            assert other != pid
        finally:
            db.close()
