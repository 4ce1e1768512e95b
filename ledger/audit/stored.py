"""Reads of the event store for auditors: the business log as ``EventLog.read`` gives
it, and read-only transactions on the tables beside it (the kept chain, checkpoints).

Replay, export and ``verify --database`` read the whole log while the server writes:
SQLite is read on read-only connections of their own (in WAL mode readers neither wait
for writers nor hold them up, and take no write lock for the chain's tables), markers
are left out by the query, and a row that has no canonical form is reported with its
position. Rows are decoded by ``canonical_rows``, the log's one decoder.

Replay reads each row with the chain hash the ``chain`` projection kept for it
(``read_linked``), in the same statement on SQLite and PostgreSQL, so that a batch costs
one query and the rows can be encoded for the wire without an intermediate form.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from uuid import UUID

from ledger.application.events import SKIPPED_TOPICS, CanonicalEvent, EventLog, canonical_rows
from ledger.domain.errors import Unavailable
from ledger.projections.chain import chain_hashes
from ledger.projections.db import Database, PostgresDatabase, Tx
from ledger.projections.engine import Tables

_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")
_SKIPPED: Final = tuple(sorted(SKIPPED_TOPICS))
CACHE_KIB: Final = 256
_DECODE_ERRORS: Final = (ValueError, KeyError, TypeError, AttributeError, RecursionError)

# (position, aggregate id as a canonical UUID text, aggregate version, topic, state)
Row = tuple[int, str, int, str, bytes]
# A row and the chain hash kept for its position (None where the chain has none).
LinkedRow = tuple[int, str, int, str, bytes, str | None]


class UndecodableEvent(ValueError):
    """A stored event has no canonical form (its state or columns were damaged)."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position = position
        self.reason = reason

    def __reduce__(self) -> tuple[type[UndecodableEvent], tuple[int, str]]:
        # Raised in replay's worker processes too, and rebuilt from its fields there.
        return type(self), (self.position, self.reason)


class LogReader(Protocol):
    """Reads the business log in position order, as ``EventLog.read`` does, and its rows
    with their kept chain hashes."""

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """Returns the business events after ``after`` (at most ``limit`` of them) up to
        ``stop``, and the position up to which the log has been read."""
        ...

    def read_linked(
        self, after: int, limit: int, stop: int | None, chain: Tables
    ) -> tuple[list[LinkedRow], int]:
        """As ``read``, but the stored rows (markers may be among them), each with the hash
        that the chain generation ``chain`` kept for its position."""
        ...


class AuditReader:
    """Reads for auditors, without write locks: the business log (``read``, as
    ``EventLog.read``; ``read_linked``, its rows with their kept chain hashes) and
    read-only transactions on the projection tables (``snapshot``), where the kept chain
    and the checkpoints live."""

    def __init__(
        self, log: LogReader | EventLog, snapshot: Callable[[], AbstractContextManager[Tx]]
    ) -> None:
        self._log = _EventLogReader(log, snapshot) if isinstance(log, EventLog) else log
        self.snapshot = snapshot

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """Returns the business events after ``after`` up to ``stop`` (at most ``limit``)
        and the position up to which the log has been read."""
        return self._log.read(after, limit, stop)

    def read_linked(
        self, after: int, limit: int, stop: int | None, chain: Tables
    ) -> tuple[list[LinkedRow], int]:
        """Returns the stored rows after ``after`` up to ``stop`` (at most ``limit``), each
        with the hash the chain generation ``chain`` kept for it, and the position up to
        which the log has been read. Raises the store's error if that generation's
        tables are gone (a rebuilt chain's retired generation)."""
        return self._log.read_linked(after, limit, stop, chain)


class _EventLogReader:
    """``EventLog`` as a ``LogReader``: the kept hashes of its rows are read apart."""

    def __init__(self, log: EventLog, snapshot: Callable[[], AbstractContextManager[Tx]]) -> None:
        self._log = log
        self._snapshot = snapshot

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        return self._log.read(after, limit, stop)

    def read_linked(
        self, after: int, limit: int, stop: int | None, chain: Tables
    ) -> tuple[list[LinkedRow], int]:
        rows, last = self._log.rows(after, limit, stop)
        if not rows:
            return [], last
        with self._snapshot() as tx:
            hashes = chain_hashes(tx, chain, rows[0][0], rows[-1][0])
        return [(*row, hashes.get(row[0])) for row in rows], last


