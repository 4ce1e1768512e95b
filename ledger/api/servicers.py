"""The ``ledger.v1`` servicers: each method translates its request, makes one application
call and translates the result back. Errors propagate to the error interceptor."""

# gRPC names the servicer methods after the RPCs.
# ruff: noqa: N802

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from ledger.api import convert
from ledger.api.errors import Unimplemented, status_for
from ledger.api.interceptors import Call, actor_of, current_call
from ledger.application import commands as c
from ledger.application.app import Actor, MarketLedger, Outcome
from ledger.application.queries import Page, Queries
from ledger.audit.checkpoints import CheckpointStore
from ledger.audit.replay import MAX_REPLAY_STREAMS, EncodingPool, EventReplay
from ledger.audit.stored import audit_reader
from ledger.domain.base import LedgerAggregate
from ledger.domain.errors import InvalidArgument, NotFound
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.v1 import access_pb2 as ac
from ledger.v1 import (
    access_pb2_grpc,
    audit_pb2_grpc,
    listing_pb2_grpc,
    participant_pb2_grpc,
    projection_pb2_grpc,
    trade_pb2_grpc,
)
from ledger.v1 import audit_pb2 as au
from ledger.v1 import listing_pb2 as li
from ledger.v1 import participant_pb2 as pa
from ledger.v1 import projection_pb2 as pr
from ledger.v1 import trade_pb2 as tr

Cmd = TypeVar("Cmd", bound=c.Command)
R = TypeVar("R", bound=Message)
A = TypeVar("A", bound=LedgerAggregate)

Context: TypeAlias = grpc.ServicerContext

MAX_INGEST_COMMANDS = 1000


class _Servicer:
    """The shapes every servicer method takes: a command, or a read of one resource."""

    def __init__(self, app: MarketLedger, queries: Queries) -> None:
        self._app = app
        self._queries = queries

    def _command(
        self, request: Message, context: Context, command: type[Cmd], response: type[R]
    ) -> R:
        outcome = self._app.execute(convert.to_command(request, command), actor_of(context))
        return convert.to_response(response, outcome, request, self._app.clock.now())

    def _get(self, cls: type[A], value: str, field: str, context: Context) -> A:
        return self._app.get(cls, value, actor_of(context), field)

    def _page(
        self, cls: type[A], request: Message, filters: dict[str, str], context: Context
    ) -> Page[A]:
        page_size: int = getattr(request, "page_size")  # noqa: B009 (every List request has it)
        page_token: str = getattr(request, "page_token")  # noqa: B009
        return self._queries.page(cls, filters, page_size, page_token, actor_of(context))


def _enum(request: Message, field: str) -> str:
    """The application's name of an enum filter; "" when unset."""
    descriptor = request.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None  # for mypy: only enum fields are passed
    return convert.enum_name(descriptor, getattr(request, field))


def _unimplemented(context: Context) -> Unimplemented:
    method = current_call(context).method.rsplit("/", 1)[-1]
    return Unimplemented(f"{method} is not implemented yet")


