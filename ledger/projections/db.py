"""A small SQL adapter for projection tables, on the event store's own database.

SQL is written once with ``?`` placeholders; the PostgreSQL adapter rewrites them. Each
transaction commits as a whole or not at all. Folds write a batch of rows at a time:
``insert_rows`` is a ``COPY`` on PostgreSQL and ``update_rows`` one ``UPDATE ... FROM
unnest(...)``, several times faster there than a statement per row.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from ledger.domain.errors import Unavailable

Row = tuple[Any, ...]


class Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; returns the number of rows it changed."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class WriteTx(Tx, Protocol):
    """A transaction of the projection database, with its bulk writes."""

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Inserts rows (values in the order of ``columns``) into ``table``."""

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
        """For each row (the values of ``keys``, then of ``columns``), sets ``columns`` of
        the rows of ``table`` whose ``keys`` have those values, or with ``add`` increases
        them by the values. ``where`` further limits the rows changed (a condition on
        ``table``'s columns). Each key must appear in one row at most: the updates of a
        batch are taken as a whole, not one after the other."""


def _unique_keys(keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if len({tuple(row[: len(keys)]) for row in rows}) != len(rows):
        raise ValueError(f"update_rows: a key of ({', '.join(keys)}) appears in two rows")


def _update_sql(
    keys: Sequence[str], columns: Sequence[str], where: str, add: bool
) -> tuple[str, str]:
    """The SET list and the WHERE clause of one row's UPDATE, with ``?`` for its values."""
    sets = ", ".join(f"{c} = {c} + ?" if add else f"{c} = ?" for c in columns)
    matches = " AND ".join([*(f"{k} = ?" for k in keys), *([where] if where else [])])
    return sets, matches


class Database(Protocol):
    dialect: str

    def transaction(self) -> Any: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Runs one read statement outside any transaction: it sees one consistent
        snapshot, and on PostgreSQL costs one round trip."""

    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            marks = ",".join("?" * len(columns))
            self._conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
            )

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
        if not rows:
            return
        _unique_keys(keys, rows)
        sets, matches = _update_sql(keys, columns, where, add)
        width = len(keys)
        self._conn.executemany(
            f"UPDATE {table} SET {sets} WHERE {matches}",
            [(*row[width:], *row[:width]) for row in rows],
        )


class SqliteDatabase:
    """Projection tables in a SQLite file (the event store's), one connection per thread."""

    dialect = "sqlite"

    def __init__(self, path: str, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        if path == ":memory:":
            # One in-memory database must be shared by every thread that reads it.
            self._shared = self._connect()
            self._shared_lock = threading.RLock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
        )
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _in_turn(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; the shared in-memory one is used by one thread at a
        time."""
        if self._shared is None:
            yield self._connection()
            return
        with self._shared_lock:
            yield self._shared

    @contextmanager
    def transaction(self) -> Iterator[WriteTx]:
        with self._in_turn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        """A read transaction: one consistent view of the database, no write lock."""
        with self._in_turn() as conn:
            conn.execute("BEGIN")
            try:
                yield _SqliteTx(conn)
            finally:
                conn.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._in_turn() as conn:
            # In autocommit mode, so the statement is a read transaction of its own.
            return list(conn.execute(sql, params).fetchall())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class _PostgresTx:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(_pg(sql), params)
        return int(self._cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_pg(sql), rows)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(_pg(sql), params)
        row: Row | None = self._cursor.fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(_pg(sql), params)
        return list(self._cursor.fetchall())

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        with self._cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            write = copy.write_row
            for row in rows:
                write(row)

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
        if not rows:
            return
        _unique_keys(keys, rows)
        values = list(zip(*rows, strict=True))
        arrays = [
            _ARRAY_TYPES.get(frozenset(map(type, column)) - {type(None)}) for column in values
        ]
        if None in arrays:
            # A type an array of these values cannot be named for (or none at all).
            sets, matches = _update_sql(keys, columns, where, add)
            width = len(keys)
            self.executemany(
                f"UPDATE {table} SET {sets} WHERE {matches}",
                [(*row[width:], *row[:width]) for row in rows],
            )
            return
        # The values' columns are named apart from the table's, so that ``where`` may
        # name the table's columns unqualified. One array per column: a few parameters
        # whatever the number of rows, dumped far faster than a parameter per value.
        names = [*(f"k{i}" for i in range(len(keys))), *(f"c{i}" for i in range(len(columns)))]
        sets = ", ".join(
            f"{c} = {table}.{c} + v.c{i}" if add else f"{c} = v.c{i}" for i, c in enumerate(columns)
        )
        matches = " AND ".join(
            [*(f"{table}.{k} = v.k{i}" for i, k in enumerate(keys)), *([where] if where else [])]
        )
        unnest = ", ".join(f"%s::{array}" for array in arrays)
        self._cursor.execute(
            f"UPDATE {table} SET {sets} FROM unnest({unnest}) AS v({', '.join(names)}) "
            f"WHERE {matches}",
            [list(column) for column in values],
        )


# The SQL array type of a column of update values, by the Python types in it.
_ARRAY_TYPES: dict[frozenset[type], str] = {
    frozenset({int}): "bigint[]",
    frozenset({str}): "text[]",
}


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresDatabase:
    """Projection tables in the event store's PostgreSQL schema, on a pool of their own.

    ``check`` (the event store guard's) is called before each transaction: it raises
    ``Unavailable`` at once while the database is known to be down, instead of the pool
    waiting out its timeout. A database that fails under a transaction is ``Unavailable``.
    """

    dialect = "postgresql"

    def __init__(
        self,
        conninfo: str,
        schema: str,
        pool_size: int = 4,
        check: Callable[[], None] | None = None,
        read_pool_size: int = 4,
        pool_timeout_s: float = 5.0,
    ) -> None:
        from psycopg_pool import ConnectionPool

        self.conninfo = conninfo
        self._pool_timeout_s = pool_timeout_s
        self.schema = schema
        self._check = check
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"options": f"-c search_path={schema}", "autocommit": False},
            open=True,
            timeout=pool_timeout_s,
        )
        self._read_pool_size = read_pool_size
        self._readers: ConnectionPool | None = None
        self._readers_lock = threading.Lock()

    def _reader_pool(self) -> Any:
        """Autocommit connections for :meth:`query`, opened on first use (the readers'
        pool is apart so that reads never queue behind the folds' transactions)."""
        readers = self._readers
        if readers is None:
            from psycopg_pool import ConnectionPool

            with self._readers_lock:
                readers = self._readers
                if readers is None:
                    readers = self._readers = ConnectionPool(
                        self.conninfo,
                        min_size=1,
                        max_size=self._read_pool_size,
                        kwargs={"options": f"-c search_path={self.schema}", "autocommit": True},
                        open=True,
                        timeout=self._pool_timeout_s,
                    )
        return readers

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        import psycopg
        import psycopg_pool

        if self._check is not None:
            self._check()
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                yield _PostgresTx(cursor)
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as e:
            raise Unavailable(f"the projection store is unavailable: {e}") from e

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        import psycopg
        import psycopg_pool

        if self._check is not None:
            self._check()
        readers = self._reader_pool()
        for attempt in (1, 2):
            try:
                with readers.connection() as conn:
                    return list(conn.execute(_pg(sql), params).fetchall())
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                # Connections are not pinged on checkout (a round trip on every read);
                # one that died with an earlier server is found here instead. The pool
                # drops it; the others idle beside it are checked before the one retry.
                if attempt == 1 and not readers.closed:
                    readers.check()
                    continue
                raise Unavailable(f"the projection store is unavailable: {e}") from e
            except psycopg_pool.PoolTimeout as e:
                raise Unavailable(f"the projection store is unavailable: {e}") from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        self.pool.close()
