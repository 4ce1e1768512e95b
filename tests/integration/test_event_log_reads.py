"""``EventLog`` reads a SQLite file's or PostgreSQL's table directly; the events it returns
and the positions it reports equal the reference: the library's ``select_notifications``
and ``canonical_event``, byte for byte in canonical JSON, for a generated market with a
history of commands (and so markers) on top."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent, EventLog, canonical_event
from ledger.audit.canonical import canonical_bytes
from ledger.bench.dataset import generate
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.settings import Settings
from tests.unit.test_projection_ownership import new_history, random_steps


def reference(
    app: MarketLedger, after: int, limit: int, stop: int | None = None
) -> tuple[list[CanonicalEvent], int]:
    notifications = app.recorder.select_notifications(after + 1, limit, stop=stop)
    events = [e for e in map(canonical_event, notifications) if e is not None]
    return events, notifications[-1].id if notifications else after


class EventLogContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def app(self, database_url: str, clock: FakeClock) -> Iterator[MarketLedger]:
        app = build_application(Settings(database_url=database_url), clock)
        generate(app, 2500, seed=11)
        history = new_history(app, clock)
        for step in random_steps(random.Random(11), 50):
            history.step(*step)
        yield app
        app.close()

    def test_reads_equal_the_reference_byte_for_byte_and_report_the_same_positions(
        self, app: MarketLedger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        head = EventLog(app.recorder).head()
        rng = random.Random(3)
        cases: list[tuple[int, int, int | None]] = [(0, head + 5, None), (head, 10, None)]
        cases += [(rng.randrange(head), rng.choice((1, 7, 500)), None) for _ in range(20)]
        cases += [
            (after, rng.choice((1, 50, 5000)), after + rng.randrange(0, 300))
            for after in (rng.randrange(head) for _ in range(20))
        ]
        expected = [reference(app, *case) for case in cases]
        assert sum(len(events) for events, _ in expected) < sum(
            last - after for (after, _, _), (_, last) in zip(cases, expected, strict=True)
        ), "markers are read and left out"

        def not_used(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the log is read through the library")

        monkeypatch.setattr(app.recorder, "select_notifications", not_used)
        log = EventLog(app.recorder)
        for case, (events, last) in zip(cases, expected, strict=True):
            found, found_last = log.read(*case)
            assert found_last == last, case
            assert found == events, case
            assert [canonical_bytes(e) for e in found] == [canonical_bytes(e) for e in events]


class TestSQLiteFileEventLog(EventLogContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"


@pytest.mark.postgres
class TestPostgresEventLog(EventLogContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url
