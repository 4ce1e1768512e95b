"""Projection crash: ``ledger projections run`` workers are killed with SIGKILL mid-work.

On PostgreSQL two workers run at once and an advisory lock per projection makes one of
them active; when it dies the standby takes over. On SQLite the one worker is restarted.
Either way every projection reaches the head of the log, and its digest equals that of a
from-scratch rebuild: nothing was applied twice or skipped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg import sql

from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.projections.engine import FAILED, LIVE
from ledger.projections.leases import lock_key
from ledger.projections.registry import all_projections
from ledger.settings import Settings
from tests.market import Market, new_market, rid

SCALE = max(1, int(os.environ.get("LEDGER_RELIABILITY_SCALE", "1")))
COMMANDS_BEFORE = 700 * SCALE  # about three log positions per command
COMMANDS_DURING = 300 * SCALE
DEADLINE_S = 40.0 * SCALE
NAMES = tuple(p.name for p in all_projections(Settings()))
ROOT = Path(__file__).resolve().parents[2]


def write_commands(market: Market, count: int) -> None:
    """Writes about ``count`` commands: listings, sales, grants and suspensions."""
    written = 0
    while written < count:
        listing_id = market.listed()
        grant_id = market.grant(market.sell(listing_id))
        market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id))
        written += 6


@dataclass(frozen=True)
class Row:
    name: str
    generation: int
    live: bool
    state: str
    position: int
    error: str


Registry = Callable[[], list[Row]]

REGISTRY_SQL = "SELECT name, generation, live, state, position, error FROM projection_generations"


def _rows(raw: list[tuple[object, ...]]) -> list[Row]:
    return [
        Row(str(n), int(str(g)), bool(v), str(s), int(str(p)), str(e)) for n, g, v, s, p, e in raw
    ]


def sqlite_registry(path: Path) -> Registry:
    """Reads the projection registry without a manager (which would step or set up)."""

    def read() -> list[Row]:
        with sqlite3.connect(path, timeout=10) as conn:
            try:
                return _rows(conn.execute(REGISTRY_SQL).fetchall())
            except sqlite3.OperationalError as error:
                if "no such table" in str(error):
                    return []
                raise

    return read


def postgres_registry(conninfo: str, schema: str) -> Registry:
    def read() -> list[Row]:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            try:
                query = sql.SQL(REGISTRY_SQL.replace("projection_generations", "{}.{}"))
                rows = conn.execute(
                    query.format(sql.Identifier(schema), sql.Identifier("projection_generations"))
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
        return _rows(rows)

    return read


@dataclass
class Worker:
    """A ``ledger projections run`` process, named (``application_name`` on PostgreSQL)."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def start(cls, name: str, database_url: str, directory: Path) -> Worker:
        output = directory / f"{name}.log"
        command = ["-m", "ledger", "projections", "--database-url", database_url, "run"]
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, *command],
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PGAPPNAME": name},
            )
        return cls(name, process, output)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        """Stops it as an operator would; it ends at a batch boundary with status 0."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, self.output.read_text()

    def ensure_gone(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Writer:
    """Writes commands in a thread of its own while the workers run."""

    market: Market
    count: int
    failures: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            write_commands(self.market, self.count)
        except BaseException as error:
            self.failures.append(error)

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=DEADLINE_S)
        assert not self.thread.is_alive(), "the writer did not finish in time"
        assert not self.failures, self.failures


@dataclass
class Watch:
    """Polls the registry, checking on every look that no live position ever moves back
    and that no worker meant to be running has died."""

    registry: Registry
    running: list[Worker] = field(default_factory=list)
    highest: dict[str, int] = field(default_factory=dict)

    def live(self) -> dict[str, Row]:
        registry = self.registry()
        failed = [r for r in registry if r.state == FAILED]
        assert not failed, failed
        rows = {r.name: r for r in registry if r.live}
        for row in rows.values():
            assert row.position >= self.highest.get(row.name, 0), f"{row.name} moved back"
            self.highest[row.name] = row.position
        return rows

    def until(self, condition: Callable[[dict[str, Row]], bool], what: str) -> dict[str, Row]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            for worker in self.running:
                assert worker.process.poll() is None, worker.output.read_text()
            rows = self.live()
            if condition(rows):
                return rows
            assert time.monotonic() < deadline, f"timed out waiting until {what}: {rows}"
            time.sleep(0.005)


def mid_work(head: int) -> Callable[[dict[str, Row]], bool]:
    """Some projection has applied a batch of the backlog and others are still behind."""

    def check(rows: dict[str, Row]) -> bool:
        positions = [rows[n].position if n in rows else 0 for n in NAMES]
        return any(p > 0 for p in positions) and any(p < head for p in positions)

    return check


def at_head(app: MarketLedger) -> Callable[[dict[str, Row]], bool]:
    head = app.head_position()
    return lambda rows: (
        set(rows) >= set(NAMES)
        and all(rows[n].position == head and rows[n].state == LIVE for n in NAMES)
    )


def assert_digests_equal_a_rebuild(settings: Settings, app: MarketLedger) -> None:
    """Each projection's live generation equals a from-scratch rebuild of the same log."""
    manager = build_projections(settings, app)
    try:
        assert manager.run_once() == 0, "the workers left nothing to apply"
        for name in NAMES:
            live = manager.live(name, max_age_s=0)
            assert (live.state, live.position) == (LIVE, app.head_position())
            digest = manager.digest(name)
            manager.rebuild(name)
            manager.catch_up()
            rebuilt = manager.live(name, max_age_s=0)
            assert rebuilt.generation != live.generation
            assert manager.digest(name) == digest, f"{name} differs from a rebuild"
    finally:
        manager.leases.release()
        manager.db.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(tz=UTC) - timedelta(days=1))


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.ensure_gone()


