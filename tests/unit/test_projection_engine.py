"""The projection engine on its own: batches, exactly-once tracking under racing workers,
failures that stop at the failing event and resume after a fix, gaps in the log,
waiting, status and blue/green rebuilds. Test projections fold every business event
into a row keyed by its position, as the real ones key theirs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pytest

from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent, EventLog
from ledger.projections.db import SqliteDatabase, Tx
from ledger.projections.engine import (
    CATCHING_UP,
    FAILED,
    LIVE,
    REBUILDING,
    RETIRED,
    Generation,
    ProjectionManager,
    Status,
    Tables,
)
from tests.market import Market

NAME = "counter"


class Counter:
    """Keeps one row per business event (its position is the key) and a count per type."""

    name: ClassVar[str] = NAME
    version: ClassVar[int] = 1

    def tables(self) -> Sequence[str]:
        return ("applied", "per_type")

    def create(self, tx: Tx, t: Tables) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {t('applied')} "
            "(position BIGINT PRIMARY KEY, type TEXT NOT NULL)"
        )
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {t('per_type')} (type TEXT PRIMARY KEY, n BIGINT NOT NULL)"
        )

    def apply(self, tx: Tx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        for event in events:
            self.check(event)
            tx.execute(
                f"INSERT INTO {t('applied')} (position, type) VALUES (?, ?)",
                (event["position"], event["type"]),
            )
            tx.execute(
                f"INSERT INTO {t('per_type')} (type, n) VALUES (?, 1) "
                f"ON CONFLICT (type) DO UPDATE SET n = {t('per_type')}.n + 1",
                (event["type"],),
            )

    def check(self, event: CanonicalEvent) -> None:
        """A fixed projection folds every event."""


class Faulty(Counter):
    """The same projection with a bug: it cannot fold one event type."""

    def __init__(self, fails_on: str) -> None:
        self.fails_on = fails_on

    def check(self, event: CanonicalEvent) -> None:
        if event["type"] == self.fails_on:
            raise RuntimeError(f"cannot fold {self.fails_on}")


class Clock:
    """The manager's wall clock, moved by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_manager(
    log: EventLog,
    db: SqliteDatabase,
    projection: Counter | None = None,
    batch_size: int = 2000,
    clock: Callable[[], float] = time.time,
) -> ProjectionManager:
    manager = ProjectionManager(
        db, log, [projection or Counter()], batch_size=batch_size, clock=clock
    )
    manager.setup()
    return manager


@pytest.fixture
def db() -> Iterator[SqliteDatabase]:
    database = SqliteDatabase(":memory:")
    yield database
    database.close()


@pytest.fixture
def log(memory_app: MarketLedger) -> EventLog:
    return EventLog(memory_app.recorder)


@pytest.fixture
def manager(log: EventLog, db: SqliteDatabase) -> ProjectionManager:
    return open_manager(log, db)


def business_events(log: EventLog, after: int = 0, upto: int | None = None) -> list[CanonicalEvent]:
    events, _ = log.read(after, 1_000_000)
    return [e for e in events if upto is None or e["position"] <= upto]


def applied(manager: ProjectionManager, gen: Generation | None = None) -> list[int]:
    """The positions folded into a generation, in order, duplicates kept."""
    tables = (gen or manager.live(NAME, max_age_s=0)).tables
    with manager.db.transaction() as tx:
        rows = tx.fetchall(f"SELECT position FROM {tables('applied')} ORDER BY position")
    return [int(r[0]) for r in rows]


def counted(manager: ProjectionManager) -> int:
    tables = manager.live(NAME, max_age_s=0).tables
    with manager.db.transaction() as tx:
        row = tx.fetchone(f"SELECT COALESCE(SUM(n), 0) FROM {tables('per_type')}")
    assert row is not None
    return int(row[0])


def status_of(manager: ProjectionManager, generation: int) -> Status:
    (status,) = [s for s in manager.status() if s.generation == generation]
    return status


def sqlite_tables(db: SqliteDatabase) -> set[str]:
    with db.transaction() as tx:
        rows = tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(r[0]) for r in rows}


def fresh_digest(log: EventLog) -> str:
    """The digest of a from-scratch fold of the whole log on a database of its own."""
    scratch = open_manager(log, SqliteDatabase(":memory:"))
    scratch.catch_up()
    return scratch.digest(NAME)


# --- batches ----------------------------------------------------------------------------


