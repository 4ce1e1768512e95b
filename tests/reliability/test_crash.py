"""Crash: ``ledger serve`` is killed with SIGKILL at random moments under concurrent
write load, on a SQLite file and on a PostgreSQL schema, and started again.

Writers send RegisterParticipant, RecordSale, GrantAccess and RecordAccessUse with fresh
request_ids. A command whose response arrived is acknowledged; one whose call failed
(the server died under it, or it lost a race) is sent again, unchanged, after the
restart. Afterwards every acknowledged command is in the log, no command was applied
twice, and the projections the restarted server caught up equal a from-scratch rebuild.

The kill moments (how many acknowledgements after each start) and the writers' choices
are drawn from ``LEDGER_RELIABILITY_SEED``.
"""

from __future__ import annotations

import enum
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from ledger.application.events import EventLog
from ledger.bootstrap import build_application, build_projections
from ledger.projections.engine import LIVE
from ledger.settings import Settings
from ledger.v1 import access_pb2, common_pb2, participant_pb2, trade_pb2
from tests.reliability.support import (
    SCALE,
    Identity,
    Market,
    MarketWriter,
    Metadata,
    ServeProcess,
    Stubs,
    connect,
    grant_request,
    head_position,
    licence_request,
    make_identity,
    poll,
    projections_at_head,
    register_request,
    report,
    use_request,
)

KILLS = 3 * SCALE
WRITERS = 4
SEED = int(os.environ.get("LEDGER_RELIABILITY_SEED", "20261124"))
# Acknowledged commands between a (re)start and the next kill, drawn per kill.
ACKS_BEFORE_KILL = (20, 100)
PHASE_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0
# Attempts of one command before the suite gives up on it (a bug: it never goes through).
MAX_ATTEMPTS = 60
# Failures after which the same request is sent again: the server died, was not up yet,
# or the command lost a race with a concurrent write.
RESEND = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


class Kind(enum.Enum):
    REGISTER = "RegisterParticipant"
    SALE = "RecordSale"
    GRANT = "GrantAccess"
    USE = "RecordAccessUse"


