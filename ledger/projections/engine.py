"""The projection engine: one batched, exactly-once runner for every read model.

Each projection version lives in tables of its own *generation* (``p_<name>_g<n>_<table>``).
A batch of events and the generation's tracking position are written in one transaction,
and the position only moves by compare-and-set, so no event is ever applied twice, even
when two workers race. A rebuild builds a new generation beside the live one; reads move
to it atomically once it has caught up with the head of the log.

Generations at the same position (every one during a rebuild of all projections, and
every live one at the head) share one read and decoding of the log; each still applies
it in its own transaction, so one that fails or loses a race holds no other back. On
PostgreSQL they apply it side by side, each on a connection of its own, since much of a
fold's time is the server's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.application.events import (
    EVENT_TOPICS,
    EVENT_TYPES,
    CanonicalEvent,
    EventLog,
    canonical_rows,
)
from ledger.projections.db import Database, SqliteDatabase, Tx, WriteTx
from ledger.projections.leases import AlwaysHeld, Leases, lock_key
from ledger.projections.listen import LogListener

LIVE = "LIVE"
CATCHING_UP = "CATCHING_UP"
REBUILDING = "REBUILDING"
FAILED = "FAILED"
RETIRED = "RETIRED"

# How often a runner with a listener polls the log while nothing is written: only a
# safety net, as each write wakes it.
LISTENING_IDLE_S = 1.0

REGISTRY_DDL = """
CREATE TABLE IF NOT EXISTS projection_generations (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL,
    live INTEGER NOT NULL,
    state TEXT NOT NULL,
    position BIGINT NOT NULL,
    target BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    error TEXT NOT NULL,
    error_position BIGINT NOT NULL,
    PRIMARY KEY (name, generation)
)
"""


class Tables:
    """Names the tables of one projection generation."""

    def __init__(self, name: str, generation: int) -> None:
        self.prefix = f"p_{name}_g{generation}_"

    def __call__(self, table: str) -> str:
        return self.prefix + table


class Projection(Protocol):
    """A read model: a fold of canonical events into tables of its own.

    A projection may also have ``event_types``, the types of the events its fold reads
    (it must ignore any other): the engine then decodes only those for it, and only
    reads of the log shared with projections that fold every event decode them all.
    ``writes_after_reads`` true says that its fold writes only with ``insert_rows``,
    ``update_rows`` and ``executemany``, after all its reads: on SQLite the engine then
    folds a batch before it takes the write lock (see ``_fold_first``).
    ``indexes(t)``, if it has one, gives the ``CREATE INDEX IF NOT EXISTS`` statements of
    the indexes that only its queries use (its fold must not need them): the engine
    creates them once the generation has caught up with the log, in the transaction of
    the batch that reaches the head (so before a rebuilt generation goes live), instead
    of maintaining them row by row through a catch-up; building an index over the rows
    at once costs a fraction of that. On PostgreSQL the engine analyses its tables then
    too, so that a generation goes live with statistics."""

    name: ClassVar[str]
    version: ClassVar[int]

    def create(self, tx: Tx, t: Tables) -> None:
        """Creates the generation's tables and indexes."""

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        """Folds a batch of events, in log order, into the tables (without changing the
        events, which other projections fold too)."""

    def tables(self) -> Sequence[str]:
        """The table names (without prefix), for digests and for dropping retired ones."""


def _no_indexes(t: Tables) -> Sequence[str]:
    return ()


# Errors of a database that cannot be reached right now (as opposed to a fold's bug).
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    OperationalError,
    InterfaceError,
)


class _LostRace(Exception):
    """Another worker advanced the generation first; this batch was rolled back."""


class _NotRecordable(Exception):
    """A fold asked for what a recorded transaction cannot give."""


