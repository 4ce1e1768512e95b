"""Translation between ``ledger.v1`` messages and the application's commands and aggregates.

Requests become commands field by field, driven by the message descriptors: enums by
name without their proto prefix (``CATEGORY_MEDICAL`` → ``MEDICAL``), timestamps as
aware UTC datetimes, unset optionals as None. The application parses and validates the
values, so a malformed value is reported with its field name whichever way it came.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from uuid import UUID

from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.application import commands as c
from ledger.application.app import Outcome
from ledger.application.markers import entity_id
from ledger.audit.canonical import MAX_SAFE_INTEGER, format_time, parse_time
from ledger.audit.replay import ReplayQuery
from ledger.domain.base import LedgerAggregate
from ledger.domain.errors import InvalidArgument
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Certification, Participant
from ledger.domain.trade import Trade
from ledger.domain.values import Money, NamedEnum, PartyIdentifier, Right
from ledger.projections.compliance import Report, parse_time_text
from ledger.projections.engine import Status
from ledger.projections.ownership import Holding
from ledger.v1 import (
    access_pb2,
    audit_pb2,
    common_pb2,
    listing_pb2,
    participant_pb2,
    projection_pb2,
    trade_pb2,
)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

Cmd = TypeVar("Cmd", bound=c.Command)
R = TypeVar("R", bound=Message)
V = TypeVar("V", bound=int)

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name

# Where a command field comes from when the request names it differently: the first
# path whose top-level field the request has. Every other field has the same name.
_SOURCES: Mapping[str, tuple[str, ...]] = {
    "note": ("note", "reason_note", "resolution_note"),
    "pi_level": ("personal_information_level",),
    "price_currency": ("price.currency", "list_price.currency"),
    "price_amount_minor": ("price.amount_minor", "list_price.amount_minor"),
    "uscc": ("party_identifier.uscc",),
    "country": ("party_identifier.foreign.country",),
    "registry_number": ("party_identifier.foreign.registry_number",),
    "cross_border_basis_kind": ("cross_border_basis.kind",),
    "cross_border_basis_ref": ("cross_border_basis.reference",),
}

# Field names the application reports that are not request fields, with the request
# fields they stand for; "party" is the application's name for the party identifier.
_WIRE_NAMES: Mapping[str, tuple[str, ...]] = {
    **{name: tuple(p.split(".")[0] for p in paths) for name, paths in _SOURCES.items()},
    "party": ("party_identifier",),
}


# --- values ---------------------------------------------------------------------------


class _EnumDescriptor(Protocol):
    """What ``enum_name`` reads of an enum descriptor (pure-Python or upb)."""

    @property
    def values_by_number(self) -> Mapping[int, Any]: ...


def enum_name(enum: _EnumDescriptor, number: int) -> str:
    """Returns a proto enum value as the application's name: ``CATEGORY_MEDICAL`` →
    ``MEDICAL``; UNSPECIFIED → ""; an unknown number → its digits, which the
    application rejects naming the field."""
    values = enum.values_by_number
    value = values.get(number)
    if value is None:
        return str(number)
    if number == 0:
        return ""
    prefix = values[0].name.removesuffix("UNSPECIFIED")
    return value.name.removeprefix(prefix)


def enum_value(enum: _EnumTypeWrapper[V], member: NamedEnum | None) -> V:
    """Returns the proto value of a domain enum member (None → UNSPECIFIED)."""
    numbers = _ENUM_NUMBERS.get(enum)
    if numbers is None:
        numbers = _ENUM_NUMBERS[enum] = {}
    number = numbers.get(member)
    if number is None:
        descriptor = enum.DESCRIPTOR.values_by_number[0].name
        if member is None:
            number = numbers[member] = enum.Value(descriptor)
        else:
            number = numbers[member] = enum.Value(
                descriptor.removesuffix("UNSPECIFIED") + member.name
            )
    return cast(V, number)


# Each proto enum's numbers by domain member: resources are written for every response.
_ENUM_NUMBERS: dict[Any, dict[NamedEnum | None, int]] = {}


def enum_values(enum: _EnumTypeWrapper[V], members: frozenset[Any]) -> list[V]:
    """Returns the proto values of a set of domain enum members, in a stable order."""
    return [enum_value(enum, m) for m in sorted(members, key=lambda m: m.name)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
# The range a Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_SECONDS_MIN, _SECONDS_MAX = -62135596800, 253402300799
_NANOS_PER_SECOND = 1_000_000_000


def to_datetime(timestamp: Timestamp, field: str) -> datetime:
    """Returns a timestamp as an aware UTC datetime (microsecond precision), as
    ``Timestamp.ToDatetime(tzinfo=UTC)`` does, without its Python-level conversions."""
    seconds, nanos = timestamp.seconds, timestamp.nanos
    if not (_SECONDS_MIN <= seconds <= _SECONDS_MAX and 0 <= nanos < _NANOS_PER_SECOND):
        raise InvalidArgument.of(field, "not a valid timestamp")
    try:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise InvalidArgument.of(field, "not a valid timestamp") from None


def timestamp(value: datetime | None) -> Timestamp | None:
    """Returns a datetime as a timestamp (a naive one is taken as UTC); None stays unset."""
    if value is None:
        return None
    return Timestamp(**_timestamp_fields(value))


def _timestamp_fields(value: datetime) -> dict[str, int]:
    """The fields of a datetime's timestamp, as ``Timestamp.FromDatetime`` sets them.

    Remembered for recent instants: the resources of a batch's responses share their
    creation, update and term times (equal datetimes are one instant, whatever their zone).
    """
    fields = _TIMESTAMPS.get(value)
    if fields is None:
        delta = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
        seconds = delta.days * 86_400 + delta.seconds
        if not _SECONDS_MIN <= seconds <= _SECONDS_MAX:
            raise ValueError(f"Timestamp is not valid: Seconds {seconds} out of range")
        if len(_TIMESTAMPS) >= _TIMESTAMPS_KEPT:
            _TIMESTAMPS.clear()
        fields = _TIMESTAMPS[value] = {"seconds": seconds, "nanos": value.microsecond * 1000}
    return fields


_TIMESTAMPS: dict[datetime, dict[str, int]] = {}
_TIMESTAMPS_KEPT = 4096


# --- requests → commands --------------------------------------------------------------


def to_command(request: Message, command: type[Cmd]) -> Cmd:
    """Builds ``command`` from the request fields of the same (or a mapped) name."""
    plan = _PLANS.get((type(request), command))
    if plan is None:
        plan = _PLANS[(type(request), command)] = _plan(request.DESCRIPTOR, command)
    return command(**{name: read(request) for name, read in plan})


# How each field of a command is read from a request of one type: worked out once per
# pair from the descriptors, because an ingest call converts hundreds of requests.
Reader = Callable[[Message], Any]
_PLANS: dict[tuple[type[Message], type[c.Command]], tuple[tuple[str, Reader], ...]] = {}


def _plan(descriptor: Any, command: type[c.Command]) -> tuple[tuple[str, Reader], ...]:
    return tuple(
        (name, _reader(descriptor, _source(descriptor, name), nullable=nullable))
        for name, nullable in _command_fields(command)
    )


def _command_fields(command: type[c.Command]) -> tuple[tuple[str, bool], ...]:
    """A command's fields, and whether each takes None from an unset proto3 optional
    (those that default to None)."""
    return tuple((f.name, f.default is None) for f in dataclasses.fields(command) if f.init)


def _source(descriptor: Any, name: str) -> str:
    fields = descriptor.fields_by_name
    for path in _SOURCES.get(name, (name,)):
        if path.split(".")[0] in fields:
            return path
    msg = f"{descriptor.name} has no field for {name}"
    raise TypeError(msg)


def _reader(descriptor: Any, path: str, *, nullable: bool) -> Reader:
    """Reads the value at ``path``: enums by name, timestamps as datetimes (None when
    unset), repeated fields as tuples, an unset optional as None when ``nullable``."""
    *parents, name = path.split(".")
    for parent in parents:
        descriptor = descriptor.fields_by_name[parent].message_type
    field = descriptor.fields_by_name[name]
    value = attrgetter(name)
    read: Reader
    if field.enum_type is not None:
        enum = field.enum_type
        names = {number: enum_name(enum, number) for number in enum.values_by_number}

        def named(number: int) -> str:
            found = names.get(number)
            return found if found is not None else enum_name(enum, number)

        if field.is_repeated:
            read = lambda m: tuple(named(n) for n in value(m))  # noqa: E731
        else:
            read = lambda m: named(value(m))  # noqa: E731
    elif field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
        read = lambda m: to_datetime(value(m), path) if m.HasField(name) else None  # noqa: E731
    elif field.is_repeated:
        read = lambda m: tuple(value(m))  # noqa: E731
    elif nullable and field.has_presence:
        read = lambda m: value(m) if m.HasField(name) else None  # noqa: E731
    else:
        read = value
    if not parents:
        return read
    holder = attrgetter(".".join(parents))
    return lambda m: read(holder(m))


def wire_field(request: Message | None, field: str) -> str:
    """Returns a field path the application reported, as the request names it."""
    if request is None or not field:
        return field
    head, sep, rest = _split_head(field)
    fields = request.DESCRIPTOR.fields_by_name
    if head in fields:
        return field
    for candidate in _WIRE_NAMES.get(head, ()):
        if candidate in fields:
            return candidate + sep + rest
    return field


def _split_head(field: str) -> tuple[str, str, str]:
    cut = min((i for i in (field.find("."), field.find("[")) if i >= 0), default=len(field))
    return field[:cut], field[cut : cut + 1], field[cut + 1 :]


# --- aggregates → resources -----------------------------------------------------------


def _times(aggregate: LedgerAggregate) -> dict[str, Any]:
    return {
        "etag": str(aggregate.version),
        "create_time": _timestamp_fields(aggregate.created_on),
        "update_time": _timestamp_fields(aggregate.modified_on),
    }


def _money(money: Money) -> common_pb2.Money:
    return common_pb2.Money(currency=money.currency, amount_minor=money.amount_minor)


def _party(party: PartyIdentifier) -> common_pb2.PartyIdentifier:
    if party.uscc is not None:
        return common_pb2.PartyIdentifier(uscc=party.uscc)
    foreign = common_pb2.PartyIdentifier.Foreign(
        country=party.country or "", registry_number=party.registry_number or ""
    )
    return common_pb2.PartyIdentifier(foreign=foreign)


def certification_pb(cert: Certification, now: datetime) -> participant_pb2.Certification:
    return participant_pb2.Certification(
        id=cert.id,
        level=enum_value(common_pb2.CertificationLevel, cert.level),
        categories=enum_values(common_pb2.Category, cert.categories),
        max_classification=enum_value(common_pb2.Classification, cert.max_classification),
        valid_from=timestamp(cert.valid_from),
        valid_until=timestamp(cert.valid_until),
        reference=cert.reference,
        state=enum_value(participant_pb2.CertificationState, cert.state_at(now)),
        revocation_reason=enum_value(common_pb2.RevocationReason, cert.revocation_reason),
        revocation_note=cert.note,
    )


def participant_pb(participant: Participant, now: datetime) -> participant_pb2.Participant:
    return participant_pb2.Participant(
        id=str(participant.id),
        party_identifier=_party(participant.party),
        name=participant.name,
        roles=enum_values(common_pb2.ParticipantRole, participant.roles),
        state=enum_value(participant_pb2.ParticipantState, participant.state),
        certifications=[
            certification_pb(cert, now) for cert in participant.certifications.values()
        ],
        **_times(participant),
    )


def listing_pb(listing: Listing) -> listing_pb2.Listing:
    assessment = None
    if listing.assessment is not None:
        assessment = listing_pb2.Assessment(
            assessor_id=listing.assessment.assessor_id,
            passed=listing.assessment.passed,
            reference=listing.assessment.reference,
            notes=listing.assessment.notes,
        )
    return listing_pb2.Listing(
        id=str(listing.id),
        exchange_id=listing.exchange_id,
        provider_id=listing.provider_id,
        title=listing.title,
        category=enum_value(common_pb2.Category, listing.category),
        classification=enum_value(common_pb2.Classification, listing.classification),
        personal_information_level=enum_value(
            common_pb2.PersonalInformationLevel, listing.pi_level
        ),
        rights=enum_values(
            common_pb2.Right, frozenset(listing.exclusive_rights_of(listing.provider_id))
        ),
        delivery_modes=enum_values(common_pb2.DeliveryMode, listing.delivery_modes),
        scenarios=sorted(listing.scenarios),
        list_price=_money(listing.list_price),
        compliance_assessment_ref=listing.evidence.get("compliance_assessment_ref", ""),
        pi_impact_assessment_ref=listing.evidence.get("pi_impact_assessment_ref", ""),
        consent_basis_ref=listing.evidence.get("consent_basis_ref", ""),
        security_assessment_ref=listing.evidence.get("security_assessment_ref", ""),
        ownership_disputed=listing.disputed,
        state=enum_value(listing_pb2.ListingState, listing.state),
        latest_assessment=assessment,
        **_times(listing),
    )


def trade_pb(trade: Trade) -> trade_pb2.Trade:
    return trade_pb2.Trade(**_trade_fields(trade))


def _trade_fields(trade: Trade) -> dict[str, Any]:
    return {
        "id": str(trade.id),
        "listing_id": trade.listing_id,
        "exchange_id": trade.exchange_id,
        "seller_id": trade.seller_id,
        "buyer_id": trade.buyer_id,
        "rights": enum_values(common_pb2.Right, trade.rights),
        "conveyance": enum_value(common_pb2.Conveyance, trade.conveyance),
        "scenario": trade.scenario,
        "term_start": _optional_timestamp(trade.term_start),
        "term_end": _optional_timestamp(trade.term_end),
        "price": {"currency": trade.price.currency, "amount_minor": trade.price.amount_minor},
        "settlement_ref": trade.settlement_ref,
        "state": enum_value(trade_pb2.TradeState, trade.state),
        **_times(trade),
    }


def grant_pb(grant: AccessGrant, now: datetime) -> access_pb2.Grant:
    return access_pb2.Grant(**_grant_fields(grant, now))


def _grant_fields(grant: AccessGrant, now: datetime) -> dict[str, Any]:
    basis = None
    if grant.cross_border_basis is not None:
        basis = {
            "kind": enum_value(common_pb2.CrossBorderBasisKind, grant.cross_border_basis.kind),
            "reference": grant.cross_border_basis.reference,
        }
    return {
        "id": str(grant.id),
        "trade_id": grant.trade_id,
        "listing_id": grant.listing_id,
        "exchange_id": grant.exchange_id,
        "grantee_id": grant.grantee_id,
        "delivery_mode": enum_value(common_pb2.DeliveryMode, grant.delivery_mode),
        "scenario": grant.scenario,
        "valid_from": _optional_timestamp(grant.valid_from),
        "valid_until": _optional_timestamp(grant.valid_until),
        "destination_country": grant.destination_country,
        "cross_border_basis": basis,
        "usage_limit": grant.usage_limit,
        "uses_recorded": grant.units_used,
        "state": enum_value(access_pb2.GrantState, grant.state_at(now)),
        "revocation_reason": enum_value(common_pb2.RevocationReason, grant.revocation_reason),
        **_times(grant),
    }


def _optional_timestamp(value: datetime | None) -> dict[str, int] | None:
    return None if value is None else _timestamp_fields(value)


def resource_pb(aggregate: LedgerAggregate, now: datetime) -> tuple[str, Message]:
    """Returns the response field name and proto resource of an aggregate."""
    name, fields = _resource(aggregate, now)
    if isinstance(fields, Message):
        return name, fields
    message = {"trade": trade_pb2.Trade, "grant": access_pb2.Grant}[name](**fields)
    return name, message


def _resource(aggregate: LedgerAggregate, now: datetime) -> tuple[str, Message | dict[str, Any]]:
    """The response field name of an aggregate and its resource: a message, or the
    fields of one (which a message being built takes without a copy)."""
    if isinstance(aggregate, Trade):
        return "trade", _trade_fields(aggregate)
    if isinstance(aggregate, AccessGrant):
        return "grant", _grant_fields(aggregate, now)
    if isinstance(aggregate, Participant):
        return "participant", participant_pb(aggregate, now)
    if isinstance(aggregate, Listing):
        return "listing", listing_pb(aggregate)
    msg = f"no proto resource for {type(aggregate).__name__}"
    raise TypeError(msg)


def to_response(response: type[R], outcome: Outcome, request: Message, now: datetime) -> R:
    """Builds a mutation's response: the resource as written and the log position.

    Certification commands also return the certification they issued or changed.
    """
    return response(**response_fields(response, outcome, request, now))


def response_fields(
    response: type[Message], outcome: Outcome, request: Message, now: datetime
) -> dict[str, Any]:
    """The fields of a mutation's response (see ``to_response``), for a message that
    holds one: an ingest call's result takes them without building the response apart."""
    name, resource = _resource(outcome.resource, now)
    fields: dict[str, Any] = {name: resource, "position": outcome.position}
    if _has_certification(response):
        assert isinstance(outcome.resource, Participant)  # for mypy
        certification = outcome.resource.certifications[_certification_id(request)]
        fields["certification"] = certification_pb(certification, now)
    return fields