@dataclass
class Command:
    kind: Kind
    request: Message
    # The grant a use is recorded on.
    target: str = ""
    attempts: int = 0
    # A kill came while it was sent and unanswered; the head of the log at the restart.
    interrupted: bool = False
    restart_head: int = 0
    # Once acknowledged: the resource the response named and the log position it gave.
    resource_id: str = ""
    position: int = 0

    @property
    def request_id(self) -> str:
        return str(getattr(self.request, "request_id"))  # noqa: B009 (every command has one)

    def send(self, stubs: Stubs, metadata: Metadata) -> None:
        calls: dict[Kind, Callable[..., Message]] = {
            Kind.REGISTER: stubs.participants.RegisterParticipant,
            Kind.SALE: stubs.trades.RecordSale,
            Kind.GRANT: stubs.access.GrantAccess,
            Kind.USE: stubs.access.RecordAccessUse,
        }
        self.attempts += 1
        response = calls[self.kind](self.request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        resource = {
            Kind.REGISTER: "participant",
            Kind.SALE: "trade",
            Kind.GRANT: "grant",
            Kind.USE: "grant",
        }[self.kind]
        self.resource_id = str(getattr(response, resource).id)
        self.position = int(getattr(response, "position"))  # noqa: B009


@dataclass
class Book:
    """What the writers saw, shared between them."""

    acknowledged: list[Command] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def acknowledge(self, command: Command) -> None:
        with self.changed:
            self.acknowledged.append(command)
            self.changed.notify_all()

    def failed(self, command: Command, code: grpc.StatusCode, details: str) -> None:
        with self.changed:
            self.failures[code.name] += 1
            if code not in RESEND:
                self.unexpected.append(f"{command.kind.value}: {code.name}: {details}")
            elif command.attempts >= MAX_ATTEMPTS:
                self.unexpected.append(f"{command.kind.value}: gave up after {code.name}")
            self.changed.notify_all()


class Writer:
    """Sends one command at a time; a command stays pending until it is acknowledged."""

    def __init__(self, number: int, market: Market, book: Book, seed: str) -> None:
        self.number = number
        self.market = market
        self.book = book
        self.rng = random.Random(seed)
        self.pending: Command | None = None

    def next_command(self) -> Command:
        m, rng = self.market, self.rng
        kind = rng.choice(list(Kind))
        if kind is Kind.REGISTER:
            role = common_pb2.PARTICIPANT_ROLE_BUYER
            return Command(kind, register_request(f"Writer {self.number} buyer", role))
        if kind is Kind.SALE:
            listing, buyer = rng.choice(m.listings), rng.choice(m.buyers)
            return Command(kind, licence_request(listing, m.provider, buyer))
        if kind is Kind.GRANT:
            return Command(kind, grant_request(rng.choice(m.trades)))
        grant = rng.choice(m.grants)
        return Command(kind, use_request(grant), target=grant)

    def run(self, stubs: Stubs, metadata: Metadata, stop: threading.Event) -> None:
        """Writes until ``stop``; with ``stop`` already set, only sends what is pending."""
        draining = stop.is_set()
        # Between attempts; a kill ends the wait at once, except while draining.
        backoff = threading.Event() if draining else stop
        while True:
            if self.pending is None:
                if stop.is_set():
                    return
                self.pending = self.next_command()
            command = self.pending
            try:
                command.send(stubs, metadata)
            except grpc.RpcError as error:
                self.book.failed(command, error.code(), error.details() or "")
                if error.code() not in RESEND or command.attempts >= MAX_ATTEMPTS:
                    self.pending = None
                elif stop.is_set() and not draining:
                    command.interrupted = True
                    return
                backoff.wait(0.05)
                continue
            self.book.acknowledge(command)
            self.pending = None


def run_phase(
    server: ServeProcess,
    identity: Identity,
    writers: list[Writer],
    book: Book,
    kill_after: int | None,
) -> None:
    """Runs the writers against the server; kills it once ``kill_after`` more commands
    are acknowledged, or (``None``) only lets them send what is pending."""
    stop = threading.Event()
    if kill_after is None:
        stop.set()
    with connect(server.address) as stubs:
        threads = [
            threading.Thread(target=w.run, args=(stubs, identity.admin, stop), daemon=True)
            for w in writers
        ]
        start = len(book.acknowledged)
        for thread in threads:
            thread.start()
        try:
            if kill_after is not None:
                with book.changed:
                    reached = book.changed.wait_for(
                        lambda: len(book.acknowledged) - start >= kill_after or book.unexpected,
                        timeout=PHASE_TIMEOUT_S,
                    )
                assert reached, f"only {len(book.acknowledged) - start} acknowledged in time"
                server.kill()
        finally:
            stop.set()
            for thread in threads:
                thread.join(PHASE_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads), "a writer did not finish in time"
    assert not book.unexpected, book.unexpected


def check_acknowledged_through_the_api(
    stubs: Stubs, identity: Identity, market: Market, book: Book
) -> None:
    """Each acknowledged command's resource reads back, and each grant counts exactly
    the uses acknowledged on it."""
    uses: Counter[str] = Counter()
    for command in book.acknowledged:
        if command.kind is Kind.REGISTER:
            stubs.participants.GetParticipant(
                participant_pb2.GetParticipantRequest(participant_id=command.resource_id),
                metadata=identity.admin,
                timeout=CALL_TIMEOUT_S,
            )
        elif command.kind is Kind.SALE:
            stubs.trades.GetTrade(
                trade_pb2.GetTradeRequest(trade_id=command.resource_id),
                metadata=identity.admin,
                timeout=CALL_TIMEOUT_S,
            )
        elif command.kind is Kind.GRANT:
            stubs.access.GetGrant(
                access_pb2.GetGrantRequest(grant_id=command.resource_id),
                metadata=identity.admin,
                timeout=CALL_TIMEOUT_S,
            )
        else:
            uses[command.target] += 1
    for grant_id in market.grants:
        grant = stubs.access.GetGrant(
            access_pb2.GetGrantRequest(grant_id=grant_id),
            metadata=identity.admin,
            timeout=CALL_TIMEOUT_S,
        ).grant
        assert grant.uses_recorded == uses[grant_id], f"grant {grant_id}: uses counted"


def check_the_log(settings: Settings, book: Book) -> int:
    """Scans the stored log: every acknowledged request_id wrote its events, and no
    request_id wrote the same event on the same aggregate twice. Returns the events read."""
    app = build_application(settings)
    try:
        log = EventLog(app.recorder)
        seen: Counter[tuple[str, str, str]] = Counter()
        position, head, count = 0, log.head(), 0
        while position < head:
            events, position = log.read(position, 1000)
            count += len(events)
            for event in events:
                seen[(event["request_id"], event["aggregate_id"], event["type"])] += 1
    finally:
        app.close()
    twice = [key for key, n in seen.items() if n > 1]
    assert not twice, f"events written twice by one request: {twice[:5]}"
    written = {request_id for request_id, _, _ in seen}
    lost = [c.request_id for c in book.acknowledged if c.request_id not in written]
    assert not lost, f"acknowledged but not in the log: {lost[:5]}"
    uses = Counter(r for r, _, kind in seen if kind == "AccessUsed")
    for command in book.acknowledged:
        if command.kind is Kind.USE:
            assert uses[command.request_id] == 1, f"{command.request_id}: uses recorded"
    return count


def check_projections_equal_a_rebuild(settings: Settings) -> list[str]:
    """The live generation of each projection (caught up by the killed and restarted
    server) has the digest of a generation rebuilt from scratch."""
    app = build_application(settings)
    manager = build_projections(settings, app)
    names = sorted(manager.projections)
    try:
        assert manager.run_once() == 0, "the server left events to apply"
        for name in names:
            live = manager.live(name, max_age_s=0)
            assert (live.state, live.position) == (LIVE, app.head_position()), name
            digest = manager.digest(name)
            manager.rebuild(name)
            manager.catch_up()
            assert manager.live(name, max_age_s=0).generation != live.generation
            assert manager.digest(name) == digest, f"{name} differs from a rebuild"
    finally:
        manager.leases.release()
        manager.db.close()
        app.close()
    return names


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def test_acknowledged_commands_survive_repeated_kills_and_retries_write_once(
    database_url: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    backend = database_url.split(":", 1)[0]
    rng = random.Random(f"{SEED}-{backend}")
    identity = make_identity(tmp_path / "identity")
    server = ServeProcess(database_url, identity, tmp_path)
    book = Book()
    try:
        server.start()
        with connect(server.address) as stubs:
            market = MarketWriter(stubs, identity.admin).market(identity, grants=6)
        writers = [Writer(n, market, book, f"{SEED}-{backend}-{n}") for n in range(WRITERS)]
        for _kill in range(KILLS):
            run_phase(server, identity, writers, book, rng.randint(*ACKS_BEFORE_KILL))
            server.start()
            with connect(server.address) as stubs:
                head = head_position(stubs, identity.admin)
            for writer in writers:
                if writer.pending is not None and writer.pending.interrupted:
                    writer.pending.restart_head = head
        run_phase(server, identity, writers, book, None)
        assert all(w.pending is None for w in writers)
        with connect(server.address) as stubs:
            check_acknowledged_through_the_api(stubs, identity, market, book)
            poll(
                lambda: projections_at_head(stubs, identity.admin),
                PHASE_TIMEOUT_S,
                "the restarted server's projections reach the head",
            )
        server.stop()
    finally:
        server.close()

    settings = Settings(database_url=database_url)
    events = check_the_log(settings, book)
    projections = check_projections_equal_a_rebuild(settings)
    resent = [c for c in book.acknowledged if c.interrupted]
    # A resent command answered with a position the log had reached before the restart
    # was applied before the kill: the response was lost, the retry wrote nothing.
    applied_before_kill = [c for c in resent if c.position <= c.restart_head]
    report(
        pytestconfig,
        "crash",
        backend=backend,
        seed=SEED,
        kills=KILLS,
        acknowledged_checked=len(book.acknowledged),
        resent_after_restart=len(resent),
        resent_and_already_applied=len(applied_before_kill),
        failed_calls=dict(book.failures),
        events_scanned=events,
        duplicates=0,
        lost_writes=0,
        projections_equal_rebuild=projections,
    )