class _Recorded:
    """A fold's transaction that reads one snapshot and keeps its writes, to be replayed
    in order under the write lock. A read after a write, or a write whose count of changed
    rows the fold asks for, cannot be kept: the fold then runs under the lock instead."""

    def __init__(self, reader: Tx) -> None:
        self._reader = reader
        self._writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise _NotRecordable

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._writes.append(("executemany", (sql, rows), {}))

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._writes:
            raise _NotRecordable
        return self._reader.fetchone(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._writes:
            raise _NotRecordable
        return self._reader.fetchall(sql, params)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self._writes.append(("insert_rows", (table, columns, rows), {}))

    def update_rows(
        self,
        table: str,
        keys: Sequence[str],
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        where: str = "",
        add: bool = False,
    ) -> None:
        self._writes.append(
            ("update_rows", (table, keys, columns, rows), {"where": where, "add": add})
        )

    def replay(self, tx: WriteTx) -> None:
        for method, args, kwargs in self._writes:
            getattr(tx, method)(*args, **kwargs)


class ProjectionFailed(Exception):
    def __init__(self, position: int, error: BaseException) -> None:
        self.position = position
        self.error = error
        super().__init__(f"at position {position}: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class Generation:
    name: str
    generation: int
    version: int
    live: bool
    state: str
    position: int
    target: int
    started_at: float
    updated_at: float
    error: str
    error_position: int

    @property
    def tables(self) -> Tables:
        return Tables(self.name, self.generation)


@dataclass(frozen=True)
class Status:
    """What an operator sees of one projection."""

    name: str
    version: int
    generation: int
    state: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    error: str
    error_position: int
    progress: float
    events_per_second: float
    eta_seconds: float


class ProjectionManager:
    """Owns the registry of generations and runs batches for every projection."""

    def __init__(
        self,
        db: Database,
        log: EventLog,
        projections: Sequence[Projection],
        batch_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        leases: Leases | None = None,
        retire_grace_s: float = 5.0,
        workers: int | None = None,
    ) -> None:
        self.db = db
        self.leases: Leases = leases or AlwaysHeld()
        self.log = log
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size
        self.clock = clock
        # Longer than any reader (in any process) keeps using a generation it looked up
        # as live, see ``live``: its tables are dropped only after this.
        self.retire_grace_s = retire_grace_s
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._rates: dict[tuple[str, int], tuple[float, int, float]] = {}
        self._live_cache: dict[str, tuple[float, Generation]] = {}
        # Positions this process has applied, per (name, generation), newest first known.
        self._applied: dict[tuple[str, int], int] = {}
        # How many generations apply a shared batch at once: SQLite has one writer at a
        # time; PostgreSQL's pool also serves the readers, so the folds leave them room.
        self.workers = workers if workers is not None else (2 if db.dialect == "postgresql" else 1)
        self._folders: ThreadPoolExecutor | None = None
        self._folders_lock = threading.Lock()
        self._skipped: dict[frozenset[str], frozenset[str]] = {}
        # Projections whose folds cannot be recorded (see ``_fold_first``).
        self._unrecordable: set[str] = set()
        # Generations whose query indexes (and, on PostgreSQL, statistics) this process has
        # made once they caught up (see ``Projection``).
        self._indexed: set[tuple[str, int]] = set()
        # Wakes ``run_forever`` for other processes' writes (see ``listen``), if set.
        self.listener: LogListener | None = None

    # --- registry -------------------------------------------------------------------

    def setup(self) -> None:
        """Creates the registry and, for a projection version not built yet, a generation.

        Workers that start together take turns, so each version is built once."""
        with self._registry() as tx:
            tx.execute(REGISTRY_DDL)
            for projection in self.projections.values():
                gens = self._generations(tx, projection.name)
                if not gens:
                    self._new_generation(tx, projection, live=True)
                elif not any(g.version == projection.version and g.state != RETIRED for g in gens):
                    self._new_generation(tx, projection, live=False)
        self._live_cache.clear()
        self._wake.set()

    @contextmanager
    def _registry(self) -> Iterator[Tx]:
        """A transaction that has the registry to itself: SQLite's writers already take
        turns, PostgreSQL's would race to create the same tables and rows."""
        with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                key = lock_key(getattr(self.db, "schema", ""), "projection_generations")
                tx.execute("SELECT pg_advisory_xact_lock(?)", (key,))
            yield tx

    @staticmethod
    def _generations(tx: Tx, name: str) -> list[Generation]:
        rows = tx.fetchall(
            "SELECT * FROM projection_generations WHERE name = ? ORDER BY generation", (name,)
        )
        return [_generation(r) for r in rows]

    def _new_generation(self, tx: Tx, projection: Projection, *, live: bool) -> Generation:
        now = self.clock()
        target = self.log.head()
        row = tx.fetchone(
            "SELECT COALESCE(MAX(generation), 0) FROM projection_generations WHERE name = ?",
            (projection.name,),
        )
        generation = int(row[0] if row else 0) + 1
        projection.create(tx, Tables(projection.name, generation))
        tx.execute(
            "INSERT INTO projection_generations VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                projection.name,
                generation,
                projection.version,
                int(live),
                CATCHING_UP if live else REBUILDING,
                0,
                target,
                now,
                now,
                "",
                0,
            ),
        )
        return self._generations(tx, projection.name)[-1]

    def rebuild(self, name: str) -> Generation:
        """Starts building a fresh generation of ``name`` beside the live one."""
        projection = self.projection(name)
        with self._registry() as tx:
            rebuilding = [g for g in self._generations(tx, name) if g.state == REBUILDING]
            gen = rebuilding[0] if rebuilding else self._new_generation(tx, projection, live=False)
        self._live_cache.pop(name, None)
        self._wake.set()
        return gen

    def retry(self, name: str) -> list[Generation]:
        """Clears the failure of ``name``'s generations (after a fix is deployed), so the
        runner resumes at the event that failed: it is folded again, never skipped."""
        self.projection(name)
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE projection_generations SET state = CASE WHEN live = 1 THEN ? ELSE ? END, "
                "error = '', error_position = 0, updated_at = ? WHERE name = ? AND state = ?",
                (CATCHING_UP, REBUILDING, self.clock(), name, FAILED),
            )
        self._live_cache.pop(name, None)
        self._wake.set()
        return self.generations(name)

    def projection(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(sorted(self.projections))
            raise KeyError(f"unknown projection {name!r}; known: {known}") from None

    def generations(self, name: str | None = None) -> list[Generation]:
        with self.db.transaction() as tx:
            if name is None:
                rows = tx.fetchall("SELECT * FROM projection_generations ORDER BY name, generation")
            else:
                rows = tx.fetchall(
                    "SELECT * FROM projection_generations WHERE name = ? ORDER BY generation",
                    (name,),
                )
        return [_generation(r) for r in rows]

    def generation(self, name: str, generation: int) -> Generation:
        with self.db.transaction() as tx:
            row = tx.fetchone(
                "SELECT * FROM projection_generations WHERE name = ? AND generation = ?",
                (name, generation),
            )
        if row is None:
            raise KeyError(f"{name} generation {generation}")
        return _generation(row)

    def live(self, name: str, max_age_s: float = 0.5) -> Generation:
        """The generation that serves reads (cached briefly: a switch is seen within
        ``max_age_s`` by other processes, at once in this one)."""
        cached = self._live_cache.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        for g in self.generations(name):
            if g.live:
                self._live_cache[name] = (now, g)
                return g
        raise KeyError(f"projection {name} has no live generation; is the engine set up?")

    # --- running --------------------------------------------------------------------

    def step(self, gen: Generation) -> int:
        """Applies one batch to a generation; returns how many positions it advanced.

        If the batch fails, its events are applied one by one, so the generation stops
        exactly before the failing event, which is reported and retried after a fix.
        """
        events, last = self._read([gen], gen.position, self.batch_size)
        return self._advance(gen, events, last)

    def _read(
        self, gens: Sequence[Generation], after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """``log.read`` for these generations: the stored events of types none of them
        folds are left undecoded (and out of the batch)."""
        skipped = self._skipped_topics(frozenset(g.name for g in gens))
        if not skipped:
            return self.log.read(after, limit, stop)
        rows, last = self.log.rows(after, limit, stop)
        return canonical_rows([row for row in rows if row[3] not in skipped]), last

    def _skipped_topics(self, names: frozenset[str]) -> frozenset[str]:
        """The topics of the business events that none of the projections ``names`` folds
        (none if one of them folds every event). Markers and unknown topics stay: the
        decoding skips the one and rejects the other."""
        skipped = self._skipped.get(names)
        if skipped is None:
            folded: set[str] = set()
            for name in names:
                types: frozenset[str] | None = getattr(
                    self.projections.get(name), "event_types", None
                )
                if types is None:
                    folded = set(EVENT_TYPES)
                    break
                folded |= types
            skipped = frozenset(
                topic for topic, (event, _) in EVENT_TOPICS.items() if event not in folded
            )
            self._skipped[names] = skipped
        return skipped

    def _advance(self, gen: Generation, events: Sequence[CanonicalEvent], last: int) -> int:
        """Applies the events read after the generation's position, up to ``last``."""
        if last == gen.position:
            return 0
        try:
            advanced = self._commit(gen, events, last)
        except _LostRace:
            return 0
        except ProjectionFailed:
            advanced = self._commit_in_parts(gen, events, last)
        if advanced:
            self._applied[(gen.name, gen.generation)] = gen.position + advanced
            self._track_rate(gen, gen.position + advanced)
            with self._progress:
                self._progress.notify_all()
        return advanced

    def _commit_in_parts(self, gen: Generation, events: Sequence[CanonicalEvent], last: int) -> int:
        """Applies a batch that failed as a whole in halves, failing halves in halves
        again, down to the failing event: the generation stops exactly before it, after
        a few transactions rather than one per event."""
        position = gen.position
        parts = _halves(events, last) if len(events) > 1 else [(events, last)]
        while parts:
            part, upto = parts.pop()
            current = self.generation(gen.name, gen.generation)
            if current.position != position:
                break  # another worker moved it meanwhile; it owns these events now
            try:
                self._commit(current, part, upto)
            except _LostRace:
                break
            except ProjectionFailed as failed:
                if len(part) > 1:
                    parts += _halves(part, upto)
                    continue
                self._fail(current, failed)
                raise
            position = upto
        return position - gen.position

    def _commit(self, gen: Generation, events: Sequence[CanonicalEvent], last: int) -> int:
        """Applies events and advances the position in one transaction; 0 if another
        worker advanced the generation first (nothing is then written)."""
        projection = self.projection(gen.name)
        caught_up = last >= max(gen.target, self.log.head())
        switch = not gen.live and caught_up
        index = caught_up and (gen.name, gen.generation) not in self._indexed
        folded = self._fold_first(gen, projection, events, last)
        with self.db.transaction() as tx:
            # The position moves first: a worker that lost the race stops here, before
            # folding events already folded (which a projection may reject, e.g. by a
            # unique key, and which must not then be reported as its failure).
            # ``live`` too: a generation retired since it was read is not revived.
            moved = tx.execute(
                "UPDATE projection_generations SET position = ?, updated_at = ?, state = ? "
                "WHERE name = ? AND generation = ? AND position = ? AND live = ?",
                (
                    last,
                    self.clock(),
                    LIVE if (gen.live or switch) else REBUILDING,
                    gen.name,
                    gen.generation,
                    gen.position,
                    int(gen.live),
                ),
            )
            if moved != 1:
                raise _LostRace
            try:
                if folded is not None:
                    folded.replay(tx)
                else:
                    projection.apply(tx, gen.tables, events)
            except DATABASE_UNAVAILABLE:
                # An outage is not the projection's failure: the batch rolls back and the
                # runner tries it again once the database answers.
                raise
            except Exception as error:
                position = int(events[0]["position"]) if events else last
                raise ProjectionFailed(position, error) from error
            if index:
                for statement in getattr(projection, "indexes", _no_indexes)(gen.tables):
                    tx.execute(statement)
                if self.db.dialect == "postgresql":
                    # Statistics too, so that the queries' plans fit the rows: a table is
                    # otherwise analysed only later by autovacuum, or never where it is off,
                    # and without statistics a check among 200,000 grants scanned every
                    # grant state (a join whose selectivities the planner could only guess).
                    for table in projection.tables():
                        tx.execute(f"ANALYZE {gen.tables(table)}")
            if switch:
                tx.execute(
                    "UPDATE projection_generations SET live = 0, state = ?, updated_at = ? "
                    "WHERE name = ? AND live = 1",
                    (RETIRED, self.clock(), gen.name),
                )
                tx.execute(
                    "UPDATE projection_generations SET live = 1 WHERE name = ? AND generation = ?",
                    (gen.name, gen.generation),
                )
        if index:
            self._indexed.add((gen.name, gen.generation))
        if switch:
            self._live_cache.pop(gen.name, None)
        return last - gen.position

    def _fold_first(
        self,
        gen: Generation,
        projection: Projection,
        events: Sequence[CanonicalEvent],
        last: int,
    ) -> _Recorded | None:
        """On SQLite, folds the batch on a snapshot before taking the write lock, which
        is then held only while the rows are written: SQLite has one writer at a time, so
        a fold under the lock would hold back every other writer (another worker's folds,
        the application's commands) for all its Python work. The snapshot is consistent,
        and a worker that advanced the generation since is caught by the compare-and-set
        under the lock. None where the fold must run under the lock (see ``_Recorded``)."""
        if (
            not isinstance(self.db, SqliteDatabase)
            or not getattr(projection, "writes_after_reads", False)
            or gen.name in self._unrecordable
        ):
            return None
        with self.db.snapshot() as reader:
            row = reader.fetchone(
                "SELECT position, live FROM projection_generations "
                "WHERE name = ? AND generation = ?",
                (gen.name, gen.generation),
            )
            if row is None or (int(row[0]), bool(row[1])) != (gen.position, gen.live):
                raise _LostRace
            recorded = _Recorded(reader)
            try:
                projection.apply(recorded, gen.tables, events)
            except _NotRecordable:
                self._unrecordable.add(gen.name)
                return None
            except DATABASE_UNAVAILABLE:
                raise
            except Exception as error:
                position = int(events[0]["position"]) if events else last
                raise ProjectionFailed(position, error) from error
        return recorded

    def _fail(self, gen: Generation, failed: ProjectionFailed) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE projection_generations SET state = ?, error = ?, error_position = ?, "
                "updated_at = ? WHERE name = ? AND generation = ?",
                (
                    FAILED,
                    str(failed)[:2000],
                    failed.position,
                    self.clock(),
                    gen.name,
                    gen.generation,
                ),
            )

    def run_once(self, names: Collection[str] | None = None) -> int:
        """One batch for every generation that is not failed or retired (of the
        projections ``names``, if given): read once for all the generations at one
        position, applied by each in a transaction of its own."""
        at: dict[int, list[Generation]] = {}
        for gen in self.generations():
            if gen.state in (FAILED, RETIRED) or gen.name not in self.projections:
                continue
            if names is not None and gen.name not in names:
                continue
            if not self.leases.held(gen.name):
                continue
            at.setdefault(gen.position, []).append(gen)
        positions = sorted(at)
        advanced = 0
        for i, position in enumerate(positions):
            # Generations behind the next ones read no further than where those are, so
            # that from there on they share their reads.
            stop = positions[i + 1] if i + 1 < len(positions) else None
            events, last = self._read(at[position], position, self.batch_size, stop)
            if last == position and stop is not None:
                events, last = self._read(at[position], position, self.batch_size)
            advanced += self._apply_all(at[position], events, last)
        return advanced

    def _apply_all(
        self, gens: Sequence[Generation], events: Sequence[CanonicalEvent], last: int
    ) -> int:
        """Applies one batch to each generation. A projection's failure is recorded and
        skipped; an error of the database is raised once every generation has had its
        turn, so that none is held back by another's."""

        def advance(gen: Generation) -> int | Exception:
            try:
                return self._advance(gen, events, last)
            except ProjectionFailed:
                return 0
            except Exception as error:
                return error

        if self.workers < 2 or len(gens) < 2 or last == gens[0].position:
            outcomes = [advance(gen) for gen in gens]
        else:
            with self._folders_lock:
                if self._folders is None:
                    self._folders = ThreadPoolExecutor(
                        self.workers, thread_name_prefix="projections"
                    )
                folders = self._folders
            outcomes = [f.result() for f in [folders.submit(advance, gen) for gen in gens]]
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return sum(o for o in outcomes if isinstance(o, int))

    def catch_up(
        self, timeout_s: float = 60.0, names: Collection[str] | None = None, *, drop: bool = True
    ) -> None:
        """Runs batches until every active generation (of the projections ``names``, if
        given) reaches the head (tests, CLI), then drops retired tables unless ``drop``
        is false."""
        deadline = time.monotonic() + timeout_s
        while self.run_once(names):
            if time.monotonic() > deadline:
                raise TimeoutError("projections did not catch up in time")
        if drop:
            self.drop_retired()

    def wake(self) -> None:
        self._wake.set()

    def run_forever(
        self, stop: threading.Event, idle_s: float = 0.05, gather_s: float = 0.0
    ) -> None:
        """Follows the log until ``stop`` is set, waking at once when told of a write.

        With a ``listener`` (another process's writes wake the engine at once), it polls
        the log every ``LISTENING_IDLE_S`` while nothing is written, else every ``idle_s``.
        With ``gather_s``, a batch short of ``batch_size`` (the log is being written
        as it is followed) is followed by that long a pause, so that the next batch
        folds what was written meanwhile: fewer, larger batches, each a transaction and
        a read per projection, at the cost of that much more lag.
        """
        listener = self.listener
        if listener is not None:
            listener.start()
        try:
            while not stop.is_set():
                try:
                    advanced = self.run_once()
                    if not advanced:
                        self.drop_retired()
                except Exception:
                    # E.g. the database is down: try again shortly; the runner must not die.
                    advanced = 0
                    stop.wait(0.5)
                if not advanced:
                    listening = listener is not None and listener.listening
                    self._wake.wait(LISTENING_IDLE_S if listening else idle_s)
                    self._wake.clear()
                elif gather_s and advanced < self.batch_size:
                    stop.wait(gather_s)
        finally:
            if listener is not None:
                listener.stop()

    def applied(self, gen: Generation) -> int:
        """The position a generation has applied, as fresh as this process knows it."""
        return max(gen.position, self._applied.get((gen.name, gen.generation), 0))

    def wait_for(self, name: str, position: int, timeout_s: float) -> bool:
        """Waits until the live generation of ``name`` has applied ``position``."""
        if self.applied(self.live(name)) >= position:
            # Applied by this process's runner: no need to ask the database.
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            self._live_cache.pop(name, None)
            if self.live(name).position >= position:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.set()
            with self._progress:
                self._progress.wait(min(remaining, 0.01))

    def drop_retired(self) -> None:
        """Drops the tables of generations retired more than ``retire_grace_s`` ago."""
        for gen in self.generations():
            if gen.state != RETIRED or self.clock() - gen.updated_at < self.retire_grace_s:
                continue
            projection = self.projections.get(gen.name)
            with self.db.transaction() as tx:
                if projection is not None:
                    for table in projection.tables():
                        tx.execute(f"DROP TABLE IF EXISTS {gen.tables(table)}")
                tx.execute(
                    "DELETE FROM projection_generations WHERE name = ? AND generation = ?",
                    (gen.name, gen.generation),
                )

    # --- status ---------------------------------------------------------------------

    def _track_rate(self, gen: Generation, position: int) -> None:
        key = (gen.name, gen.generation)
        now = time.monotonic()
        previous = self._rates.get(key)
        if previous is None:
            self._rates[key] = (now, position, 0.0)
            return
        then, before, rate = previous
        elapsed = now - then
        if elapsed >= 0.5:
            current = (position - before) / elapsed
            self._rates[key] = (now, position, current if rate == 0 else 0.5 * rate + 0.5 * current)

    def status(self) -> list[Status]:
        head = self.log.head()
        statuses = []
        for gen in self.generations():
            if gen.state == RETIRED:
                continue
            lag = max(0, head - gen.position)
            rate = self._rates.get((gen.name, gen.generation), (0.0, 0, 0.0))[2]
            progress = 1.0 if head == 0 else min(1.0, gen.position / head)
            state = gen.state
            if state == LIVE and lag > self.batch_size:
                state = CATCHING_UP
            statuses.append(
                Status(
                    name=gen.name,
                    version=gen.version,
                    generation=gen.generation,
                    state=state,
                    position=gen.position,
                    head=head,
                    lag_events=lag,
                    lag_seconds=self._lag_seconds(gen.position, lag),
                    error=gen.error,
                    error_position=gen.error_position,
                    progress=progress,
                    events_per_second=rate,
                    eta_seconds=(lag / rate) if rate > 0 else 0.0,
                )
            )
        return statuses

    def _lag_seconds(self, position: int, lag: int) -> float:
        """How long the oldest event not yet applied has been waiting."""
        if lag == 0:
            return 0.0
        waiting = self.log.recorded_at(position + 1)
        return 0.0 if waiting is None else max(0.0, self.clock() - waiting)

    def digest(self, name: str, generation: Generation | None = None) -> str:
        """A SHA-256 over every row of a generation's tables, in a stable order: equal
        digests mean equal read models (incremental vs rebuilt)."""
        import hashlib

        import orjson

        gen = generation or self.live(name)
        projection = self.projection(name)
        digest = hashlib.sha256()
        with self.db.transaction() as tx:
            for table in projection.tables():
                rows = tx.fetchall(f"SELECT * FROM {gen.tables(table)}")
                for row in sorted(orjson.dumps(list(r), default=str) for r in rows):
                    digest.update(row)
                digest.update(b"|")
        return digest.hexdigest()


def _halves(
    events: Sequence[CanonicalEvent], last: int
) -> list[tuple[Sequence[CanonicalEvent], int]]:
    """The two halves of a batch read up to ``last``, each with the position it reaches,
    the first half last (the next to apply, taken from the end of a stack)."""
    middle = len(events) // 2
    return [(events[middle:], last), (events[:middle], int(events[middle - 1]["position"]))]


def _generation(row: Sequence[Any]) -> Generation:
    return Generation(
        name=row[0],
        generation=int(row[1]),
        version=int(row[2]),
        live=bool(row[3]),
        state=row[4],
        position=int(row[5]),
        target=int(row[6]),
        started_at=float(row[7]),
        updated_at=float(row[8]),
        error=row[9],
        error_position=int(row[10]),
    )
