"""The audit parts that live in the store, on SQLite and PostgreSQL: the direct reader of
the events table, signed checkpoints and the checkpointer, exports and the
verification of the store against its kept chain."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.api import convert
from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.application.events import EVENT_TYPES, CanonicalEvent, EventLog
from ledger.application.identity import ensure_ledger_id
from ledger.audit.chain import ChainBuilder, export_lines
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint
from ledger.audit.checkpoints import Checkpointer, CheckpointStore
from ledger.audit.database import StoreFaultKind, verify_store
from ledger.audit.export import export_from_store
from ledger.audit.replay import EventReplay, ReplayQuery
from ledger.audit.stored import AuditReader, StoredEventReader, audit_reader
from ledger.audit.verify import verify_export
from ledger.bootstrap import build_application, build_projections
from ledger.clock import FakeClock
from ledger.projections.chain import AuditChain
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from ledger.v1 import audit_pb2
from tests.market import Market, new_market, rid


@dataclass
class Store:
    market: Market
    manager: ProjectionManager
    reader: AuditReader
    checkpoints: CheckpointStore

    @property
    def app(self) -> MarketLedger:
        return self.market.app


def some_trading(market: Market, rounds: int = 2) -> None:
    for _ in range(rounds):
        _, trade_id, grant_id = market.granted()
        market.run(
            c.RecordAccessUse(
                request_id=rid(),
                grant_id=grant_id,
                delivery_mode="API",
                scenario="credit-risk-scoring",
                units=2,
            )
        )
        market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="PAY-9"))


class AuditStoreContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def store(self, database_url: str, clock: FakeClock) -> Iterator[Store]:
        settings = Settings(database_url=database_url)
        app = build_application(settings, clock)
        market = new_market(app, clock)
        some_trading(market)
        manager = build_projections(settings, app)
        manager.catch_up()
        yield Store(
            market, manager, audit_reader(app.recorder, manager.db), CheckpointStore(manager.db)
        )
        manager.db.close()
        app.close()

    def folded(self, store: Store) -> list[tuple[CanonicalEvent, str]]:
        events, _ = EventLog(store.app.recorder).read(0, 100_000)
        builder = ChainBuilder()
        return [(event, builder.append(event)) for event in events]

    # --- the reader -------------------------------------------------------------------

    def test_the_direct_reader_reads_what_the_event_log_reads(self, store: Store) -> None:
        assert isinstance(store.reader._log, StoredEventReader)
        log = EventLog(store.app.recorder)
        expected, _ = log.read(0, 100_000)
        assert store.reader.read(0, 100_000)[0] == expected
        # In small batches and up to bounds, as replay reads it.
        after, got = 0, []
        stop = expected[-3]["position"]
        while True:
            events, last = store.reader.read(after, 4, stop)
            got += events
            if last <= after:
                break
            after = last
        assert got == [e for e in expected if e["position"] <= stop]
        assert after == stop

    def test_a_replay_from_the_store_is_the_log_with_the_chain_of_a_fold(
        self, store: Store
    ) -> None:
        replay = EventReplay(store.reader, store.app.head_position)
        replayed = [pair for batch in replay.batches(ReplayQuery()) for pair in batch]
        assert replayed == self.folded(store)

    def test_replayed_messages_are_the_log_with_the_chain_of_a_fold(self, store: Store) -> None:
        replay = EventReplay(store.reader, store.app.head_position, read_batch=7)
        expected = self.folded(store)
        for query in (
            ReplayQuery.create(max_events_per_message=5),
            ReplayQuery.create(event_types=sorted(EVENT_TYPES), max_events_per_message=5),
        ):
            received = [
                convert.event_from_pb(event)
                for message in replay.messages(query)
                for event in audit_pb2.ReplayEventsResponse.FromString(message).events
            ]
            assert received == expected

    # --- checkpoints ------------------------------------------------------------------

    def test_checkpoints_are_kept_by_position_and_a_position_is_signed_once(
        self, store: Store
    ) -> None:
        signer = Ed25519Signer.generate()
        now = store.market.clock.now()
        assert store.checkpoints.latest() is None
        first = sign_checkpoint(signer, "ledger-1", 5, "ab" * 32, now)
        second = sign_checkpoint(signer, "ledger-1", 9, "cd" * 32, now)
        assert store.checkpoints.add(first)
        assert store.checkpoints.add(second)
        assert not store.checkpoints.add(sign_checkpoint(signer, "x", 9, "ef" * 32, now))
        assert store.checkpoints.latest() == second
        assert store.checkpoints.latest(8) == first
        assert store.checkpoints.latest(4) is None
        assert store.checkpoints.all() == [first, second]

    def test_the_checkpointer_signs_every_n_events_and_after_t_seconds(self, store: Store) -> None:
        signer = Ed25519Signer.generate()
        ledger_id = ensure_ledger_id(store.app)
        checkpointer = Checkpointer(
            store.checkpoints,
            store.manager.db,
            signer,
            lambda: ledger_id,
            store.market.clock,
            every_events=5,
            every_seconds=3600,
        )
        signed = checkpointer.run_once()
        assert signed is not None, "more than 5 events were hashed since no checkpoint"
        assert signed["position"] == self.folded(store)[-1][0]["position"]
        assert signed["chain_hash"] == self.folded(store)[-1][1]
        assert checkpointer.run_once() is None, "the head has not moved"

        store.market.participant("one more", "BUYER")
        store.manager.catch_up()
        assert checkpointer.run_once() is None, "1 event is fewer than 5 and within the hour"
        assert checkpointer.run_once(force=True) is not None

        some_trading(store.market, rounds=1)
        store.manager.catch_up()
        latest = checkpointer.run_once()
        assert latest is not None
        assert latest == store.checkpoints.latest()
        assert latest["ledger_id"] == ledger_id
        assert latest["signed_at"] == "2026-11-24T08:" + latest["signed_at"][14:]

    def test_the_checkpointer_signs_after_t_seconds_and_once_more_when_stopped(
        self, store: Store
    ) -> None:
        checkpointer = Checkpointer(
            store.checkpoints,
            store.manager.db,
            Ed25519Signer.generate(),
            lambda: "ledger-1",
            store.market.clock,
            every_events=10_000,
            every_seconds=0.05,
            poll_s=0.01,
        )
        checkpointer.start()
        try:
            _eventually(lambda: store.checkpoints.latest() is not None)
            store.market.participant("late", "BUYER")
            store.manager.catch_up()
        finally:
            checkpointer.stop()
        latest = store.checkpoints.latest()
        assert latest is not None
        assert latest["position"] == self.folded(store)[-1][0]["position"]

    def test_checkpoints_survive_a_rebuild_of_the_chain(self, store: Store) -> None:
        signer = Ed25519Signer.generate()
        ledger_id = ensure_ledger_id(store.app)
        checkpointer = Checkpointer(
            store.checkpoints,
            store.manager.db,
            signer,
            lambda: ledger_id,
            store.market.clock,
            1,
            3600,
        )
        signed = checkpointer.run_once()
        assert signed is not None
        store.manager.rebuild(AuditChain.name)
        store.manager.retire_grace_s = 0.0
        store.manager.catch_up()
        live = store.manager.live(AuditChain.name, max_age_s=0)
        assert live.generation > 1
        assert store.checkpoints.all() == [signed]
        result = verify_store(
            store.reader, store.app.head_position(), [signed], ledger_id, signer.public_key_hex
        )
        assert result.ok, result.describe()
        assert result.checkpoints == 1

    # --- exports and verification -----------------------------------------------------

    def test_an_export_from_the_store_verifies_against_a_signed_checkpoint(
        self, store: Store, tmp_path: Path
    ) -> None:
        signer = Ed25519Signer.generate()
        head, head_hash = self.folded(store)[-1][0]["position"], self.folded(store)[-1][1]
        checkpoint = sign_checkpoint(signer, "ledger-1", head, head_hash, store.market.clock.now())
        path = tmp_path / "export.jsonl"
        with path.open("wb") as out:
            summary = export_from_store(store.reader, ReplayQuery(), out)
        assert summary.events == len(self.folded(store))
        expected = b"".join(export_lines(event for event, _ in self.folded(store)))
        assert path.read_bytes() == expected
        result = verify_export(path, checkpoint, signer.public_key_hex)
        assert result.ok, result.describe()
        assert result.checkpoint_position == head

    def test_an_export_from_the_store_stops_where_the_kept_chain_stops(self, store: Store) -> None:
        kept = self.folded(store)
        store.market.participant("not hashed yet", "BUYER")
        out = io.BytesIO()
        summary = export_from_store(store.reader, ReplayQuery(), out)
        assert summary.events == len(kept)
        assert summary.last_position == kept[-1][0]["position"]

    def test_a_clean_store_verifies_with_its_checkpoints(self, store: Store) -> None:
        signer = Ed25519Signer.generate()
        ledger_id = ensure_ledger_id(store.app)
        folded = self.folded(store)
        now = store.market.clock.now()
        checkpoints = [
            sign_checkpoint(signer, ledger_id, event["position"], chain_hash, now)
            for event, chain_hash in folded[5::10]
        ]
        result = verify_store(
            store.reader, store.app.head_position(), checkpoints, ledger_id, signer.public_key_hex
        )
        assert result.ok, result.describe()
        assert result.events == len(folded)
        assert result.last_position == folded[-1][0]["position"]
        assert result.checkpoints == len(checkpoints)
        assert result.describe().startswith(f"OK: {len(folded)} events")

    def test_a_checkpoint_of_another_ledger_or_another_hash_fails(self, store: Store) -> None:
        signer = Ed25519Signer.generate()
        ledger_id = ensure_ledger_id(store.app)
        event, chain_hash = self.folded(store)[7]
        now = store.market.clock.now()
        other_ledger = sign_checkpoint(signer, "another", event["position"], chain_hash, now)
        other_hash = sign_checkpoint(signer, ledger_id, event["position"], "00" * 32, now)
        head = store.app.head_position()
        for checkpoint in (other_ledger, other_hash):
            result = verify_store(
                store.reader, head, [checkpoint], ledger_id, signer.public_key_hex
            )
            assert result.fault is None
            assert result.checkpoint_fault is not None
            assert result.checkpoint_fault.kind is StoreFaultKind.CHECKPOINT
            assert result.checkpoint_fault.position == event["position"]

    def test_events_the_chain_has_not_hashed_yet_are_counted_not_compared(
        self, store: Store
    ) -> None:
        store.market.clock.advance(timedelta(seconds=1))
        store.market.participant("fresh", "BUYER")
        result = verify_store(store.reader, store.app.head_position(), [], "x", None)
        assert result.ok
        assert result.head > result.kept_position
        assert "not hashed yet" in result.describe()


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestSQLiteAuditStore(AuditStoreContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"


@pytest.mark.postgres
class TestPostgresAuditStore(AuditStoreContract):
    @pytest.fixture
    def database_url(self, pg_schema_url: str) -> str:
        return pg_schema_url
