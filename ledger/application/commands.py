"""The mutating commands of the ``ledger.v1`` API, as plain data.

Fields hold wire-level values (ids as strings, enums by name); the application parses
them into domain values, so every malformed value is reported with its field name in
one place, whichever entry point built the command. ``etag`` is the expected version of
the command's target as a decimal string ("" = apply to the latest version).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import orjson


@dataclass(frozen=True, kw_only=True)
class Command:
    """Base of every mutating command: idempotency key and when it took effect."""

    kind: ClassVar[str]
    request_id: str
    effective_at: datetime | None = None

    def fingerprint(self) -> str:
        """A digest of the request, minus its request_id: the same request_id must carry
        the same fingerprint, or it is a different request."""
        # Fields hold plain values (no nested dataclasses), so this equals what
        # ``dataclasses.asdict`` gives, without its recursive copy.
        data = {name: getattr(self, name) for name in field_names(type(self))}
        data.pop("request_id")
        data["kind"] = self.kind
        return hashlib.sha256(
            orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=_encode)
        ).hexdigest()


def field_names(command: type[Command]) -> tuple[str, ...]:
    """The names of a command's fields, computed once per class."""
    names = _FIELD_NAMES.get(command)
    if names is None:
        names = _FIELD_NAMES[command] = tuple(f.name for f in dataclasses.fields(command))
    return names


_FIELD_NAMES: dict[type[Command], tuple[str, ...]] = {}


def _encode(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(type(value))


@dataclass(frozen=True, kw_only=True)
class TargetedCommand(Command):
    """A command on an existing resource, optionally guarded by its etag."""

    etag: str = ""


# --- participants ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RegisterParticipant(Command):
    kind = "RegisterParticipant"
    name: str
    roles: tuple[str, ...]
    uscc: str = ""
    country: str = ""
    registry_number: str = ""


@dataclass(frozen=True, kw_only=True)
class IssueCertification(TargetedCommand):
    kind = "IssueCertification"
    participant_id: str
    level: str
    categories: tuple[str, ...]
    max_classification: str
    valid_from: datetime | None
    valid_until: datetime | None
    reference: str


@dataclass(frozen=True, kw_only=True)
class SuspendCertification(TargetedCommand):
    kind = "SuspendCertification"
    participant_id: str
    certification_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ReinstateCertification(TargetedCommand):
    kind = "ReinstateCertification"
    participant_id: str
    certification_id: str


@dataclass(frozen=True, kw_only=True)
class RevokeCertification(TargetedCommand):
    kind = "RevokeCertification"
    participant_id: str
    certification_id: str
    reason: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SuspendParticipant(TargetedCommand):
    kind = "SuspendParticipant"
    participant_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ReinstateParticipant(TargetedCommand):
    kind = "ReinstateParticipant"
    participant_id: str


@dataclass(frozen=True, kw_only=True)
class DeregisterParticipant(TargetedCommand):
    kind = "DeregisterParticipant"
    participant_id: str
    note: str = ""


# --- listings -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SubmitListing(Command):
    kind = "SubmitListing"
    exchange_id: str
    provider_id: str
    title: str
    category: str
    classification: str
    pi_level: str
    rights: tuple[str, ...]
    delivery_modes: tuple[str, ...]
    scenarios: tuple[str, ...]
    price_currency: str
    price_amount_minor: int
    compliance_assessment_ref: str = ""
    pi_impact_assessment_ref: str = ""
    consent_basis_ref: str = ""
    security_assessment_ref: str = ""


@dataclass(frozen=True, kw_only=True)
class RecordAssessment(TargetedCommand):
    kind = "RecordAssessment"
    listing_id: str
    assessor_id: str
    passed: bool
    reference: str
    notes: str = ""


@dataclass(frozen=True, kw_only=True)
class ApproveListing(TargetedCommand):
    kind = "ApproveListing"
    listing_id: str


@dataclass(frozen=True, kw_only=True)
class RejectListing(TargetedCommand):
    kind = "RejectListing"
    listing_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SuspendListing(TargetedCommand):
    kind = "SuspendListing"
    listing_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ReinstateListing(TargetedCommand):
    kind = "ReinstateListing"
    listing_id: str


@dataclass(frozen=True, kw_only=True)
class DelistListing(TargetedCommand):
    kind = "DelistListing"
    listing_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ReclassifyListing(TargetedCommand):
    kind = "ReclassifyListing"
    listing_id: str
    classification: str


@dataclass(frozen=True, kw_only=True)
class OpenOwnershipDispute(TargetedCommand):
    kind = "OpenOwnershipDispute"
    listing_id: str
    claimant_id: str = ""
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ResolveOwnershipDispute(TargetedCommand):
    kind = "ResolveOwnershipDispute"
    listing_id: str
    note: str = ""


# --- trades ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RecordSale(Command):
    kind = "RecordSale"
    listing_id: str
    seller_id: str
    buyer_id: str
    rights: tuple[str, ...]
    conveyance: str
    scenario: str
    price_currency: str
    price_amount_minor: int
    term_start: datetime | None = None
    term_end: datetime | None = None
    settlement_ref: str = ""
    listing_etag: str = ""


@dataclass(frozen=True, kw_only=True)
class SettleTrade(TargetedCommand):
    kind = "SettleTrade"
    trade_id: str
    settlement_ref: str = ""


@dataclass(frozen=True, kw_only=True)
class CancelTrade(TargetedCommand):
    kind = "CancelTrade"
    trade_id: str
    note: str = ""


# --- access ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GrantAccess(Command):
    kind = "GrantAccess"
    trade_id: str
    delivery_mode: str
    scenario: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    destination_country: str = "CN"
    cross_border_basis_kind: str = ""
    cross_border_basis_ref: str = ""
    usage_limit: int | None = None


@dataclass(frozen=True, kw_only=True)
class SuspendAccess(TargetedCommand):
    kind = "SuspendAccess"
    grant_id: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ReinstateAccess(TargetedCommand):
    kind = "ReinstateAccess"
    grant_id: str


@dataclass(frozen=True, kw_only=True)
class RevokeAccess(TargetedCommand):
    kind = "RevokeAccess"
    grant_id: str
    reason: str
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class RecordAccessUse(TargetedCommand):
    kind = "RecordAccessUse"
    grant_id: str
    delivery_mode: str
    scenario: str
    used_at: datetime | None = None
    units: int = 1


ALL_COMMANDS: tuple[type[Command], ...] = tuple(
    cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, Command) and "kind" in cls.__dict__
)
