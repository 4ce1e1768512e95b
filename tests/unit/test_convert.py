"""Requests become the commands the application expects, and aggregates become resources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.api import convert
from ledger.application import commands as c
from ledger.domain.errors import InvalidArgument
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.v1 import access_pb2, common_pb2, listing_pb2, participant_pb2, trade_pb2
from tests.market import Market, rid, uscc

REQUEST_MODULES = (participant_pb2, listing_pb2, trade_pb2, access_pb2)


def ts(value: datetime) -> Timestamp:
    result = convert.timestamp(value)
    assert result is not None
    return result


def request_class(command: type[c.Command]) -> type[Message]:
    for module in REQUEST_MODULES:
        cls = getattr(module, f"{command.kind}Request", None)
        if cls is not None:
            assert issubclass(cls, Message)
            return cls
    raise AssertionError(f"no request message for {command.kind}")


@pytest.mark.parametrize("command", c.ALL_COMMANDS, ids=lambda cmd: cmd.kind)
def test_every_command_is_built_from_its_request(command: type[c.Command]) -> None:
    built = convert.to_command(request_class(command)(), command)
    assert isinstance(built, command)
    assert built.effective_at is None


def test_enums_lose_their_prefix_and_unspecified_becomes_empty() -> None:
    request = participant_pb2.RegisterParticipantRequest(
        roles=[common_pb2.PARTICIPANT_ROLE_DATA_DEALER, common_pb2.PARTICIPANT_ROLE_UNSPECIFIED]
    )
    command = convert.to_command(request, c.RegisterParticipant)
    assert command.roles == ("DATA_DEALER", "")


def test_an_unknown_enum_number_is_passed_on_for_the_application_to_reject() -> None:
    request = listing_pb2.SubmitListingRequest(category=99)  # type: ignore[arg-type]
    assert convert.to_command(request, c.SubmitListing).category == "99"


def test_register_participant_takes_either_party_identifier() -> None:
    domestic = convert.to_command(
        participant_pb2.RegisterParticipantRequest(
            request_id="r", name="Acme", party_identifier=common_pb2.PartyIdentifier(uscc="X")
        ),
        c.RegisterParticipant,
    )
    foreign = convert.to_command(
        participant_pb2.RegisterParticipantRequest(
            party_identifier=common_pb2.PartyIdentifier(
                foreign=common_pb2.PartyIdentifier.Foreign(country="DE", registry_number="HRB 1")
            )
        ),
        c.RegisterParticipant,
    )
    assert (domestic.uscc, domestic.country, domestic.name) == ("X", "", "Acme")
    assert (foreign.uscc, foreign.country, foreign.registry_number) == ("", "DE", "HRB 1")


def test_submit_listing_maps_renamed_fields() -> None:
    request = listing_pb2.SubmitListingRequest(
        request_id="r",
        personal_information_level=common_pb2.PERSONAL_INFORMATION_LEVEL_SENSITIVE,
        list_price=common_pb2.Money(currency="CNY", amount_minor=1250000),
        rights=[common_pb2.RIGHT_OPERATE, common_pb2.RIGHT_HOLD],
        scenarios=["a", "b"],
    )
    command = convert.to_command(request, c.SubmitListing)
    assert command.pi_level == "SENSITIVE"
    assert (command.price_currency, command.price_amount_minor) == ("CNY", 1250000)
    assert command.rights == ("OPERATE", "HOLD")
    assert command.scenarios == ("a", "b")


@pytest.mark.parametrize(
    ("request_message", "command"),
    [
        (listing_pb2.SuspendListingRequest(reason_note="why"), c.SuspendListing),
        (
            listing_pb2.ResolveOwnershipDisputeRequest(resolution_note="why"),
            c.ResolveOwnershipDispute,
        ),
        (access_pb2.RevokeAccessRequest(note="why"), c.RevokeAccess),
    ],
)
def test_notes_come_from_the_request_note_field(
    request_message: Message,
    command: type[c.SuspendListing | c.ResolveOwnershipDispute | c.RevokeAccess],
) -> None:
    assert convert.to_command(request_message, command).note == "why"


def test_grant_access_optionals_and_timestamps() -> None:
    until = datetime(2027, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    unset = convert.to_command(access_pb2.GrantAccessRequest(), c.GrantAccess)
    given = convert.to_command(
        access_pb2.GrantAccessRequest(
            valid_until=ts(until),
            usage_limit=0,
            cross_border_basis=common_pb2.CrossBorderBasis(
                kind=common_pb2.CROSS_BORDER_BASIS_KIND_STANDARD_CONTRACT, reference="SC-1"
            ),
        ),
        c.GrantAccess,
    )
    assert (unset.usage_limit, unset.valid_until, unset.cross_border_basis_kind) == (None, None, "")
    assert given.usage_limit == 0
    assert given.valid_until == until
    assert given.valid_until is not None
    assert given.valid_until.tzinfo is not None
    assert (given.cross_border_basis_kind, given.cross_border_basis_ref) == (
        "STANDARD_CONTRACT",
        "SC-1",
    )


def test_an_out_of_range_timestamp_is_an_invalid_argument() -> None:
    request = trade_pb2.SettleTradeRequest(effective_at=Timestamp(seconds=2**62))
    with pytest.raises(InvalidArgument) as caught:
        convert.to_command(request, c.SettleTrade)
    assert caught.value.violations[0].field == "effective_at"


@pytest.mark.parametrize(
    ("request_message", "reported", "wire"),
    [
        (listing_pb2.SubmitListingRequest(), "pi_level", "personal_information_level"),
        (listing_pb2.SubmitListingRequest(), "list_price.currency", "list_price.currency"),
        (listing_pb2.SuspendListingRequest(), "note", "reason_note"),
        (listing_pb2.ResolveOwnershipDisputeRequest(), "note", "resolution_note"),
        (
            participant_pb2.RegisterParticipantRequest(),
            "party.foreign.country",
            "party_identifier.foreign.country",
        ),
        (participant_pb2.IssueCertificationRequest(), "categories[1]", "categories[1]"),
        (None, "pi_level", "pi_level"),
    ],
)
def test_reported_fields_are_named_as_the_request_names_them(
    request_message: Message | None, reported: str, wire: str
) -> None:
    assert convert.wire_field(request_message, reported) == wire


# --- round trips through the application ----------------------------------------------


def test_a_registration_round_trips(market: Market) -> None:
    request = participant_pb2.RegisterParticipantRequest(
        request_id=rid(),
        name="Shanghai Data Co",
        roles=[common_pb2.PARTICIPANT_ROLE_DATA_DEALER, common_pb2.PARTICIPANT_ROLE_BUYER],
        party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
    )
    outcome = market.run(convert.to_command(request, c.RegisterParticipant))
    response = convert.to_response(
        participant_pb2.RegisterParticipantResponse, outcome, request, market.clock.now()
    )
    participant = response.participant
    assert response.position == outcome.position > 0
    assert participant.name == request.name
    assert participant.party_identifier == request.party_identifier
    assert sorted(participant.roles) == sorted(request.roles)
    assert participant.state == participant_pb2.PARTICIPANT_STATE_ACTIVE
    assert participant.etag == str(outcome.resource.version)
    assert participant.create_time.ToDatetime(tzinfo=UTC) == outcome.resource.created_on


def test_an_issued_certification_is_returned_with_its_participant(market: Market) -> None:
    until = market.later(30).replace(microsecond=0)
    request = participant_pb2.IssueCertificationRequest(
        request_id=rid(),
        participant_id=market.ids["dealer"],
        level=common_pb2.CERTIFICATION_LEVEL_CORE,
        categories=[common_pb2.CATEGORY_MEDICAL],
        max_classification=common_pb2.CLASSIFICATION_GENERAL,
        valid_until=ts(until),
        reference="CERT-RT",
    )
    outcome = market.run(convert.to_command(request, c.IssueCertification))
    response = convert.to_response(
        participant_pb2.IssueCertificationResponse, outcome, request, market.clock.now()
    )
    certification = response.certification
    assert certification.reference == "CERT-RT"
    assert certification.state == participant_pb2.CERTIFICATION_STATE_VALID
    assert certification.valid_until.ToDatetime(tzinfo=UTC) == until
    assert list(certification.categories) == [common_pb2.CATEGORY_MEDICAL]
    assert certification in response.participant.certifications


def test_a_listing_and_a_grant_round_trip(market: Market) -> None:
    listing_id, trade_id, grant_id = market.granted()
    listing = convert.listing_pb(market.app.get(Listing, listing_id, market.actor))
    assert listing.id == listing_id
    assert listing.state == listing_pb2.LISTING_STATE_LISTED
    assert listing.list_price == common_pb2.Money(currency="CNY", amount_minor=1_250_000)
    assert listing.latest_assessment.passed
    assert listing.personal_information_level == common_pb2.PERSONAL_INFORMATION_LEVEL_NONE

    request = access_pb2.RecordAccessUseRequest(
        request_id=rid(),
        grant_id=grant_id,
        delivery_mode=common_pb2.DELIVERY_MODE_API,
        scenario="credit-risk-scoring",
        units=3,
    )
    outcome = market.run(convert.to_command(request, c.RecordAccessUse))
    grant = convert.to_response(
        access_pb2.RecordAccessUseResponse, outcome, request, market.clock.now()
    ).grant
    assert (grant.id, grant.trade_id, grant.listing_id) == (grant_id, trade_id, listing_id)
    assert grant.uses_recorded == 3
    assert grant.state == access_pb2.GRANT_STATE_ACTIVE
    assert not grant.HasField("usage_limit")
    assert grant.delivery_mode == common_pb2.DELIVERY_MODE_API


def test_a_grant_reads_expired_after_its_validity(market: Market) -> None:
    _, _, grant_id = market.granted()
    grant = market.app.get(AccessGrant, grant_id, market.actor)
    later = market.clock.now() + timedelta(days=365)
    assert convert.grant_pb(grant, later).state == access_pb2.GRANT_STATE_EXPIRED


def test_an_unknown_enum_number_is_rejected_naming_the_field(market: Market) -> None:
    request = listing_pb2.SubmitListingRequest(
        request_id=rid(),
        exchange_id=market.ids["exchange"],
        provider_id=market.ids["provider"],
        title="t",
        category=common_pb2.CATEGORY_MEDICAL,
        classification=common_pb2.CLASSIFICATION_GENERAL,
        personal_information_level=42,  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidArgument) as caught:
        market.run(convert.to_command(request, c.SubmitListing))
    field = caught.value.violations[0].field
    assert convert.wire_field(request, field) == "personal_information_level"


# --- timestamps -------------------------------------------------------------------------

valid_seconds = st.integers(min_value=-62135596800, max_value=253402300799)
valid_nanos = st.integers(min_value=0, max_value=999_999_999)


@settings(max_examples=300, deadline=None)
@given(valid_seconds, valid_nanos)
def test_a_timestamp_reads_as_protobuf_reads_it(seconds: int, nanos: int) -> None:
    value = Timestamp(seconds=seconds, nanos=nanos)
    read = convert.to_datetime(value, "at")
    assert read == value.ToDatetime(tzinfo=UTC)
    assert read.tzinfo is UTC


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-62135596801, 0), (253402300800, 0), (0, -1), (0, 1_000_000_000), (2**62, 0)],
)
def test_a_timestamp_out_of_its_range_is_an_invalid_argument(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.to_datetime(Timestamp(seconds=seconds, nanos=nanos), "valid_until")
    assert caught.value.violations[0].field == "valid_until"


zones = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30))]
)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), zones)
def test_a_datetime_is_written_as_protobuf_writes_it(
    moment: datetime, zone: timezone | None
) -> None:
    value = moment.replace(tzinfo=zone)
    expected = Timestamp()
    expected.FromDatetime(value)
    assert convert.timestamp(value) == expected
    assert convert.timestamp(value) == expected  # the second time from what was remembered


def test_an_ingest_result_holds_the_response_of_the_single_call(market: Market) -> None:
    listing_id = market.listed()
    request = trade_pb2.RecordSaleRequest(
        request_id=rid(),
        listing_id=listing_id,
        seller_id=market.ids["provider"],
        buyer_id=market.ids["buyer"],
        rights=[common_pb2.RIGHT_PROCESS_USE],
        conveyance=common_pb2.CONVEYANCE_LICENCE,
        scenario="credit-risk-scoring",
        term_start=ts(market.clock.now()),
        term_end=ts(market.later(30)),
        price=common_pb2.Money(currency="CNY", amount_minor=10_000),
    )
    outcome = market.run(convert.to_command(request, c.RecordSale))
    now = market.clock.now()
    single = convert.to_response(trade_pb2.RecordSaleResponse, outcome, request, now)
    fields = convert.response_fields(trade_pb2.RecordSaleResponse, outcome, request, now)
    result = trade_pb2.CommandResult(record_sale=fields)  # type: ignore[arg-type]
    assert result.record_sale == single
    assert single.trade.HasField("term_end")
    assert single.trade.price.amount_minor == 10_000
