"""The application contract on PostgreSQL, plus what only PostgreSQL can show:
concurrent writers in separate processes, and a database that goes away."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from urllib.parse import urlsplit

import pytest
from eventsourcing.persistence import IntegrityError

from ledger.application import commands as c
from ledger.application.app import Actor
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.domain.errors import Conflict, LedgerError, RuleViolation, Unavailable
from ledger.domain.listing import Listing
from ledger.domain.values import Right
from ledger.settings import Settings
from tests.integration.contract import ApplicationContract
from tests.market import ADMIN, new_market, rid, uscc
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


class TestPostgresApplication(ApplicationContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url


RACE_ROUNDS = 20


def _race_worker(
    database_url: str,
    barrier: Barrier,
    commands: multiprocessing.Queue,  # type: ignore[type-arg]
    results: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """Runs each command it is sent at the same moment as its rival process."""
    app = build_application(Settings(database_url=database_url))
    while (command := commands.get()) is not None:
        barrier.wait(timeout=30)
        try:
            outcome = app.execute(command, Actor("exchange", "exchange"))
            results.put(("won", str(outcome.resource.id)))
        except RuleViolation as e:
            results.put(("rule", e.reason))
        except Conflict:
            results.put(("conflict", ""))
        except LedgerError as e:
            results.put(("other", repr(e)))
    app.close()


def test_r10_two_processes_racing_transfers_of_hold_have_exactly_one_winner(
    pg_schema_url: str,
) -> None:
    clock = FakeClock(datetime.now(tz=UTC) - timedelta(hours=2))
    market = new_market(build_application(Settings(database_url=pg_schema_url), clock), clock)
    listings = [market.listed() for _ in range(RACE_ROUNDS)]
    transfer = {"conveyance": "TRANSFER", "rights": ("HOLD",), "term_start": None, "term_end": None}

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    queues = [ctx.Queue(), ctx.Queue()]
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_race_worker, args=(pg_schema_url, barrier, q, results)) for q in queues
    ]
    for w in workers:
        w.start()
    try:
        for listing_id in listings:
            queues[0].put(market.sale_command(listing_id, **transfer))
            queues[1].put(
                market.sale_command(listing_id, buyer_id=market.ids["buyer2"], **transfer)
            )
            received = [results.get(timeout=60) for _ in range(2)]
            outcomes = sorted(kind for kind, _ in received)
            assert outcomes[1] == "won", outcomes
            assert outcomes[0] in ("conflict", "rule"), received
            holder = market.app.get(Listing, listing_id, ADMIN).holdings[Right.HOLD]
            assert holder in (market.ids["buyer"], market.ids["buyer2"])
    finally:
        for q in queues:
            q.put(None)
        for w in workers:
            w.join(timeout=30)
    assert all(w.exitcode == 0 for w in workers)


SETUP_PROCESSES = 6


def _setup_worker(
    database_url: str,
    barrier: Barrier,
    results: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """Sets up the store as a starting server does, at the same moment as the others
    (with a small pool: the suite's other servers hold connections of their own, and
    the database admits a hundred)."""
    settings = Settings(database_url=database_url, pool_size=2)
    barrier.wait(timeout=60)
    try:
        app = build_application(settings)
        manager = build_projections(settings, app)
        manager.leases.release()
        manager.db.close()
        app.close()
        results.put("ok")
    except Exception as e:
        results.put(repr(e))


def test_processes_that_set_up_one_new_store_at_once_all_start(pg_schema_url: str) -> None:
    # Run at once, the set-up statements failed ("duplicate key value", "tuple
    # concurrently updated") in three of five trials of eight processes.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(SETUP_PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_setup_worker, args=(pg_schema_url, barrier, results))
        for _ in range(SETUP_PROCESSES)
    ]
    for w in workers:
        w.start()
    try:
        outcomes = [results.get(timeout=120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
    assert outcomes == ["ok"] * SETUP_PROCESSES


def test_a_database_outage_is_unavailable_and_the_application_recovers(
    pg_schema_url: str,
) -> None:
    parts = urlsplit(pg_schema_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = pg_schema_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    clock = FakeClock(datetime.now(tz=UTC) - timedelta(hours=1))
    settings = Settings(database_url=proxied, connect_timeout_s=1)
    app = build_application(settings, clock)

    def register() -> None:
        clock.advance()
        app.execute(
            c.RegisterParticipant(request_id=rid(), name="P", roles=("BUYER",), uscc=uscc()),
            ADMIN,
        )

    try:
        register()
        proxy.cut()
        with pytest.raises(Unavailable):
            register()
        with pytest.raises(Unavailable):
            app.head_position()
        proxy.restore()
        deadline = time.monotonic() + 15
        while True:
            try:
                register()
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the application did not recover"
                time.sleep(0.1)
        assert app.head_position() > 0
    finally:
        app.close()
        proxy.close()


def test_an_unreachable_database_at_start_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        build_application(
            Settings(database_url="postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=1)
        )


def test_a_batch_reads_and_writes_on_one_connection_and_conflicts_still_retry(
    pg_schema_url: str,
) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    app = build_application(Settings(database_url=pg_schema_url), clock=clock)
    try:
        market = new_market(app, clock)
        listing_id = market.listed()
        pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
        before = pool.get_stats().get("requests_num", 0)
        sale = market.sale_command(listing_id)
        outcome = market.run(sale)
        assert pool.get_stats().get("requests_num", 0) - before == 1
        # On a held connection a unique-key failure is still the library's
        # IntegrityError, which a batch catches to run again on the new state.
        recorder = app.recorder
        (first,) = recorder.select_events(outcome.resource.id, limit=1)
        with recorder.one_connection(), pytest.raises(IntegrityError):  # type: ignore[attr-defined]
            recorder.insert_events([first])
        settle = c.SettleTrade(
            request_id=rid(), trade_id=str(outcome.resource.id), settlement_ref="S-1"
        )
        assert market.run(settle).position > 0
    finally:
        app.close()


def test_the_guard_probes_on_one_kept_connection_and_replaces_a_closed_one(
    postgres_url: str,
) -> None:
    import psycopg

    from ledger.bootstrap import store_env, store_probe

    probe = store_probe(store_env(Settings(database_url=postgres_url)))
    assert probe is not None

    def backends() -> set[int]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT 1' AND pid <> "
                "pg_backend_pid()"
            ).fetchall()
        return {row[0] for row in rows}

    before = backends()
    for _ in range(5):
        probe()
    kept = backends() - before
    assert len(kept) == 1  # five probes, one backend
    # A server that restarted has closed the kept connection: the next probe answers
    # on a new one instead of reporting an outage.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (kept.pop(),))
    probe()
    assert len(backends() - before) == 1
    # Nothing listening: the probe fails.
    down = store_probe(store_env(Settings(database_url="postgresql://postgres@127.0.0.1:1/test")))
    assert down is not None
    with pytest.raises(psycopg.OperationalError):
        down()