def _has_certification(response: type[Message]) -> bool:
    found = _CERTIFYING.get(response)
    if found is None:
        found = _CERTIFYING[response] = "certification" in response.DESCRIPTOR.fields_by_name
    return found


_CERTIFYING: dict[type[Message], bool] = {}


def _certification_id(request: Message) -> str:
    named = getattr(request, "certification_id", "")
    if named:
        return str(UUID(named))
    # IssueCertification derives the new certification's id from its request_id.
    return str(entity_id("certification", str(UUID(getattr(request, "request_id", "")))))


def projection_status_pb(status: Status) -> projection_pb2.ProjectionStatus:
    state = {
        "LIVE": projection_pb2.PROJECTION_STATE_LIVE,
        "CATCHING_UP": projection_pb2.PROJECTION_STATE_CATCHING_UP,
        "REBUILDING": projection_pb2.PROJECTION_STATE_REBUILDING,
        "FAILED": projection_pb2.PROJECTION_STATE_FAILED,
    }.get(status.state, projection_pb2.PROJECTION_STATE_UNSPECIFIED)
    error = status.error
    if error and status.error_position:
        error = f"{error} (event at position {status.error_position})"
    return projection_pb2.ProjectionStatus(
        name=status.name,
        version=status.version,
        state=state,
        position=status.position,
        head_position=status.head,
        lag_events=status.lag_events,
        lag_seconds=status.lag_seconds,
        error=error,
        progress=status.progress,
        events_per_second=status.events_per_second,
        eta_seconds=status.eta_seconds,
    )


