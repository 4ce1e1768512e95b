"""The ledger.v1 API through real stubs against a real ``ledger serve`` process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from ledger.api.principals import Role
from ledger.audit.checkpoint import key_id
from ledger.v1 import (
    access_pb2,
    audit_pb2,
    common_pb2,
    listing_pb2,
    participant_pb2,
    trade_pb2,
)
from tests.e2e.conftest import (
    ROOT,
    Credentials,
    LedgerProcess,
    Parties,
    ServerFiles,
    Stubs,
    bearer,
    make_signing_key,
    register,
    rid,
    server_env,
    start_ledger,
    timestamp,
)
from tests.market import uscc

D = TypeVar("D", bound=Message)

LEDGER_SERVICES = {
    "ledger.v1.ParticipantService",
    "ledger.v1.ListingService",
    "ledger.v1.TradeService",
    "ledger.v1.AccessService",
    "ledger.v1.AuditService",
    "ledger.v1.ProjectionService",
}
SCENARIO = "credit-risk-scoring"


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    """Makes the call, expecting it to fail, and returns the error."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    return status


def detail(error: grpc.RpcError, kind: type[D]) -> D:
    for packed in rich_status(error).details:
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    raise AssertionError(f"no {kind.__name__} in the status of {error.code()}")


# --- the market, step by step ---------------------------------------------------------


def now() -> datetime:
    return datetime.now(tz=UTC)


def submit_request(parties: Parties, **overrides: Any) -> listing_pb2.SubmitListingRequest:
    fields: dict[str, Any] = {
        "request_id": rid(),
        "exchange_id": parties.exchange,
        "provider_id": parties.provider,
        "title": "Hospital discharge records",
        "category": common_pb2.CATEGORY_MEDICAL,
        "classification": common_pb2.CLASSIFICATION_GENERAL,
        "personal_information_level": common_pb2.PERSONAL_INFORMATION_LEVEL_NONE,
        "rights": [common_pb2.RIGHT_HOLD, common_pb2.RIGHT_PROCESS_USE, common_pb2.RIGHT_OPERATE],
        "delivery_modes": [common_pb2.DELIVERY_MODE_API],
        "scenarios": [SCENARIO],
        "list_price": common_pb2.Money(currency="CNY", amount_minor=1_250_000),
    }
    fields.update(overrides)
    return listing_pb2.SubmitListingRequest(**fields)


def submit(stubs: Stubs, credentials: Credentials, parties: Parties) -> listing_pb2.Listing:
    return stubs.listings.SubmitListing(
        submit_request(parties), metadata=credentials.of(Role.EXCHANGE)
    ).listing


def assess_and_approve(
    stubs: Stubs, credentials: Credentials, listing: listing_pb2.Listing
) -> listing_pb2.ApproveListingResponse:
    assessed = stubs.listings.RecordAssessment(
        listing_pb2.RecordAssessmentRequest(
            request_id=rid(),
            listing_id=listing.id,
            assessor_id=credentials.assessor_id,
            passed=True,
            reference="LAW-2026-001",
        ),
        metadata=credentials.of(Role.ASSESSOR),
    )
    assert assessed.listing.latest_assessment.assessor_id == credentials.assessor_id
    return stubs.listings.ApproveListing(
        listing_pb2.ApproveListingRequest(
            request_id=rid(), listing_id=listing.id, etag=assessed.listing.etag
        ),
        metadata=credentials.of(Role.EXCHANGE),
    )


def sale_request(listing_id: str, parties: Parties) -> trade_pb2.RecordSaleRequest:
    return trade_pb2.RecordSaleRequest(
        request_id=rid(),
        listing_id=listing_id,
        seller_id=parties.provider,
        buyer_id=parties.buyer,
        rights=[common_pb2.RIGHT_PROCESS_USE],
        conveyance=common_pb2.CONVEYANCE_LICENCE,
        scenario=SCENARIO,
        term_start=timestamp(now() - timedelta(days=1)),
        term_end=timestamp(now() + timedelta(days=180)),
        price=common_pb2.Money(currency="CNY", amount_minor=500_000),
    )


