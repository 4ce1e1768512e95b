"""Throwaway event stores for benchmarks: a SQLite file or a PostgreSQL schema."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.application.app import MarketLedger
from ledger.bench.dataset import Market, generate
from ledger.bench.runner import DEFAULT_POSTGRES
from ledger.bootstrap import build_application
from ledger.settings import Settings


@contextmanager
def temporary_store(backend: str, postgres_url: str = DEFAULT_POSTGRES) -> Iterator[Settings]:
    """Settings of a new, empty store, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as directory:
            yield Settings(database_url=f"sqlite:///{Path(directory) / 'ledger.db'}")
        return
    import psycopg
    from psycopg.sql import SQL, Identifier

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        yield Settings(database_url=f"{postgres_url}?schema={schema}")
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def load(settings: Settings, events: int, seed: int, show_progress: bool = True) -> MarketLedger:
    """Opens the store and writes a generated market of ``events`` events into it."""
    return load_market(settings, events, seed, show_progress)[0]


def load_market(
    settings: Settings, events: int, seed: int, show_progress: bool = True
) -> tuple[MarketLedger, Market]:
    """Opens the store, writes a generated market of ``events`` events into it (with a
    progress bar on a terminal) and returns the application and the market."""
    app = build_application(settings)
    with Progress(
        TextColumn("[bold]loading market"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("load", total=events)
        market = generate(app, events, seed, progress=lambda n: progress.update(task, completed=n))
    return app, market
