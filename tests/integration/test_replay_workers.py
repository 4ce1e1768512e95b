"""Replay read and encoded by worker processes (``ReplayWorkers``), on SQLite and
PostgreSQL: the messages are those the server's own process makes, byte for byte and
message for message; errors cross over as they were raised; a worker that dies fails
only its span and is replaced; closing the pool ends its processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from ledger.application.app import MarketLedger
from ledger.application.events import EVENT_TYPES, EventLog
from ledger.audit.replay import EventReplay, ReplayQuery, Span, kept_chain
from ledger.audit.replay_workers import ReplayWorkers, _Worker
from ledger.audit.stored import (
    APPLICATION_NAME,
    UndecodableEvent,
    audit_reader,
    store_address,
)
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.domain.errors import Unavailable
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from ledger.v1 import audit_pb2
from tests.integration.test_audit_store import some_trading
from tests.market import new_market

DIES_IN_A_SPAN = "import pickle, sys; [pickle.load(sys.stdin.buffer) for _ in 'ab']; sys.exit(3)"


@dataclass
class Replays:
    app: MarketLedger
    manager: ProjectionManager
    workers: ReplayWorkers

    def local(self, **kw: Any) -> EventReplay:
        """Replay in this process."""
        reader = audit_reader(self.app.recorder, self.manager.db)
        return EventReplay(reader, self.app.head_position, **kw)

    def pooled(self, **kw: Any) -> EventReplay:
        """Replay from the workers."""
        reader = audit_reader(self.app.recorder, self.manager.db)
        return EventReplay(reader, self.app.head_position, pool=self.workers, **kw)

    def span(self) -> Span:
        """The whole log, as one span."""
        with self.manager.db.transaction() as tx:
            chain = kept_chain(tx)
        assert chain is not None
        return Span(0, chain[1], chain[0])


def queries(app: MarketLedger) -> list[ReplayQuery]:
    events, _ = EventLog(app.recorder).read(0, 100_000)
    middle = events[len(events) // 2]
    return [
        ReplayQuery.create(max_events_per_message=5),
        ReplayQuery.create(max_events_per_message=1000),
        ReplayQuery.create(from_position=middle["position"], to_position=events[-2]["position"]),
        ReplayQuery.create(event_types=sorted(EVENT_TYPES), max_events_per_message=4),
        ReplayQuery.create(aggregate_ids=[middle["aggregate_id"]], event_types=[middle["type"]]),
    ]


class ReplayWorkersContract:
    processes = 2

    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def replays(self, database_url: str, clock: FakeClock) -> Iterator[Replays]:
        settings = Settings(database_url=database_url)
        app = build_application(settings, clock)
        some_trading(new_market(app, clock), rounds=3)
        manager = build_projections(settings, app)
        manager.catch_up()
        address = store_address(app.recorder, manager.db)
        assert address is not None
        workers = ReplayWorkers(address, self.processes)
        workers.start()
        try:
            yield Replays(app, manager, workers)
        finally:
            workers.close()
            manager.db.close()
            app.close()

    def damage(self, database_url: str, position: int, state: bytes) -> None:
        raise NotImplementedError

    def test_the_workers_send_the_messages_this_process_makes(self, replays: Replays) -> None:
        for read_batch in (7, 1000):
            local = replays.local(read_batch=read_batch)
            pooled = replays.pooled(read_batch=read_batch)
            for query in queries(replays.app):
                expected = list(local.messages(query))
                assert expected, query
                assert list(pooled.messages(query)) == expected, query

    def test_an_undecodable_event_is_raised_at_its_position_after_the_messages_before_it(
        self, replays: Replays, database_url: str
    ) -> None:
        events, _ = EventLog(replays.app.recorder).read(0, 100_000)
        position = events[20]["position"]
        self.damage(database_url, position, b"[]")
        received: list[int] = []

        def receive() -> None:
            for message in replays.pooled(read_batch=5).messages(ReplayQuery()):
                parsed = audit_pb2.ReplayEventsResponse.FromString(message)
                received.extend(event.position for event in parsed.events)

        with pytest.raises(UndecodableEvent) as raised:
            receive()
        assert raised.value.position == position
        # Everything before the span of five positions that holds the damaged event.
        before = (position - 1) // 5 * 5
        assert received == [e["position"] for e in events if e["position"] <= before]
        assert received

    def test_a_worker_that_dies_in_a_span_fails_it_unavailable_and_is_started_again(
        self, replays: Replays, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        address = store_address(replays.app.recorder, replays.manager.db)
        assert address is not None
        span = replays.span()
        expected = replays.workers.submit(ReplayQuery(), span).result(30)
        # A worker that takes the store and a span, and dies.
        monkeypatch.setattr(_Worker, "command", (sys.executable, "-c", DIES_IN_A_SPAN))
        workers = ReplayWorkers(address, 1)
        workers.start()
        try:
            with pytest.raises(Unavailable, match="replay worker stopped"):
                workers.submit(ReplayQuery(), span).result(30)
            monkeypatch.undo()
            assert workers.submit(ReplayQuery(), span).result(30) == expected
        finally:
            workers.close()

    def test_a_worker_that_died_between_spans_is_started_again_before_the_next(
        self, replays: Replays
    ) -> None:
        workers = replays.workers
        _wait(lambda: len(workers.pids()) == self.processes)
        expected = list(replays.local(read_batch=3).messages(ReplayQuery()))
        for pid in workers.pids():
            os.kill(pid, signal.SIGKILL)
        _wait(lambda: not workers.pids())
        assert list(replays.pooled(read_batch=3).messages(ReplayQuery())) == expected

    def test_a_stream_left_early_cancels_what_it_submitted(self, replays: Replays) -> None:
        pooled = replays.pooled(read_batch=2)
        stream = pooled.messages(ReplayQuery.create(max_events_per_message=1))
        assert isinstance(stream, Generator)
        assert next(stream)
        stream.close()
        # The workers are free for the next stream.
        expected = list(replays.local(read_batch=2).messages(ReplayQuery()))
        assert list(pooled.messages(ReplayQuery())) == expected

    def test_closing_the_pool_ends_its_processes_and_refuses_spans(self, replays: Replays) -> None:
        workers = replays.workers
        _wait(lambda: len(workers.pids()) == self.processes)
        processes = workers.pids()
        workers.close()
        assert workers.pids() == []
        for pid in processes:
            assert not _running(pid)
        with pytest.raises(Unavailable):
            workers.submit(ReplayQuery(), replays.span())


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestSQLiteReplayWorkers(ReplayWorkersContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"

    def damage(self, database_url: str, position: int, state: bytes) -> None:
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state, position))


@pytest.mark.postgres
class TestPostgresReplayWorkers(ReplayWorkersContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url

    def test_a_connection_the_database_dropped_is_opened_again(
        self, replays: Replays, postgres_url: str
    ) -> None:
        workers, span = replays.workers, replays.span()
        # Enough spans at once that every worker reads some, and so connects.
        submitted = [workers.submit(ReplayQuery(), span) for _ in range(4 * self.processes)]
        expected = [future.result(30) for future in submitted]
        names = [f"{APPLICATION_NAME} {pid}" for pid in workers.pids()]
        with psycopg.connect(postgres_url, autocommit=True) as db:
            connected = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,)
            ).fetchone()
            assert connected == (self.processes,)
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = ANY(%s)",
                (names,),
            )
        replayed = [workers.submit(ReplayQuery(), span) for _ in range(4 * self.processes)]
        assert [future.result(30) for future in replayed] == expected

    def test_a_database_that_cannot_be_reached_fails_a_span_unavailable(
        self, replays: Replays
    ) -> None:
        address = store_address(replays.app.recorder, replays.manager.db)
        assert address is not None
        nowhere = replace(address, location="host=127.0.0.1 port=1 connect_timeout=2")
        workers = ReplayWorkers(nowhere, 1)
        workers.start()
        try:
            with pytest.raises(Unavailable, match="cannot be read"):
                workers.submit(ReplayQuery(), replays.span()).result(30)
        finally:
            workers.close()

    def damage(self, database_url: str, position: int, state: bytes) -> None:
        url, _, schema = database_url.partition("?schema=")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                SQL("UPDATE {}.{} SET state = %s WHERE notification_id = %s").format(
                    Identifier(schema), Identifier("marketledger_events")
                ),
                (state, position),
            )