class StoredEventReader:
    """Reads the stored-events table directly; ``read`` follows ``EventLog.read``'s
    contract, except that ``limit`` counts business events (markers are not fetched)."""

    def __init__(self, rows: _RowSource) -> None:
        self._rows = rows

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        rows = self._rows.fetch(after, limit, stop)
        return decode_rows(rows), _read_up_to(rows, after, limit, stop)

    def read_linked(
        self, after: int, limit: int, stop: int | None, chain: Tables
    ) -> tuple[list[LinkedRow], int]:
        rows = self._rows.fetch_linked(after, limit, stop, chain("links"))
        return rows, _read_up_to(rows, after, limit, stop)


def _read_up_to(rows: Sequence[Row | LinkedRow], after: int, limit: int, stop: int | None) -> int:
    """The position up to which a fetch of at most ``limit`` business rows read the log."""
    if len(rows) == limit:
        return rows[-1][0]
    # Fewer rows than asked for: nothing else is stored up to ``stop`` (or up to the
    # head the query saw, which is at least the last row's position).
    if stop is not None:
        return max(stop, after)
    return rows[-1][0] if rows else after


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

    def fetch_linked(
        self, after: int, limit: int, stop: int | None, links: str
    ) -> list[LinkedRow]: ...


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
        self._table = table
        self._query = self._select(table, "")
        self._linked: dict[str, str] = {}

    @staticmethod
    def _select(table: str, links: str) -> str:
        # The table names are the library's and the chain projection's own.
        skipped = ",".join("?" * len(_SKIPPED))
        linked = (
            f", (SELECT l.chain_hash FROM {links} l WHERE l.position = e.rowid)"  # noqa: S608
            if links
            else ""
        )
        return (
            "SELECT e.rowid, e.originator_id, e.originator_version, e.topic, e.state"  # noqa: S608
            f"{linked} FROM {table} e WHERE e.rowid > ? AND e.rowid <= ? "
            f"AND e.topic NOT IN ({skipped}) ORDER BY e.rowid LIMIT ?"
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

    def close(self) -> None:
        """Closes the calling thread's connection."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()

    def _fetch(self, query: str, after: int, limit: int, stop: int | None) -> list[Any]:
        upper = MAX_POSITION if stop is None else stop
        try:
            stored: list[Any] = (
                self._connection().execute(query, (after, upper, *_SKIPPED, limit)).fetchall()
            )
        except sqlite3.OperationalError as error:
            raise Unavailable(f"the event store cannot be read: {error}") from error
        return stored

    def fetch(self, after: int, limit: int, stop: int | None) -> list[Row]:
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
            for p, o, v, t, s in self._fetch(self._query, after, limit, stop)
        ]

    def fetch_linked(self, after: int, limit: int, stop: int | None, links: str) -> list[LinkedRow]:
        query = self._linked.get(links)
        if query is None:
            query = self._linked[links] = self._select(self._table, links)
        hex_id = _HEX_ID.fullmatch
        return [
            (
                p,
                f"{o[:8]}-{o[8:12]}-{o[12:16]}-{o[16:20]}-{o[20:]}" if hex_id(o) else _uuid(p, o),
                v,
                t,
                s,
                h,
            )
            for p, o, v, t, s, h in self._fetch(query, after, limit, stop)
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
    """Business rows of a PostgreSQL store, on the connections ``connection`` lends (the
    projection database's pool, or a ``PostgresConnection``): prepared statements with
    binary results (the states arrive as bytes, not as hex text). ``transaction`` makes
    the snapshots."""

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Any]],
        transaction: Callable[[], AbstractContextManager[Tx]],
        table: str,
    ) -> None:
        self._connection = connection
        self._transaction = transaction
        self._table = table
        self._query = self._select(table, "")
        self._linked: dict[str, Any] = {}

    @staticmethod
    def _select(table: str, links: str) -> Any:
        from psycopg.sql import SQL, Identifier

        # The kept hashes joined over the same range of positions: a merge of two index
        # scans, where a subquery per row costs the database a third more.
        linked = (
            SQL(
                ", l.chain_hash FROM {table} e LEFT JOIN {links} l "
                "ON l.position = e.notification_id "
                "AND l.position > %(after)s AND l.position <= %(upper)s"
            ).format(table=Identifier(table), links=Identifier(links))
            if links
            else SQL(" FROM {} e").format(Identifier(table))
        )
        return SQL(
            "SELECT e.notification_id, e.originator_id::text, e.originator_version, e.topic, "
            "e.state{linked} "
            "WHERE e.notification_id > %(after)s AND e.notification_id <= %(upper)s "
            "AND e.topic <> ALL(%(skipped)s) ORDER BY e.notification_id LIMIT %(limit)s"
        ).format(linked=linked)

    def _fetch(self, query: Any, after: int, limit: int, stop: int | None) -> list[Any]:
        upper = MAX_POSITION if stop is None else stop
        parameters = {"after": after, "upper": upper, "skipped": list(_SKIPPED), "limit": limit}
        with postgres_errors(), self._connection() as connection:
            cursor = connection.execute(query, parameters, prepare=True, binary=True)
            rows: list[Any] = cursor.fetchall()
        return rows

    def fetch(self, after: int, limit: int, stop: int | None) -> list[Row]:
        return self._fetch(self._query, after, limit, stop)

    def fetch_linked(self, after: int, limit: int, stop: int | None, links: str) -> list[LinkedRow]:
        query = self._linked.get(links)
        if query is None:
            query = self._linked[links] = self._select(self._table, links)
        return self._fetch(query, after, limit, stop)

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        with postgres_errors(), self._transaction() as tx:
            yield tx


# How a replay worker's connection shows in ``pg_stat_activity`` (with its process id).
APPLICATION_NAME: Final = "ledger replay worker"


class PostgresConnection:
    """One connection of a process's own, opened when it is first needed and again after
    it failed: for a process that reads one thing at a time (a replay worker), which a
    pool would only make wait out its timeout, and reconnect with a back-off, while the
    database is down."""

    def __init__(self, conninfo: str, schema: str) -> None:
        self._conninfo = conninfo
        self._schema = schema
        self._connection: Any = None

    @contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self._conninfo,
                options=f"-c search_path={self._schema}",
                autocommit=True,
                application_name=f"{APPLICATION_NAME} {os.getpid()}",
            )
        try:
            yield self._connection
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.connection() as connection, connection.transaction():
            yield _PostgresReadTx(connection)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _PostgresReadTx:
    """The ``Tx`` of a ``PostgresConnection``'s transaction (statements written with
    ``?``, as the projections write them)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        rows: int = self._connection.execute(sql.replace("?", "%s"), params).rowcount
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.cursor().executemany(sql.replace("?", "%s"), rows)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._connection.execute(
            sql.replace("?", "%s"), params
        ).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._connection.execute(sql.replace("?", "%s"), params).fetchall())


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