def grant_request(trade_id: str) -> access_pb2.GrantAccessRequest:
    return access_pb2.GrantAccessRequest(
        request_id=rid(),
        trade_id=trade_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        valid_until=timestamp(now() + timedelta(days=90)),
        usage_limit=1000,
    )


def granted(stubs: Stubs, credentials: Credentials, parties: Parties) -> access_pb2.Grant:
    listing = submit(stubs, credentials, parties)
    assess_and_approve(stubs, credentials, listing)
    exchange = credentials.of(Role.EXCHANGE)
    trade = stubs.trades.RecordSale(sale_request(listing.id, parties), metadata=exchange).trade
    return stubs.access.GrantAccess(grant_request(trade.id), metadata=exchange).grant


# --- authentication and authorisation -------------------------------------------------


def test_ledger_info_needs_a_token(stubs: Stubs) -> None:
    error = failure(lambda: stubs.audit.GetLedgerInfo(audit_pb2.GetLedgerInfoRequest()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "metadata",
    [
        bearer("not-a-token"),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer "),),
    ],
    ids=["unknown-token", "basic-scheme", "empty-token"],
)
def test_bad_tokens_are_unauthenticated(stubs: Stubs, metadata: tuple[tuple[str, str]]) -> None:
    error = failure(
        lambda: stubs.audit.GetLedgerInfo(audit_pb2.GetLedgerInfoRequest(), metadata=metadata)
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


def test_ledger_info_for_an_auditor(stubs: Stubs, credentials: Credentials) -> None:
    info = stubs.audit.GetLedgerInfo(
        audit_pb2.GetLedgerInfoRequest(), metadata=credentials.of(Role.AUDITOR)
    )
    assert re.fullmatch(r"[0-9a-f]{64}", info.public_key)
    assert info.key_id == key_id(info.public_key)
    assert info.backend == "sqlite"
    assert str(uuid.UUID(info.ledger_id)) == info.ledger_id
    assert info.head_position >= 1  # the ledger's identity is the first event
    assert info.version


def test_an_auditor_may_not_register_participants(stubs: Stubs, credentials: Credentials) -> None:
    request = participant_pb2.RegisterParticipantRequest(
        request_id=rid(),
        name="Acme",
        roles=[common_pb2.PARTICIPANT_ROLE_BUYER],
        party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
    )
    error = failure(
        lambda: stubs.participants.RegisterParticipant(
            request, metadata=credentials.of(Role.AUDITOR)
        )
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_an_assessor_records_assessments_only_as_itself(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    listing = submit(stubs, credentials, parties)
    request = listing_pb2.RecordAssessmentRequest(
        request_id=rid(),
        listing_id=listing.id,
        assessor_id=parties.provider,
        passed=True,
        reference="LAW-1",
    )
    error = failure(
        lambda: stubs.listings.RecordAssessment(request, metadata=credentials.of(Role.ASSESSOR))
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


# --- the happy path -------------------------------------------------------------------


def test_a_product_is_listed_sold_and_granted(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    exchange = credentials.of(Role.EXCHANGE)
    submitted = stubs.listings.SubmitListing(submit_request(parties), metadata=exchange)
    listing = submitted.listing
    assert listing.state == listing_pb2.LISTING_STATE_SUBMITTED
    assert listing.exchange_id == parties.exchange

    approved = assess_and_approve(stubs, credentials, listing)
    assert approved.listing.state == listing_pb2.LISTING_STATE_LISTED
    assert approved.position > submitted.position

    sold = stubs.trades.RecordSale(sale_request(listing.id, parties), metadata=exchange)
    assert sold.trade.state == trade_pb2.TRADE_STATE_EXECUTED
    assert sold.trade.exchange_id == parties.exchange
    assert sold.position > approved.position

    granted_ = stubs.access.GrantAccess(grant_request(sold.trade.id), metadata=exchange)
    grant = granted_.grant
    assert grant.grantee_id == parties.buyer
    assert grant.state == access_pb2.GRANT_STATE_ACTIVE
    assert grant.usage_limit == 1000
    assert granted_.position > sold.position

    for role in (Role.EXCHANGE, Role.AUDITOR):
        read = stubs.access.GetGrant(
            access_pb2.GetGrantRequest(grant_id=grant.id), metadata=credentials.of(role)
        )
        assert read.grant == grant


# --- errors, decoded from the rich status ---------------------------------------------


def test_a_malformed_request_names_the_field(stubs: Stubs, credentials: Credentials) -> None:
    request = participant_pb2.RegisterParticipantRequest(request_id="not-a-uuid", name="Acme")
    error = failure(
        lambda: stubs.participants.RegisterParticipant(
            request, metadata=credentials.of(Role.REGISTRY)
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in detail(error, error_details_pb2.BadRequest).field_violations]
    assert fields == ["request_id"]


def test_a_violation_is_named_as_the_request_names_the_field(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    request = submit_request(
        parties,
        personal_information_level=common_pb2.PERSONAL_INFORMATION_LEVEL_UNSPECIFIED,
    )
    error = failure(
        lambda: stubs.listings.SubmitListing(request, metadata=credentials.of(Role.EXCHANGE))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in detail(error, error_details_pb2.BadRequest).field_violations]
    assert fields == ["personal_information_level"]


def test_a_sale_of_an_unlisted_product_breaks_r05(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    listing = submit(stubs, credentials, parties)
    error = failure(
        lambda: stubs.trades.RecordSale(
            sale_request(listing.id, parties), metadata=credentials.of(Role.EXCHANGE)
        )
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = detail(error, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, info.metadata["rule"]) == (
        "R05_LISTING_NOT_LISTED",
        "ledger.v1",
        "R05",
    )


def rpc_lines(server: LedgerProcess, request_id: str) -> list[dict[str, Any]]:
    """The server's per-RPC log lines of ``request_id``, waiting for its log writer."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log_file.read_text().splitlines()]
        found = [line for line in lines if line.get("request_id") == request_id]
        if any(line["event"] == "rpc" for line in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_rpc_is_logged_once_with_its_outcome_and_never_its_token(
    server: LedgerProcess, stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    listing = submit(stubs, credentials, parties)
    request = sale_request(listing.id, parties)
    started = datetime.now(UTC)
    failure(lambda: stubs.trades.RecordSale(request, metadata=credentials.of(Role.EXCHANGE)))

    (line,) = [line for line in rpc_lines(server, request.request_id) if line["event"] == "rpc"]
    assert line["logger"] == "ledger.rpc"
    assert line["level"] == "info"
    assert line["method"] == "/ledger.v1.TradeService/RecordSale"
    assert line["code"] == "FAILED_PRECONDITION"
    assert line["principal"] == "dev-exchange"
    assert line["duration_ms"] >= 0
    logged_at = datetime.fromisoformat(line["timestamp"])
    assert started - timedelta(seconds=1) <= logged_at <= datetime.now(UTC)
    assert credentials.dev.token_for(Role.EXCHANGE) not in server.log_file.read_text()


def test_a_missing_listing_is_not_found(stubs: Stubs, credentials: Credentials) -> None:
    missing = rid()
    error = failure(
        lambda: stubs.listings.GetListing(
            listing_pb2.GetListingRequest(listing_id=missing), metadata=credentials.of(Role.AUDITOR)
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert detail(error, error_details_pb2.ResourceInfo).resource_name == missing


def test_a_request_id_reused_for_another_request_already_exists(
    stubs: Stubs, credentials: Credentials
) -> None:
    request_id = rid()
    register(stubs, credentials, "First Co", common_pb2.PARTICIPANT_ROLE_BUYER, request_id)
    error = failure(
        lambda: register(
            stubs, credentials, "Second Co", common_pb2.PARTICIPANT_ROLE_BUYER, request_id
        )
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS


def test_a_stale_etag_is_aborted(stubs: Stubs, credentials: Credentials, parties: Parties) -> None:
    listing = submit(stubs, credentials, parties)
    assess_and_approve(stubs, credentials, listing)
    request = listing_pb2.SuspendListingRequest(
        request_id=rid(), listing_id=listing.id, etag=listing.etag, reason_note="audit"
    )
    error = failure(
        lambda: stubs.listings.SuspendListing(request, metadata=credentials.of(Role.EXCHANGE))
    )
    assert error.code() is grpc.StatusCode.ABORTED


def test_an_oversized_message_is_refused(stubs: Stubs, credentials: Credentials) -> None:
    request = participant_pb2.RegisterParticipantRequest(
        request_id=rid(), name="x" * (5 * 1024 * 1024)
    )
    error = failure(
        lambda: stubs.participants.RegisterParticipant(
            request, metadata=credentials.of(Role.REGISTRY)
        )
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


# --- batches --------------------------------------------------------------------------


def test_an_ingest_batch_reports_each_command_on_its_own(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    grant = granted(stubs, credentials, parties)
    use = access_pb2.RecordAccessUseRequest(
        request_id=rid(),
        grant_id=grant.id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        units=2,
    )
    unknown = access_pb2.RecordAccessUseRequest(
        request_id=rid(),
        grant_id=rid(),
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        units=1,
    )
    batch = trade_pb2.IngestCommandsRequest(
        commands=[
            trade_pb2.Command(record_access_use=use),
            trade_pb2.Command(record_access_use=unknown),
            trade_pb2.Command(record_access_use=use),
        ]
    )
    results = stubs.trades.IngestCommands(batch, metadata=credentials.of(Role.EXCHANGE)).results
    assert [r.WhichOneof("kind") for r in results] == [
        "record_access_use",
        "error",
        "record_access_use",
    ]
    first, failed, retried = results
    assert first.record_access_use.grant.uses_recorded == 2
    assert retried.record_access_use == first.record_access_use
    assert failed.error.code == grpc.StatusCode.NOT_FOUND.value[0]


# --- idempotency, across a restart ----------------------------------------------------


def test_a_retry_returns_the_original_response_across_a_restart(
    tmp_path: Path, credentials: Credentials
) -> None:
    files = ServerFiles(
        database=tmp_path / "ledger.db",
        principals=credentials.dev.principals_file,
        signing_key=make_signing_key(tmp_path / "signing-key.pem"),
    )
    request = participant_pb2.RegisterParticipantRequest(
        request_id=rid(),
        name="Restart Co",
        roles=[common_pb2.PARTICIPANT_ROLE_BUYER],
        party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
    )
    registry, auditor = credentials.of(Role.REGISTRY), credentials.of(Role.AUDITOR)
    responses, ledger_ids = [], []
    for _ in range(2):
        server = start_ledger(files, tmp_path)
        try:
            with grpc.insecure_channel(server.address) as channel:
                stubs = Stubs.on(channel)
                responses.append(stubs.participants.RegisterParticipant(request, metadata=registry))
                info = stubs.audit.GetLedgerInfo(audit_pb2.GetLedgerInfoRequest(), metadata=auditor)
                ledger_ids.append(info.ledger_id)
        finally:
            assert server.stop() == 0, server.log_file.read_text()
    original, retried = responses
    assert retried == original
    assert ledger_ids[0] == ledger_ids[1]


# --- standard services ----------------------------------------------------------------


def test_health_needs_no_token(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ledger.v1.TradeService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()


def test_reflection_lists_the_services_without_a_token(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert services >= LEDGER_SERVICES | {"grpc.health.v1.Health"}


# --- start-up refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "no principals"),
        (["--principals-file", "{principals}"], "no signing key"),
    ],
)
def test_serve_refuses_to_start_without_credentials(
    tmp_path: Path, credentials: Credentials, flags: list[str], message: str
) -> None:
    args = [f.format(principals=credentials.dev.principals_file) for f in flags]
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "serve", "--address", "127.0.0.1:0", *args],
        cwd=ROOT,
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
