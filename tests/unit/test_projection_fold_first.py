"""On SQLite a projection that writes after its reads is folded on a snapshot before the
write lock is taken, which is held only while its rows are written: other writers go on
during the fold, a worker that advanced the generation meanwhile wins (nothing is applied
twice), and a fold that turns out to need the lock is folded under it instead."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ledger.application.events import CanonicalEvent, EventLog
from ledger.projections.db import SqliteDatabase, Tx, WriteTx
from ledger.projections.engine import ProjectionManager, Tables
from tests.market import Market


class Bulk:
    """One row per event, written in bulk after the fold reads the last row written."""

    name: ClassVar[str] = "bulk"
    version: ClassVar[int] = 1
    writes_after_reads: ClassVar[bool] = True

    def __init__(self) -> None:
        self.folds = 0
        self.during_fold: threading.Event | None = None
        self.resume: threading.Event | None = None

    def tables(self) -> Sequence[str]:
        return ("seen",)

    def create(self, tx: Tx, t: Tables) -> None:
        tx.execute(f"CREATE TABLE IF NOT EXISTS {t('seen')} (position BIGINT PRIMARY KEY)")

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.folds += 1
        tx.fetchone(f"SELECT MAX(position) FROM {t('seen')}")
        if self.during_fold is not None and self.resume is not None:
            self.during_fold.set()
            assert self.resume.wait(10)
        tx.insert_rows(t("seen"), ("position",), [(e["position"],) for e in events])


class Counting(Bulk):
    """Claims to write after its reads, but asks for a count of changed rows."""

    name: ClassVar[str] = "counting"

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.folds += 1
        for e in events:
            tx.execute(f"INSERT INTO {t('seen')} (position) VALUES (?)", (e["position"],))


def manager_on(path: Path, market: Market, projection: Bulk, batch_size: int) -> ProjectionManager:
    manager = ProjectionManager(
        SqliteDatabase(str(path)), EventLog(market.app.recorder), [projection], batch_size
    )
    manager.setup()
    return manager


def seen(manager: ProjectionManager, name: str) -> list[int]:
    table = manager.live(name, max_age_s=0).tables("seen")
    with manager.db.transaction() as tx:
        return [int(r[0]) for r in tx.fetchall(f"SELECT position FROM {table} ORDER BY 1")]


def business(market: Market) -> list[int]:
    return [e["position"] for e in EventLog(market.app.recorder).read(0, 10**6)[0]]


def test_other_writers_go_on_while_a_batch_is_folded(market: Market, tmp_path: Path) -> None:
    projection = Bulk()
    manager = manager_on(tmp_path / "p.db", market, projection, batch_size=10_000)
    projection.during_fold, projection.resume = threading.Event(), threading.Event()
    runner = threading.Thread(target=manager.catch_up)
    runner.start()
    try:
        assert projection.during_fold.wait(10)
        other = sqlite3.connect(tmp_path / "p.db", timeout=0.1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free during the fold
        other.execute("CREATE TABLE other_writer (x INTEGER)")
        other.execute("COMMIT")
        other.close()
    finally:
        projection.resume.set()
        runner.join(10)
    assert seen(manager, "bulk") == business(market)


def test_a_worker_that_advanced_the_generation_during_the_fold_wins(
    market: Market, tmp_path: Path
) -> None:
    slow, fast = Bulk(), Bulk()
    first = manager_on(tmp_path / "p.db", market, slow, batch_size=10_000)
    second = manager_on(tmp_path / "p.db", market, fast, batch_size=10_000)
    slow.during_fold, slow.resume = threading.Event(), threading.Event()
    gen = first.live("bulk", max_age_s=0)
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(first.step(gen)))
    runner.start()
    assert slow.during_fold.wait(10)
    assert second.step(second.live("bulk", max_age_s=0)) > 0  # while the first one folds
    slow.resume.set()
    runner.join(10)
    assert outcome == [0]  # lost the race under the lock: wrote nothing
    assert seen(first, "bulk") == business(market)


class Plain(Counting):
    """The same fold, not claiming to write after its reads."""

    name: ClassVar[str] = "plain"
    writes_after_reads: ClassVar[bool] = False


def test_a_fold_that_needs_the_lock_is_folded_under_it(market: Market, tmp_path: Path) -> None:
    counting, plain = Counting(), Plain()
    manager_on(tmp_path / "p.db", market, plain, batch_size=7).catch_up()
    manager = manager_on(tmp_path / "c.db", market, counting, batch_size=7)
    manager.catch_up()
    assert seen(manager, "counting") == business(market)
    assert plain.folds > 1
    assert counting.folds == plain.folds + 1  # one try on a snapshot, then under the lock