class ParticipantService(_Servicer, participant_pb2_grpc.ParticipantServiceServicer):
    def RegisterParticipant(
        self, request: pa.RegisterParticipantRequest, context: Context
    ) -> pa.RegisterParticipantResponse:
        return self._command(
            request, context, c.RegisterParticipant, pa.RegisterParticipantResponse
        )

    def IssueCertification(
        self, request: pa.IssueCertificationRequest, context: Context
    ) -> pa.IssueCertificationResponse:
        return self._command(request, context, c.IssueCertification, pa.IssueCertificationResponse)

    def SuspendCertification(
        self, request: pa.SuspendCertificationRequest, context: Context
    ) -> pa.SuspendCertificationResponse:
        return self._command(
            request, context, c.SuspendCertification, pa.SuspendCertificationResponse
        )

    def ReinstateCertification(
        self, request: pa.ReinstateCertificationRequest, context: Context
    ) -> pa.ReinstateCertificationResponse:
        return self._command(
            request, context, c.ReinstateCertification, pa.ReinstateCertificationResponse
        )

    def RevokeCertification(
        self, request: pa.RevokeCertificationRequest, context: Context
    ) -> pa.RevokeCertificationResponse:
        return self._command(
            request, context, c.RevokeCertification, pa.RevokeCertificationResponse
        )

    def SuspendParticipant(
        self, request: pa.SuspendParticipantRequest, context: Context
    ) -> pa.SuspendParticipantResponse:
        return self._command(request, context, c.SuspendParticipant, pa.SuspendParticipantResponse)

    def ReinstateParticipant(
        self, request: pa.ReinstateParticipantRequest, context: Context
    ) -> pa.ReinstateParticipantResponse:
        return self._command(
            request, context, c.ReinstateParticipant, pa.ReinstateParticipantResponse
        )

    def DeregisterParticipant(
        self, request: pa.DeregisterParticipantRequest, context: Context
    ) -> pa.DeregisterParticipantResponse:
        return self._command(
            request, context, c.DeregisterParticipant, pa.DeregisterParticipantResponse
        )

    def GetParticipant(
        self, request: pa.GetParticipantRequest, context: Context
    ) -> pa.GetParticipantResponse:
        participant = self._get(Participant, request.participant_id, "participant_id", context)
        return pa.GetParticipantResponse(
            participant=convert.participant_pb(participant, self._app.clock.now())
        )

    def ListParticipants(
        self, request: pa.ListParticipantsRequest, context: Context
    ) -> pa.ListParticipantsResponse:
        filters = {"roles": _enum(request, "role"), "state": _enum(request, "state")}
        page = self._page(Participant, request, filters, context)
        now = self._app.clock.now()
        return pa.ListParticipantsResponse(
            participants=[convert.participant_pb(p, now) for p in page.items],
            next_page_token=page.next_page_token,
        )


class ListingService(_Servicer, listing_pb2_grpc.ListingServiceServicer):
    def SubmitListing(
        self, request: li.SubmitListingRequest, context: Context
    ) -> li.SubmitListingResponse:
        return self._command(request, context, c.SubmitListing, li.SubmitListingResponse)

    def RecordAssessment(
        self, request: li.RecordAssessmentRequest, context: Context
    ) -> li.RecordAssessmentResponse:
        return self._command(request, context, c.RecordAssessment, li.RecordAssessmentResponse)

    def ApproveListing(
        self, request: li.ApproveListingRequest, context: Context
    ) -> li.ApproveListingResponse:
        return self._command(request, context, c.ApproveListing, li.ApproveListingResponse)

    def RejectListing(
        self, request: li.RejectListingRequest, context: Context
    ) -> li.RejectListingResponse:
        return self._command(request, context, c.RejectListing, li.RejectListingResponse)

    def SuspendListing(
        self, request: li.SuspendListingRequest, context: Context
    ) -> li.SuspendListingResponse:
        return self._command(request, context, c.SuspendListing, li.SuspendListingResponse)

    def ReinstateListing(
        self, request: li.ReinstateListingRequest, context: Context
    ) -> li.ReinstateListingResponse:
        return self._command(request, context, c.ReinstateListing, li.ReinstateListingResponse)

    def DelistListing(
        self, request: li.DelistListingRequest, context: Context
    ) -> li.DelistListingResponse:
        return self._command(request, context, c.DelistListing, li.DelistListingResponse)

    def ReclassifyListing(
        self, request: li.ReclassifyListingRequest, context: Context
    ) -> li.ReclassifyListingResponse:
        return self._command(request, context, c.ReclassifyListing, li.ReclassifyListingResponse)

    def OpenOwnershipDispute(
        self, request: li.OpenOwnershipDisputeRequest, context: Context
    ) -> li.OpenOwnershipDisputeResponse:
        return self._command(
            request, context, c.OpenOwnershipDispute, li.OpenOwnershipDisputeResponse
        )

    def ResolveOwnershipDispute(
        self, request: li.ResolveOwnershipDisputeRequest, context: Context
    ) -> li.ResolveOwnershipDisputeResponse:
        return self._command(
            request, context, c.ResolveOwnershipDispute, li.ResolveOwnershipDisputeResponse
        )

    def GetListing(self, request: li.GetListingRequest, context: Context) -> li.GetListingResponse:
        listing = self._get(Listing, request.listing_id, "listing_id", context)
        return li.GetListingResponse(listing=convert.listing_pb(listing))

    def ListListings(
        self, request: li.ListListingsRequest, context: Context
    ) -> li.ListListingsResponse:
        filters = {
            "exchange_id": request.exchange_id,
            "provider_id": request.provider_id,
            "category": _enum(request, "category"),
            "classification": _enum(request, "classification"),
            "state": _enum(request, "state"),
            "scenarios": request.scenario,
        }
        page = self._page(Listing, request, filters, context)
        return li.ListListingsResponse(
            listings=[convert.listing_pb(x) for x in page.items],
            next_page_token=page.next_page_token,
        )


