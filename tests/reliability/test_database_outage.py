"""Database outage: the PostgreSQL cluster under a ``ledger serve`` stops mid-load
(``pg_ctl stop -m immediate``, as in a crash) and later starts again.

While it is down, calls fail UNAVAILABLE promptly (never INTERNAL, never long past the
client's deadline) and health reports NOT_SERVING. When it is back, the server
recovers by itself, and every command acknowledged before, during or after the outage
reads back; commands left unanswered are sent again with the same request_id and write
once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from ledger.v1 import access_pb2, audit_pb2, common_pb2, participant_pb2
from tests.reliability.support import (
    BUG_CODES,
    NOT_SERVING,
    SCALE,
    SCENARIO,
    SERVING,
    Identity,
    Market,
    MarketWriter,
    PostgresCluster,
    ServeProcess,
    Stubs,
    connect,
    health,
    make_identity,
    poll,
    projections_at_head,
    register_request,
    report,
    use_request,
)

OUTAGES = 2 * SCALE
WRITERS = 3
DEADLINE_S = 5.0
# How far past its deadline a call may end: scheduling, not waiting on the database.
DEADLINE_MARGIN_S = 1.0
ACKS_BETWEEN_OUTAGES = 10
# Calls each writer sees fail while the database is down, before it comes back.
FAILURES_PER_OUTAGE = 3
DETECT_TIMEOUT_S = 15.0
RECOVER_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 400


@dataclass
class Attempt:
    method: str
    started: float
    ended: float
    code: grpc.StatusCode
    writer: int


@dataclass
class Command:
    request: Message
    # The grant a use is recorded on; "" for a registration.
    grant: str = ""
    participant: str = ""
    attempts: int = 0


WRITES = frozenset({"RegisterParticipant", "RecordAccessUse"})


@dataclass
class Load:
    """Writers that send RegisterParticipant and RecordAccessUse (each on a grant of its
    own, so writers never race), read back what they registered, and make one read of
    the store or of the projections after each attempt, until stopped."""

    stubs: Stubs
    identity: Identity
    market: Market
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: list[Command] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    # Set when the test gives up: writers leave without sending what is pending.
    abandon: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def grants(self) -> list[str]:
        return self.market.grants

    def start(self) -> None:
        for n in range(WRITERS):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        """Stops new commands; each writer sends what is pending until it is answered."""
        self.stop.set()
        for thread in self.threads:
            thread.join(RECOVER_TIMEOUT_S * 2)
        assert not any(t.is_alive() for t in self.threads), "a writer did not finish"
        assert not self.errors, self.errors

    def close(self) -> None:
        """Stops the writers at once (for ``finally``)."""
        self.stop.set()
        self.abandon.set()
        for thread in self.threads:
            thread.join(DEADLINE_S * 2)

    def _run(self, writer: int) -> None:
        try:
            self._write(writer)
        except BaseException as error:
            with self.changed:
                self.errors.append(error)
            raise

    def reads(self, writer: int) -> list[tuple[str, Callable[..., Message], Message]]:
        s, m = self.stubs, self.market
        return [
            (
                "GetParticipant",
                s.participants.GetParticipant,
                participant_pb2.GetParticipantRequest(participant_id=m.provider),
            ),
            (
                "GetGrant",
                s.access.GetGrant,
                access_pb2.GetGrantRequest(grant_id=m.grants[writer]),
            ),
            (
                "ListParticipants",
                s.participants.ListParticipants,
                participant_pb2.ListParticipantsRequest(page_size=5),
            ),
            ("ListGrants", s.access.ListGrants, access_pb2.ListGrantsRequest(page_size=5)),
            (
                # The writer's own grant (see MarketWriter.market), read without a ping.
                "CheckAccess",
                s.access.CheckAccess,
                access_pb2.CheckAccessRequest(
                    grantee_id=m.buyers[writer % len(m.buyers)],
                    listing_id=m.listings[writer % len(m.listings)],
                    delivery_mode=common_pb2.DELIVERY_MODE_API,
                    scenario=SCENARIO,
                ),
            ),
            ("GetLedgerInfo", s.audit.GetLedgerInfo, audit_pb2.GetLedgerInfoRequest()),
            (
                # A short replay, read and encoded by the server's replay workers.
                "ReplayEvents",
                functools.partial(replayed, s.audit.ReplayEvents),
                audit_pb2.ReplayEventsRequest(to_position=50),
            ),
        ]

    def count(self, writer: int, since: float, ok: bool) -> int:
        with self.changed:
            return sum(
                1
                for a in self.attempts
                if a.writer == writer and a.started >= since and (a.code.name == "OK") == ok
            )

    def acknowledged_since(self, since: float) -> int:
        with self.changed:
            return sum(
                1
                for a in self.attempts
                if a.method in WRITES and a.started >= since and a.code.name == "OK"
            )

    def _call(
        self, writer: int, method: str, send: Callable[..., Message], request: Message
    ) -> Message | None:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        response: Message | None = None
        try:
            response = send(request, metadata=self.identity.admin, timeout=DEADLINE_S)
        except grpc.RpcError as error:
            code = error.code()
        with self.changed:
            self.attempts.append(Attempt(method, started, time.monotonic(), code, writer))
            self.changed.notify_all()
        return response

    def _write(self, writer: int) -> None:
        grant = self.grants[writer]
        reads = self.reads(writer)
        pending: Command | None = None
        serial = 0
        # Each call reads the next of the reads in turn, whether the database is up or not.
        turn = writer
        while (pending is not None or not self.stop.is_set()) and not self.abandon.is_set():
            if pending is None:
                serial += 1
                if serial % 2:
                    role = common_pb2.PARTICIPANT_ROLE_BUYER
                    pending = Command(register_request(f"Outage buyer {writer}", role))
                else:
                    pending = Command(use_request(grant), grant=grant)
            pending.attempts += 1
            assert pending.attempts <= MAX_ATTEMPTS, "a command never went through"
            if pending.grant:
                sent = self._call(
                    writer, "RecordAccessUse", self.stubs.access.RecordAccessUse, pending.request
                )
            else:
                sent = self._call(
                    writer,
                    "RegisterParticipant",
                    self.stubs.participants.RegisterParticipant,
                    pending.request,
                )
            self._call(writer, *reads[turn % len(reads)])
            turn += 1
            if sent is None:
                # Failed: the same request again after a pause, as a careful client does.
                self.abandon.wait(0.05)
                continue
            if not pending.grant:
                pending.participant = str(getattr(sent, "participant").id)  # noqa: B009
                self._call(
                    writer,
                    "GetParticipant",
                    self.stubs.participants.GetParticipant,
                    participant_pb2.GetParticipantRequest(participant_id=pending.participant),
                )
            with self.changed:
                self.acknowledged.append(pending)
            pending = None


def replayed(
    replay: Callable[..., Iterator[audit_pb2.ReplayEventsResponse]],
    request: audit_pb2.ReplayEventsRequest,
    **kw: Any,
) -> audit_pb2.ReplayEventsResponse:
    """The last message of a whole replay stream."""
    last = audit_pb2.ReplayEventsResponse()
    for last in replay(request, **kw):  # noqa: B007 - the last one is kept
        pass
    return last


def outage(cluster: PostgresCluster, server: ServeProcess, load: Load) -> dict[str, float]:
    """One outage under load; returns how long detection and recovery took."""
    since = time.monotonic()
    poll(
        lambda: load.acknowledged_since(since) >= ACKS_BETWEEN_OUTAGES,
        RECOVER_TIMEOUT_S,
        "writes go through before the outage",
    )
    down = time.monotonic()
    cluster.stop("immediate")
    poll(lambda: health(server.address) == NOT_SERVING, DETECT_TIMEOUT_S, "health is NOT_SERVING")
    detected = time.monotonic()
    poll(
        lambda: all(
            load.count(n, detected, ok=False) >= FAILURES_PER_OUTAGE for n in range(WRITERS)
        ),
        DETECT_TIMEOUT_S,
        "every writer has seen calls fail during the outage",
    )
    assert health(server.address) == NOT_SERVING, "health changed while the database is down"
    with load.changed:
        during = [a for a in load.attempts if a.started >= detected]
    wrong = [a for a in during if a.code is not grpc.StatusCode.UNAVAILABLE]
    assert not wrong, f"calls during the outage: {wrong[:5]}"
    up = time.monotonic()
    cluster.start()
    poll(lambda: health(server.address) == SERVING, RECOVER_TIMEOUT_S, "health is SERVING again")
    serving = time.monotonic()
    poll(
        lambda: load.acknowledged_since(up) > 0,
        RECOVER_TIMEOUT_S,
        "writes go through again",
    )
    writing = time.monotonic()
    assert server.alive(), server.log_tail()
    return {
        "detect_s": round(detected - down, 2),
        "serving_after_s": round(serving - up, 2),
        "writing_after_s": round(writing - up, 2),
    }


def check_acknowledged_read_back(stubs: Stubs, identity: Identity, load: Load) -> int:
    """Every acknowledged registration reads back; each grant counts exactly the uses
    acknowledged on it (none lost, none written twice). Returns the commands checked."""
    uses: Counter[str] = Counter()
    for command in load.acknowledged:
        if command.grant:
            uses[command.grant] += 1
            continue
        participant = stubs.participants.GetParticipant(
            participant_pb2.GetParticipantRequest(participant_id=command.participant),
            metadata=identity.admin,
            timeout=DEADLINE_S,
        ).participant
        assert participant.name == getattr(command.request, "name")  # noqa: B009
    for grant_id in load.grants:
        grant = stubs.access.GetGrant(
            access_pb2.GetGrantRequest(grant_id=grant_id),
            metadata=identity.admin,
            timeout=DEADLINE_S,
        ).grant
        assert grant.uses_recorded == uses[grant_id], f"grant {grant_id}: uses counted"
    return len(load.acknowledged)


def test_calls_fail_unavailable_while_postgres_is_down_and_the_server_recovers_by_itself(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    cluster = PostgresCluster()
    server: ServeProcess | None = None
    timings: list[dict[str, float]] = []
    try:
        cluster.start()
        identity = make_identity(tmp_path / "identity")
        server = ServeProcess(cluster.url, identity, tmp_path)
        server.start()
        with connect(server.address) as stubs:
            market = MarketWriter(stubs, identity.admin).market(identity, grants=WRITERS)
            load = Load(stubs, identity, market)
            try:
                load.start()
                for _ in range(OUTAGES):
                    timings.append(outage(cluster, server, load))
                load.finish()
            finally:
                load.close()
            checked = check_acknowledged_read_back(stubs, identity, load)
            assert health(server.address) == SERVING
            poll(
                lambda: projections_at_head(stubs, identity.admin),
                RECOVER_TIMEOUT_S,
                "the projections catch up after the outages",
            )
            for writer, grant_id in enumerate(market.grants):
                (request,) = [r for m, _, r in load.reads(writer) if m == "CheckAccess"]
                assert isinstance(request, access_pb2.CheckAccessRequest)
                answer = stubs.access.CheckAccess(
                    request, metadata=identity.admin, timeout=DEADLINE_S
                )
                assert answer.allowed, answer
                assert answer.grant_id == grant_id
            # The replay workers read again too: the whole log, in order.
            head = stubs.audit.GetLedgerInfo(
                audit_pb2.GetLedgerInfoRequest(), metadata=identity.admin, timeout=DEADLINE_S
            ).head_position
            positions = [
                event.position
                for response in stubs.audit.ReplayEvents(
                    audit_pb2.ReplayEventsRequest(to_position=head),
                    metadata=identity.admin,
                    timeout=RECOVER_TIMEOUT_S,
                )
                for event in response.events
            ]
            assert len(positions) >= len(load.acknowledged)
            assert positions == sorted(set(positions))
            assert positions[-1] <= head
        server.stop()
    finally:
        if server is not None:
            server.close()
        cluster.close()

    codes = Counter(a.code.name for a in load.attempts)
    bugs = [a for a in load.attempts if a.code in BUG_CODES]
    assert not bugs, bugs[:5]
    assert any(a.method == "ReplayEvents" and a.code.name == "OK" for a in load.attempts)
    odd = [a for a in load.attempts if a.code.name not in ("OK", "UNAVAILABLE")]
    assert not odd, (codes, odd[:5])
    slowest = max(a.ended - a.started for a in load.attempts)
    assert slowest <= DEADLINE_S + DEADLINE_MARGIN_S, f"a call took {slowest:.1f} s"
    report(
        pytestconfig,
        "database_outage",
        outages=OUTAGES,
        calls=len(load.attempts),
        codes=dict(codes),
        internal_errors=0,
        acknowledged_checked=checked,
        lost_writes=0,
        slowest_call_s=round(slowest, 2),
        timings=timings,
    )