def as_of(request: Message) -> tuple[datetime | None, int | None]:
    """The ``as_of`` oneof of a read: (time, None), (None, position) or (None, None)."""
    which = request.WhichOneof("as_of")
    if which == "as_of_time":
        return to_datetime(request.as_of_time, "as_of_time"), None  # type: ignore[attr-defined]
    if which == "as_of_position":
        position = int(request.as_of_position)  # type: ignore[attr-defined]
        if position < 0:
            raise InvalidArgument.of("as_of_position", "must not be negative")
        return None, position
    return None, None


def compliance_report_pb(report: Report, now: datetime) -> audit_pb2.GetComplianceReportResponse:
    findings = []
    for f in report.findings:
        finding = audit_pb2.Finding(
            rule=f.rule,
            subject_type=f.subject_type,
            subject_id=f.subject_id,
            evidence_positions=list(f.evidence_positions),
            first_seen_position=f.first_seen_position or 0,
            first_seen_time=_timestamp_text(f.first_seen_time),
            rule_set_version=f.rule_set_version,
        )
        if f.cleared_time is not None:
            finding.cleared_time.CopyFrom(_timestamp_text(f.cleared_time))
            if f.cleared_position is not None:
                finding.cleared_position = f.cleared_position
        findings.append(finding)
    return audit_pb2.GetComplianceReportResponse(
        findings=findings,
        rejections=[
            audit_pb2.RuleRejections(rule=rule, count=count)
            for rule, count in sorted(report.rejections.items())
        ],
        generated_at=timestamp(now),
        as_of_position=report.as_of_position or 0,
        rule_set_version=report.rule_set_version,
    )