# The commands an ingest batch may carry: the Command oneof field, the command, and the
# response the single call returns (the CommandResult field of the same name).
_INGESTIBLE: dict[str, tuple[type[c.Command], type[Message]]] = {
    "record_sale": (c.RecordSale, tr.RecordSaleResponse),
    "grant_access": (c.GrantAccess, ac.GrantAccessResponse),
    "record_access_use": (c.RecordAccessUse, ac.RecordAccessUseResponse),
    "settle_trade": (c.SettleTrade, tr.SettleTradeResponse),
}


class TradeService(_Servicer, trade_pb2_grpc.TradeServiceServicer):
    def RecordSale(self, request: tr.RecordSaleRequest, context: Context) -> tr.RecordSaleResponse:
        return self._command(request, context, c.RecordSale, tr.RecordSaleResponse)

    def SettleTrade(
        self, request: tr.SettleTradeRequest, context: Context
    ) -> tr.SettleTradeResponse:
        return self._command(request, context, c.SettleTrade, tr.SettleTradeResponse)

    def CancelTrade(
        self, request: tr.CancelTradeRequest, context: Context
    ) -> tr.CancelTradeResponse:
        return self._command(request, context, c.CancelTrade, tr.CancelTradeResponse)

    def GetTrade(self, request: tr.GetTradeRequest, context: Context) -> tr.GetTradeResponse:
        trade = self._get(Trade, request.trade_id, "trade_id", context)
        return tr.GetTradeResponse(trade=convert.trade_pb(trade))

    def ListTrades(self, request: tr.ListTradesRequest, context: Context) -> tr.ListTradesResponse:
        filters = {
            "exchange_id": request.exchange_id,
            "listing_id": request.listing_id,
            "seller_id": request.seller_id,
            "buyer_id": request.buyer_id,
            "state": _enum(request, "state"),
        }
        page = self._page(Trade, request, filters, context)
        return tr.ListTradesResponse(
            trades=[convert.trade_pb(x) for x in page.items],
            next_page_token=page.next_page_token,
        )

    def IngestCommands(
        self, request: tr.IngestCommandsRequest, context: Context
    ) -> tr.IngestCommandsResponse:
        if len(request.commands) > MAX_INGEST_COMMANDS:
            raise InvalidArgument.of("commands", f"at most {MAX_INGEST_COMMANDS} per call")
        actor, call = actor_of(context), current_call(context)
        refused: dict[int, tr.CommandResult] = {}
        batch: list[tuple[c.Command, Actor]] = []
        for i, item in enumerate(request.commands):
            kind = item.WhichOneof("kind")
            if kind is None:
                error = InvalidArgument.of("kind", "set one command of the oneof")
                refused[i] = tr.CommandResult(error=status_for(error))
                continue
            message: Message = getattr(item, kind)
            try:
                batch.append((convert.to_command(message, _INGESTIBLE[kind][0]), actor))
            except Exception as exc:
                call.record(exc)
                refused[i] = tr.CommandResult(error=status_for(exc, message))
        # Every command fails on its own and the batch goes on; the commands that
        # succeed are written together, in one transaction.
        outcomes = iter(self._app.execute_batch(batch))
        now = self._app.clock.now()
        return tr.IngestCommandsResponse(
            results=[
                refused[i] if i in refused else self._ingested(item, next(outcomes), now, call)
                for i, item in enumerate(request.commands)
            ]
        )

    @staticmethod
    def _ingested(
        item: tr.Command, outcome: Outcome | Exception, now: datetime, call: Call
    ) -> tr.CommandResult:
        kind = item.WhichOneof("kind")
        assert kind is not None  # for mypy: items without one were refused above
        request: Message = getattr(item, kind)
        if isinstance(outcome, Exception):
            call.record(outcome)
            return tr.CommandResult(error=status_for(outcome, request))
        # The result is built in one go from the response's fields, without a response
        # message of its own to copy into it.
        fields: dict[str, Any] = {
            kind: convert.response_fields(_INGESTIBLE[kind][1], outcome, request, now)
        }
        return tr.CommandResult(**fields)


