"""Value objects of the data market: enumerations, identifiers, money and terms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Self, cast

from ledger.domain.errors import InvalidArgument


class NamedEnum(Enum):
    """An enumeration whose values are their names, parsed with a field-naming error."""

    @classmethod
    def parse(cls, value: str | Self, field: str, index: int | None = None) -> Self:
        """The member named ``value``; ``index`` is its place in a repeated ``field``."""
        member = cls._member_map_.get(value) if type(value) is str else None
        if member is not None:
            return cast(Self, member)
        if isinstance(value, cls):
            return value
        try:
            return cls[str(value)]
        except KeyError:
            allowed = ", ".join(m.name for m in cls)
            name = field if index is None else f"{field}[{index}]"
            raise InvalidArgument.of(
                name, f"unknown {cls.__name__} {value!r}; expected one of {allowed}"
            ) from None

    @classmethod
    def parse_set(cls, values: Any, field: str, *, allow_empty: bool = False) -> frozenset[Self]:
        items = frozenset(cls.parse(v, field, i) for i, v in enumerate(values))
        if not items and not allow_empty:
            raise InvalidArgument.of(field, "must name at least one value")
        return items


class Right(NamedEnum):
    HOLD = "HOLD"
    PROCESS_USE = "PROCESS_USE"
    OPERATE = "OPERATE"


class Conveyance(NamedEnum):
    TRANSFER = "TRANSFER"
    LICENCE = "LICENCE"


class Classification(NamedEnum):
    GENERAL = "GENERAL"
    IMPORTANT = "IMPORTANT"
    CORE = "CORE"

    @property
    def rank(self) -> int:
        return _CLASSIFICATION_RANK[self]


_CLASSIFICATION_RANK = {
    Classification.GENERAL: 0,
    Classification.IMPORTANT: 1,
    Classification.CORE: 2,
}


class PersonalInformationLevel(NamedEnum):
    NONE = "NONE"
    PERSONAL = "PERSONAL"
    SENSITIVE = "SENSITIVE"


class Category(NamedEnum):
    MEDICAL = "MEDICAL"
    INDUSTRIAL = "INDUSTRIAL"
    LOGISTICS = "LOGISTICS"
    TRANSPORT = "TRANSPORT"
    FINANCIAL = "FINANCIAL"
    PUBLIC = "PUBLIC"
    GEOSPATIAL = "GEOSPATIAL"
    OTHER = "OTHER"


class DeliveryMode(NamedEnum):
    DATASET_DOWNLOAD = "DATASET_DOWNLOAD"
    API = "API"
    PRIVACY_COMPUTE = "PRIVACY_COMPUTE"
    SANDBOX = "SANDBOX"
    MODEL_OR_VERIFICATION = "MODEL_OR_VERIFICATION"


class ParticipantRole(NamedEnum):
    EXCHANGE = "EXCHANGE"
    SERVICE_PLATFORM = "SERVICE_PLATFORM"
    DATA_DEALER = "DATA_DEALER"
    DATA_HOLDER = "DATA_HOLDER"
    PUBLIC_DATA_OPERATOR = "PUBLIC_DATA_OPERATOR"
    BUYER = "BUYER"
    ASSESSOR = "ASSESSOR"
    REGULATOR = "REGULATOR"


# Roles that a certification may be issued to (domain.md, "Participants and roles").
CERTIFIABLE_ROLES = frozenset(
    {
        ParticipantRole.DATA_DEALER,
        ParticipantRole.EXCHANGE,
        ParticipantRole.SERVICE_PLATFORM,
        ParticipantRole.ASSESSOR,
    }
)


class CertificationLevel(NamedEnum):
    ECOSYSTEM = "ECOSYSTEM"
    CORE = "CORE"
    STRATEGIC = "STRATEGIC"


class RevocationReason(NamedEnum):
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    CONTRACT_TERMINATED = "CONTRACT_TERMINATED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    SECURITY_INCIDENT = "SECURITY_INCIDENT"
    REGULATOR_ORDER = "REGULATOR_ORDER"
    CERTIFICATION_LOST = "CERTIFICATION_LOST"
    LISTING_WITHDRAWN = "LISTING_WITHDRAWN"
    RECLASSIFIED = "RECLASSIFIED"
    MISUSE_DETECTED = "MISUSE_DETECTED"
    OTHER = "OTHER"


class CrossBorderBasisKind(NamedEnum):
    SECURITY_ASSESSMENT = "SECURITY_ASSESSMENT"
    STANDARD_CONTRACT = "STANDARD_CONTRACT"
    CERTIFICATION = "CERTIFICATION"


class ParticipantState(NamedEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    DEREGISTERED = "DEREGISTERED"


class CertificationState(NamedEnum):
    VALID = "VALID"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


class ListingState(NamedEnum):
    SUBMITTED = "SUBMITTED"
    LISTED = "LISTED"
    SUSPENDED = "SUSPENDED"
    DELISTED = "DELISTED"
    REJECTED = "REJECTED"


class TradeState(NamedEnum):
    EXECUTED = "EXECUTED"
    SETTLED = "SETTLED"
    CANCELLED = "CANCELLED"


class GrantState(NamedEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


def names(values: frozenset[NamedEnum] | set[NamedEnum]) -> list[str]:
    """Returns the sorted names of a set of enum members (sets are sorted arrays in events)."""
    return sorted(v.name for v in values)


# --- Unified Social Credit Code (GB 32100-2015) ------------------------------------

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_USCC_VALUE = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_SHAPE = re.compile(r"^[0-9A-HJ-NP-RTUWXY]{2}[0-9]{6}[0-9A-HJ-NP-RTUWXY]{10}$")


def uscc_check_character(first17: str) -> str:
    """Returns the 18th character of a USCC from its first 17 (weighted sum mod 31)."""
    total = sum(_USCC_VALUE[c] * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(code: str, field: str = "uscc") -> str:
    """Returns the code if it is a well-formed USCC with a correct check character."""
    if len(code) != 18:
        raise InvalidArgument.of(field, f"a USCC has 18 characters, got {len(code)}")
    if not _USCC_SHAPE.match(code):
        raise InvalidArgument.of(
            field,
            "a USCC uses digits and the letters of GB 32100-2015 (no I, O, S, V, Z); "
            "characters 3-8 are a numeric administrative division code",
        )
    expected = uscc_check_character(code[:17])
    if code[17] != expected:
        raise InvalidArgument.of(
            field, f"check character is {code[17]!r} but GB 32100-2015 gives {expected!r}"
        )
    return code


_COUNTRY = re.compile(r"^[A-Z]{2}$")
_REGISTRY_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./-]{0,63}$")


@dataclass(frozen=True)
class PartyIdentifier:
    """A participant's legal identity: a USCC, or a foreign country + registry number."""

    uscc: str | None = None
    country: str | None = None
    registry_number: str | None = None

    @classmethod
    def domestic(cls, uscc: str, field: str = "party.uscc") -> PartyIdentifier:
        return cls(uscc=validate_uscc(uscc, field))

    @classmethod
    def foreign(
        cls, country: str, registry_number: str, field: str = "party.foreign"
    ) -> PartyIdentifier:
        if not _COUNTRY.match(country):
            raise InvalidArgument.of(
                f"{field}.country", "an ISO 3166-1 alpha-2 code in capitals, e.g. DE"
            )
        if country == "CN":
            raise InvalidArgument.of(
                f"{field}.country", "a Chinese organisation is identified by its USCC"
            )
        if not _REGISTRY_NUMBER.match(registry_number):
            raise InvalidArgument.of(
                f"{field}.registry_number", "1-64 letters, digits, spaces, '.', '/' or '-'"
            )
        return cls(country=country, registry_number=registry_number)

    @property
    def key(self) -> str:
        """The unique key of this identity in the registry."""
        if self.uscc is not None:
            return f"USCC:{self.uscc}"
        return f"{self.country}:{self.registry_number}"

    def to_json(self) -> dict[str, Any]:
        if self.uscc is not None:
            return {"uscc": self.uscc}
        return {"country": self.country, "registry_number": self.registry_number}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartyIdentifier:
        return cls(
            uscc=data.get("uscc"),
            country=data.get("country"),
            registry_number=data.get("registry_number"),
        )


