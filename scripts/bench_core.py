"""Measures one command's throughput next to a bare ``Application.save()`` of one new
aggregate per save, on the same event store, in the same run.

    .venv/bin/python scripts/bench_core.py --backend sqlite|postgresql [--count N]

Prints one JSON object per backend: commands/s, events/s (business events, and all
stored events including the idempotency marker) and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from psycopg.sql import SQL, Identifier

from ledger.bootstrap import build_application, ensure_schema, store_env
from ledger.clock import FakeClock
from ledger.settings import Settings
from tests.market import new_market


class Tick(Aggregate):
    """The baseline's aggregate: created with one small event."""

    def __init__(self, value: int) -> None:
        self.value = value


def measure(database_url: str, count: int) -> dict[str, object]:
    settings = Settings(database_url=database_url)
    # Baseline: the library alone, one new aggregate per save, same store.
    env = store_env(settings)
    ensure_schema(env)
    baseline = Application[uuid.UUID](env={**env, "CREATE_TABLE": "y"})
    started = time.perf_counter()
    for i in range(count):
        baseline.save(Tick(i))
    baseline_rate = count / (time.perf_counter() - started)
    baseline.close()

    clock = FakeClock(datetime.now(tz=UTC) - timedelta(days=1))
    app = build_application(settings, clock)
    market = new_market(app, clock)
    listing_id = market.listed()
    commands = [market.sale_command(listing_id) for _ in range(count)]
    head = app.head_position()
    started = time.perf_counter()
    for command in commands:
        app.execute(command, market.actor)
    elapsed = time.perf_counter() - started
    stored = app.head_position() - head
    app.close()
    return {
        "scenario": "command",
        "command": "RecordSale",
        "backend": "sqlite" if database_url.startswith("sqlite") else "postgresql",
        "commands": count,
        "commands_per_s": round(count / elapsed, 1),
        "business_events_per_s": round(2 * count / elapsed, 1),
        "stored_events_per_s": round(stored / elapsed, 1),
        "baseline": "Application.save() of one new aggregate per save",
        "baseline_events_per_s": round(baseline_rate, 1),
        "ratio_stored_events": round(stored / elapsed / baseline_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(f"sqlite:///{tmp}/bench.db", args.count)))
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        print(json.dumps(measure(f"{args.postgres_url}?schema={schema}", args.count)))
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


if __name__ == "__main__":
    main()
