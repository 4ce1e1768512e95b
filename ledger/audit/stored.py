"""Reads of the event store for auditors: the business log as ``EventLog.read`` gives
it, and read-only transactions on the tables beside it (the kept chain, checkpoints).

Replay, export and ``verify --database`` read the whole log while the server writes:
SQLite is read on read-only connections of their own (in WAL mode readers neither wait
for writers nor hold them up, and take no write lock for the chain's tables), markers
are left out by the query, and a row that has no canonical form is reported with its
position. Rows are decoded by ``canonical_rows``, the log's one decoder.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Final, Protocol
from uuid import UUID

from ledger.application.events import SKIPPED_TOPICS, CanonicalEvent, EventLog, canonical_rows
from ledger.domain.errors import Unavailable
from ledger.projections.db import Database, Tx

_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")
_SKIPPED: Final = tuple(sorted(SKIPPED_TOPICS))
CACHE_KIB: Final = 256
_DECODE_ERRORS: Final = (ValueError, KeyError, TypeError, AttributeError, RecursionError)

# (position, aggregate id as a canonical UUID text, aggregate version, topic, state)
Row = tuple[int, str, int, str, bytes]


class UndecodableEvent(ValueError):
    """A stored event has no canonical form (its state or columns were damaged)."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position = position
        self.reason = reason


class LogReader(Protocol):
    """Reads the business log in position order, as ``EventLog.read`` does."""

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """Returns the business events after ``after`` (at most ``limit`` of them) up to
        ``stop``, and the position up to which the log has been read."""
        ...


class AuditReader:
    """Reads for auditors, without write locks: the business log (``read``, as
    ``EventLog.read``) and read-only transactions on the projection tables
    (``snapshot``), where the kept chain and the checkpoints live."""

    def __init__(self, log: LogReader, snapshot: Callable[[], AbstractContextManager[Tx]]) -> None:
        self._log = log
        self.snapshot = snapshot

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """Returns the business events after ``after`` up to ``stop`` (at most ``limit``)
        and the position up to which the log has been read."""
        return self._log.read(after, limit, stop)


class StoredEventReader:
    """Reads the stored-events table directly; ``read`` follows ``EventLog.read``'s
    contract, except that ``limit`` counts business events (markers are not fetched)."""

    def __init__(self, rows: _RowSource) -> None:
        self._rows = rows

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        rows = self._rows.fetch(after, limit, stop)
        events = decode_rows(rows)
        if len(rows) == limit:
            return events, rows[-1][0]
        # Fewer rows than asked for: nothing else is stored up to ``stop`` (or up to the
        # head the query saw, which is at least the last row's position).
        if stop is not None:
            return events, max(stop, after)
        return events, rows[-1][0] if rows else after


def decode_rows(rows: Sequence[Row]) -> list[CanonicalEvent]:
    """Returns the canonical events of stored rows, in order (``canonical_rows``); raises
    ``UndecodableEvent`` naming the first row that has none."""
    try:
        return canonical_rows(rows)
    except _DECODE_ERRORS:
        for row in rows:
            try:
                canonical_rows([row])
            except _DECODE_ERRORS as error:
                reason = f"the stored event has no canonical form ({type(error).__name__}: {error})"
                raise UndecodableEvent(row[0], reason) from error
        raise


class _RowSource(Protocol):
    def fetch(self, after: int, limit: int, stop: int | None) -> list[Row]: ...