@dataclass(frozen=True)
class StoreAddress:
    """Where another process opens the table that ``audit_reader`` reads directly: a
    SQLite file's path, or a PostgreSQL conninfo and schema."""

    dialect: str
    location: str
    table: str
    schema: str = ""


def store_address(recorder: Any, db: Database) -> StoreAddress | None:
    """The address of the store behind ``recorder`` (``db`` is the projection database
    on the same store) when ``audit_reader`` reads its table directly; None otherwise
    (the in-memory store of tests)."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    table = getattr(recorder, "events_table_name", "")
    if isinstance(recorder, SQLiteApplicationRecorder) and db.dialect == "sqlite":
        path = str(getattr(db, "path", ""))
        if path and path != ":memory:" and not path.startswith("file:"):
            return StoreAddress("sqlite", path, table)
    if isinstance(recorder, PostgresApplicationRecorder) and isinstance(db, PostgresDatabase):
        return StoreAddress("postgresql", db.conninfo, table, db.schema)
    return None


def audit_reader(recorder: Any, db: Database) -> AuditReader:
    """Returns the fastest reader of the store behind ``recorder`` (``db`` is the
    projection database on the same store): its table read directly on SQLite files and
    PostgreSQL (on ``db``'s pool), ``EventLog`` otherwise (the in-memory store of tests)."""
    address = store_address(recorder, db)
    if address is None:
        return AuditReader(EventLog(recorder), db.transaction)
    if isinstance(db, PostgresDatabase):
        pg_rows = PostgresRows(db.pool.connection, db.transaction, address.table)
        return AuditReader(StoredEventReader(pg_rows), pg_rows.snapshot)
    rows = SqliteRows(address.location, address.table)
    return AuditReader(StoredEventReader(rows), rows.snapshot)


def open_reader(address: StoreAddress) -> tuple[AuditReader, Callable[[], None]]:
    """A direct reader of the store at ``address`` on a connection of its own, for a
    process that reads one thing at a time; and what closes it."""
    if address.dialect == "postgresql":
        own = PostgresConnection(address.location, address.schema)
        pg_rows = PostgresRows(own.connection, own.transaction, address.table)
        return AuditReader(StoredEventReader(pg_rows), pg_rows.snapshot), own.close
    rows = SqliteRows(address.location, address.table)
    return AuditReader(StoredEventReader(rows), rows.snapshot), rows.close