def test_a_batch_applies_its_events_and_advances_the_position_to_the_last_read(
    market: Market, log: EventLog, manager: ProjectionManager
) -> None:
    market.listed()
    gen = manager.live(NAME)
    assert gen.position == 0

    advanced = manager.step(gen)

    head = market.head
    assert advanced == head
    assert manager.live(NAME, max_age_s=0).position == head
    assert applied(manager) == [e["position"] for e in business_events(log)]
    assert counted(manager) == len(business_events(log))


def test_a_batch_is_at_most_batch_size_positions_and_the_next_one_continues_after_it(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, batch_size=5)
    market.listed()
    first = manager.step(manager.live(NAME))
    second = manager.step(manager.live(NAME, max_age_s=0))

    assert first == second == 5
    assert applied(manager) == [e["position"] for e in business_events(log, upto=10)]


def test_a_step_at_the_head_advances_nothing(market: Market, manager: ProjectionManager) -> None:
    manager.catch_up()
    assert manager.step(manager.live(NAME, max_age_s=0)) == 0
    assert manager.live(NAME, max_age_s=0).position == market.head


# --- exactly once -----------------------------------------------------------------------


def test_two_workers_stepping_the_same_generation_at_once_apply_each_event_once(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    workers = [open_manager(log, db, batch_size=7), open_manager(log, db, batch_size=7)]
    rounds = 40
    barrier = threading.Barrier(len(workers), timeout=10)
    errors: list[BaseException] = []

    def race(worker: ProjectionManager) -> None:
        try:
            for _ in range(3):
                barrier.wait()
                # Both read the same generation row, then both try to advance it.
                worker.step(worker.generations(NAME)[0])
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    for _ in range(rounds):
        market.listed()
        threads = [threading.Thread(target=race, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
    workers[0].catch_up()

    (gen,) = workers[0].generations(NAME)
    assert gen.state == LIVE, gen.error
    positions = applied(workers[0])
    assert positions == [e["position"] for e in business_events(log)]
    assert counted(workers[0]) == len(positions)


def test_a_worker_with_a_stale_view_of_the_generation_writes_nothing(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    ahead, behind = open_manager(log, db), open_manager(log, db)
    market.listed()
    stale = behind.live(NAME)
    ahead.step(ahead.live(NAME))

    assert behind.step(stale) == 0
    assert applied(ahead) == [e["position"] for e in business_events(log)]
    assert ahead.live(NAME, max_age_s=0).state == LIVE


# --- failures ---------------------------------------------------------------------------


def failing_market(market: Market) -> tuple[CanonicalEvent, list[CanonicalEvent]]:
    """Two listings, so that events come before and after the first approval; returns the
    first ListingApproved and the business events before it."""
    market.listed()
    market.listed()
    events = business_events(EventLog(market.app.recorder))
    index = next(i for i, e in enumerate(events) if e["type"] == "ListingApproved")
    return events[index], events[:index]


def test_a_failing_event_stops_the_projection_exactly_there_and_is_reported(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, Faulty("ListingApproved"))
    failing, before = failing_market(market)

    manager.catch_up()
    manager.catch_up()  # a failed projection is not retried by the runner

    gen = manager.live(NAME, max_age_s=0)
    assert gen.state == FAILED
    assert "RuntimeError" in gen.error
    assert "cannot fold ListingApproved" in gen.error
    assert gen.error_position == failing["position"]
    assert gen.position == before[-1]["position"]
    # The events before it in the same batch are applied, the failing one and later not.
    assert applied(manager) == [e["position"] for e in before]
    status = status_of(manager, gen.generation)
    assert status.state == FAILED
    assert status.error_position == failing["position"]
    assert status.lag_events == market.head - gen.position


def test_a_failing_first_event_of_a_batch_leaves_the_position_where_it_was(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    failing, before = failing_market(market)
    manager = open_manager(log, db, Faulty("ListingApproved"), batch_size=1)
    while manager.live(NAME, max_age_s=0).position < before[-1]["position"]:
        assert manager.run_once() > 0

    manager.run_once()
    manager.run_once()

    gen = manager.live(NAME, max_age_s=0)
    assert gen.state == FAILED
    assert gen.error_position == failing["position"]
    assert gen.position == failing["position"] - 1
    assert applied(manager) == [e["position"] for e in before]


def test_after_a_fix_and_a_retry_the_projection_resumes_at_the_failed_event(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, Faulty("ListingApproved"), batch_size=4)
    failing, before = failing_market(market)
    manager.catch_up()
    assert manager.live(NAME, max_age_s=0).state == FAILED

    manager.projections[NAME] = Counter()
    (retried,) = manager.retry(NAME)

    assert retried.state == CATCHING_UP
    assert retried.error == ""
    assert retried.position == before[-1]["position"]
    manager.catch_up()
    gen = manager.live(NAME, max_age_s=0)
    assert gen.state == LIVE
    assert gen.position == market.head
    assert failing["position"] in applied(manager)
    assert applied(manager) == [e["position"] for e in business_events(log)]
    assert manager.digest(NAME) == fresh_digest(log)


def test_a_retry_of_a_failed_rebuild_resumes_it_beside_the_live_generation(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db)
    failing_market(market)
    manager.catch_up()
    live = manager.live(NAME)
    manager.projections[NAME] = Faulty("ListingApproved")
    rebuilding = manager.rebuild(NAME)
    manager.catch_up()
    assert manager.generation(NAME, rebuilding.generation).state == FAILED
    assert manager.live(NAME, max_age_s=0).generation == live.generation

    manager.projections[NAME] = Counter()
    manager.retry(NAME)
    assert manager.generation(NAME, rebuilding.generation).state == REBUILDING
    manager.catch_up()

    assert manager.live(NAME, max_age_s=0).generation == rebuilding.generation
    assert manager.digest(NAME) == fresh_digest(log)


def test_retry_leaves_a_projection_that_has_not_failed_alone(
    market: Market, manager: ProjectionManager
) -> None:
    manager.catch_up()
    before = manager.live(NAME, max_age_s=0)
    (after,) = manager.retry(NAME)
    assert after == before
    with pytest.raises(KeyError, match="unknown projection"):
        manager.retry("nonesuch")


def test_a_stale_worker_reaching_a_failed_event_keeps_the_failure_report_intact(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    first = open_manager(log, db, Faulty("ListingApproved"))
    second = open_manager(log, db, Faulty("ListingApproved"))
    failing, before = failing_market(market)
    stale = second.live(NAME)
    first.run_once()

    assert second.step(stale) == 0

    gen = first.live(NAME, max_age_s=0)
    assert gen.state == FAILED
    assert gen.error_position == failing["position"]
    assert "cannot fold ListingApproved" in gen.error
    assert applied(first) == [e["position"] for e in before]


def test_a_worker_falling_back_to_single_events_while_another_advances_applies_nothing_twice(
    market: Market, log: EventLog, db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_manager(log, db, Faulty("ListingApproved"))
    second = open_manager(log, db, Faulty("ListingApproved"))
    failing, before = failing_market(market)
    generation = second.generation

    def other_worker_advances_first(name: str, number: int) -> Generation:
        # The second worker's batch failed; the first steps before its retry one by one.
        monkeypatch.setattr(second, "generation", generation)
        first.run_once()
        return generation(name, number)

    gen = second.live(NAME)
    monkeypatch.setattr(second, "generation", other_worker_advances_first)
    assert second.step(gen) == 0

    after = first.live(NAME, max_age_s=0)
    assert after.state == FAILED
    assert after.error_position == failing["position"]
    assert after.position == before[-1]["position"]
    assert applied(first) == [e["position"] for e in before]


# --- gaps -------------------------------------------------------------------------------


class GappyRecorder:
    """The store's recorder with some positions missing, as rolled-back writes leave them."""

    def __init__(self, recorder: Any, missing: set[int]) -> None:
        self.recorder = recorder
        self.missing = missing

    def max_notification_id(self) -> int | None:
        head = self.recorder.max_notification_id()
        while head in self.missing:
            head -= 1
        return head or None

    def select_notifications(self, start: int, limit: int, stop: int | None = None) -> Any:
        found = self.recorder.select_notifications(start, limit, stop=stop)
        return [n for n in found if n.id not in self.missing]


def test_markers_and_missing_positions_are_skipped_without_losing_an_event(
    market: Market, db: SqliteDatabase
) -> None:
    for _ in range(3):
        market.listed()
    real = EventLog(market.app.recorder)
    positions = [e["position"] for e in business_events(real)]
    assert len(positions) < market.head, "markers leave gaps between business events"
    markers = [p for p in range(1, market.head) if p not in set(positions)]
    missing = set(positions[5:8]) | set(markers[3:5])
    log = EventLog(GappyRecorder(market.app.recorder, missing))
    manager = open_manager(log, db, batch_size=4)

    manager.catch_up()

    gen = manager.live(NAME, max_age_s=0)
    assert gen.state == LIVE
    assert gen.position == log.head() == market.head
    assert applied(manager) == [p for p in positions if p not in missing]


def test_a_batch_of_markers_only_still_advances_the_position(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, batch_size=1)
    market.listed()
    marker = next(
        p
        for p in range(1, market.head + 1)
        if p not in {e["position"] for e in business_events(log)}
    )
    while manager.live(NAME, max_age_s=0).position < marker - 1:
        manager.run_once()

    assert manager.step(manager.live(NAME, max_age_s=0)) == 1
    assert manager.live(NAME, max_age_s=0).position == marker


# --- waiting ----------------------------------------------------------------------------


def test_wait_for_returns_true_once_a_running_engine_has_applied_the_position(
    market: Market, manager: ProjectionManager
) -> None:
    stop = threading.Event()
    runner = threading.Thread(target=manager.run_forever, args=(stop,), kwargs={"idle_s": 0.01})
    runner.start()
    try:
        market.listed()
        assert manager.wait_for(NAME, market.head, timeout_s=10)
        assert manager.live(NAME, max_age_s=0).position >= market.head
    finally:
        stop.set()
        manager.wake()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_wait_for_returns_false_after_its_timeout_when_nothing_applies_the_position(
    market: Market, manager: ProjectionManager
) -> None:
    market.listed()
    started = time.monotonic()
    assert not manager.wait_for(NAME, market.head, timeout_s=0.1)
    assert 0.1 <= time.monotonic() - started < 5
    assert manager.wait_for(NAME, 0, timeout_s=0)


# --- status -----------------------------------------------------------------------------


def test_status_reports_the_lag_behind_the_head_in_events_and_seconds(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    clock = Clock()
    manager = open_manager(log, db, clock=clock)
    manager.catch_up()
    (caught_up,) = manager.status()
    assert (caught_up.state, caught_up.lag_events, caught_up.lag_seconds) == (LIVE, 0, 0.0)
    assert caught_up.position == caught_up.head == market.head

    before = market.head
    market.listed()
    # Lag in seconds: how long the oldest event not yet applied has been waiting.
    waiting_since = log.recorded_at(before + 1)
    assert waiting_since is not None
    clock.now = waiting_since + 7
    (behind,) = manager.status()

    assert behind.name == NAME
    assert behind.version == Counter.version
    assert behind.position == before
    assert behind.head == market.head
    assert behind.lag_events == market.head - before > 0
    assert behind.lag_seconds == 7


def test_a_live_projection_far_behind_the_head_is_reported_as_catching_up(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, batch_size=2)
    manager.step(manager.live(NAME))
    market.listed()
    manager.step(manager.live(NAME, max_age_s=0))

    (status,) = manager.status()
    assert status.lag_events > manager.batch_size
    assert status.state == CATCHING_UP


def test_status_during_a_rebuild_shows_the_new_generation_rebuilding_with_its_progress(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, batch_size=10)
    for _ in range(3):
        market.listed()
    manager.catch_up()
    live = manager.live(NAME)

    rebuilding = manager.rebuild(NAME)
    manager.run_once()

    statuses = {s.generation: s for s in manager.status()}
    assert set(statuses) == {live.generation, rebuilding.generation}
    assert statuses[live.generation].state == LIVE
    progress = statuses[rebuilding.generation]
    assert progress.state == REBUILDING
    assert progress.position == 10
    assert progress.head == market.head
    assert progress.progress == pytest.approx(10 / market.head)
    assert progress.lag_events == market.head - 10
    assert manager.rebuild(NAME).generation == rebuilding.generation, "one rebuild at a time"


# --- rebuilds ---------------------------------------------------------------------------


def test_a_rebuild_serves_the_old_generation_until_it_switches_in_one_step_at_the_head(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    clock = Clock()
    manager = open_manager(log, db, batch_size=6, clock=clock)
    for _ in range(3):
        market.listed()
    manager.catch_up()
    old = manager.live(NAME)
    digest = manager.digest(NAME)
    expected = applied(manager)

    new = manager.rebuild(NAME)
    seen: list[tuple[int, int]] = []
    for _ in range(1000):
        if not manager.run_once():
            break
        lives = [g for g in manager.generations(NAME) if g.live]
        assert len(lives) == 1
        live = manager.live(NAME)
        seen.append((live.generation, live.position))
        # Whatever is live has every event up to its position, never part of a rebuild.
        assert applied(manager, live) == expected

    assert [g for g, _ in seen].count(new.generation) >= 1
    switch = [g for g, _ in seen].index(new.generation)
    assert all(g == old.generation for g, _ in seen[:switch])
    assert seen[switch] == (new.generation, market.head)
    assert manager.digest(NAME) == digest


def test_a_worker_that_still_sees_a_retired_generation_as_live_cannot_revive_it(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    switching, stale = open_manager(log, db), open_manager(log, db)
    market.listed()
    switching.catch_up()
    old = stale.live(NAME)
    new = switching.rebuild(NAME)
    switching.catch_up()
    market.listed()

    assert stale.step(old) == 0

    assert switching.generation(NAME, old.generation).state == RETIRED
    assert [g.generation for g in switching.generations(NAME) if g.live] == [new.generation]


def test_a_retired_generation_is_kept_for_a_grace_period_then_its_tables_dropped(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    clock = Clock()
    manager = open_manager(log, db, clock=clock)
    market.listed()
    manager.catch_up()
    old = manager.live(NAME)
    new = manager.rebuild(NAME)

    manager.catch_up()

    assert manager.live(NAME).generation == new.generation
    # A reader that looked up the old generation just before the switch can still read it.
    assert applied(manager, old) == applied(manager)
    clock.now += manager.retire_grace_s + 1
    manager.drop_retired()
    assert [g.generation for g in manager.generations(NAME)] == [new.generation]
    tables = sqlite_tables(db)
    assert not any(t.startswith(old.tables.prefix) for t in tables)
    assert {new.tables("applied"), new.tables("per_type")} <= tables


def test_a_new_projection_version_is_built_beside_the_old_one_and_replaces_it(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    market.listed()
    manager = open_manager(log, db)
    manager.catch_up()

    class CounterV2(Counter):
        version: ClassVar[int] = 2

    upgraded = open_manager(log, db, CounterV2())
    gens = upgraded.generations(NAME)
    assert [(g.version, g.live, g.state) for g in gens] == [(1, True, LIVE), (2, False, REBUILDING)]
    upgraded.catch_up()
    live = upgraded.live(NAME, max_age_s=0)
    assert (live.version, live.state, live.position) == (2, LIVE, market.head)


class _Pauses(threading.Event):
    """A stop event that records how long the runner pauses on it, and stops it after
    the first few pauses."""

    def __init__(self, pauses: int) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self._left = pauses

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self._left -= 1
        if self._left <= 0:
            self.set()
        return self.is_set()


def test_a_runner_that_gathers_pauses_after_a_short_batch_and_not_after_a_full_one(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    market.listed()
    manager = open_manager(log, db, batch_size=market.head - 1)
    stop = _Pauses(pauses=1)
    manager.run_forever(stop, gather_s=0.2)
    # The full first batch is followed by the next at once; the short second one (the
    # last position) by the gathering pause.
    assert stop.waits == [0.2]
    assert manager.live(NAME, max_age_s=0).position == market.head


# --- query indexes ----------------------------------------------------------------------


class Indexed(Counter):
    """The counter with an index that only queries use."""

    def indexes(self, t: Tables) -> list[str]:
        return [f"CREATE INDEX IF NOT EXISTS {t('applied')}_type ON {t('applied')} (type)"]


def has_query_index(db: SqliteDatabase, gen: Generation) -> bool:
    with db.transaction() as tx:
        row = tx.fetchone(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?",
            (gen.tables("applied") + "_type",),
        )
    assert row is not None
    return bool(row[0])


def test_a_rebuilt_generation_gets_its_query_indexes_in_the_batch_that_makes_it_live(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    manager = open_manager(log, db, Indexed(), batch_size=6)
    for _ in range(3):
        market.listed()
    manager.catch_up()
    assert has_query_index(db, manager.live(NAME))

    new = manager.rebuild(NAME)
    observed: list[tuple[bool, bool]] = []
    for _ in range(1000):
        if not manager.run_once():
            break
        current = manager.generation(NAME, new.generation)
        observed.append((current.live, has_query_index(db, current)))

    # Built row by row through none of the rebuild's batches, present once it is live.
    assert (False, False) in observed
    assert (False, True) not in observed
    assert observed[-1] == (True, True)
    assert manager.digest(NAME) == fresh_digest(log)


def test_a_live_generation_catching_up_gets_its_query_indexes_at_the_head_once(
    market: Market, log: EventLog, db: SqliteDatabase
) -> None:
    for _ in range(3):
        market.listed()
    manager = open_manager(log, db, Indexed(), batch_size=6)
    gen = manager.live(NAME, max_age_s=0)
    assert gen.position == 0
    manager.step(gen)
    assert not has_query_index(db, manager.live(NAME, max_age_s=0))

    manager.catch_up()
    assert has_query_index(db, manager.live(NAME, max_age_s=0))
    # Later batches at the head, and another process's engine, find them made.
    market.listed()
    manager.catch_up()
    other = open_manager(log, db, Indexed(), batch_size=6)
    market.listed()
    other.catch_up()
    assert other.applied(other.live(NAME, max_age_s=0)) == market.head
    assert has_query_index(db, other.live(NAME, max_age_s=0))
