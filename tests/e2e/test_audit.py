"""The auditor's tools against a real server: checkpoints, exports and public key
written by ``ledger audit``, verified offline; replays that filter, batch and follow."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from ledger.api.principals import Role
from ledger.v1 import audit_pb2, common_pb2
from tests.e2e import conftest
from tests.e2e.conftest import (
    ROOT,
    Credentials,
    LedgerProcess,
    Parties,
    ServerFiles,
    Stubs,
    certify,
    make_signing_key,
    register,
    start_ledger,
)
from tests.e2e.test_server import detail, failure, granted

CLI_TIMEOUT_S = 60


@dataclass(frozen=True)
class AuditServer:
    process: LedgerProcess
    files: ServerFiles
    stubs: Stubs
    parties: Parties
    credentials: Credentials
    work: Path

    @property
    def auditor(self) -> tuple[tuple[str, str], ...]:
        return self.credentials.of(Role.AUDITOR)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs ``ledger audit ARGS`` as an auditor would, against this server."""
        env = conftest.server_env(self.work)
        env["LEDGER_GRPC_ADDRESS"] = self.process.address
        env["LEDGER_TOKEN"] = self.credentials.dev.token_for(Role.AUDITOR)
        return subprocess.run(
            [sys.executable, "-m", "ledger", "audit", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )


@pytest.fixture(scope="module")
def audit_server(
    credentials: Credentials, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuditServer]:
    """A server of its own, signing a checkpoint a fifth of a second after each write,
    with a small market written through the API."""
    work = tmp_path_factory.mktemp("audit")
    files = ServerFiles(
        database=work / "ledger.db",
        principals=credentials.dev.principals_file,
        signing_key=make_signing_key(work / "signing-key.pem"),
    )
    plain_env = conftest.server_env

    def checkpointing_env(var_dir: Path) -> dict[str, str]:
        return {**plain_env(var_dir), "LEDGER_CHECKPOINT_EVERY_SECONDS": "0.2"}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conftest, "server_env", checkpointing_env)
        process = start_ledger(files, work)
    try:
        with grpc.insecure_channel(process.address) as channel:
            stubs = Stubs.on(channel)
            parties = market_parties(stubs, credentials)
            for _ in range(3):
                granted(stubs, credentials, parties)
            yield AuditServer(process, files, stubs, parties, credentials, work)
    finally:
        assert process.stop() == 0, process.log_file.read_text()


def market_parties(stubs: Stubs, credentials: Credentials) -> Parties:
    exchange = register(
        stubs,
        credentials,
        "Shanghai Data Exchange",
        common_pb2.PARTICIPANT_ROLE_EXCHANGE,
        credentials.exchange_request_id,
    )
    assessor = register(
        stubs,
        credentials,
        "Compliance Law Firm",
        common_pb2.PARTICIPANT_ROLE_ASSESSOR,
        credentials.assessor_request_id,
    )
    certify(stubs, credentials, exchange)
    certify(stubs, credentials, assessor)
    provider = register(
        stubs, credentials, "Ruijin Hospital", common_pb2.PARTICIPANT_ROLE_DATA_HOLDER
    )
    buyer = register(stubs, credentials, "Pudong Insurance", common_pb2.PARTICIPANT_ROLE_BUYER)
    return Parties(exchange, provider, assessor, buyer)


def eventually(read: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not read():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def replay(server: AuditServer, **kw: object) -> list[audit_pb2.Event]:
    responses = server.stubs.audit.ReplayEvents(
        audit_pb2.ReplayEventsRequest(**kw),  # type: ignore[arg-type]
        metadata=server.auditor,
        timeout=30,
    )
    return [event for response in responses for event in response.events]


def last_position(server: AuditServer) -> int:
    return replay(server)[-1].position


def covered(server: AuditServer, position: int) -> bool:
    try:
        checkpoint = server.stubs.audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), metadata=server.auditor
        ).checkpoint
    except grpc.RpcError:
        return False
    return checkpoint.position >= position


