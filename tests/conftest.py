"""Shared fixtures: an application per backend, each with its own store, cleaned up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from ledger.application.app import MarketLedger
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.settings import Settings
from tests.market import Market, new_market

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; CI (LEDGER_REQUIRE_POSTGRES=1) fails instead of skipping."""
    if not postgres_available():
        if os.environ.get("LEDGER_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required and unreachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A database URL with a schema of its own, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield f"{postgres_url}?schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_app(clock: FakeClock) -> MarketLedger:
    return build_application(Settings(database_url="memory:"), clock)


@pytest.fixture
def market(memory_app: MarketLedger, clock: FakeClock) -> Market:
    """A market with standard parties on the in-memory store (unit tests)."""
    return new_market(memory_app, clock)
