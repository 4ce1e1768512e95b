"""The authorisation matrix: every RPC of the six ledger.v1 services by every caller, in and
out of scope, against one real server.

The expected matrix is written out below from the role table of the service spec, not
taken from ``ledger.api.authz``, so that the policy is checked against the contract rather
than against itself. An allowed cell may fail for other reasons (a rule, a missing
resource, a method still UNIMPLEMENTED) but never UNAUTHENTICATED or PERMISSION_DENIED; a
denied cell is refused and writes nothing.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from ledger.api.principals import hash_token
from ledger.application.markers import entity_id
from ledger.v1 import (
    access_pb2,
    audit_pb2,
    common_pb2,
    listing_pb2,
    participant_pb2,
    projection_pb2,
    trade_pb2,
)
from tests.e2e.conftest import (
    Metadata,
    ServerFiles,
    Stubs,
    bearer,
    make_signing_key,
    rid,
    start_ledger,
    timestamp,
)
from tests.market import uscc

SCENARIO = "credit-risk-scoring"


class Scope(enum.Enum):
    """Where a request points: ``NONE`` for methods without venue or identity scope."""

    NONE = "-"
    IN = "in"
    OUT = "out"


class Kind(enum.Enum):
    """How a method is scoped."""

    GLOBAL = "global"  # no venue data, or the whole log at once
    VENUE = "venue"  # one exchange's listing, trade or grant
    ACTS_AS = "acts-as"  # the caller names itself in the request


# Callers: the six roles, an auditor restricted to venue A, and no token at all.
EXCHANGE, REGISTRY, ASSESSOR, AUDITOR = "exchange", "registry", "assessor", "auditor"
SCOPED_AUDITOR, OPERATOR, ADMIN, ANONYMOUS = "auditor-of-a", "operator", "admin", "no-token"
CALLERS = (EXCHANGE, REGISTRY, ASSESSOR, AUDITOR, SCOPED_AUDITOR, OPERATOR, ADMIN, ANONYMOUS)

# The role table of the service spec, one row per RPC: how it is scoped and which roles
# besides admin may call it. "every read" of the auditor covers the Get*, List*,
# CheckAccess, audit and projection-status reads; the operator has ProjectionService,
# health and GetLedgerInfo; the registry participant and certification commands and
# participant reads; the assessor RecordAssessment as itself; the exchange its venue's
# listings, trades and grants with CheckAccess and RecordAccessUse. IngestCommands
# (a batch of RecordSale, SettleTrade, GrantAccess and RecordAccessUse) follows them.
_EX, _RE, _AS, _AU, _OP = EXCHANGE, REGISTRY, ASSESSOR, AUDITOR, OPERATOR
MATRIX: dict[str, tuple[Kind, frozenset[str]]] = {
    "ParticipantService/RegisterParticipant": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/IssueCertification": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/SuspendCertification": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/ReinstateCertification": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/RevokeCertification": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/SuspendParticipant": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/ReinstateParticipant": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/DeregisterParticipant": (Kind.GLOBAL, frozenset({_RE})),
    "ParticipantService/GetParticipant": (Kind.GLOBAL, frozenset({_RE, _AU, _EX})),
    "ParticipantService/ListParticipants": (Kind.GLOBAL, frozenset({_RE, _AU, _EX})),
    "ListingService/SubmitListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/RecordAssessment": (Kind.ACTS_AS, frozenset({_AS})),
    "ListingService/ApproveListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/RejectListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/SuspendListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/ReinstateListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/DelistListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/ReclassifyListing": (Kind.VENUE, frozenset({_EX})),
    "ListingService/OpenOwnershipDispute": (Kind.VENUE, frozenset({_EX})),
    "ListingService/ResolveOwnershipDispute": (Kind.VENUE, frozenset({_EX})),
    "ListingService/GetListing": (Kind.VENUE, frozenset({_EX, _AU})),
    "ListingService/ListListings": (Kind.VENUE, frozenset({_EX, _AU})),
    "TradeService/RecordSale": (Kind.VENUE, frozenset({_EX})),
    "TradeService/SettleTrade": (Kind.VENUE, frozenset({_EX})),
    "TradeService/CancelTrade": (Kind.VENUE, frozenset({_EX})),
    "TradeService/IngestCommands": (Kind.VENUE, frozenset({_EX})),
    "TradeService/GetTrade": (Kind.VENUE, frozenset({_EX, _AU})),
    "TradeService/ListTrades": (Kind.VENUE, frozenset({_EX, _AU})),
    "AccessService/GrantAccess": (Kind.VENUE, frozenset({_EX})),
    "AccessService/SuspendAccess": (Kind.VENUE, frozenset({_EX})),
    "AccessService/ReinstateAccess": (Kind.VENUE, frozenset({_EX})),
    "AccessService/RevokeAccess": (Kind.VENUE, frozenset({_EX})),
    "AccessService/RecordAccessUse": (Kind.VENUE, frozenset({_EX})),
    "AccessService/CheckAccess": (Kind.VENUE, frozenset({_EX, _AU})),
    "AccessService/GetGrant": (Kind.VENUE, frozenset({_EX, _AU})),
    "AccessService/ListGrants": (Kind.VENUE, frozenset({_EX, _AU})),
    "AuditService/ReplayEvents": (Kind.GLOBAL, frozenset({_AU})),
    "AuditService/GetOwnership": (Kind.VENUE, frozenset({_AU})),
    "AuditService/GetComplianceReport": (Kind.VENUE, frozenset({_AU})),
    "AuditService/GetCheckpoint": (Kind.GLOBAL, frozenset({_AU})),
    "AuditService/GetLedgerInfo": (Kind.GLOBAL, frozenset({_AU, _OP})),
    "ProjectionService/ListProjections": (Kind.GLOBAL, frozenset({_OP, _AU})),
    "ProjectionService/RebuildProjection": (Kind.GLOBAL, frozenset({_OP})),
    "ProjectionService/WatchProjection": (Kind.GLOBAL, frozenset({_OP, _AU})),
}
# One deliberate widening of the table: exchanges read participant records, because to
# list a product or record a sale they must look up the parties they deal with, and a
# participant record holds no venue's data. It is in the rows above, named here so that
# it stays a decision rather than an accident.
EXTENSIONS = {
    ("ParticipantService/GetParticipant", EXCHANGE),
    ("ParticipantService/ListParticipants", EXCHANGE),
}
# Streaming the whole log shows every venue's events, so an auditor restricted to some
# exchanges may not replay it.
WHOLE_LEDGER = {"AuditService/ReplayEvents"}
STREAMING = {"AuditService/ReplayEvents", "ProjectionService/WatchProjection"}
# Reads of one resource: for them an allowed call must succeed, since the resource exists.
MUST_SUCCEED = {
    "ParticipantService/GetParticipant",
    "ListingService/GetListing",
    "TradeService/GetTrade",
    "AccessService/GetGrant",
    "AuditService/GetLedgerInfo",
}
LIST_METHODS = {
    "ListingService/ListListings",
    "TradeService/ListTrades",
    "AccessService/ListGrants",
}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def allowed(rpc: str, caller: str, scope: Scope) -> bool:
    """The expected verdict of one cell, from the table above."""
    kind, roles = MATRIX[rpc]
    if caller == ADMIN:
        return True
    if caller == ANONYMOUS:
        return False
    role = AUDITOR if caller == SCOPED_AUDITOR else caller
    if role not in roles:
        return False
    if caller == SCOPED_AUDITOR and rpc in WHOLE_LEDGER:
        return False
    if kind is Kind.VENUE and caller in (EXCHANGE, SCOPED_AUDITOR):
        return scope is Scope.IN
    if kind is Kind.ACTS_AS and caller == ASSESSOR:
        return scope is Scope.IN
    return True


@dataclass(frozen=True)
class Cell:
    rpc: str
    caller: str
    scope: Scope

    @property
    def expected(self) -> bool:
        return allowed(self.rpc, self.caller, self.scope)

    def __str__(self) -> str:
        return f"{self.rpc.split('/')[1]}-{self.caller}-{self.scope.value}"


def cells() -> list[Cell]:
    result = []
    for rpc, (kind, _) in MATRIX.items():
        scopes = (Scope.NONE,) if kind is Kind.GLOBAL else (Scope.IN, Scope.OUT)
        result += [Cell(rpc, c, s) for c, s in itertools.product(CALLERS, scopes)]
    return result


CELLS = cells()


# --- the server and its market --------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The resources the cells point at: venue A is the exchange principal's own."""

    stubs: Stubs
    metadata: dict[str, Metadata]
    venue: dict[Scope, str]
    assessor: dict[Scope, str]
    provider: str
    buyer: str
    victim: str
    victim_certification: str
    submitted: str
    listing: dict[Scope, str]
    trade: dict[Scope, str]
    grant: dict[Scope, str]

    def head(self) -> int:
        info = self.stubs.audit.GetLedgerInfo(
            audit_pb2.GetLedgerInfoRequest(), metadata=self.metadata[ADMIN], timeout=10
        )
        return int(info.head_position)