class AccessService(_Servicer, access_pb2_grpc.AccessServiceServicer):
    def GrantAccess(
        self, request: ac.GrantAccessRequest, context: Context
    ) -> ac.GrantAccessResponse:
        return self._command(request, context, c.GrantAccess, ac.GrantAccessResponse)

    def SuspendAccess(
        self, request: ac.SuspendAccessRequest, context: Context
    ) -> ac.SuspendAccessResponse:
        return self._command(request, context, c.SuspendAccess, ac.SuspendAccessResponse)

    def ReinstateAccess(
        self, request: ac.ReinstateAccessRequest, context: Context
    ) -> ac.ReinstateAccessResponse:
        return self._command(request, context, c.ReinstateAccess, ac.ReinstateAccessResponse)

    def RevokeAccess(
        self, request: ac.RevokeAccessRequest, context: Context
    ) -> ac.RevokeAccessResponse:
        return self._command(request, context, c.RevokeAccess, ac.RevokeAccessResponse)

    def RecordAccessUse(
        self, request: ac.RecordAccessUseRequest, context: Context
    ) -> ac.RecordAccessUseResponse:
        return self._command(request, context, c.RecordAccessUse, ac.RecordAccessUseResponse)

    def CheckAccess(
        self, request: ac.CheckAccessRequest, context: Context
    ) -> ac.CheckAccessResponse:
        as_of_time, as_of_position = convert.as_of(request)
        at = convert.to_datetime(request.at, "at") if request.HasField("at") else None
        decision, position = self._queries.check_access(
            request.grantee_id,
            request.listing_id,
            _enum(request, "delivery_mode"),
            request.scenario,
            at,
            as_of_time,
            as_of_position,
            actor_of(context),
        )
        return ac.CheckAccessResponse(
            allowed=decision.allowed,
            grant_id=decision.grant_id,
            reason=decision.reason,
            as_of_position=position,
        )

    def GetGrant(self, request: ac.GetGrantRequest, context: Context) -> ac.GetGrantResponse:
        grant = self._get(AccessGrant, request.grant_id, "grant_id", context)
        return ac.GetGrantResponse(grant=convert.grant_pb(grant, self._app.clock.now()))

    def ListGrants(self, request: ac.ListGrantsRequest, context: Context) -> ac.ListGrantsResponse:
        filters = {
            "exchange_id": request.exchange_id,
            "listing_id": request.listing_id,
            "trade_id": request.trade_id,
            "grantee_id": request.grantee_id,
            "state": _enum(request, "state"),
        }
        page = self._page(AccessGrant, request, filters, context)
        now = self._app.clock.now()
        return ac.ListGrantsResponse(
            grants=[convert.grant_pb(x, now) for x in page.items],
            next_page_token=page.next_page_token,
        )


@dataclass(frozen=True)
class ServerIdentity:
    """What ``GetLedgerInfo`` says about this server besides the store's state."""

    backend: str
    public_key: str
    key_id: str
    version: str


