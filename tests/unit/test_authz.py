"""The authorisation policy, cell by cell against the matrix written out here."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from ledger.api.authz import POLICIES, check_scope, may_act_as, may_call, policy_for
from ledger.api.principals import Principal, Role

EXCHANGE_A = "0b7c8f52-3f4e-4c59-9a67-1d2f3a4b5c6d"
EXCHANGE_B = "9e8d7c6b-5a49-4837-8261-504f3e2d1c0b"
ASSESSOR_ID = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"

# Columns, in this order: exchange, registry, assessor, auditor, operator, admin.
# "x" = the role may call the method; "." = PERMISSION_DENIED.
ROLE_COLUMNS = (
    Role.EXCHANGE,
    Role.REGISTRY,
    Role.ASSESSOR,
    Role.AUDITOR,
    Role.OPERATOR,
    Role.ADMIN,
)
#                                                                    E R S U O A
MATRIX: dict[str, str] = {
    "/ledger.v1.ParticipantService/RegisterParticipant": ".x...x",
    "/ledger.v1.ParticipantService/IssueCertification": ".x...x",
    "/ledger.v1.ParticipantService/SuspendCertification": ".x...x",
    "/ledger.v1.ParticipantService/ReinstateCertification": ".x...x",
    "/ledger.v1.ParticipantService/RevokeCertification": ".x...x",
    "/ledger.v1.ParticipantService/SuspendParticipant": ".x...x",
    "/ledger.v1.ParticipantService/ReinstateParticipant": ".x...x",
    "/ledger.v1.ParticipantService/DeregisterParticipant": ".x...x",
    "/ledger.v1.ParticipantService/GetParticipant": "xx.x.x",
    "/ledger.v1.ParticipantService/ListParticipants": "xx.x.x",
    "/ledger.v1.ListingService/SubmitListing": "x....x",
    "/ledger.v1.ListingService/RecordAssessment": "..x..x",
    "/ledger.v1.ListingService/ApproveListing": "x....x",
    "/ledger.v1.ListingService/RejectListing": "x....x",
    "/ledger.v1.ListingService/SuspendListing": "x....x",
    "/ledger.v1.ListingService/ReinstateListing": "x....x",
    "/ledger.v1.ListingService/DelistListing": "x....x",
    "/ledger.v1.ListingService/ReclassifyListing": "x....x",
    "/ledger.v1.ListingService/OpenOwnershipDispute": "x....x",
    "/ledger.v1.ListingService/ResolveOwnershipDispute": "x....x",
    "/ledger.v1.ListingService/GetListing": "x..x.x",
    "/ledger.v1.ListingService/ListListings": "x..x.x",
    "/ledger.v1.TradeService/RecordSale": "x....x",
    "/ledger.v1.TradeService/SettleTrade": "x....x",
    "/ledger.v1.TradeService/CancelTrade": "x....x",
    "/ledger.v1.TradeService/IngestCommands": "x....x",
    "/ledger.v1.TradeService/GetTrade": "x..x.x",
    "/ledger.v1.TradeService/ListTrades": "x..x.x",
    "/ledger.v1.AccessService/GrantAccess": "x....x",
    "/ledger.v1.AccessService/SuspendAccess": "x....x",
    "/ledger.v1.AccessService/ReinstateAccess": "x....x",
    "/ledger.v1.AccessService/RevokeAccess": "x....x",
    "/ledger.v1.AccessService/RecordAccessUse": "x....x",
    "/ledger.v1.AccessService/CheckAccess": "x..x.x",
    "/ledger.v1.AccessService/GetGrant": "x..x.x",
    "/ledger.v1.AccessService/ListGrants": "x..x.x",
    "/ledger.v1.AuditService/ReplayEvents": "...x.x",
    "/ledger.v1.AuditService/GetOwnership": "...x.x",
    "/ledger.v1.AuditService/GetComplianceReport": "...x.x",
    "/ledger.v1.AuditService/GetCheckpoint": "...x.x",
    "/ledger.v1.AuditService/GetLedgerInfo": "...xxx",
    "/ledger.v1.ProjectionService/ListProjections": "...xxx",
    "/ledger.v1.ProjectionService/RebuildProjection": "....xx",
    "/ledger.v1.ProjectionService/WatchProjection": "...xxx",
    "/grpc.health.v1.Health/Check": "xxxxxx",
    "/grpc.health.v1.Health/Watch": "xxxxxx",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "xxxxxx",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "xxxxxx",
}

PUBLIC = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}

MUTATIONS = {
    *(
        f"/ledger.v1.ParticipantService/{m}"
        for m in (
            "RegisterParticipant",
            "IssueCertification",
            "SuspendCertification",
            "ReinstateCertification",
            "RevokeCertification",
            "SuspendParticipant",
            "ReinstateParticipant",
            "DeregisterParticipant",
        )
    ),
    *(
        f"/ledger.v1.ListingService/{m}"
        for m in (
            "SubmitListing",
            "RecordAssessment",
            "ApproveListing",
            "RejectListing",
            "SuspendListing",
            "ReinstateListing",
            "DelistListing",
            "ReclassifyListing",
            "OpenOwnershipDispute",
            "ResolveOwnershipDispute",
        )
    ),
    *(
        f"/ledger.v1.TradeService/{m}"
        for m in ("RecordSale", "SettleTrade", "CancelTrade", "IngestCommands")
    ),
    *(
        f"/ledger.v1.AccessService/{m}"
        for m in ("GrantAccess", "SuspendAccess", "ReinstateAccess", "RevokeAccess")
    ),
    "/ledger.v1.AccessService/RecordAccessUse",
    "/ledger.v1.ProjectionService/RebuildProjection",
}

# Methods touching one exchange's listings, trades or grants: the servicer must pass
# the resource's exchange through check_scope.
VENUE_SCOPED = {
    *(
        f"/ledger.v1.ListingService/{m}"
        for m in (
            "SubmitListing",
            "ApproveListing",
            "RejectListing",
            "SuspendListing",
            "ReinstateListing",
            "DelistListing",
            "ReclassifyListing",
            "OpenOwnershipDispute",
            "ResolveOwnershipDispute",
            "GetListing",
            "ListListings",
        )
    ),
    *(
        f"/ledger.v1.TradeService/{m}"
        for m in (
            "RecordSale",
            "SettleTrade",
            "CancelTrade",
            "IngestCommands",
            "GetTrade",
            "ListTrades",
        )
    ),
    *(
        f"/ledger.v1.AccessService/{m}"
        for m in (
            "GrantAccess",
            "SuspendAccess",
            "ReinstateAccess",
            "RevokeAccess",
            "RecordAccessUse",
            "CheckAccess",
            "GetGrant",
            "ListGrants",
        )
    ),
    "/ledger.v1.AuditService/GetOwnership",
    "/ledger.v1.AuditService/GetComplianceReport",
}

PRINCIPALS = {
    Role.EXCHANGE: Principal("sse", Role.EXCHANGE, frozenset({EXCHANGE_A})),
    Role.REGISTRY: Principal("registry", Role.REGISTRY),
    Role.ASSESSOR: Principal(ASSESSOR_ID, Role.ASSESSOR),
    Role.AUDITOR: Principal("auditor", Role.AUDITOR),
    Role.OPERATOR: Principal("ops", Role.OPERATOR),
    Role.ADMIN: Principal("admin", Role.ADMIN),
}
SCOPED_AUDITOR = Principal("regional-auditor", Role.AUDITOR, frozenset({EXCHANGE_A}))


def expected(method: str, role: Role) -> bool:
    return MATRIX[method][ROLE_COLUMNS.index(role)] == "x"


def test_the_matrix_rows_are_well_formed() -> None:
    for method, row in MATRIX.items():
        assert len(row) == len(ROLE_COLUMNS), method
        assert set(row) <= {"x", "."}, method


def test_every_method_in_the_policy_is_in_the_matrix_and_back() -> None:
    assert set(POLICIES) == set(MATRIX)


@pytest.mark.parametrize("role", ROLE_COLUMNS, ids=lambda r: r.value)
@pytest.mark.parametrize("method", sorted(MATRIX))
def test_each_role_may_call_exactly_its_cells(method: str, role: Role) -> None:
    assert may_call(PRINCIPALS[role], method) is expected(method, role)


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_a_scoped_auditor_may_call_what_an_auditor_may_except_the_whole_log(
    method: str,
) -> None:
    allowed = expected(method, Role.AUDITOR) and method != "/ledger.v1.AuditService/ReplayEvents"
    assert may_call(SCOPED_AUDITOR, method) is allowed


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_only_health_and_reflection_may_be_called_without_a_token(method: str) -> None:
    assert may_call(None, method) is (method in PUBLIC)
    policy = policy_for(method)
    assert policy is not None
    assert policy.public is (method in PUBLIC)


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_mutations_are_flagged_and_never_open_to_auditors(method: str) -> None:
    policy = policy_for(method)
    assert policy is not None
    assert policy.mutation is (method in MUTATIONS)
    if policy.mutation:
        assert not expected(method, Role.AUDITOR)


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_venue_scope_applies_to_listings_trades_grants_and_their_audit_reads(
    method: str,
) -> None:
    policy = policy_for(method)
    assert policy is not None
    assert policy.venue_scoped is (method in VENUE_SCOPED)


def test_only_record_assessment_names_who_the_caller_acts_as() -> None:
    acting = {m: p.acts_as for m, p in POLICIES.items() if p.acts_as is not None}
    assert acting == {"/ledger.v1.ListingService/RecordAssessment": "assessor_id"}


@pytest.mark.parametrize(
    "method",
    [
        "/ledger.v1.TradeService/DropTable",
        "/ledger.v1.tradeservice/RecordSale",
        "/ledger.v2.TradeService/RecordSale",
        "ledger.v1.TradeService/RecordSale",
        "",
    ],
)
def test_an_unknown_method_is_denied_to_everyone_even_admin(method: str) -> None:
    assert policy_for(method) is None
    for principal in [*PRINCIPALS.values(), SCOPED_AUDITOR, None]:
        assert may_call(principal, method) is False


def test_an_exchange_touches_only_its_own_venue() -> None:
    exchange = PRINCIPALS[Role.EXCHANGE]
    assert check_scope(exchange, EXCHANGE_A)
    assert check_scope(exchange, EXCHANGE_A.upper())
    assert not check_scope(exchange, EXCHANGE_B)
    assert not check_scope(exchange, "")


def test_an_auditor_sees_every_venue_unless_restricted() -> None:
    assert check_scope(PRINCIPALS[Role.AUDITOR], EXCHANGE_A)
    assert check_scope(PRINCIPALS[Role.AUDITOR], EXCHANGE_B)
    assert check_scope(SCOPED_AUDITOR, EXCHANGE_A)
    assert not check_scope(SCOPED_AUDITOR, EXCHANGE_B)


def test_admin_and_registry_are_not_limited_to_venues_but_assessor_and_operator_see_none() -> None:
    for role in (Role.ADMIN, Role.REGISTRY):
        assert check_scope(PRINCIPALS[role], EXCHANGE_B)
    for role in (Role.ASSESSOR, Role.OPERATOR):
        assert not check_scope(PRINCIPALS[role], EXCHANGE_A)


def test_an_assessor_records_assessments_only_as_itself() -> None:
    assessor = PRINCIPALS[Role.ASSESSOR]
    assert may_act_as(assessor, ASSESSOR_ID)
    assert may_act_as(assessor, ASSESSOR_ID.upper())
    assert not may_act_as(assessor, EXCHANGE_A)
    assert may_act_as(PRINCIPALS[Role.ADMIN], EXCHANGE_A)
    for role in (Role.EXCHANGE, Role.REGISTRY, Role.AUDITOR, Role.OPERATOR):
        assert not may_act_as(PRINCIPALS[role], PRINCIPALS[role].id)


def _generated_methods() -> set[str]:
    """Returns the full names of every method of the generated ``ledger.v1`` services."""
    package = importlib.import_module("ledger.v1")
    methods: set[str] = set()
    for module_info in pkgutil.iter_modules(package.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"ledger.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return methods


def test_every_generated_rpc_has_a_policy() -> None:
    # A method without a policy is denied to everyone, admin included; this catches a
    # new RPC added to the protos before a caller hits PERMISSION_DENIED.
    methods = _generated_methods()
    if not methods:
        pytest.skip("no generated ledger.v1 services (run `make protos`)")
    missing = sorted(methods - set(POLICIES))
    assert missing == []
