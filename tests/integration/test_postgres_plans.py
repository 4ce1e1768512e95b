"""The statements on a command's or a catch-up's path keep their plans on a store that
has no statistics (just loaded; autovacuum off, as on this project's machines): the
planner's guesses there once sorted the whole log per batch, walked the whole event
index per batch of commands, and compiled sub-millisecond statements with its JIT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.application.app import Actor, MarketLedger
from ledger.application.events import EventLog
from ledger.application.queries import Queries
from ledger.application.recorders import array_literal
from ledger.bench.dataset import generate
from ledger.bootstrap import build_application, build_projections
from ledger.projections.access import GRANTS, STATES
from ledger.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(pg_schema_url: str) -> Settings:
    return Settings(database_url=pg_schema_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[MarketLedger]:
    app = build_application(settings)
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


def test_a_check_among_many_grants_reads_only_the_states_of_its_grants(
    app: MarketLedger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = build_projections(settings, app)
    try:
        manager.catch_up(300)
        live = manager.live("access")
        t = live.tables
        with manager.db.transaction() as tx:
            # Analysed as it caught up, although the store has no statistics.
            analysed = tx.fetchone(
                "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() "
                "AND tablename = ?",
                (t(STATES),),
            )
            assert analysed is not None
            assert analysed[0] > 0
            grant = tx.fetchone(f"SELECT grantee_id, listing_id, scenario FROM {t(GRANTS)}")
            assert grant is not None
            grantee_id, listing_id, scenario = grant
            # Then the tables grow some 500-fold, as a live generation's do where nothing
            # analyses them again (without statistics at all, the planner read every grant
            # state for each check from about 200,000 grants on).
            copies = "generate_series(1, 500) i"
            tx.execute(
                f"INSERT INTO {t(GRANTS)} SELECT grant_id || '-' || i, grantee_id || '-' || i, "
                "listing_id, exchange_id, trade_id, delivery_mode, scenario, valid_from, "
                "valid_until, usage_limit, uses, units_used, granted_position, granted_time "
                f"FROM {t(GRANTS)}, {copies}"
            )
            tx.execute(
                f"INSERT INTO {t(STATES)} SELECT grant_id || '-' || i, state, from_position, "
                f"until_position, from_time, until_time, rule, reason FROM {t(STATES)}, {copies}"
            )
        statements: list[tuple[str, list[Any]]] = []
        query = manager.db.query

        def recorded(sql: str, params: Any = ()) -> Any:
            statements.append((sql, list(params)))
            return query(sql, params)

        monkeypatch.setattr(manager.db, "query", recorded)
        Queries(app, manager).check_access(
            grantee_id, listing_id, "API", scenario, None, None, None, Actor("a", "AUDITOR")
        )
        (sql, params), *_ = statements
        found = query("EXPLAIN (FORMAT JSON) " + sql, params)[0][0]
        explained = json.loads(found) if isinstance(found, str) else found
        scans = {
            (node["Node Type"], node.get("Relation Name")) for node in nodes(explained[0]["Plan"])
        }
        assert ("Seq Scan", t(STATES)) not in scans, scans
    finally:
        manager.db.close()