@dataclass(frozen=True)
class Plan:
    """Request ids chosen before the server starts, so that the principals file can name
    the participants they will create."""

    venue_a: str = field(default_factory=rid)
    venue_b: str = field(default_factory=rid)
    assessor_x: str = field(default_factory=rid)
    assessor_y: str = field(default_factory=rid)

    @staticmethod
    def id_of(request_id: str) -> str:
        return str(entity_id("participant", request_id))


def write_principals(path: Path, plan: Plan) -> dict[str, Metadata]:
    """One principal per caller; returns each caller's metadata."""
    tokens = {caller: uuid.uuid4().hex for caller in CALLERS if caller != ANONYMOUS}
    venue_a = plan.id_of(plan.venue_a)
    entries = {
        EXCHANGE: f'id = "authz-exchange"\nrole = "exchange"\nparticipant_id = "{venue_a}"',
        REGISTRY: 'id = "authz-registry"\nrole = "registry"',
        # An assessor's principal id is its participant id.
        ASSESSOR: f'id = "{plan.id_of(plan.assessor_x)}"\nrole = "assessor"',
        AUDITOR: 'id = "authz-auditor"\nrole = "auditor"',
        SCOPED_AUDITOR: f'id = "authz-auditor-a"\nrole = "auditor"\nexchanges = ["{venue_a}"]',
        OPERATOR: 'id = "authz-operator"\nrole = "operator"',
        ADMIN: 'id = "authz-admin"\nrole = "admin"',
    }
    text = "".join(
        f'[[principal]]\n{body}\ntoken_sha256 = "{hash_token(tokens[caller])}"\n\n'
        for caller, body in entries.items()
    )
    path.write_text(text, encoding="utf-8")
    metadata = {caller: bearer(token) for caller, token in tokens.items()}
    metadata[ANONYMOUS] = ()
    return metadata


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server for the whole matrix, its principals and the resources cells aim at."""
    work = tmp_path_factory.mktemp("authz")
    plan = Plan()
    metadata = write_principals(work / "principals.toml", plan)
    files = ServerFiles(
        database=work / "ledger.db",
        principals=work / "principals.toml",
        signing_key=make_signing_key(work / "signing-key.pem"),
    )
    server = start_ledger(files, work)
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield build_world(Stubs.on(channel), metadata, plan)
    finally:
        server.stop()


def build_world(stubs: Stubs, metadata: dict[str, Metadata], plan: Plan) -> World:
    admin = metadata[ADMIN]
    until = timestamp(datetime.now(tz=UTC) + timedelta(days=365))

    def register(name: str, role: int, request_id: str | None = None) -> str:
        response = stubs.participants.RegisterParticipant(
            participant_pb2.RegisterParticipantRequest(
                request_id=request_id or rid(),
                name=name,
                roles=[role],  # type: ignore[list-item]
                party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
            ),
            metadata=admin,
        )
        return str(response.participant.id)

    def certify(participant_id: str) -> str:
        response = stubs.participants.IssueCertification(
            participant_pb2.IssueCertificationRequest(
                request_id=rid(),
                participant_id=participant_id,
                level=common_pb2.CERTIFICATION_LEVEL_CORE,
                categories=[common_pb2.CATEGORY_FINANCIAL],
                max_classification=common_pb2.CLASSIFICATION_IMPORTANT,
                valid_until=until,
                reference=f"CERT-{rid()[:8]}",
            ),
            metadata=admin,
        )
        return str(response.certification.id)

    exchange, assessor = common_pb2.PARTICIPANT_ROLE_EXCHANGE, common_pb2.PARTICIPANT_ROLE_ASSESSOR
    venue = {
        Scope.IN: register("Venue A Exchange", exchange, plan.venue_a),
        Scope.OUT: register("Venue B Exchange", exchange, plan.venue_b),
    }
    assessors = {
        Scope.IN: register("Assessor X", assessor, plan.assessor_x),
        Scope.OUT: register("Assessor Y", assessor, plan.assessor_y),
    }
    assert venue[Scope.IN] == plan.id_of(plan.venue_a)
    assert assessors[Scope.IN] == plan.id_of(plan.assessor_x)
    for participant in (*venue.values(), *assessors.values()):
        certify(participant)
    provider = register("Provider", common_pb2.PARTICIPANT_ROLE_DATA_HOLDER)
    buyer = register("Buyer", common_pb2.PARTICIPANT_ROLE_BUYER)
    victim = register("Victim Dealer", common_pb2.PARTICIPANT_ROLE_DATA_DEALER)
    victim_certification = certify(victim)

    def submit(exchange_id: str) -> str:
        response = stubs.listings.SubmitListing(
            submit_request(exchange_id, provider, rid()), metadata=admin
        )
        return str(response.listing.id)

    listing, trade, grant = {}, {}, {}
    for scope in (Scope.IN, Scope.OUT):
        listing[scope] = submit(venue[scope])
        stubs.listings.RecordAssessment(
            listing_pb2.RecordAssessmentRequest(
                request_id=rid(),
                listing_id=listing[scope],
                assessor_id=assessors[Scope.IN],
                passed=True,
                reference="LAW-1",
            ),
            metadata=admin,
        )
        stubs.listings.ApproveListing(
            listing_pb2.ApproveListingRequest(request_id=rid(), listing_id=listing[scope]),
            metadata=admin,
        )
        trade[scope] = stubs.trades.RecordSale(
            sale_request(listing[scope], provider, buyer), metadata=admin
        ).trade.id
        grant[scope] = stubs.access.GrantAccess(
            grant_request(trade[scope]), metadata=admin
        ).grant.id
    return World(
        stubs=stubs,
        metadata=metadata,
        venue=venue,
        assessor=assessors,
        provider=provider,
        buyer=buyer,
        victim=victim,
        victim_certification=victim_certification,
        submitted=submit(venue[Scope.IN]),
        listing=listing,
        trade=trade,
        grant=grant,
    )


def submit_request(exchange_id: str, provider: str, request_id: str) -> Message:
    return listing_pb2.SubmitListingRequest(
        request_id=request_id,
        exchange_id=exchange_id,
        provider_id=provider,
        title="Invoice signals",
        category=common_pb2.CATEGORY_FINANCIAL,
        classification=common_pb2.CLASSIFICATION_GENERAL,
        personal_information_level=common_pb2.PERSONAL_INFORMATION_LEVEL_NONE,
        rights=[common_pb2.RIGHT_HOLD, common_pb2.RIGHT_PROCESS_USE, common_pb2.RIGHT_OPERATE],
        delivery_modes=[common_pb2.DELIVERY_MODE_API],
        scenarios=[SCENARIO],
        list_price=common_pb2.Money(currency="CNY", amount_minor=100_000),
    )


def sale_request(listing_id: str, seller: str, buyer: str) -> trade_pb2.RecordSaleRequest:
    now = datetime.now(tz=UTC)
    return trade_pb2.RecordSaleRequest(
        request_id=rid(),
        listing_id=listing_id,
        seller_id=seller,
        buyer_id=buyer,
        rights=[common_pb2.RIGHT_PROCESS_USE],
        conveyance=common_pb2.CONVEYANCE_LICENCE,
        scenario=SCENARIO,
        term_start=timestamp(now - timedelta(days=1)),
        term_end=timestamp(now + timedelta(days=180)),
        price=common_pb2.Money(currency="CNY", amount_minor=50_000),
    )


def grant_request(trade_id: str) -> access_pb2.GrantAccessRequest:
    return access_pb2.GrantAccessRequest(
        request_id=rid(),
        trade_id=trade_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        valid_until=timestamp(datetime.now(tz=UTC) + timedelta(days=90)),
    )


# --- one request per RPC --------------------------------------------------------------


def use_request(grant_id: str) -> access_pb2.RecordAccessUseRequest:
    return access_pb2.RecordAccessUseRequest(
        request_id=rid(),
        grant_id=grant_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario=SCENARIO,
        units=1,
    )


def request_for(rpc: str, w: World, scope: Scope) -> Message:
    """A well-formed request for ``rpc`` aimed at venue A (in scope) or B (out of scope)."""
    s = Scope.IN if scope is Scope.NONE else scope
    listing, trade, grant, venue = w.listing[s], w.trade[s], w.grant[s], w.venue[s]
    victim, cert = w.victim, w.victim_certification
    until = timestamp(datetime.now(tz=UTC) + timedelta(days=30))
    builders: dict[str, Callable[[], Message]] = {
        "ParticipantService/RegisterParticipant": lambda: (
            participant_pb2.RegisterParticipantRequest(
                request_id=rid(),
                name="Newcomer",
                roles=[common_pb2.PARTICIPANT_ROLE_BUYER],
                party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
            )
        ),
        "ParticipantService/IssueCertification": lambda: participant_pb2.IssueCertificationRequest(
            request_id=rid(),
            participant_id=victim,
            level=common_pb2.CERTIFICATION_LEVEL_ECOSYSTEM,
            categories=[common_pb2.CATEGORY_FINANCIAL],
            max_classification=common_pb2.CLASSIFICATION_GENERAL,
            valid_until=until,
            reference="CERT-X",
        ),
        "ParticipantService/SuspendCertification": lambda: (
            participant_pb2.SuspendCertificationRequest(
                request_id=rid(), participant_id=victim, certification_id=cert
            )
        ),
        "ParticipantService/ReinstateCertification": lambda: (
            participant_pb2.ReinstateCertificationRequest(
                request_id=rid(), participant_id=victim, certification_id=cert
            )
        ),
        "ParticipantService/RevokeCertification": lambda: (
            participant_pb2.RevokeCertificationRequest(
                request_id=rid(),
                participant_id=victim,
                certification_id=cert,
                reason=common_pb2.REVOCATION_REASON_OTHER,
                note="authorisation test",
            )
        ),
        "ParticipantService/SuspendParticipant": lambda: participant_pb2.SuspendParticipantRequest(
            request_id=rid(), participant_id=victim
        ),
        "ParticipantService/ReinstateParticipant": lambda: (
            participant_pb2.ReinstateParticipantRequest(request_id=rid(), participant_id=victim)
        ),
        "ParticipantService/DeregisterParticipant": lambda: (
            participant_pb2.DeregisterParticipantRequest(request_id=rid(), participant_id=victim)
        ),
        "ParticipantService/GetParticipant": lambda: participant_pb2.GetParticipantRequest(
            participant_id=victim
        ),
        "ParticipantService/ListParticipants": participant_pb2.ListParticipantsRequest,
        "ListingService/SubmitListing": lambda: submit_request(venue, w.provider, rid()),
        "ListingService/RecordAssessment": lambda: listing_pb2.RecordAssessmentRequest(
            request_id=rid(),
            listing_id=w.submitted,
            assessor_id=w.assessor[s],
            passed=True,
            reference="LAW-2",
        ),
        "ListingService/ApproveListing": lambda: listing_pb2.ApproveListingRequest(
            request_id=rid(), listing_id=listing
        ),
        "ListingService/RejectListing": lambda: listing_pb2.RejectListingRequest(
            request_id=rid(), listing_id=listing
        ),
        "ListingService/SuspendListing": lambda: listing_pb2.SuspendListingRequest(
            request_id=rid(), listing_id=listing
        ),
        "ListingService/ReinstateListing": lambda: listing_pb2.ReinstateListingRequest(
            request_id=rid(), listing_id=listing
        ),
        "ListingService/DelistListing": lambda: listing_pb2.DelistListingRequest(
            request_id=rid(), listing_id=listing
        ),
        "ListingService/ReclassifyListing": lambda: listing_pb2.ReclassifyListingRequest(
            request_id=rid(),
            listing_id=listing,
            classification=common_pb2.CLASSIFICATION_IMPORTANT,
        ),
        "ListingService/OpenOwnershipDispute": lambda: listing_pb2.OpenOwnershipDisputeRequest(
            request_id=rid(), listing_id=listing, reason_note="claim"
        ),
        "ListingService/ResolveOwnershipDispute": lambda: (
            listing_pb2.ResolveOwnershipDisputeRequest(
                request_id=rid(), listing_id=listing, resolution_note="settled"
            )
        ),
        "ListingService/GetListing": lambda: listing_pb2.GetListingRequest(listing_id=listing),
        "ListingService/ListListings": lambda: listing_pb2.ListListingsRequest(exchange_id=venue),
        "TradeService/RecordSale": lambda: sale_request(listing, w.provider, w.buyer),
        "TradeService/SettleTrade": lambda: trade_pb2.SettleTradeRequest(
            request_id=rid(), trade_id=trade, settlement_ref="PAY-1"
        ),
        "TradeService/CancelTrade": lambda: trade_pb2.CancelTradeRequest(
            request_id=rid(), trade_id=trade
        ),
        "TradeService/IngestCommands": lambda: trade_pb2.IngestCommandsRequest(
            commands=[trade_pb2.Command(record_access_use=use_request(grant))]
        ),
        "TradeService/GetTrade": lambda: trade_pb2.GetTradeRequest(trade_id=trade),
        "TradeService/ListTrades": lambda: trade_pb2.ListTradesRequest(exchange_id=venue),
        "AccessService/GrantAccess": lambda: grant_request(trade),
        "AccessService/SuspendAccess": lambda: access_pb2.SuspendAccessRequest(
            request_id=rid(), grant_id=grant
        ),
        "AccessService/ReinstateAccess": lambda: access_pb2.ReinstateAccessRequest(
            request_id=rid(), grant_id=grant
        ),
        "AccessService/RevokeAccess": lambda: access_pb2.RevokeAccessRequest(
            request_id=rid(),
            grant_id=grant,
            reason=common_pb2.REVOCATION_REASON_OTHER,
            note="authorisation test",
        ),
        "AccessService/RecordAccessUse": lambda: use_request(grant),
        "AccessService/CheckAccess": lambda: access_pb2.CheckAccessRequest(
            grantee_id=w.buyer,
            listing_id=listing,
            delivery_mode=common_pb2.DELIVERY_MODE_API,
            scenario=SCENARIO,
        ),
        "AccessService/GetGrant": lambda: access_pb2.GetGrantRequest(grant_id=grant),
        "AccessService/ListGrants": lambda: access_pb2.ListGrantsRequest(exchange_id=venue),
        "AuditService/ReplayEvents": lambda: audit_pb2.ReplayEventsRequest(to_position=1),
        "AuditService/GetOwnership": lambda: audit_pb2.GetOwnershipRequest(listing_id=listing),
        "AuditService/GetComplianceReport": lambda: audit_pb2.GetComplianceReportRequest(
            exchange_id=venue
        ),
        "AuditService/GetCheckpoint": audit_pb2.GetCheckpointRequest,
        "AuditService/GetLedgerInfo": audit_pb2.GetLedgerInfoRequest,
        "ProjectionService/ListProjections": projection_pb2.ListProjectionsRequest,
        "ProjectionService/RebuildProjection": lambda: projection_pb2.RebuildProjectionRequest(
            request_id=rid(), name="catalogue"
        ),
        "ProjectionService/WatchProjection": lambda: projection_pb2.WatchProjectionRequest(
            name="catalogue"
        ),
    }
    return builders[rpc]()


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    response: Message | None


def invoke(w: World, cell: Cell) -> Outcome:
    """Calls the cell's RPC as its caller; a stream counts as OK once it yields or ends."""
    service, method = cell.rpc.split("/")
    stub = {
        "ParticipantService": w.stubs.participants,
        "ListingService": w.stubs.listings,
        "TradeService": w.stubs.trades,
        "AccessService": w.stubs.access,
        "AuditService": w.stubs.audit,
        "ProjectionService": w.stubs.projections,
    }[service]
    request = request_for(cell.rpc, w, cell.scope)
    call = getattr(stub, method)
    metadata = w.metadata[cell.caller]
    try:
        if cell.rpc in STREAMING:
            stream = call(request, metadata=metadata, timeout=5)
            try:
                first = next(stream, None)
            finally:
                stream.cancel()
            return Outcome(grpc.StatusCode.OK, first)
        response = call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        return Outcome(error.code(), None)
    if isinstance(response, trade_pb2.IngestCommandsResponse):
        # A batch answers OK and reports each command's own status.
        for result in response.results:
            if result.WhichOneof("kind") == "error":
                return Outcome(_code(result.error.code), response)
    return Outcome(grpc.StatusCode.OK, response)


