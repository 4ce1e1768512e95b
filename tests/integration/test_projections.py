"""The ownership and access projections on each real backend: PostgreSQL and a SQLite file.

The same checks as the unit tests, on seeded random histories: the incremental read model
equals a from-scratch rebuild, and reads as of past positions and times agree with the
aggregates. The contract class has no ``Test`` prefix, so only its subclasses run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.bootstrap import build_application, postgres_conninfo, store_env
from ledger.clock import FakeClock
from ledger.projections.access import Decision, check_access
from ledger.projections.db import Database, PostgresDatabase, SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import rid
from tests.unit.test_projection_access import assert_access_as_of_agrees
from tests.unit.test_projection_ownership import (
    History,
    assert_ownership_as_of_agrees,
    assert_rebuild_matches,
    canonical,
    new_history,
    open_manager,
    random_steps,
)

Backend = tuple[History, ProjectionManager]


class ProjectionContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    def projection_database(self, database_url: str) -> Database:
        raise NotImplementedError

    @pytest.fixture
    def backend(self, database_url: str, clock: FakeClock) -> Iterator[Backend]:
        app = build_application(Settings(database_url=database_url), clock)
        manager = open_manager(app, self.projection_database(database_url), batch_size=7)
        yield new_history(app, clock), manager
        manager.db.close()
        app.close()

    @pytest.mark.parametrize("seed", [1, 2])
    def test_incremental_projections_equal_a_rebuild_and_read_the_past_as_the_aggregates(
        self, backend: Backend, seed: int
    ) -> None:
        history, manager = backend
        rng = random.Random(seed)

        history.play(random_steps(rng, 40), manager, catch_up_every=3)

        app = history.market.app
        assert assert_ownership_as_of_agrees(app, manager, history.listings, rng, samples=4)
        assert assert_access_as_of_agrees(history, manager, rng, samples=3, checks=8)
        assert_rebuild_matches(manager, "ownership", batch_size=5)
        assert_rebuild_matches(manager, "access", batch_size=2000)

    def test_check_access_denies_after_revocations_and_suspensions_but_not_as_of_before(
        self, backend: Backend
    ) -> None:
        history, manager = backend
        market = history.market
        revoked_listing, _, revoked = market.granted()
        suspended_listing, _, suspended = market.granted()
        listing_suspended, _, _ = market.granted()
        grantee_suspended, _, _ = market.granted()
        before = market.head
        market.run(c.RevokeAccess(request_id=rid(), grant_id=revoked, reason="MISUSE_DETECTED"))
        market.run(c.SuspendAccess(request_id=rid(), grant_id=suspended, note="review"))
        market.run(c.SuspendListing(request_id=rid(), listing_id=listing_suspended))
        market.run(c.SuspendParticipant(request_id=rid(), participant_id=market.ids["buyer"]))
        manager.catch_up()
        t = manager.live("access").tables

        def check(listing_id: str, **bounds: Any) -> Decision:
            with manager.db.transaction() as tx:
                return check_access(
                    tx,
                    t,
                    market.ids["buyer"],
                    listing_id,
                    "API",
                    "credit-risk-scoring",
                    canonical(market.clock.now()),
                    **bounds,
                )

        assert check(revoked_listing).reason == "R16_GRANT_REVOKED"
        assert check(suspended_listing).reason == "GRANT_SUSPENDED"
        assert check(listing_suspended).reason == "R15_LISTING_SUSPENDED"
        assert check(grantee_suspended).reason == "R14_GRANTEE_SUSPENDED"
        for listing_id in (revoked_listing, suspended_listing, listing_suspended):
            assert check(listing_id, as_of_position=before).allowed
        assert check(grantee_suspended, as_of_position=before).allowed


class TestSQLiteFileProjections(ProjectionContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"

    def projection_database(self, database_url: str) -> Database:
        return SqliteDatabase(store_env(Settings(database_url=database_url))["SQLITE_DBNAME"])


class TestPostgresProjections(ProjectionContract):
    pytestmark = pytest.mark.postgres

    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url

    def projection_database(self, database_url: str) -> Database:
        env = store_env(Settings(database_url=database_url))
        return PostgresDatabase(postgres_conninfo(env, 2), env["POSTGRES_SCHEMA"])
