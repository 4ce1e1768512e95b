"""Every projection folds a log to the same tables whatever its batches: one event at a
time (each change reaching rows of earlier batches through the database) or thousands
(changed in memory before they are written), on SQLite and on PostgreSQL (``COPY`` and
``UPDATE ... FROM VALUES``), with its generations folding side by side or in turn."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.application.events import EventLog
from ledger.bench.dataset import generate
from ledger.bootstrap import build_application, postgres_conninfo, store_env
from ledger.clock import FakeClock
from ledger.projections.db import Database, PostgresDatabase, SqliteDatabase
from ledger.projections.engine import LIVE, ProjectionManager
from ledger.projections.registry import all_projections
from ledger.settings import Settings
from tests.market import rid
from tests.unit.test_projection_ownership import new_history, random_steps

NAMES = tuple(p.name for p in all_projections(Settings()))


@pytest.fixture(scope="module")
def history() -> MarketLedger:
    """A generated market, then a random history of commands of every kind on top, with
    changes to certifications and classifications between them."""
    clock = FakeClock()
    app = build_application(Settings(database_url="memory:"), clock)
    generate(app, 300, seed=20)
    played = new_history(app, clock)
    market = played.market
    steps = random_steps(random.Random(20), 150)
    for step in steps[:75]:
        played.step(*step)
    dealer = market.ids["dealer"]
    certificate = market.certify(dealer, days=30)
    for command in (
        c.ReclassifyListing(
            request_id=rid(), listing_id=played.listings[0], classification="IMPORTANT"
        ),
        c.SuspendCertification(
            request_id=rid(), participant_id=dealer, certification_id=certificate
        ),
        c.ReinstateCertification(
            request_id=rid(), participant_id=dealer, certification_id=certificate
        ),
        c.RevokeCertification(
            request_id=rid(),
            participant_id=dealer,
            certification_id=certificate,
            reason="OTHER",
            note="audit",
        ),
        c.ReclassifyListing(request_id=rid(), listing_id=played.listings[1], classification="CORE"),
    ):
        market.run(command)
    for step in steps[75:]:
        played.step(*step)
    return app


def digests(
    app: MarketLedger, db: Database, batch_size: int, workers: int | None = None
) -> dict[str, str]:
    manager = ProjectionManager(
        db, EventLog(app.recorder), all_projections(Settings()), batch_size, workers=workers
    )
    manager.setup()
    manager.catch_up(timeout_s=300)
    for name in NAMES:
        live = manager.live(name, max_age_s=0)
        assert (live.state, live.position) == (LIVE, app.head_position()), live.error
    return {name: manager.digest(name) for name in NAMES}


@pytest.fixture
def postgres(pg_schema_url: str) -> Iterator[Database]:
    env = store_env(Settings(database_url=pg_schema_url))
    database = PostgresDatabase(postgres_conninfo(env, 2), env["POSTGRES_SCHEMA"])
    with database.transaction() as tx:
        tx.execute(f"CREATE SCHEMA IF NOT EXISTS {env['POSTGRES_SCHEMA']}")
    yield database
    database.close()


def test_the_history_has_every_kind_of_change_the_folds_batch(history: MarketLedger) -> None:
    events, _ = EventLog(history.recorder).read(0, 1_000_000)
    kinds = {e["type"] for e in events}
    assert {
        "ParticipantRegistered",
        "ParticipantSuspended",
        "CertificationIssued",
        "ListingSubmitted",
        "ListingSuspended",
        "ListingReclassified",
        "CertificationSuspended",
        "CertificationReinstated",
        "CertificationRevoked",
        "LicenceEnded",
        "SaleRecorded",
        "RightsTransferred",
        "RightsLicensed",
        "TradeSettled",
        "TradeCancelled",
        "AccessGranted",
        "AccessSuspended",
        "AccessReinstated",
        "AccessRevoked",
        "AccessUsed",
    } <= kinds


def test_on_sqlite_one_event_per_batch_folds_as_many_per_batch(history: MarketLedger) -> None:
    expected = digests(history, SqliteDatabase(":memory:"), batch_size=10_000)
    for batch_size in (1, 7, 64):
        assert digests(history, SqliteDatabase(":memory:"), batch_size) == expected, batch_size


@pytest.mark.postgres
@pytest.mark.parametrize(("batch_size", "workers"), [(3, 1), (3, 4), (10_000, 2)])
def test_on_postgresql_the_folds_equal_sqlites(
    history: MarketLedger, postgres: Database, batch_size: int, workers: int
) -> None:
    expected = digests(history, SqliteDatabase(":memory:"), batch_size=10_000)
    assert digests(history, postgres, batch_size, workers) == expected
