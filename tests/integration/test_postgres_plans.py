"""The statements on a command's or a catch-up's path keep their plans on a store that
has no statistics (just loaded; autovacuum off, as on this project's machines): the
planner's guesses there once sorted the whole log per batch, walked the whole event
index per batch of commands, and compiled sub-millisecond statements with its JIT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.application.app import MarketLedger
from ledger.application.events import EventLog
from ledger.application.recorders import array_literal
from ledger.bench.dataset import generate
from ledger.bootstrap import build_application
from ledger.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(pg_schema_url: str) -> Iterator[MarketLedger]:
    app = build_application(Settings(database_url=pg_schema_url))
    generate(app, 3000, seed=5)
    yield app
    app.close()


def plan(app: MarketLedger, statement: Any, params: tuple[Any, ...]) -> dict[str, Any]:
    with app.recorder.datastore.get_connection() as conn, conn.cursor() as curs:  # type: ignore[attr-defined]
        curs.execute(b"EXPLAIN (FORMAT JSON) " + statement.as_bytes(conn), params)
        row = curs.fetchone()
    found = row["QUERY PLAN"]
    return dict(json.loads(found)[0] if isinstance(found, str) else found[0])


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from nodes(child)


def test_the_store_under_test_has_no_statistics(app: MarketLedger) -> None:
    recorder: Any = app.recorder
    with recorder.datastore.get_connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stats WHERE schemaname = %s AND tablename = %s",
            (recorder.datastore.schema, recorder.events_table_name),
        ).fetchone()
    assert row["n"] == 0


def test_newer_events_of_a_batch_of_aggregates_are_read_by_probing_the_key(
    app: MarketLedger,
) -> None:
    recorder: Any = app.recorder
    with recorder.datastore.get_connection() as conn:
        rows = conn.execute(
            "SELECT originator_id, MIN(originator_version) AS v, COUNT(*) AS n FROM "
            f"{recorder.datastore.schema}.{recorder.events_table_name} "
            "GROUP BY originator_id ORDER BY originator_id LIMIT 300"
        ).fetchall()
    after = {row["originator_id"]: row["v"] for row in rows}

    found = plan(
        app,
        recorder.select_events_after_statement,
        (array_literal(after), array_literal(after.values())),
    )
    every = list(nodes(found["Plan"]))
    kinds = [node["Node Type"] for node in every]
    # Each id probes the key (an index scan per id inside a nested loop): no walk of the
    # whole index merged with the ids, no hash of the whole table, no scan of the table.
    assert "Nested Loop" in kinds, kinds
    assert not {"Merge Join", "Hash Join", "Seq Scan"} & set(kinds), kinds
    probes = [node for node in every if node.get("Index Name", "").endswith("_pkey")]
    assert probes, kinds

    # What it reads: every event after the first of each aggregate, in version order.
    events = recorder.select_events_after(after)
    assert {key: len(found) for key, found in events.items()} == {
        row["originator_id"]: row["n"] - 1 for row in rows if row["n"] > 1
    }
    for key, found in events.items():
        versions = [event.originator_version for event in found]
        assert versions == list(range(after[key] + 1, after[key] + 1 + len(found)))


def test_the_stores_connections_do_not_compile_statements(app: MarketLedger) -> None:
    recorder: Any = app.recorder
    with recorder.datastore.get_connection() as conn:
        assert conn.execute("SHOW jit").fetchone()["jit"] == "off"


def test_a_bounded_read_of_the_log_walks_the_index_without_sorting(app: MarketLedger) -> None:
    log = EventLog(app.recorder)
    head = log.head()
    rows, last = log.rows(100, 500, head)
    assert [row[0] for row in rows] == list(range(101, 601))
    assert last == 600
    rows, last = log.rows(100, 500, 150)
    assert [row[0] for row in rows] == list(range(101, 151))
    assert log.rows(150, 500, 150) == ([], 150)