def _timestamp_text(text: str) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(parse_time_text(text))
    return result


# --- audit: replayed events and checkpoints -------------------------------------------


def replay_query(request: audit_pb2.ReplayEventsRequest) -> ReplayQuery:
    """Returns the validated replay of a request (``to_position`` 0 = no end)."""
    return ReplayQuery.create(
        from_position=request.from_position,
        to_position=request.to_position or None,
        aggregate_ids=request.aggregate_ids,
        event_types=request.event_types,
        since=to_datetime(request.since, "since") if request.HasField("since") else None,
        until=to_datetime(request.until, "until") if request.HasField("until") else None,
        follow=request.follow,
        max_events_per_message=request.max_events_per_message,
    )


def event_pb(event: Mapping[str, Any], chain_hash: str) -> audit_pb2.Event:
    """Returns a canonical event and its chain hash as an ``Event`` message (payload
    numbers become doubles). Replay writes the same message faster (``ledger.audit.wire``)."""
    message = audit_pb2.Event(
        position=event["position"],
        aggregate_id=event["aggregate_id"],
        aggregate_type=event["aggregate_type"],
        version=event["version"],
        type=event["type"],
        recorded_at=_timestamp_text(event["recorded_at"]),
        effective_at=_timestamp_text(event["effective_at"]),
        actor=event["actor"],
        role=event["role"],
        request_id=event["request_id"],
        chain_hash=chain_hash,
    )
    message.payload.SetInParent()  # an empty payload is still an object
    message.payload.update(event["payload"])
    return message