def _code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


def out_of_scope_rows(response: Message | None, w: World) -> list[str]:
    """Exchange ids of listed rows outside venue A, for list responses."""
    rows: list[Any] = []
    for name in ("listings", "trades", "grants"):
        if response is not None and name in response.DESCRIPTOR.fields_by_name:
            rows += list(getattr(response, name))
    return [str(r.exchange_id) for r in rows if r.exchange_id != w.venue[Scope.IN]]


def acceptable_denial(cell: Cell, outcome: Outcome, w: World) -> bool:
    """Whether a denied cell was refused in one of the ways the contract allows."""
    if cell.caller == ANONYMOUS:
        return outcome.code is grpc.StatusCode.UNAUTHENTICATED
    if outcome.code is grpc.StatusCode.PERMISSION_DENIED:
        return True
    kind, roles = MATRIX[cell.rpc]
    role = AUDITOR if cell.caller == SCOPED_AUDITOR else cell.caller
    if role not in roles or cell.rpc in WHOLE_LEDGER or kind is not Kind.VENUE:
        return False  # refused by role: the interceptor answers PERMISSION_DENIED
    # Refused by scope. Reads may hide another venue's resource as NOT_FOUND; a list
    # may answer with the caller's rows only; a method not built yet cannot serve it.
    if outcome.code is grpc.StatusCode.UNIMPLEMENTED:
        return True
    if cell.rpc in LIST_METHODS:
        return outcome.code is grpc.StatusCode.OK and not out_of_scope_rows(outcome.response, w)
    read = cell.rpc.split("/")[1].startswith(("Get", "List", "Check"))
    return read and outcome.code is grpc.StatusCode.NOT_FOUND


