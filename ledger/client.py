"""A typed Python client of the ``ledger.v1`` gRPC API with safe retries.

Every call has a deadline. A call that fails ``UNAVAILABLE`` (or ``ABORTED`` after losing
a race, when it carries no etag) is sent again *unchanged*: the same ``request_id``
makes the server return the original response if the first attempt was in fact
applied, so a retry never writes twice. Other failures are raised at once as
:class:`LedgerCallError`, with the rich status details decoded.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from ledger.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    listing_pb2,
    listing_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    trade_pb2,
    trade_pb2_grpc,
)

R = TypeVar("R")
Resp = TypeVar("Resp", bound=Message)

DEFAULT_TIMEOUT_S = 10.0
# gRPC waits a second and then longer between reconnection attempts by default, so
# retries within a 10 s budget would find the channel still backing off; reconnect at the
# pace of the retry policy instead.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def new_request_id() -> str:
    """Returns a fresh request_id: keep it to retry the same request."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    The wait before attempt ``n + 1`` is drawn uniformly from ``[0, min(max_backoff_s,
    initial_backoff_s * multiplier ** (n - 1))]`` ("full jitter"), so that clients
    that failed together do not come back together; a server's ``RetryInfo`` delay is
    honoured as a lower bound.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Returns the wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class FieldViolation:
    """One field of a malformed request and what is wrong with it."""

    field: str
    description: str