def event_from_pb(message: audit_pb2.Event) -> tuple[dict[str, Any], str]:
    """Returns the canonical event of an ``Event`` message and its chain hash.

    ``Struct`` numbers are doubles; a double with an integral value within ±(2**53 - 1)
    becomes an int again. JCS writes such a double exactly as that int, so the event's
    canonical bytes, and its chain hash, are those of the stored event.
    """
    event = {
        "position": message.position,
        "aggregate_id": message.aggregate_id,
        "aggregate_type": message.aggregate_type,
        "version": message.version,
        "type": message.type,
        "recorded_at": _time_text(message.recorded_at),
        "effective_at": _time_text(message.effective_at),
        "actor": message.actor,
        "role": message.role,
        "request_id": message.request_id,
        "payload": {key: _json_value(value) for key, value in message.payload.fields.items()},
    }
    return event, message.chain_hash


def _json_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _json_value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_json_value(item) for item in value.list_value.values]
    return None


def _time_text(timestamp: Timestamp) -> str:
    return format_time(timestamp.ToDatetime(tzinfo=UTC))


def checkpoint_pb(checkpoint: Mapping[str, Any]) -> audit_pb2.Checkpoint:
    """Returns a checkpoint file object as a ``Checkpoint`` message."""
    return audit_pb2.Checkpoint(
        ledger_id=checkpoint["ledger_id"],
        position=checkpoint["position"],
        chain_hash=checkpoint["chain_hash"],
        signed_at=timestamp(parse_time(checkpoint["signed_at"])),
        key_id=checkpoint["key_id"],
        signature=checkpoint["signature"],
    )


