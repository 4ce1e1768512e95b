"""A projection engine in one process follows writes made by another at once: the
store's NOTIFY wakes it through its listener, which reconnects after losing its
connection; without it, the engine would only see them at its next poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from ledger.application.app import MarketLedger
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.projections import engine
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import Market, new_market

pytestmark = pytest.mark.postgres

# Far longer than the test waits for a write to be folded: only a wake-up explains it.
IDLE_S = 60.0
FOLDED_WITHIN_S = 10.0


@pytest.fixture
def writer(pg_schema_url: str, clock: FakeClock) -> Iterator[Market]:
    app = build_application(Settings(database_url=pg_schema_url), clock)
    yield new_market(app, clock)
    app.close()


@pytest.fixture
def follower(
    pg_schema_url: str, writer: Market, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProjectionManager]:
    """An engine in its own application (as a separate worker process has), following
    the log with a poll far too slow to notice a write in time."""
    monkeypatch.setattr(engine, "LISTENING_IDLE_S", IDLE_S)
    app: MarketLedger = build_application(Settings(database_url=pg_schema_url))
    manager = build_projections(Settings(database_url=pg_schema_url), app)
    manager.catch_up()
    stop = threading.Event()
    runner = threading.Thread(target=manager.run_forever, args=(stop, IDLE_S), daemon=True)
    runner.start()
    assert manager.listener is not None
    deadline = time.monotonic() + FOLDED_WITHIN_S
    while not manager.listener.listening and time.monotonic() < deadline:
        time.sleep(0.01)
    yield manager
    stop.set()
    manager.wake()
    runner.join(timeout=10)
    manager.leases.release()
    manager.db.close()
    app.close()


def folded(manager: ProjectionManager, position: int) -> bool:
    """Whether the runner folds ``position`` in time, asked of the database (``wait_for``
    would wake the runner itself)."""
    deadline = time.monotonic() + FOLDED_WITHIN_S
    while time.monotonic() < deadline:
        if manager.live("catalogue", max_age_s=0).position >= position:
            return True
        time.sleep(0.01)
    return False


def test_another_process_write_is_folded_at_once(
    writer: Market, follower: ProjectionManager
) -> None:
    assert follower.listener is not None
    assert follower.listener.listening
    # The listener's first wake-up (once it listens) may fold the first write; each
    # later one is folded only if its own notification wakes the engine.
    for _ in range(3):
        writer.listed()
        assert folded(follower, writer.head)


def test_the_listener_reconnects_after_losing_its_connection(
    postgres_url: str, writer: Market, follower: ProjectionManager
) -> None:
    listener = follower.listener
    assert listener is not None
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        terminated = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
        ).fetchall()
    assert terminated
    deadline = time.monotonic() + FOLDED_WITHIN_S
    while listener.listening and time.monotonic() < deadline:
        time.sleep(0.01)
    while not listener.listening and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.listening
    for _ in range(3):
        writer.listed()
        assert folded(follower, writer.head)