@dataclass(eq=False)
class LedgerCallError(Exception):
    """A call that failed, with its status and the details the server attached.

    ``reason`` is the ``ErrorInfo`` reason (e.g. ``R05_LISTING_NOT_LISTED``), ``rule``
    its rule id (``R05``) when a compliance rule refused the command.
    """

    method: str
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    resource_type: str = ""
    resource_name: str = ""
    retry_delay_s: float | None = None
    attempts: int = 1

    def __post_init__(self) -> None:
        super().__init__(self.method, self.code, self.message)

    def __str__(self) -> str:
        text = f"{self.method}: {self.code.name}: {self.message}"
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        return text

    @property
    def rule(self) -> str:
        """The compliance rule id that refused the command, or ""."""
        return str(self.metadata.get("rule", ""))

    @classmethod
    def from_rpc_error(
        cls, error: grpc.RpcError, method: str, attempts: int = 1
    ) -> LedgerCallError:
        """Decodes the status of a failed call, rich details included."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        message = error.details() if callable(getattr(error, "details", None)) else None
        result = cls(method, code or grpc.StatusCode.UNKNOWN, message or "", attempts=attempts)
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            # The trailers contradict the status line; keep what the status line says.
            status = None
        if status is None:
            return result
        result.message = status.message or result.message
        violations: list[FieldViolation] = []
        for packed in status.details:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                result.reason, result.domain = info.reason, info.domain
                result.metadata = dict(info.metadata)
            elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                packed.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif packed.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                resource = error_details_pb2.ResourceInfo()
                packed.Unpack(resource)
                result.resource_type = resource.resource_type
                result.resource_name = resource.resource_name
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                packed.Unpack(retry)
                result.retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
        result.field_violations = tuple(violations)
        return result


def is_retryable(error: LedgerCallError, request: Message | None = None) -> bool:
    """Tells whether sending the same request again may succeed.

    ``ABORTED`` on a request that names an etag means the caller's view is stale: the
    same request would fail again, so only a fresh read can help.
    """
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return True
    if error.code is grpc.StatusCode.ABORTED:
        return not (getattr(request, "etag", "") or getattr(request, "listing_etag", ""))
    return False


def call_with_retry(
    attempt: Callable[[float], R],
    *,
    method: str,
    timeout_s: float,
    policy: RetryPolicy,
    retryable: Callable[[LedgerCallError], bool],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> R:
    """Runs ``attempt(remaining_s)`` until it succeeds, fails for good, runs out of
    attempts or the overall deadline ``timeout_s`` passes.

    ``attempt`` gets the time left as its own deadline, so every attempt ends before the
    overall deadline does.
    """
    rng = rng or random.Random()
    deadline = clock() + timeout_s
    number = 0
    while True:
        number += 1
        remaining = deadline - clock()
        try:
            return attempt(max(remaining, 0.0))
        except grpc.RpcError as exc:
            error = LedgerCallError.from_rpc_error(exc, method, number)
            if number >= policy.max_attempts or not retryable(error):
                raise error from exc
            wait = max(policy.backoff(number, rng), error.retry_delay_s or 0.0)
            if clock() + wait >= deadline:
                raise error from exc
        sleep(wait)


Metadata = tuple[tuple[str, str], ...]


class LedgerClient:
    """One method per RPC of the participant, listing, trade and access services, plus
    the audit reads; each takes and returns the generated messages.

    ``channel`` lets several clients (say, one per role) share a connection, or a test
    put an intercepted channel underneath; a channel passed in is not closed here.
    """

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._owns_channel = channel is None
        self._channel: grpc.Channel = channel or grpc.insecure_channel(
            address, options=CHANNEL_OPTIONS
        )
        self._metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._participants = participant_pb2_grpc.ParticipantServiceStub(self._channel)
        self._listings = listing_pb2_grpc.ListingServiceStub(self._channel)
        self._trades = trade_pb2_grpc.TradeServiceStub(self._channel)
        self._access = access_pb2_grpc.AccessServiceStub(self._channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def wait_until_ready(self, timeout_s: float) -> None:
        """Waits until the channel connects; raises ``TimeoutError`` if it does not."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no ledger server answered at {self.address}") from None

    def _call(self, rpc: Any, request: Message, response: type[Resp]) -> Resp:
        # The generated stubs are untyped (grpc ships no annotations), hence ``response``.
        def attempt(remaining_s: float) -> Any:
            return rpc(request, timeout=remaining_s, metadata=self._metadata)

        result = call_with_retry(
            attempt,
            method=response.__name__.removesuffix("Response"),
            timeout_s=self.timeout_s,
            policy=self.retry,
            retryable=lambda error: is_retryable(error, request),
            sleep=self._sleep,
            rng=self._rng,
        )
        if not isinstance(result, response):
            msg = f"expected {response.__name__}, got {type(result).__name__}"
            raise TypeError(msg)
        return result

    # --- ParticipantService -----------------------------------------------------------

    def register_participant(
        self, request: participant_pb2.RegisterParticipantRequest
    ) -> participant_pb2.RegisterParticipantResponse:
        return self._call(
            self._participants.RegisterParticipant,
            request,
            participant_pb2.RegisterParticipantResponse,
        )

    def issue_certification(
        self, request: participant_pb2.IssueCertificationRequest
    ) -> participant_pb2.IssueCertificationResponse:
        return self._call(
            self._participants.IssueCertification,
            request,
            participant_pb2.IssueCertificationResponse,
        )

    def suspend_certification(
        self, request: participant_pb2.SuspendCertificationRequest
    ) -> participant_pb2.SuspendCertificationResponse:
        return self._call(
            self._participants.SuspendCertification,
            request,
            participant_pb2.SuspendCertificationResponse,
        )

    def reinstate_certification(
        self, request: participant_pb2.ReinstateCertificationRequest
    ) -> participant_pb2.ReinstateCertificationResponse:
        return self._call(
            self._participants.ReinstateCertification,
            request,
            participant_pb2.ReinstateCertificationResponse,
        )

    def revoke_certification(
        self, request: participant_pb2.RevokeCertificationRequest
    ) -> participant_pb2.RevokeCertificationResponse:
        return self._call(
            self._participants.RevokeCertification,
            request,
            participant_pb2.RevokeCertificationResponse,
        )

    def suspend_participant(
        self, request: participant_pb2.SuspendParticipantRequest
    ) -> participant_pb2.SuspendParticipantResponse:
        return self._call(
            self._participants.SuspendParticipant,
            request,
            participant_pb2.SuspendParticipantResponse,
        )

    def reinstate_participant(
        self, request: participant_pb2.ReinstateParticipantRequest
    ) -> participant_pb2.ReinstateParticipantResponse:
        return self._call(
            self._participants.ReinstateParticipant,
            request,
            participant_pb2.ReinstateParticipantResponse,
        )

    def deregister_participant(
        self, request: participant_pb2.DeregisterParticipantRequest
    ) -> participant_pb2.DeregisterParticipantResponse:
        return self._call(
            self._participants.DeregisterParticipant,
            request,
            participant_pb2.DeregisterParticipantResponse,
        )

    def get_participant(self, participant_id: str) -> participant_pb2.Participant:
        response = self._call(
            self._participants.GetParticipant,
            participant_pb2.GetParticipantRequest(participant_id=participant_id),
            participant_pb2.GetParticipantResponse,
        )
        return response.participant

    def list_participants(
        self, request: participant_pb2.ListParticipantsRequest
    ) -> participant_pb2.ListParticipantsResponse:
        return self._call(
            self._participants.ListParticipants,
            request,
            participant_pb2.ListParticipantsResponse,
        )

    # --- ListingService ---------------------------------------------------------------

    def submit_listing(
        self, request: listing_pb2.SubmitListingRequest
    ) -> listing_pb2.SubmitListingResponse:
        return self._call(self._listings.SubmitListing, request, listing_pb2.SubmitListingResponse)

    def record_assessment(
        self, request: listing_pb2.RecordAssessmentRequest
    ) -> listing_pb2.RecordAssessmentResponse:
        return self._call(
            self._listings.RecordAssessment, request, listing_pb2.RecordAssessmentResponse
        )

    def approve_listing(
        self, request: listing_pb2.ApproveListingRequest
    ) -> listing_pb2.ApproveListingResponse:
        return self._call(
            self._listings.ApproveListing, request, listing_pb2.ApproveListingResponse
        )

    def reject_listing(
        self, request: listing_pb2.RejectListingRequest
    ) -> listing_pb2.RejectListingResponse:
        return self._call(self._listings.RejectListing, request, listing_pb2.RejectListingResponse)

    def suspend_listing(
        self, request: listing_pb2.SuspendListingRequest
    ) -> listing_pb2.SuspendListingResponse:
        return self._call(
            self._listings.SuspendListing, request, listing_pb2.SuspendListingResponse
        )

    def reinstate_listing(
        self, request: listing_pb2.ReinstateListingRequest
    ) -> listing_pb2.ReinstateListingResponse:
        return self._call(
            self._listings.ReinstateListing, request, listing_pb2.ReinstateListingResponse
        )

    def delist_listing(
        self, request: listing_pb2.DelistListingRequest
    ) -> listing_pb2.DelistListingResponse:
        return self._call(self._listings.DelistListing, request, listing_pb2.DelistListingResponse)

    def reclassify_listing(
        self, request: listing_pb2.ReclassifyListingRequest
    ) -> listing_pb2.ReclassifyListingResponse:
        return self._call(
            self._listings.ReclassifyListing, request, listing_pb2.ReclassifyListingResponse
        )

    def open_ownership_dispute(
        self, request: listing_pb2.OpenOwnershipDisputeRequest
    ) -> listing_pb2.OpenOwnershipDisputeResponse:
        return self._call(
            self._listings.OpenOwnershipDispute,
            request,
            listing_pb2.OpenOwnershipDisputeResponse,
        )

    def resolve_ownership_dispute(
        self, request: listing_pb2.ResolveOwnershipDisputeRequest
    ) -> listing_pb2.ResolveOwnershipDisputeResponse:
        return self._call(
            self._listings.ResolveOwnershipDispute,
            request,
            listing_pb2.ResolveOwnershipDisputeResponse,
        )

    def get_listing(self, listing_id: str) -> listing_pb2.Listing:
        response = self._call(
            self._listings.GetListing,
            listing_pb2.GetListingRequest(listing_id=listing_id),
            listing_pb2.GetListingResponse,
        )
        return response.listing

    def list_listings(
        self, request: listing_pb2.ListListingsRequest
    ) -> listing_pb2.ListListingsResponse:
        return self._call(self._listings.ListListings, request, listing_pb2.ListListingsResponse)

    # --- TradeService -----------------------------------------------------------------

    def record_sale(self, request: trade_pb2.RecordSaleRequest) -> trade_pb2.RecordSaleResponse:
        return self._call(self._trades.RecordSale, request, trade_pb2.RecordSaleResponse)

    def settle_trade(self, request: trade_pb2.SettleTradeRequest) -> trade_pb2.SettleTradeResponse:
        return self._call(self._trades.SettleTrade, request, trade_pb2.SettleTradeResponse)

    def cancel_trade(self, request: trade_pb2.CancelTradeRequest) -> trade_pb2.CancelTradeResponse:
        return self._call(self._trades.CancelTrade, request, trade_pb2.CancelTradeResponse)

    def get_trade(self, trade_id: str) -> trade_pb2.Trade:
        response = self._call(
            self._trades.GetTrade,
            trade_pb2.GetTradeRequest(trade_id=trade_id),
            trade_pb2.GetTradeResponse,
        )
        return response.trade

    def list_trades(self, request: trade_pb2.ListTradesRequest) -> trade_pb2.ListTradesResponse:
        return self._call(self._trades.ListTrades, request, trade_pb2.ListTradesResponse)

    def ingest_commands(
        self, request: trade_pb2.IngestCommandsRequest
    ) -> trade_pb2.IngestCommandsResponse:
        """Sends a batch; each command keeps its request_id, so the whole batch is
        retried safely. Per-command failures come back in the results, not raised."""
        return self._call(self._trades.IngestCommands, request, trade_pb2.IngestCommandsResponse)

    # --- AccessService ----------------------------------------------------------------

    def grant_access(
        self, request: access_pb2.GrantAccessRequest
    ) -> access_pb2.GrantAccessResponse:
        return self._call(self._access.GrantAccess, request, access_pb2.GrantAccessResponse)

    def suspend_access(
        self, request: access_pb2.SuspendAccessRequest
    ) -> access_pb2.SuspendAccessResponse:
        return self._call(self._access.SuspendAccess, request, access_pb2.SuspendAccessResponse)

    def reinstate_access(
        self, request: access_pb2.ReinstateAccessRequest
    ) -> access_pb2.ReinstateAccessResponse:
        return self._call(self._access.ReinstateAccess, request, access_pb2.ReinstateAccessResponse)

    def revoke_access(
        self, request: access_pb2.RevokeAccessRequest
    ) -> access_pb2.RevokeAccessResponse:
        return self._call(self._access.RevokeAccess, request, access_pb2.RevokeAccessResponse)

    def record_access_use(
        self, request: access_pb2.RecordAccessUseRequest
    ) -> access_pb2.RecordAccessUseResponse:
        return self._call(self._access.RecordAccessUse, request, access_pb2.RecordAccessUseResponse)

    def check_access(
        self, request: access_pb2.CheckAccessRequest
    ) -> access_pb2.CheckAccessResponse:
        return self._call(self._access.CheckAccess, request, access_pb2.CheckAccessResponse)

    def get_grant(self, grant_id: str) -> access_pb2.Grant:
        response = self._call(
            self._access.GetGrant,
            access_pb2.GetGrantRequest(grant_id=grant_id),
            access_pb2.GetGrantResponse,
        )
        return response.grant

    def list_grants(self, request: access_pb2.ListGrantsRequest) -> access_pb2.ListGrantsResponse:
        return self._call(self._access.ListGrants, request, access_pb2.ListGrantsResponse)

    # --- AuditService reads -----------------------------------------------------------

    def get_ledger_info(self) -> audit_pb2.GetLedgerInfoResponse:
        return self._call(
            self._audit.GetLedgerInfo,
            audit_pb2.GetLedgerInfoRequest(),
            audit_pb2.GetLedgerInfoResponse,
        )

    def get_checkpoint(
        self, request: audit_pb2.GetCheckpointRequest
    ) -> audit_pb2.GetCheckpointResponse:
        return self._call(self._audit.GetCheckpoint, request, audit_pb2.GetCheckpointResponse)

    def get_ownership(
        self, request: audit_pb2.GetOwnershipRequest
    ) -> audit_pb2.GetOwnershipResponse:
        return self._call(self._audit.GetOwnership, request, audit_pb2.GetOwnershipResponse)

    def get_compliance_report(
        self, request: audit_pb2.GetComplianceReportRequest
    ) -> audit_pb2.GetComplianceReportResponse:
        return self._call(
            self._audit.GetComplianceReport, request, audit_pb2.GetComplianceReportResponse
        )
