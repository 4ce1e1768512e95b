"""A catch-up in several processes folds the same tables as one process, on SQLite and
PostgreSQL: each worker process folds its group of projections through the engine, and
the calling process folds its own group and whatever the workers left."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent, EventLog
from ledger.bench.dataset import generate
from ledger.bootstrap import build_application, build_projections
from ledger.projections import parallel
from ledger.projections.db import SqliteDatabase, Tx, WriteTx
from ledger.projections.engine import LIVE, ProjectionManager, Tables
from ledger.projections.parallel import FOLD_COST, catch_up, groups
from ledger.projections.registry import all_projections
from ledger.settings import Settings

NAMES = tuple(p.name for p in all_projections(Settings()))


class Tally:
    """A projection the worker processes do not know: one row per event."""

    name: ClassVar[str] = "tally"
    version: ClassVar[int] = 1

    def tables(self) -> Sequence[str]:
        return ("seen",)

    def create(self, tx: Tx, t: Tables) -> None:
        tx.execute(f"CREATE TABLE IF NOT EXISTS {t('seen')} (position BIGINT PRIMARY KEY)")

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        tx.insert_rows(t("seen"), ("position",), [(e["position"],) for e in events])


def test_groups_split_every_projection_once_the_costliest_apart() -> None:
    split = groups(NAMES, 2)
    assert sorted(name for group in split for name in group) == sorted(NAMES)
    assert len(split) == 2
    # The calling process starts at once: it takes the chain and the lighter folds,
    # the worker the two costliest others.
    assert sorted(split[0]) == ["catalogue", "chain", "ownership"]
    assert sorted(split[1]) == ["access", "compliance"]
    # Ten times further behind, a worker's start weighs a tenth as much: the calling
    # process keeps the chain and the lightest fold, the worker takes the others.
    far = groups(NAMES, 2, 1_000_000)
    assert sorted(far[0]) == ["chain", "ownership"]
    assert sorted(far[1]) == ["access", "catalogue", "compliance"]
    assert [sorted(group) for group in groups(NAMES, 1)] == [sorted(NAMES)]
    assert len(groups(NAMES, 16)) == len(NAMES)
    assert groups(["tally"], 4) == [["tally"]]


def in_one_process(app: MarketLedger) -> dict[str, str]:
    """The digests of every projection folded in this process, on SQLite in memory."""
    manager = ProjectionManager(
        SqliteDatabase(":memory:"), EventLog(app.recorder), all_projections(Settings())
    )
    manager.setup()
    manager.catch_up(timeout_s=300)
    return {name: manager.digest(name) for name in NAMES}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        yield Settings(database_url=request.getfixturevalue("pg_schema_url"))


def test_workers_fold_the_same_tables_as_one_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_application(settings)
    try:
        generate(app, 1_500, seed=11)
        manager = build_projections(settings, app)
        manager.projections[Tally.name] = Tally()
        manager.setup()
        # Costly enough to go to the worker (which does not know it).
        monkeypatch.setitem(FOLD_COST, Tally.name, 1.4)
        # A log this short would stay in one process: a worker's start is made free.
        monkeypatch.setattr(parallel, "WORKER_START_COST", 0.0)
        mine, theirs = groups(list(manager.projections), 2)
        assert Tally.name in theirs  # a worker leaves it: this process folds it at the end

        catch_up(settings, manager, processes=2, min_events_per_worker=1)

        head = app.head_position()
        for name in (*NAMES, Tally.name):
            live = manager.live(name, max_age_s=0)
            assert (live.state, live.position) == (LIVE, head), (name, live.error)
        # This process applied its own group and the tally; a worker applied the rest.
        assert {name for name, _ in manager._applied} == {*mine, Tally.name}
        with manager.db.transaction() as tx:
            seen = tx.fetchone(f"SELECT COUNT(*) FROM {manager.live(Tally.name).tables('seen')}")
        assert seen is not None
        assert seen[0] == len(EventLog(app.recorder).read(0, 10**9)[0])
        assert {name: manager.digest(name) for name in NAMES} == in_one_process(app)
        manager.db.close()
    finally:
        app.close()


def test_a_lag_too_short_for_workers_is_caught_up_in_this_process(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    app = build_application(settings)
    try:
        generate(app, 300, seed=12)
        manager = build_projections(settings, app)
        catch_up(settings, manager, processes=2, min_events_per_worker=app.head_position())
        assert {name for name, _ in manager._applied} == set(NAMES)
        manager.db.close()
    finally:
        app.close()


def test_a_store_in_memory_is_caught_up_in_this_process() -> None:
    app = build_application(Settings(database_url="memory:"))
    generate(app, 300, seed=12)
    manager = build_projections(Settings(database_url="memory:"), app)
    catch_up(Settings(database_url="memory:"), manager, processes=4, min_events_per_worker=1)
    assert {name for name, _ in manager._applied} == set(NAMES)
    for name in NAMES:
        assert manager.live(name, max_age_s=0).position == app.head_position()
