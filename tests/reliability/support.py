"""Shared parts of the reliability suites: real ``ledger serve`` processes that can be
killed and restarted, a throwaway PostgreSQL cluster, a small market written through the
API, polling with deadlines, and the one-line JSON summary each suite prints.

Every loop here is bounded in count and time; every process started is ended by its
owner in a ``finally`` (or by the context manager it comes in).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.api.principals import DevCredentials, Role, write_dev_principals
from ledger.application.markers import entity_id
from ledger.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    listing_pb2,
    listing_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    projection_pb2,
    projection_pb2_grpc,
    trade_pb2,
    trade_pb2_grpc,
)
from tests.market import uscc

T = TypeVar("T")

SCALE = max(1, int(os.environ.get("LEDGER_RELIABILITY_SCALE", "1")))
ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^ledger serve: listening on (\S+)$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SCENARIO = "credit-risk-scoring"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A server answers these only for bugs; no input and no fault may produce them.
BUG_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

Metadata = tuple[tuple[str, str], ...]


def rid() -> str:
    return str(uuid.uuid4())


def poll(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.05) -> T:
    """Calls ``check`` until it returns something other than None or False, and returns
    that; fails the test naming ``what`` if ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting until {what}")
        time.sleep(every_s)


def timestamp(at: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(at)
    return result


def in_days(days: float) -> Timestamp:
    return timestamp(datetime.now(tz=UTC) + timedelta(days=days))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- identities and summaries -----------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The principals and signing key a server is started with. The exchange principal's
    participant is registered later with ``exchange_request_id``."""

    credentials: DevCredentials
    signing_key: Path
    exchange_request_id: str

    @property
    def exchange_id(self) -> str:
        return self.credentials.participant_ids[Role.EXCHANGE]

    def metadata(self, role: Role) -> Metadata:
        return (("authorization", f"Bearer {self.credentials.token_for(role)}"),)

    @property
    def admin(self) -> Metadata:
        return self.metadata(Role.ADMIN)


def make_identity(directory: Path) -> Identity:
    from ledger.audit.checkpoint import generate_private_key_file

    directory.mkdir(parents=True, exist_ok=True)
    exchange_request_id = rid()
    credentials = write_dev_principals(
        directory,
        participant_ids={"exchange": str(entity_id("participant", exchange_request_id))},
    )
    signing_key = directory / "signing-key.pem"
    generate_private_key_file(signing_key)
    return Identity(credentials, signing_key, exchange_request_id)


def report(config: pytest.Config, suite: str, **figures: Any) -> None:
    """Prints the suite's figures as one JSON line, past pytest's capture, and appends it
    to the file named by ``LEDGER_RELIABILITY_SUMMARY`` if set."""
    line = json.dumps({"suite": suite, "scale": SCALE, **figures})
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)
    target = os.environ.get("LEDGER_RELIABILITY_SUMMARY")
    if target:
        with Path(target).open("a", encoding="utf-8") as sink:
            sink.write(line + "\n")


# --- servers ----------------------------------------------------------------------------


def health(address: str, timeout_s: float = 1.0) -> int | None:
    """The server's overall health status, or None if it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return int(response.status)


@dataclass
class ServeProcess:
    """``python -m ledger serve`` on a free loopback port; started again on a new port
    after a kill. Its stderr (JSON log lines) is appended to one file across restarts."""

    database_url: str
    identity: Identity
    work_dir: Path
    name: str = "server"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    address: str = ""
    starts: int = 0

    @property
    def log_file(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    def start(self, *, wait_serving: bool = True) -> str:
        """Starts the process; returns its address once it is SERVING (or at once when
        ``wait_serving`` is false, e.g. while its database is down)."""
        assert not self.alive(), "already running"
        command = [
            sys.executable,
            "-m",
            "ledger",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--database-url",
            self.database_url,
            "--principals-file",
            str(self.identity.credentials.principals_file),
            "--signing-key-file",
            str(self.identity.signing_key),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env |= {"LEDGER_VAR_DIR": str(self.work_dir), "LEDGER_LOG_FORMAT": "json", **self.env}
        with self.log_file.open("a") as log:
            log.write(f'{{"event": "test: start {self.starts + 1} of {self.name}"}}\n')
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.starts += 1
        self.address = self._listening_address(self.process)
        if wait_serving:
            poll(
                lambda: health(self.address) == SERVING,
                START_TIMEOUT_S,
                f"{self.name} at {self.address} is SERVING",
            )
        return self.address

    def _listening_address(self, process: subprocess.Popen[str]) -> str:
        lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def drain() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if process.poll() is not None:
                    break
                continue
            if match := LISTENING.match(line):
                return match.group(1)
        self.close()
        pytest.fail(f"{self.name} did not report its address; its log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(STOP_TIMEOUT_S) == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM, as an operator would; it must exit cleanly within the grace period."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"{self.name} did not stop on SIGTERM; its log:\n{self.log_tail()}")
        assert status == 0, f"{self.name} exited with {status}; its log:\n{self.log_tail()}"

    def close(self) -> None:
        """Makes sure the process is gone (for ``finally``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Stubs:
    """One stub per ledger.v1 service, on one channel."""

    channel: grpc.Channel
    participants: participant_pb2_grpc.ParticipantServiceStub
    listings: listing_pb2_grpc.ListingServiceStub
    trades: trade_pb2_grpc.TradeServiceStub
    access: access_pb2_grpc.AccessServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    projections: projection_pb2_grpc.ProjectionServiceStub

    @classmethod
    def on(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            channel,
            participant_pb2_grpc.ParticipantServiceStub(channel),
            listing_pb2_grpc.ListingServiceStub(channel),
            trade_pb2_grpc.TradeServiceStub(channel),
            access_pb2_grpc.AccessServiceStub(channel),
            audit_pb2_grpc.AuditServiceStub(channel),
            projection_pb2_grpc.ProjectionServiceStub(channel),
        )


@contextlib.contextmanager
def connect(address: str) -> Iterator[Stubs]:
    # Reconnect quickly: servers here come back within a second or two.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        yield Stubs.on(channel)


def head_position(stubs: Stubs, metadata: Metadata) -> int:
    info = stubs.audit.GetLedgerInfo(
        audit_pb2.GetLedgerInfoRequest(), metadata=metadata, timeout=10
    )
    return int(info.head_position)


def projections_at_head(stubs: Stubs, metadata: Metadata) -> bool:
    """Every projection's live generation is LIVE at the head of the log."""
    response = stubs.projections.ListProjections(
        projection_pb2.ListProjectionsRequest(), metadata=metadata, timeout=10
    )
    head = head_position(stubs, metadata)
    return bool(response.projections) and all(
        p.state == projection_pb2.PROJECTION_STATE_LIVE and p.position >= head
        for p in response.projections
    )


# --- a market written through the API ---------------------------------------------------


def register_request(
    name: str, role: int, request_id: str | None = None
) -> participant_pb2.RegisterParticipantRequest:
    return participant_pb2.RegisterParticipantRequest(
        request_id=request_id or rid(),
        name=name,
        roles=[role],  # type: ignore[list-item]
        party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
    )


def certify_request(participant_id: str) -> participant_pb2.IssueCertificationRequest:
    return participant_pb2.IssueCertificationRequest(
        request_id=rid(),
        participant_id=participant_id,
        level=common_pb2.CERTIFICATION_LEVEL_CORE,
        categories=[common_pb2.CATEGORY_FINANCIAL, common_pb2.CATEGORY_MEDICAL],
        max_classification=common_pb2.CLASSIFICATION_IMPORTANT,
        valid_until=in_days(365),
        reference=f"CERT-{rid()[:8]}",
    )


def submit_request(exchange_id: str, provider_id: str) -> listing_pb2.SubmitListingRequest:
    return listing_pb2.SubmitListingRequest(
        request_id=rid(),
        exchange_id=exchange_id,
        provider_id=provider_id,
        title="Invoice signals",
        category=common_pb2.CATEGORY_FINANCIAL,
        classification=common_pb2.CLASSIFICATION_GENERAL,
        personal_information_level=common_pb2.PERSONAL_INFORMATION_LEVEL_NONE,
        rights=[common_pb2.RIGHT_HOLD, common_pb2.RIGHT_PROCESS_USE, common_pb2.RIGHT_OPERATE],
        delivery_modes=[common_pb2.DELIVERY_MODE_API],
        scenarios=[SCENARIO],
        list_price=common_pb2.Money(currency="CNY", amount_minor=100_000),
    )


def licence_request(listing_id: str, seller: str, buyer: str) -> trade_pb2.RecordSaleRequest:
    return trade_pb2.RecordSaleRequest(
        request_id=rid(),
        listing_id=listing_id,
        seller_id=seller,
        buyer_id=buyer,
        rights=[common_pb2.RIGHT_PROCESS_USE],
        conveyance=common_pb2.CONVEYANCE_LICENCE,
        scenario=SCENARIO,
        term_start=in_days(-1),
        term_end=in_days(180),
        price=common_pb2.Money(currency="CNY", amount_minor=50_000),
    )


def transfer_request(listing_id: str, seller: str, buyer: str) -> trade_pb2.RecordSaleRequest:
    """A TRANSFER of HOLD: only the holder can convey it, so rivals exclude each other."""
    return trade_pb2.RecordSaleRequest(
        request_id=rid(),
        listing_id=listing_id,
        seller_id=seller,
        buyer_id=buyer,
        rights=[common_pb2.RIGHT_HOLD],
        conveyance=common_pb2.CONVEYANCE_TRANSFER,
        scenario=SCENARIO,
        price=common_pb2.Money(currency="CNY", amount_minor=900_000),
    )


def grant_request(trade_id: str) -> access_pb2.GrantAccessRequest:
    return access_pb2.GrantAccessRequest(
        request_id=rid(),
        trade_id=trade_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        valid_until=in_days(90),
    )


def use_request(grant_id: str) -> access_pb2.RecordAccessUseRequest:
    return access_pb2.RecordAccessUseRequest(
        request_id=rid(),
        grant_id=grant_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        units=1,
    )


@dataclass
class Market:
    """The ids of a small market: one exchange (the exchange principal's participant), a
    certified assessor, a provider, buyers, listed listings, licence sales and grants."""

    exchange: str
    assessor: str
    provider: str
    buyers: list[str] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)
    trades: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)


class MarketWriter:
    """Writes market resources through the API as the admin, one call at a time."""

    def __init__(self, stubs: Stubs, metadata: Metadata, timeout_s: float = 15.0) -> None:
        self.stubs = stubs
        self.metadata = metadata
        self.timeout_s = timeout_s

    def register(self, name: str, role: int, request_id: str | None = None) -> str:
        response = self.stubs.participants.RegisterParticipant(
            register_request(name, role, request_id), metadata=self.metadata, timeout=self.timeout_s
        )
        return str(response.participant.id)

    def certify(self, participant_id: str) -> str:
        response = self.stubs.participants.IssueCertification(
            certify_request(participant_id), metadata=self.metadata, timeout=self.timeout_s
        )
        return str(response.certification.id)

    def listed(self, market: Market) -> str:
        listing = self.stubs.listings.SubmitListing(
            submit_request(market.exchange, market.provider),
            metadata=self.metadata,
            timeout=self.timeout_s,
        ).listing.id
        self.stubs.listings.RecordAssessment(
            listing_pb2.RecordAssessmentRequest(
                request_id=rid(),
                listing_id=listing,
                assessor_id=market.assessor,
                passed=True,
                reference="LAW-2026-001",
            ),
            metadata=self.metadata,
            timeout=self.timeout_s,
        )
        self.stubs.listings.ApproveListing(
            listing_pb2.ApproveListingRequest(request_id=rid(), listing_id=listing),
            metadata=self.metadata,
            timeout=self.timeout_s,
        )
        return str(listing)

    def licence(self, listing_id: str, seller: str, buyer: str) -> str:
        response = self.stubs.trades.RecordSale(
            licence_request(listing_id, seller, buyer),
            metadata=self.metadata,
            timeout=self.timeout_s,
        )
        return str(response.trade.id)

    def grant(self, trade_id: str) -> str:
        response = self.stubs.access.GrantAccess(
            grant_request(trade_id), metadata=self.metadata, timeout=self.timeout_s
        )
        return str(response.grant.id)

    def market(
        self,
        identity: Identity,
        *,
        buyers: int = 4,
        listings: int = 2,
        grants: int = 4,
    ) -> Market:
        """Registers the parties, lists ``listings`` listings, sells a licence to each
        buyer in turn and grants access on the first ``grants`` sales."""
        exchange = self.register(
            "Shanghai Data Exchange",
            common_pb2.PARTICIPANT_ROLE_EXCHANGE,
            identity.exchange_request_id,
        )
        assert exchange == identity.exchange_id
        self.certify(exchange)
        assessor = self.register("Compliance Law Firm", common_pb2.PARTICIPANT_ROLE_ASSESSOR)
        self.certify(assessor)
        provider = self.register("Ruijin Hospital", common_pb2.PARTICIPANT_ROLE_DATA_HOLDER)
        market = Market(exchange, assessor, provider)
        market.buyers = [
            self.register(f"Buyer {n}", common_pb2.PARTICIPANT_ROLE_BUYER) for n in range(buyers)
        ]
        market.listings = [self.listed(market) for _ in range(listings)]
        for n in range(max(grants, 1)):
            listing = market.listings[n % len(market.listings)]
            market.trades.append(self.licence(listing, provider, market.buyers[n % buyers]))
        market.grants = [self.grant(trade) for trade in market.trades[:grants]]
        return market


# --- a throwaway PostgreSQL cluster -----------------------------------------------------


def postgres_bin(program: str) -> Path | None:
    """The path of a PostgreSQL server program, from PATH or ``pg_config --bindir``."""
    found = shutil.which(program)
    if found:
        return Path(found)
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    bindir = subprocess.run(
        [pg_config, "--bindir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    candidate = Path(bindir) / program
    return candidate if candidate.exists() else None


class PostgresCluster:
    """A PostgreSQL cluster of the test's own in a temporary directory, on a free loopback
    port. As root it runs as the ``postgres`` OS user (the server refuses to run as root)."""

    def __init__(self) -> None:
        initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("initdb/pg_ctl are not installed")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        self.data = self.directory / "data"
        self.sockets = self.directory / "sockets"
        self.log = self.directory / "postgres.log"
        self.sockets.mkdir()
        self.port = free_port()
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
            for path in (self.directory, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self._run(self._initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: Path, *args: str, check: bool = True) -> None:
        result = subprocess.run(
            [*self._as_postgres, str(program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{program.name} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        options = f"-k {self.sockets} -p {self.port} -c listen_addresses=127.0.0.1"
        self._run(
            self._pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: every backend dies at once, as in a crash; the next start recovers."""
        self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        """Stops the cluster if it runs and deletes its directory (for ``finally``: it
        raises nothing of its own)."""
        try:
            if self.running():
                self._run(
                    self._pg_ctl, "-D", str(self.data), "-m", "immediate", "stop", check=False
                )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
