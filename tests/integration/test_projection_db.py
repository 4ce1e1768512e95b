"""The projection database's bulk writes, the same on SQLite and PostgreSQL: ``insert_rows``
(``COPY`` on PostgreSQL) keeps every value as given, ``update_rows`` sets or adds by key,
limited by a condition, and both roll back with their transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.bootstrap import postgres_conninfo, store_env
from ledger.projections.db import Database, PostgresDatabase, SqliteDatabase
from ledger.settings import Settings

TABLE = "p_bulk_g1_rows"
COLUMNS = ("id", "n", "note", "until")
AWKWARD = [
    "",
    "tab\there",
    "new\nline\r\n",
    "back\\slash \\N \\.",
    "quote ' \" ,;",
    "数据 é 😀 \u2028",
    "\\",
    "NULL",
]


class BulkContract:
    @pytest.fixture
    def db(self) -> Iterator[Database]:
        raise NotImplementedError

    @pytest.fixture
    def table(self, db: Database) -> str:
        with db.transaction() as tx:
            tx.execute(
                f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, n BIGINT NOT NULL, "
                "note TEXT, until BIGINT)"
            )
        return TABLE

    def rows(self, db: Database, table: str) -> list[tuple[object, ...]]:
        with db.transaction() as tx:
            return [tuple(r) for r in tx.fetchall(f"SELECT * FROM {table} ORDER BY id")]

    def test_inserted_rows_read_back_exactly_as_given(self, db: Database, table: str) -> None:
        given: list[tuple[object, ...]] = [
            (f"r{i:02d}", i * 2**40 - 7, note, None) for i, note in enumerate(AWKWARD)
        ]
        given += [("r99", -1, None, 5)]
        with db.transaction() as tx:
            tx.insert_rows(table, COLUMNS, given)
            tx.insert_rows(table, COLUMNS, [])
        assert self.rows(db, table) == given

    def test_inserts_roll_back_with_their_transaction_and_a_duplicate_key_fails(
        self, db: Database, table: str
    ) -> None:
        with db.transaction() as tx:
            tx.insert_rows(table, COLUMNS, [("a", 1, "x", None)])

        def insert_then_fail() -> None:
            with db.transaction() as tx:
                tx.insert_rows(table, COLUMNS, [("b", 2, "y", None)])
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            insert_then_fail()
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"), db.transaction() as tx:
            tx.insert_rows(table, COLUMNS, [("c", 3, "z", None), ("a", 4, "w", None)])
        assert self.rows(db, table) == [("a", 1, "x", None)]

    def test_updates_set_or_add_by_key_where_the_condition_holds(
        self, db: Database, table: str
    ) -> None:
        with db.transaction() as tx:
            tx.insert_rows(
                table,
                COLUMNS,
                [("a", 1, "x", None), ("b", 2, "y", 9), ("c", 3, "z", None), ("d", 4, "w", None)],
            )
            tx.update_rows(table, ("id",), ("note", "until"), [("a", "A", 10), ("b", "B", 11)])
            tx.update_rows(table, ("id",), ("n",), [("c", 2**40), ("d", -4)], add=True)
            # Only rows still open: the condition names the table's own columns.
            tx.update_rows(
                table,
                ("id",),
                ("until", "n"),
                [("a", 20, 0), ("c", 21, 0), ("nonesuch", 1, 1)],
                where="until IS NULL",
            )
            tx.update_rows(table, ("id",), ("note",), [])
        assert self.rows(db, table) == [
            ("a", 1, "A", 10),
            ("b", 2, "B", 11),
            ("c", 0, "z", 21),
            ("d", 0, "w", None),
        ]

    def test_updates_to_null_and_by_several_keys(self, db: Database, table: str) -> None:
        with db.transaction() as tx:
            tx.insert_rows(table, COLUMNS, [("a", 1, "x", 5), ("b", 2, "y", 6), ("c", 3, "z", 7)])
            tx.update_rows(table, ("id", "n"), ("note", "until"), [("a", 1, None, None)])
            tx.update_rows(table, ("id", "n"), ("note",), [("b", 3, "not this one")])
            tx.update_rows(table, ("id",), ("note", "until"), [("b", None, 60), ("c", "Z", None)])
        assert self.rows(db, table) == [
            ("a", 1, None, None),
            ("b", 2, None, 60),
            ("c", 3, "Z", None),
        ]

    def test_a_key_in_two_rows_of_one_update_is_refused(self, db: Database, table: str) -> None:
        with pytest.raises(ValueError, match="appears in two rows"), db.transaction() as tx:
            tx.update_rows(table, ("id",), ("n",), [("a", 1), ("a", 2)])

    def test_many_rows_in_one_call(self, db: Database, table: str) -> None:
        count = 40_000  # more values than one PostgreSQL statement may carry
        with db.transaction() as tx:
            tx.insert_rows(table, COLUMNS, [(f"{i:05d}", i, "x", None) for i in range(count)])
            tx.update_rows(
                table, ("id",), ("n",), [(f"{i:05d}", 1) for i in range(count)], add=True
            )
        rows = self.rows(db, table)
        assert [r[1] for r in rows] == [i + 1 for i in range(count)]


class TestSQLiteBulk(BulkContract):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[Database]:
        database = SqliteDatabase(str(tmp_path / "bulk.db"))
        yield database
        database.close()


@pytest.mark.postgres
class TestPostgresBulk(BulkContract):
    @pytest.fixture
    def db(self, pg_schema_url: str) -> Iterator[Database]:
        env = store_env(Settings(database_url=pg_schema_url))
        database = PostgresDatabase(postgres_conninfo(env, 2), env["POSTGRES_SCHEMA"])
        with database.transaction() as tx:
            tx.execute(f"CREATE SCHEMA IF NOT EXISTS {env['POSTGRES_SCHEMA']}")
        yield database
        database.close()