# --- PostgreSQL: an active worker and a standby -----------------------------------------


def lock_holders(conninfo: str, schema: str, workers: list[Worker]) -> dict[str, str]:
    """Which worker holds each projection's advisory lock."""
    keys = {}
    for name in NAMES:
        key = lock_key(schema, name) & 0xFFFF_FFFF_FFFF_FFFF
        keys[(key >> 32, key & 0xFFFF_FFFF)] = name
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.classid::bigint, l.objid::bigint, a.application_name "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = ANY(%s)",
            ([w.name for w in workers],),
        ).fetchall()
    return {keys[(k1, k2)]: app for k1, k2, app in rows if (k1, k2) in keys}


@pytest.mark.postgres
def test_when_the_active_worker_is_killed_mid_work_the_standby_finishes_exactly_once(
    pg_schema_url: str, clock: FakeClock, tmp_path: Path, workers: list[Worker]
) -> None:
    settings = Settings(database_url=pg_schema_url)
    parts = urlsplit(pg_schema_url)
    schema = parse_qs(parts.query)["schema"][0]
    conninfo = parts._replace(query="").geturl()
    app = build_application(settings, clock)
    market = new_market(app, clock)
    write_commands(market, COMMANDS_BEFORE)
    backlog = app.head_position()
    watch = Watch(postgres_registry(conninfo, schema))

    # Both start at once on a store whose projections were never set up.
    workers += [Worker.start(f"{schema}-{n}", pg_schema_url, tmp_path) for n in "ab"]
    watch.running += workers
    writer = Writer(market, COMMANDS_DURING)
    writer.start()
    busy = mid_work(backlog)
    watch.until(
        lambda rows: busy(rows) and set(lock_holders(conninfo, schema, workers)) == set(NAMES),
        "every projection has an active worker, mid-way through the backlog",
    )
    active = lock_holders(conninfo, schema, workers)[NAMES[0]]
    victim = next(w for w in workers if w.name == active)
    standby = next(w for w in workers if w.name != active)
    positions = {n: r.position for n, r in watch.live().items()}
    watch.running.remove(victim)
    victim.kill()

    writer.join()
    watch.until(at_head(app), "the standby has applied the log to its head")
    assert set(lock_holders(conninfo, schema, workers).values()) == {standby.name}
    assert any(watch.highest[n] > positions.get(n, 0) for n in NAMES), "no progress after kill"
    standby.stop()
    assert_digests_equal_a_rebuild(settings, app)
    app.close()


# --- SQLite: one worker, killed and restarted -------------------------------------------


def test_a_worker_killed_mid_batch_resumes_after_a_restart_and_applies_each_event_once(
    tmp_path: Path, clock: FakeClock, workers: list[Worker]
) -> None:
    path = tmp_path / "ledger.db"
    database_url = f"sqlite:///{path}"
    settings = Settings(database_url=database_url)
    app = build_application(settings, clock)
    market = new_market(app, clock)
    write_commands(market, COMMANDS_BEFORE)
    backlog = app.head_position()
    watch = Watch(sqlite_registry(path))

    workers.append(Worker.start("first", database_url, tmp_path))
    watch.running = workers[:1]
    watch.until(mid_work(backlog), "the worker is mid-way through the backlog")
    watch.running = []
    workers[0].kill()
    positions = {n: r.position for n, r in watch.live().items()}

    writer = Writer(market, COMMANDS_DURING)
    writer.start()
    workers.append(Worker.start("restarted", database_url, tmp_path))
    watch.running = workers[1:]
    writer.join()
    watch.until(at_head(app), "the restarted worker has applied the log to its head")
    assert any(watch.highest[n] > positions.get(n, 0) for n in NAMES), "no progress after kill"
    workers[1].stop()
    assert_digests_equal_a_rebuild(settings, app)
    app.close()