class _ReadTx:
    """The ``Tx`` of a read-only SQLite connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._connection.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._connection.execute(sql, params).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._connection.execute(sql, params).fetchall())


class SqliteRows:
    """Business rows of a SQLite store file, on read-only connections (one per thread):
    in WAL mode readers neither wait for writers nor hold them up."""

    def __init__(self, path: str, table: str) -> None:
        self._uri = Path(path).resolve().as_uri() + "?mode=ro"
        self._local = threading.local()
        skipped = ",".join("?" * len(_SKIPPED))
        self._query = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608 (the library's table name)
            f"FROM {table} WHERE rowid > ? AND rowid <= ? AND topic NOT IN ({skipped}) "
            "ORDER BY rowid LIMIT ?"
        )

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self._uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10
            )
            # Reads are sequential, so the OS's page cache serves them as well; a small
            # cache per connection keeps a server with many replay threads small.
            connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._local.connection = connection
        return connection

    def fetch(self, after: int, limit: int, stop: int | None) -> list[Row]:
        upper = MAX_POSITION if stop is None else stop
        try:
            stored: list[Row] = (
                self._connection().execute(self._query, (after, upper, *_SKIPPED, limit)).fetchall()
            )
        except sqlite3.OperationalError as error:
            raise Unavailable(f"the event store cannot be read: {error}") from error
        hex_id = _HEX_ID.fullmatch
        # The library stores ids as 32 lowercase hex digits.
        return [
            (
                p,
                f"{o[:8]}-{o[8:12]}-{o[12:16]}-{o[16:20]}-{o[20:]}" if hex_id(o) else _uuid(p, o),
                v,
                t,
                s,
            )
            for p, o, v, t, s in stored
        ]

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        """A read transaction: one consistent view of every table until it ends."""
        connection = self._connection()
        try:
            connection.execute("BEGIN")
            try:
                yield _ReadTx(connection)
            finally:
                connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            raise Unavailable(f"the store cannot be read: {error}") from error


def _uuid(position: int, stored: str) -> str:
    try:
        return str(UUID(stored))
    except ValueError as error:
        raise UndecodableEvent(
            position, f"the stored aggregate id {stored!r} is no UUID"
        ) from error


class PostgresRows:
    """Business rows of a PostgreSQL store, on the projection database's pool."""

    def __init__(self, db: Database, table: str) -> None:
        self._db = db
        skipped = ",".join("?" * len(_SKIPPED))
        self._query = (
            "SELECT notification_id, originator_id::text, "  # noqa: S608 (the library's table name)
            f"originator_version, topic, state FROM {table} "
            f"WHERE notification_id > ? AND notification_id <= ? AND topic NOT IN ({skipped}) "
            "ORDER BY notification_id LIMIT ?"
        )

    def fetch(self, after: int, limit: int, stop: int | None) -> list[Row]:
        upper = MAX_POSITION if stop is None else stop
        with postgres_errors(), self._db.transaction() as tx:
            rows = tx.fetchall(self._query, (after, upper, *_SKIPPED, limit))
        return [(p, o, v, t, bytes(s)) for p, o, v, t, s in rows]

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        with postgres_errors(), self._db.transaction() as tx:
            yield tx


@contextmanager
def postgres_errors() -> Iterator[None]:
    """Turns a PostgreSQL server that cannot be reached into ``Unavailable``."""
    import psycopg
    import psycopg_pool

    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as error:
        raise Unavailable(f"the store cannot be read: {error}") from error


MAX_POSITION: Final = 2**63 - 1


def audit_reader(recorder: Any, db: Database) -> AuditReader:
    """Returns the fastest reader of the store behind ``recorder`` (``db`` is the
    projection database on the same store): its table read directly on SQLite files and
    PostgreSQL, ``EventLog`` otherwise (the in-memory store of tests)."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    table = getattr(recorder, "events_table_name", "")
    if isinstance(recorder, SQLiteApplicationRecorder) and db.dialect == "sqlite":
        path = str(getattr(db, "path", ""))
        if path and path != ":memory:" and not path.startswith("file:"):
            rows = SqliteRows(path, table)
            return AuditReader(StoredEventReader(rows), rows.snapshot)
    if isinstance(recorder, PostgresApplicationRecorder) and db.dialect == "postgresql":
        pg_rows = PostgresRows(db, table)
        return AuditReader(StoredEventReader(pg_rows), pg_rows.snapshot)
    return AuditReader(EventLog(recorder), db.transaction)