# --- Money ----------------------------------------------------------------------------

_CURRENCY = re.compile(r"^[A-Z]{3}$")
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units of an ISO 4217 currency."""

    currency: str
    amount_minor: int

    @classmethod
    def parse(cls, currency: str, amount_minor: int, field: str) -> Money:
        if not _CURRENCY.match(currency or ""):
            raise InvalidArgument.of(f"{field}.currency", "an ISO 4217 code in capitals, e.g. CNY")
        if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
            raise InvalidArgument.of(f"{field}.amount_minor", "must be an integer")
        if amount_minor < 0:
            raise InvalidArgument.of(f"{field}.amount_minor", "must not be negative")
        if amount_minor > INT64_MAX:
            raise InvalidArgument.of(f"{field}.amount_minor", "exceeds int64")
        return cls(currency, amount_minor)

    def to_json(self) -> dict[str, Any]:
        return {"currency": self.currency, "amount_minor": self.amount_minor}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Money:
        return cls(data["currency"], int(data["amount_minor"]))


@dataclass(frozen=True)
class CrossBorderBasis:
    """The legal basis of a cross-border transfer (PIPL art. 38, DSL)."""

    kind: CrossBorderBasisKind
    reference: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.name, "reference": self.reference}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CrossBorderBasis | None:
        if not data:
            return None
        return cls(CrossBorderBasisKind[data["kind"]], data["reference"])


def covers(start: datetime | None, end: datetime | None, at: datetime) -> bool:
    """Returns whether ``at`` lies in the half-open interval [start, end)."""
    return (start is None or start <= at) and (end is None or at < end)