class AuditService(_Servicer, audit_pb2_grpc.AuditServiceServicer):
    def __init__(
        self,
        app: MarketLedger,
        queries: Queries,
        server: ServerIdentity,
        ledger_id: Callable[[], str],
        replay_pool: EncodingPool | None = None,
    ) -> None:
        super().__init__(app, queries)
        self._server = server
        self._ledger_id = ledger_id
        db = queries.projections.db
        self._replay = EventReplay(
            audit_reader(app.recorder, db), app.head_position, pool=replay_pool
        )
        self._replay_slots = threading.BoundedSemaphore(MAX_REPLAY_STREAMS)
        self._checkpoints = CheckpointStore(db)

    def ReplayEvents(  # type: ignore[override] # bytes: see ledger.audit.wire
        self, request: au.ReplayEventsRequest, context: Context
    ) -> Iterator[bytes]:
        """Streams encoded ``ReplayEventsResponse`` messages as fast as the client takes
        them; a few streams at most, so that stalled ones cannot take every worker."""
        query = convert.replay_query(request)
        if not self._replay_slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_REPLAY_STREAMS} replays are running; retry when one has ended",
            )
        try:
            yield from self._replay.messages(query, context.is_active)
        finally:
            self._replay_slots.release()

    def GetOwnership(
        self, request: au.GetOwnershipRequest, context: Context
    ) -> au.GetOwnershipResponse:
        as_of_time, as_of_position = convert.as_of(request)
        holdings, position = self._queries.ownership(
            request.listing_id, as_of_time, as_of_position, actor_of(context)
        )
        return convert.ownership_pb(request.listing_id, holdings, position)

    def GetComplianceReport(
        self, request: au.GetComplianceReportRequest, context: Context
    ) -> au.GetComplianceReportResponse:
        as_of_time, as_of_position = convert.as_of(request)
        report = self._queries.compliance_report(
            request.exchange_id, as_of_time, as_of_position, actor_of(context)
        )
        return convert.compliance_report_pb(report, self._app.clock.now())

    def GetCheckpoint(
        self, request: au.GetCheckpointRequest, context: Context
    ) -> au.GetCheckpointResponse:
        at = request.at_position if request.HasField("at_position") else None
        checkpoint = self._checkpoints.latest(at)
        if checkpoint is None:
            raise NotFound("checkpoint", "latest" if at is None else f"at or before {at}")
        return au.GetCheckpointResponse(checkpoint=convert.checkpoint_pb(checkpoint))

    def GetLedgerInfo(
        self, request: au.GetLedgerInfoRequest, context: Context
    ) -> au.GetLedgerInfoResponse:
        return au.GetLedgerInfoResponse(
            ledger_id=self._ledger_id(),
            backend=self._server.backend,
            head_position=self._app.head_position(),
            public_key=self._server.public_key,
            key_id=self._server.key_id,
            version=self._server.version,
        )


class ProjectionService(projection_pb2_grpc.ProjectionServiceServicer):
    def __init__(self, queries: Queries, watch_interval_s: float = 1.0) -> None:
        self._queries = queries
        self._watch_interval_s = watch_interval_s

    def ListProjections(
        self, request: pr.ListProjectionsRequest, context: Context
    ) -> pr.ListProjectionsResponse:
        return pr.ListProjectionsResponse(
            projections=[convert.projection_status_pb(s) for s in self._queries.statuses()]
        )

    def RebuildProjection(
        self, request: pr.RebuildProjectionRequest, context: Context
    ) -> pr.RebuildProjectionResponse:
        status = self._queries.rebuild(request.name)
        return pr.RebuildProjectionResponse(status=convert.projection_status_pb(status))

    def WatchProjection(
        self, request: pr.WatchProjectionRequest, context: Context
    ) -> Iterator[pr.WatchProjectionResponse]:
        """Streams the projection's status once a second until the client goes away."""
        while context.is_active():
            status = self._queries.status(request.name)
            yield pr.WatchProjectionResponse(status=convert.projection_status_pb(status))
            time.sleep(self._watch_interval_s)
