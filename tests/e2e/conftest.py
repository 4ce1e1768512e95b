"""A real ``ledger serve`` process on a free loopback port, and stubs to call it.

The principals file is written before the server starts, so the exchange and assessor
principals must name participants that do not exist yet: their ids are derived from
request_ids chosen here, and the market fixture registers them with those request_ids.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.api.principals import DevCredentials, Role, write_dev_principals
from ledger.application.markers import entity_id
from ledger.v1 import (
    access_pb2_grpc,
    audit_pb2_grpc,
    common_pb2,
    listing_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    projection_pb2_grpc,
    trade_pb2_grpc,
)
from tests.market import uscc

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^ledger serve: listening on (\S+)$")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

Metadata = tuple[tuple[str, str], ...]


@dataclass
class LedgerProcess:
    """A running server process and the address it listens on."""

    process: subprocess.Popen[str]
    address: str
    log_file: Path
    stdout_lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def stop(self) -> int:
        """Sends SIGTERM and waits for a graceful exit; kills it if it does not come."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@dataclass(frozen=True)
class ServerFiles:
    """The files a server is started with."""

    database: Path
    principals: Path
    signing_key: Path


def server_env(var_dir: Path) -> dict[str, str]:
    """The environment of a test server: ours, minus LEDGER_* settings that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_VAR_DIR"] = str(var_dir)
    env["LEDGER_LOG_FORMAT"] = "json"
    return env


def start_ledger(files: ServerFiles, work_dir: Path) -> LedgerProcess:
    """Starts ``python -m ledger serve`` on a free port and waits until it is SERVING."""
    log_file = work_dir / f"server-{uuid.uuid4().hex[:8]}.log"
    command = [
        sys.executable,
        "-m",
        "ledger",
        "serve",
        "--address",
        "127.0.0.1:0",
        "--database-url",
        f"sqlite:///{files.database}",
        "--principals-file",
        str(files.principals),
        "--signing-key-file",
        str(files.signing_key),
    ]
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(work_dir),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def drain() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    address = _listening_address(process, lines, deadline, log_file)
    server = LedgerProcess(process, address, log_file, lines)
    try:
        _wait_until_serving(address, deadline)
    except BaseException:
        server.stop()
        raise
    return server


def _listening_address(
    process: subprocess.Popen[str], lines: queue.Queue[str], deadline: float, log_file: Path
) -> str:
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        match = LISTENING.match(line)
        if match:
            return match.group(1)
    process.kill()
    pytest.fail(f"the server did not report its address; its log:\n{log_file.read_text()}")


def _wait_until_serving(address: str, deadline: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.05)
    pytest.fail(f"the server at {address} did not become SERVING in time")


@dataclass(frozen=True)
class Stubs:
    """One stub per service, on one channel."""

    participants: participant_pb2_grpc.ParticipantServiceStub
    listings: listing_pb2_grpc.ListingServiceStub
    trades: trade_pb2_grpc.TradeServiceStub
    access: access_pb2_grpc.AccessServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    projections: projection_pb2_grpc.ProjectionServiceStub

    @classmethod
    def on(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            participant_pb2_grpc.ParticipantServiceStub(channel),
            listing_pb2_grpc.ListingServiceStub(channel),
            trade_pb2_grpc.TradeServiceStub(channel),
            access_pb2_grpc.AccessServiceStub(channel),
            audit_pb2_grpc.AuditServiceStub(channel),
            projection_pb2_grpc.ProjectionServiceStub(channel),
        )


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def rid() -> str:
    return str(uuid.uuid4())


def timestamp(at: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(at)
    return result


@dataclass(frozen=True)
class Credentials:
    """Bearer metadata per role, and the participant ids the principals stand for."""

    dev: DevCredentials
    exchange_request_id: str
    assessor_request_id: str

    def of(self, role: Role) -> Metadata:
        return bearer(self.dev.token_for(role))

    @property
    def exchange_id(self) -> str:
        return self.dev.participant_ids[Role.EXCHANGE]

    @property
    def assessor_id(self) -> str:
        return self.dev.participant_ids[Role.ASSESSOR]


def make_credentials(var_dir: Path) -> Credentials:
    exchange_request_id, assessor_request_id = rid(), rid()
    dev = write_dev_principals(
        var_dir,
        participant_ids={
            "exchange": str(entity_id("participant", exchange_request_id)),
            "assessor": str(entity_id("participant", assessor_request_id)),
        },
    )
    return Credentials(dev, exchange_request_id, assessor_request_id)


def make_signing_key(path: Path) -> Path:
    from ledger.audit.checkpoint import generate_private_key_file

    generate_private_key_file(path)
    return path


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("principals"))


@pytest.fixture(scope="session")
def server_files(tmp_path_factory: pytest.TempPathFactory, credentials: Credentials) -> ServerFiles:
    work = tmp_path_factory.mktemp("server")
    return ServerFiles(
        database=work / "ledger.db",
        principals=credentials.dev.principals_file,
        signing_key=make_signing_key(work / "signing-key.pem"),
    )


@pytest.fixture(scope="session")
def server(
    server_files: ServerFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LedgerProcess]:
    running = start_ledger(server_files, tmp_path_factory.mktemp("server-run"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def channel(server: LedgerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture(scope="session")
def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs.on(channel)


@dataclass(frozen=True)
class Parties:
    """The participants of the e2e market, by role in it."""

    exchange: str
    provider: str
    assessor: str
    buyer: str


def register(
    stubs: Stubs, credentials: Credentials, name: str, role: int, request_id: str | None = None
) -> str:
    response = stubs.participants.RegisterParticipant(
        participant_pb2.RegisterParticipantRequest(
            request_id=request_id or rid(),
            name=name,
            roles=[role],  # type: ignore[list-item]
            party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
        ),
        metadata=credentials.of(Role.REGISTRY),
    )
    return str(response.participant.id)


def certify(stubs: Stubs, credentials: Credentials, participant_id: str) -> None:
    stubs.participants.IssueCertification(
        participant_pb2.IssueCertificationRequest(
            request_id=rid(),
            participant_id=participant_id,
            level=common_pb2.CERTIFICATION_LEVEL_CORE,
            categories=[common_pb2.CATEGORY_MEDICAL, common_pb2.CATEGORY_FINANCIAL],
            max_classification=common_pb2.CLASSIFICATION_IMPORTANT,
            valid_until=timestamp(datetime.now(tz=UTC) + timedelta(days=365)),
            reference=f"CERT-{rid()[:8]}",
        ),
        metadata=credentials.of(Role.REGISTRY),
    )


@pytest.fixture(scope="session")
def parties(stubs: Stubs, credentials: Credentials) -> Parties:
    """Registers and certifies the exchange and the assessor the principals stand for."""
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
    assert (exchange, assessor) == (credentials.exchange_id, credentials.assessor_id)
    certify(stubs, credentials, exchange)
    certify(stubs, credentials, assessor)
    provider = register(
        stubs, credentials, "Ruijin Hospital", common_pb2.PARTICIPANT_ROLE_DATA_HOLDER
    )
    buyer = register(stubs, credentials, "Pudong Insurance", common_pb2.PARTICIPANT_ROLE_BUYER)
    return Parties(exchange, provider, assessor, buyer)
