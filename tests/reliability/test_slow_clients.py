"""Replay streams whose clients stop reading cost the server a bounded amount of memory,
and do not stop it from serving everyone else.

A server process follows the log for several stalled clients (each read one message,
then nothing) while 20,000 events are written; a healthy follower keeps receiving them,
a unary call is answered within its deadline, the server's resident memory stays within
a bound, and a replay beyond the server's limit is refused at once instead of queued.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eventsourcing.persistence import StoredEvent

from ledger.api.principals import Role
from ledger.audit.replay import MAX_REPLAY_STREAMS
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.settings import Settings
from ledger.v1 import audit_pb2, audit_pb2_grpc
from tests.e2e.conftest import (
    Credentials,
    LedgerProcess,
    ServerFiles,
    make_credentials,
    make_signing_key,
    start_ledger,
)
from tests.market import new_market

WRITTEN = 20_000
MAX_GROWTH_BYTES = 50 * 1024 * 1024
DEADLINE_S = 60.0


def resident_bytes(pid: int) -> int:
    """The VmRSS of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def append_participants(database: Path, count: int, batch: int = 1000) -> None:
    """Writes ``count`` new participants straight into the store (another process of the
    same store), as copies of one registration under fresh ids."""
    app = build_application(Settings(database_url=f"sqlite:///{database}"))
    try:
        template = next(
            n
            for n in app.recorder.select_notifications(1, 10_000)
            if n.topic == "ledger/ParticipantRegistered"
        )
        for start in range(0, count, batch):
            app.recorder.insert_events(
                [
                    StoredEvent(uuid.uuid4(), 1, template.topic, template.state)
                    for _ in range(min(batch, count - start))
                ]
            )
    finally:
        app.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LedgerProcess, Credentials, Path]]:
    credentials = make_credentials(tmp_path / "principals")
    database = tmp_path / "ledger.db"
    clock = FakeClock()
    app = build_application(Settings(database_url=f"sqlite:///{database}"), clock)
    new_market(app, clock).granted()
    app.close()
    files = ServerFiles(database, credentials.dev.principals_file, make_signing_key(tmp_path / "k"))
    process = start_ledger(files, tmp_path)
    try:
        yield process, credentials, database
    finally:
        assert process.stop() == 0, process.log_file.read_text()


def test_stalled_followers_cost_bounded_memory_and_others_are_still_served(
    server: tuple[LedgerProcess, Credentials, Path],
) -> None:
    process, credentials, database = server
    auditor = credentials.of(Role.AUDITOR)
    follow = audit_pb2.ReplayEventsRequest(follow=True, max_events_per_message=50)
    channels = [grpc.insecure_channel(process.address) for _ in range(MAX_REPLAY_STREAMS)]
    try:
        stubs = [audit_pb2_grpc.AuditServiceStub(channel) for channel in channels]
        # Every stream but one stalls after its first message.
        stalled = [stub.ReplayEvents(follow, metadata=auditor) for stub in stubs[1:]]
        for call in stalled:
            assert next(call).events
        healthy = Follower(stubs[0].ReplayEvents(follow, metadata=auditor))
        healthy.start()
        with grpc.insecure_channel(process.address) as spare:
            extra = audit_pb2_grpc.AuditServiceStub(spare).ReplayEvents(follow, metadata=auditor)
            with pytest.raises(grpc.RpcError) as refused:
                next(extra)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

        before = resident_bytes(process.process.pid)
        append_participants(database, WRITTEN)
        head = build_application(Settings(database_url=f"sqlite:///{database}")).head_position()

        # The healthy follower receives everything written, stalled ones notwithstanding.
        deadline = time.monotonic() + DEADLINE_S
        peak = before
        while healthy.last < head:
            assert time.monotonic() < deadline, f"the follower is at {healthy.last} of {head}"
            assert healthy.error is None, healthy.error
            peak = max(peak, resident_bytes(process.process.pid))
            time.sleep(0.1)
        assert healthy.count >= WRITTEN
        peak = max(peak, resident_bytes(process.process.pid))
        assert peak - before < MAX_GROWTH_BYTES, f"grew {(peak - before) / 2**20:.1f} MiB"

        # Unary calls are answered within their deadline meanwhile.
        info = stubs[0].GetLedgerInfo(
            audit_pb2.GetLedgerInfoRequest(), metadata=auditor, timeout=2.0
        )
        assert info.head_position >= head

        # When the stalled clients leave, their streams end and free their places.
        for call in stalled:
            call.cancel()
        healthy.call.cancel()
        healthy.join(timeout=10)
        _eventually_replays(stubs[1], auditor)
    finally:
        for channel in channels:
            channel.close()


class Follower(threading.Thread):
    """Reads a following stream as fast as it comes."""

    def __init__(self, call: Iterator[audit_pb2.ReplayEventsResponse]) -> None:
        super().__init__(daemon=True)
        self.call: grpc.Call = call
        self._responses = call
        self.last = 0
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for response in self._responses:
                if response.events:
                    self.count += len(response.events)
                    self.last = response.events[-1].position
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                self.error = error


def _eventually_replays(
    stub: audit_pb2_grpc.AuditServiceStub, auditor: tuple[tuple[str, str], ...]
) -> None:
    """Cancelled streams give their places back (their generators are closed)."""
    deadline = time.monotonic() + 10
    while True:
        calls = [
            stub.ReplayEvents(
                audit_pb2.ReplayEventsRequest(to_position=5), metadata=auditor, timeout=10
            )
            for _ in range(MAX_REPLAY_STREAMS)
        ]
        try:
            if all([e.position for r in call for e in r.events] for call in calls):
                return
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        assert time.monotonic() < deadline, "cancelled replays kept their places"
        time.sleep(0.1)