def checkpoint_from_pb(message: audit_pb2.Checkpoint) -> dict[str, Any]:
    """Returns the checkpoint file object of a ``Checkpoint`` message."""
    return {
        "ledger_id": message.ledger_id,
        "position": message.position,
        "chain_hash": message.chain_hash,
        "signed_at": _time_text(message.signed_at),
        "key_id": message.key_id,
        "signature": message.signature,
    }


def ownership_pb(
    listing_id: str, holdings: list[Holding], position: int
) -> audit_pb2.GetOwnershipResponse:
    rights: dict[str, list[audit_pb2.Holder]] = {}
    for h in holdings:
        holder = audit_pb2.Holder(
            holder_id=h.holder_id,
            since_position=h.since_position,
            via_trade_id=h.via_trade_id or "",
            exclusive=h.exclusive,
        )
        if h.until_position is not None:
            holder.until_position = h.until_position
        if h.term_end:
            holder.term_end.CopyFrom(_timestamp_text(h.term_end))
        rights.setdefault(h.right, []).append(holder)
    return audit_pb2.GetOwnershipResponse(
        listing_id=listing_id,
        rights=[
            audit_pb2.RightHolders(right=enum_value(common_pb2.Right, Right[right]), holders=hs)
            for right, hs in rights.items()
        ],
        as_of_position=position,
    )