def test_an_export_verifies_offline_against_the_checkpoint_and_key_it_came_with(
    audit_server: AuditServer, tmp_path: Path
) -> None:
    last = last_position(audit_server)
    eventually(lambda: covered(audit_server, last))
    files = {name: tmp_path / name for name in ("checkpoint.json", "export.jsonl", "public.key")}
    for action, path in (
        ("checkpoint", files["checkpoint.json"]),
        ("export", files["export.jsonl"]),
        ("public-key", files["public.key"]),
    ):
        done = audit_server.cli(action, "--out", str(path))
        assert done.returncode == 0, done.stderr
        assert path.stat().st_size > 0
    checkpoint = orjson.loads(files["checkpoint.json"].read_bytes())
    lines = files["export.jsonl"].read_bytes().splitlines(keepends=True)
    assert orjson.loads(lines[-1])["position"] == last

    verify = (
        *("verify", "--events", str(files["export.jsonl"])),
        *("--checkpoint", str(files["checkpoint.json"])),
        *("--public-key", str(files["public.key"])),
    )
    done = audit_server.cli(*verify)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == (
        f"OK: {len(lines)} events, last position {last}, "
        f"checkpoint at {checkpoint['position']} verified"
    )

    # One byte of one event's payload changed: the export no longer verifies.
    number = len(lines) // 2
    line = lines[number]
    at = line.index(b'"payload":{') + len(b'"payload":{') + 2
    lines[number] = line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1 :]
    files["export.jsonl"].write_bytes(b"".join(lines))
    done = audit_server.cli(*verify)
    assert done.returncode != 0
    position = orjson.loads(line)["position"]
    assert f"line {number + 1}, position {position}" in done.stdout


def test_exports_through_the_server_and_from_the_store_are_byte_identical(
    audit_server: AuditServer, tmp_path: Path
) -> None:
    through_server, from_store = tmp_path / "server.jsonl", tmp_path / "store.jsonl"
    done = audit_server.cli("export", "--out", str(through_server))
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{audit_server.files.database}"
    done = audit_server.cli("export", "--out", str(from_store), "--database-url", url)
    assert done.returncode == 0, done.stderr
    exported = through_server.read_bytes()
    assert b'"amount_minor":500000' in exported, "payload integers stay integers"
    assert exported == from_store.read_bytes()


def test_a_filtered_replay_sends_only_the_events_it_names_in_small_messages(
    audit_server: AuditServer,
) -> None:
    everything = replay(audit_server)
    sales = [e for e in everything if e.type == "SaleRecorded"]
    assert len(sales) == 3
    responses = list(
        audit_server.stubs.audit.ReplayEvents(
            audit_pb2.ReplayEventsRequest(
                event_types=["SaleRecorded", "AccessGranted"], max_events_per_message=2
            ),
            metadata=audit_server.auditor,
            timeout=30,
        )
    )
    received = [event for response in responses for event in response.events]
    assert all(len(r.events) <= 2 for r in responses)
    assert received == [e for e in everything if e.type in ("SaleRecorded", "AccessGranted")]
    middle = everything[len(everything) // 2]
    window = replay(audit_server, from_position=middle.position, to_position=middle.position)
    assert window == [middle]
    one = replay(audit_server, aggregate_ids=[sales[0].aggregate_id])
    assert {e.aggregate_id for e in one} == {sales[0].aggregate_id}
    assert sales[0] in one


def test_an_unknown_event_type_is_an_invalid_argument(audit_server: AuditServer) -> None:
    error = failure(lambda: replay(audit_server, event_types=["SaleRecorded", "Bribe"]))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = detail(error, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["event_types"]


def test_no_checkpoint_at_or_before_position_zero_is_not_found(
    audit_server: AuditServer,
) -> None:
    error = failure(
        lambda: audit_server.stubs.audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(at_position=0), metadata=audit_server.auditor
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_a_following_replay_receives_events_written_after_it_started(
    audit_server: AuditServer,
) -> None:
    start = last_position(audit_server) + 1
    call = audit_server.stubs.audit.ReplayEvents(
        audit_pb2.ReplayEventsRequest(from_position=start, follow=True),
        metadata=audit_server.auditor,
        timeout=60,
    )
    received: list[audit_pb2.Event] = []
    ended: list[grpc.StatusCode] = []

    def read() -> None:
        try:
            for response in call:
                received.extend(response.events)
        except grpc.RpcError as error:
            ended.append(error.code())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        newcomer = register(
            audit_server.stubs,
            audit_server.credentials,
            "Late Buyer",
            common_pb2.PARTICIPANT_ROLE_BUYER,
        )
        eventually(lambda: any(e.aggregate_id == newcomer for e in received), timeout_s=10)
    finally:
        call.cancel()
        reader.join(timeout=10)
    assert not reader.is_alive()
    assert ended == [grpc.StatusCode.CANCELLED], "the stream stayed open until cancelled"
    assert received[0].position >= start
    assert received[0].type == "ParticipantRegistered"
    assert len(received[0].chain_hash) == 64


def test_the_compliance_report_prints_json_when_piped(audit_server: AuditServer) -> None:
    done = audit_server.cli("report")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert int(report["asOfPosition"]) > 0


def test_only_auditors_replay_the_log(audit_server: AuditServer) -> None:
    exchange = audit_server.credentials.of(Role.EXCHANGE)
    error = failure(
        lambda: list(
            audit_server.stubs.audit.ReplayEvents(
                audit_pb2.ReplayEventsRequest(), metadata=exchange, timeout=10
            )
        )
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