# --- the tests ------------------------------------------------------------------------


def test_the_matrix_covers_every_rpc_of_the_six_services() -> None:
    modules = (participant_pb2, listing_pb2, trade_pb2, access_pb2, audit_pb2, projection_pb2)
    rpcs = {
        f"{service.name}/{method.name}"
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(MATRIX) == rpcs
    assert {rpc for rpc, _ in EXTENSIONS} <= set(MATRIX)
    assert len(CELLS) == 576


@pytest.mark.parametrize("cell", CELLS, ids=str)
def test_cell(world: World, cell: Cell) -> None:
    before = world.head()
    outcome = invoke(world, cell)
    if cell.expected:
        assert outcome.code not in AUTH_CODES, f"{cell}: allowed, but {outcome.code.name}"
        assert outcome.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        if cell.rpc in MUST_SUCCEED:
            assert outcome.code is grpc.StatusCode.OK, f"{cell}: {outcome.code.name}"
        if cell.rpc in LIST_METHODS and cell.caller in (EXCHANGE, SCOPED_AUDITOR):
            assert not out_of_scope_rows(outcome.response, world), f"{cell}: another venue's rows"
    else:
        assert acceptable_denial(cell, outcome, world), f"{cell}: denied, but {outcome.code.name}"
        assert world.head() == before, f"{cell}: a refused call wrote events"
