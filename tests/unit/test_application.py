"""The application: malformed input, unknown ids, idempotency, etags, uniqueness and the
effects of cancelling a trade. Every rejected command writes nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import orjson
import pytest

from ledger.application import commands as c
from ledger.application.app import Decision, MarketLedger
from ledger.application.markers import entity_id
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, event_type
from ledger.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    InvalidState,
    LedgerError,
    NotFound,
)
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import (
    GrantState,
    ListingState,
    ParticipantState,
    RevocationReason,
    Right,
    TradeState,
)
from ledger.settings import Settings
from tests.market import Market, rid, uscc

A = TypeVar("A", bound=LedgerAggregate)


def load(market: Market, cls: type[A], aggregate_id: str | UUID) -> A:
    aggregate: LedgerAggregate = market.app.repository.get(UUID(str(aggregate_id)))
    assert isinstance(aggregate, cls)
    return aggregate


def events_since(market: Market, position: int) -> list[tuple[str, LedgerEvent]]:
    events: list[tuple[str, LedgerEvent]] = []
    for notification in market.app.recorder.select_notifications(position + 1, 10_000):
        event = market.app.mapper.to_domain_event(notification)
        assert isinstance(event, LedgerEvent)
        events.append((event_type(notification.topic), event))
    return events


def fails(market: Market, error: type[LedgerError], command: c.Command) -> Any:
    """Runs ``command``, expects ``error`` and that nothing was written."""
    before = market.head
    with pytest.raises(error) as caught:
        market.run(command)
    assert market.head == before, "a failed command must write nothing"
    return caught.value


def fields_of(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


@dataclass(frozen=True)
class World:
    """One of each resource, for commands that target an existing one."""

    listing_id: str
    trade_id: str
    grant_id: str
    dealer_id: str
    certification_id: str


@pytest.fixture
def world(market: Market) -> World:
    listing_id, trade_id, grant_id = market.granted()
    dealer = load(market, Participant, market.ids["dealer"])
    return World(
        listing_id, trade_id, grant_id, market.ids["dealer"], next(iter(dealer.certifications))
    )


Build = Callable[[Market, World], c.Command]


def register(**kw: Any) -> Build:
    fields: dict[str, Any] = {"name": "Acme Data", "roles": ("BUYER",), "uscc": uscc()}
    fields.update(kw)
    return lambda m, w: c.RegisterParticipant(request_id=rid(), **fields)


def certify(**kw: Callable[[Market], Any] | Any) -> Build:
    def build(m: Market, w: World) -> c.Command:
        fields: dict[str, Any] = {
            "participant_id": w.dealer_id,
            "level": "CORE",
            "categories": ("MEDICAL",),
            "max_classification": "GENERAL",
            "valid_from": None,
            "valid_until": m.later(30),
            "reference": "CERT-9",
        }
        fields.update({k: (v(m) if callable(v) else v) for k, v in kw.items()})
        return c.IssueCertification(request_id=rid(), **fields)

    return build


def submit(**kw: Any) -> Build:
    def build(m: Market, w: World) -> c.Command:
        fields: dict[str, Any] = {
            "exchange_id": m.ids["exchange"],
            "provider_id": m.ids["provider"],
            "title": "Port container movements",
            "category": "LOGISTICS",
            "classification": "GENERAL",
            "pi_level": "NONE",
            "rights": ("HOLD", "OPERATE"),
            "delivery_modes": ("API",),
            "scenarios": ("route-optimisation",),
            "price_currency": "CNY",
            "price_amount_minor": 100,
        }
        fields.update(kw)
        return c.SubmitListing(request_id=rid(), **fields)

    return build


def sale(**kw: Callable[[Market], Any] | Any) -> Build:
    def build(m: Market, w: World) -> c.Command:
        overrides = {k: (v(m) if callable(v) else v) for k, v in kw.items()}
        return m.sale_command(w.listing_id, **overrides)

    return build


def grant(**kw: Callable[[Market], Any] | Any) -> Build:
    def build(m: Market, w: World) -> c.Command:
        overrides = {k: (v(m) if callable(v) else v) for k, v in kw.items()}
        return m.grant_command(w.trade_id, **overrides)

    return build


def naive(m: Market) -> datetime:
    return m.clock.now().replace(tzinfo=None)


def past(days: int) -> Callable[[Market], datetime]:
    return lambda m: m.clock.now() - timedelta(days=days)


def future(days: int) -> Callable[[Market], datetime]:
    return lambda m: m.later(days)


NOT_A_UUID = "listing-42"
NON_CANONICAL_UUID = "0b7c8f523f4e4c599a671d2f3a4b5c6d"
CONTROL = "line\x00break"

# (case id, command builder, the field the InvalidArgument names)
# fmt: off
BAD_INPUT: list[tuple[str, Build, str]] = [
    # participants
    ("register: bad USCC", register(uscc="91350100M000100Y44"), "party.uscc"),
    ("register: USCC too short", register(uscc="91350100M000100Y4"), "party.uscc"),
    ("register: forbidden letter", register(uscc="91350100MI00100Y43"), "party.uscc"),
    ("register: unknown role", register(roles=("KING",)), "roles[0]"),
    ("register: no role", register(roles=()), "roles"),
    ("register: empty name", register(name="  "), "name"),
    ("register: two identities", register(country="DE", registry_number="HRB 1"), "party"),
    ("register: no identity", register(uscc=""), "party"),
    ("register: bad country", register(uscc="", country="de", registry_number="1"),
     "party.foreign.country"),
    ("register: bad registry number", register(uscc="", country="DE", registry_number="$"),
     "party.foreign.registry_number"),
    ("certify: unknown level", certify(level="GOLD"), "level"),
    ("certify: unknown category", certify(categories=("MEDICAL", "SPACE")), "categories[1]"),
    ("certify: no category", certify(categories=()), "categories"),
    ("certify: unknown classification", certify(max_classification="SECRET"),
     "max_classification"),
    ("certify: no expiry", certify(valid_until=None), "valid_until"),
    ("certify: naive expiry", certify(valid_until=naive), "valid_until"),
    ("certify: expires before it starts", certify(valid_from=future(10),
     valid_until=future(5)), "valid_until"),
    ("certify: no reference", certify(reference=""), "reference"),
    ("certify: malformed participant id", certify(participant_id=NOT_A_UUID), "participant_id"),
    ("suspend certification: malformed id", lambda m, w: c.SuspendCertification(
        request_id=rid(), participant_id=w.dealer_id, certification_id="cert-1"),
     "certification_id"),
    ("reinstate certification: malformed participant", lambda m, w: c.ReinstateCertification(
        request_id=rid(), participant_id=NOT_A_UUID, certification_id=w.certification_id),
     "participant_id"),
    ("revoke certification: unknown reason", lambda m, w: c.RevokeCertification(
        request_id=rid(), participant_id=w.dealer_id, certification_id=w.certification_id,
        reason="BORED"), "reason"),
    ("suspend participant: control character", lambda m, w: c.SuspendParticipant(
        request_id=rid(), participant_id=w.dealer_id, note=CONTROL), "note"),
    ("reinstate participant: malformed etag", lambda m, w: c.ReinstateParticipant(
        request_id=rid(), participant_id=w.dealer_id, etag="v2"), "etag"),
    ("deregister: non-canonical id", lambda m, w: c.DeregisterParticipant(
        request_id=rid(), participant_id=NON_CANONICAL_UUID), "participant_id"),
    # listings
    ("submit: negative price", submit(price_amount_minor=-1), "list_price.amount_minor"),
    ("submit: bad currency", submit(price_currency="yuan"), "list_price.currency"),
    ("submit: price beyond int64", submit(price_amount_minor=2**63), "list_price.amount_minor"),
    ("submit: empty scenarios", submit(scenarios=()), "scenarios"),
    ("submit: blank scenario", submit(scenarios=("ok", " ")), "scenarios[1]"),
    ("submit: padded scenario", submit(scenarios=(" padded ",)), "scenarios[0]"),
    ("submit: unknown category", submit(category="SPACE"), "category"),
    ("submit: unknown classification", submit(classification="SECRET"), "classification"),
    ("submit: unknown PI level", submit(pi_level="SOME"), "pi_level"),
    ("submit: no rights", submit(rights=()), "rights"),
    ("submit: unknown right", submit(rights=("OPERATE", "OWN")), "rights[1]"),
    ("submit: no delivery mode", submit(delivery_modes=()), "delivery_modes"),
    ("submit: unknown delivery mode", submit(delivery_modes=("FAX",)), "delivery_modes[0]"),
    ("submit: empty title", submit(title=""), "title"),
    ("submit: malformed exchange id", submit(exchange_id=NOT_A_UUID), "exchange_id"),
    ("assess: no reference", lambda m, w: c.RecordAssessment(
        request_id=rid(), listing_id=w.listing_id, assessor_id=m.ids["assessor"], passed=True,
        reference=" "), "reference"),
    ("assess: malformed assessor", lambda m, w: c.RecordAssessment(
        request_id=rid(), listing_id=w.listing_id, assessor_id=NOT_A_UUID, passed=True,
        reference="LAW-1"), "assessor_id"),
    ("approve: malformed listing", lambda m, w: c.ApproveListing(
        request_id=rid(), listing_id=NOT_A_UUID), "listing_id"),
    ("reject: control character", lambda m, w: c.RejectListing(
        request_id=rid(), listing_id=w.listing_id, note=CONTROL), "note"),
    ("suspend listing: malformed etag", lambda m, w: c.SuspendListing(
        request_id=rid(), listing_id=w.listing_id, etag="-1"), "etag"),
    ("reinstate listing: malformed listing", lambda m, w: c.ReinstateListing(
        request_id=rid(), listing_id=NON_CANONICAL_UUID), "listing_id"),
    ("delist: note too long", lambda m, w: c.DelistListing(
        request_id=rid(), listing_id=w.listing_id, note="x" * 5000), "note"),
    ("reclassify: unknown classification", lambda m, w: c.ReclassifyListing(
        request_id=rid(), listing_id=w.listing_id, classification="SECRET"), "classification"),
    ("reclassify: no classification", lambda m, w: c.ReclassifyListing(
        request_id=rid(), listing_id=w.listing_id, classification=""), "classification"),
    ("reclassify: unchanged classification", lambda m, w: c.ReclassifyListing(
        request_id=rid(), listing_id=w.listing_id, classification="GENERAL"), "classification"),
    ("open dispute: malformed claimant", lambda m, w: c.OpenOwnershipDispute(
        request_id=rid(), listing_id=w.listing_id, claimant_id=NOT_A_UUID), "claimant_id"),
    ("resolve dispute: malformed listing", lambda m, w: c.ResolveOwnershipDispute(
        request_id=rid(), listing_id=NOT_A_UUID), "listing_id"),
    # trades
    ("sale: negative price", sale(price_amount_minor=-5), "price.amount_minor"),
    ("sale: bad currency", sale(price_currency="RMB1"), "price.currency"),
    ("sale: unknown conveyance", sale(conveyance="GIFT"), "conveyance"),
    ("sale: unknown right", sale(rights=("USE",)), "rights[0]"),
    ("sale: no right", sale(rights=()), "rights"),
    ("sale: empty scenario", sale(scenario=""), "scenario"),
    ("sale: term ends before it starts", sale(term_start=future(10), term_end=future(5)),
     "term_end"),
    ("sale: licence without a term", sale(term_start=None, term_end=None), "term_end"),
    ("sale: naive term start", sale(term_start=naive), "term_start"),
    ("sale: malformed buyer", sale(buyer_id=NOT_A_UUID), "buyer_id"),
    ("sale: malformed listing etag", sale(listing_etag="latest"), "listing_etag"),
    ("settle: no payment reference", lambda m, w: c.SettleTrade(
        request_id=rid(), trade_id=w.trade_id), "settlement_ref"),
    ("cancel: malformed trade", lambda m, w: c.CancelTrade(
        request_id=rid(), trade_id=NOT_A_UUID), "trade_id"),
    # access
    ("grant: unknown delivery mode", grant(delivery_mode="FAX"), "delivery_mode"),
    ("grant: bad destination", grant(destination_country="de"), "destination_country"),
    ("grant: naive validity", grant(valid_from=naive), "valid_from"),
    ("grant: validity ends before it starts", grant(valid_from=future(0),
     valid_until=past(1)), "valid_until"),
    ("grant: zero usage limit", grant(usage_limit=0), "usage_limit"),
    ("grant: unknown basis kind", grant(destination_country="DE", cross_border_basis_kind="NDA",
     cross_border_basis_ref="X"), "cross_border_basis.kind"),
    ("grant: basis without reference", grant(destination_country="DE",
     cross_border_basis_kind="STANDARD_CONTRACT"), "cross_border_basis.reference"),
    ("grant: empty scenario", grant(scenario=""), "scenario"),
    ("suspend access: malformed grant", lambda m, w: c.SuspendAccess(
        request_id=rid(), grant_id=NOT_A_UUID), "grant_id"),
    ("reinstate access: malformed etag", lambda m, w: c.ReinstateAccess(
        request_id=rid(), grant_id=w.grant_id, etag="x"), "etag"),
    ("revoke access: unknown reason", lambda m, w: c.RevokeAccess(
        request_id=rid(), grant_id=w.grant_id, reason="BORED"), "reason"),
    ("use: no units", lambda m, w: c.RecordAccessUse(
        request_id=rid(), grant_id=w.grant_id, delivery_mode="API",
        scenario="credit-risk-scoring", units=0), "units"),
    ("use: in the future", lambda m, w: c.RecordAccessUse(
        request_id=rid(), grant_id=w.grant_id, delivery_mode="API",
        scenario="credit-risk-scoring", used_at=m.later(1)), "used_at"),
    ("use: naive time", lambda m, w: c.RecordAccessUse(
        request_id=rid(), grant_id=w.grant_id, delivery_mode="API",
        scenario="credit-risk-scoring", used_at=naive(m)), "used_at"),
    ("use: unknown delivery mode", lambda m, w: c.RecordAccessUse(
        request_id=rid(), grant_id=w.grant_id, delivery_mode="FAX",
        scenario="credit-risk-scoring"), "delivery_mode"),
]
# fmt: on


@pytest.mark.parametrize(
    ("build", "field"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_rejected_naming_the_field_and_writes_nothing(
    market: Market, world: World, build: Build, field: str
) -> None:
    error = fails(market, InvalidArgument, build(market, world))
    assert fields_of(error) == [field], str(error)


def test_bad_input_is_covered_for_every_command_kind(market: Market, world: World) -> None:
    kinds = {build(market, world).kind for _, build, _ in BAD_INPUT}
    assert kinds == {command.kind for command in c.ALL_COMMANDS}


def every_command(market: Market, world: World) -> list[c.Command]:
    """A valid-looking command of every kind (to check the envelope checks)."""
    commands = [build(market, world) for _, build, _ in BAD_INPUT]
    return list({command.kind: command for command in commands}.values())


def test_a_request_fingerprint_is_the_digest_of_its_fields_as_stored_markers_hold_it(
    market: Market, world: World
) -> None:
    # Markers already stored hold fingerprints made this way; a replay must match them.
    for command in every_command(market, world):
        data = dataclasses.asdict(command)
        data.pop("request_id")
        data["kind"] = command.kind
        encoded = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=_sorted_set)
        assert command.fingerprint() == hashlib.sha256(encoded).hexdigest(), command.kind


def _sorted_set(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(type(value))


@pytest.mark.parametrize("request_id", ["", "42", NON_CANONICAL_UUID, "{" + str(uuid4()) + "}"])
def test_a_malformed_request_id_is_rejected_for_every_command(
    market: Market, world: World, request_id: str
) -> None:
    for command in every_command(market, world):
        error = fails(market, InvalidArgument, replace(command, request_id=request_id))
        assert fields_of(error) == ["request_id"], command.kind


def test_a_future_effective_time_is_rejected_for_every_command(
    market: Market, world: World
) -> None:
    for command in every_command(market, world):
        error = fails(market, InvalidArgument, replace(command, effective_at=market.later(1)))
        assert fields_of(error) == ["effective_at"], command.kind


def test_a_naive_effective_time_is_rejected_for_every_command(market: Market, world: World) -> None:
    for command in every_command(market, world):
        error = fails(market, InvalidArgument, replace(command, effective_at=naive(market)))
        assert fields_of(error) == ["effective_at"], command.kind


def test_a_past_effective_time_is_recorded_beside_the_recording_time(
    market: Market, world: World
) -> None:
    effective = market.clock.now() - timedelta(days=2)
    before = market.head
    out = market.run(
        c.SuspendListing(request_id=rid(), listing_id=world.listing_id, effective_at=effective)
    )
    events = events_since(market, before)
    assert events
    for _, event in events:
        assert event.effective_at == effective
        assert event.timestamp == market.clock.now()
    assert out.position == market.head


# --- unknown ids ---------------------------------------------------------------------

UNKNOWN = str(uuid4())

# fmt: off
NOT_FOUND: list[tuple[str, Build, str]] = [
    ("certify", certify(participant_id=UNKNOWN), "participant_id"),
    ("suspend certification", lambda m, w: c.SuspendCertification(
        request_id=rid(), participant_id=w.dealer_id, certification_id=UNKNOWN),
     "certification_id"),
    ("revoke certification", lambda m, w: c.RevokeCertification(
        request_id=rid(), participant_id=w.dealer_id, certification_id=UNKNOWN,
        reason="REGULATOR_ORDER"), "certification_id"),
    ("suspend participant", lambda m, w: c.SuspendParticipant(
        request_id=rid(), participant_id=UNKNOWN), "participant_id"),
    ("submit: exchange", submit(exchange_id=UNKNOWN), "exchange_id"),
    ("submit: provider", submit(provider_id=UNKNOWN), "provider_id"),
    ("assess: assessor", lambda m, w: c.RecordAssessment(
        request_id=rid(), listing_id=w.listing_id, assessor_id=UNKNOWN, passed=True,
        reference="LAW-1"), "assessor_id"),
    ("approve", lambda m, w: c.ApproveListing(request_id=rid(), listing_id=UNKNOWN),
     "listing_id"),
    ("open dispute: claimant", lambda m, w: c.OpenOwnershipDispute(
        request_id=rid(), listing_id=w.listing_id, claimant_id=UNKNOWN), "claimant_id"),
    ("sale: listing", lambda m, w: m.sale_command(UNKNOWN), "listing_id"),
    ("sale: seller", sale(seller_id=UNKNOWN), "seller_id"),
    ("sale: buyer", sale(buyer_id=UNKNOWN), "buyer_id"),
    ("settle", lambda m, w: c.SettleTrade(request_id=rid(), trade_id=UNKNOWN), "trade_id"),
    ("grant", lambda m, w: m.grant_command(UNKNOWN), "trade_id"),
    ("revoke access", lambda m, w: c.RevokeAccess(
        request_id=rid(), grant_id=UNKNOWN, reason="MISUSE_DETECTED"), "grant_id"),
    # An id of another kind of resource is not found either.
    ("sale: a participant as listing", lambda m, w: m.sale_command(w.dealer_id), "listing_id"),
    ("grant: a listing as trade", lambda m, w: m.grant_command(w.listing_id), "trade_id"),
    ("suspend access: a trade as grant", lambda m, w: c.SuspendAccess(
        request_id=rid(), grant_id=w.trade_id), "grant_id"),
]
# fmt: on


@pytest.mark.parametrize(
    ("build", "field"), [case[1:] for case in NOT_FOUND], ids=[case[0] for case in NOT_FOUND]
)
def test_an_unknown_id_is_not_found_naming_the_field_and_writes_nothing(
    market: Market, world: World, build: Build, field: str
) -> None:
    error = fails(market, NotFound, build(market, world))
    assert error.field == field


# --- idempotency ---------------------------------------------------------------------


def test_repeating_a_request_replays_the_original_outcome_and_writes_nothing(
    market: Market,
) -> None:
    command = c.RegisterParticipant(
        request_id=rid(), name="Acme Data", roles=("BUYER",), uscc=uscc()
    )
    first = market.run(command)
    head = market.head
    again = market.run(command)
    assert not first.replayed
    assert again.replayed
    assert again.position == first.position == head
    assert again.resource.id == first.resource.id
    assert market.head == head


@pytest.mark.parametrize("kind", ["sale", "grant", "suspend listing", "cancel"])
def test_repeating_any_command_replays_it(market: Market, world: World, kind: str) -> None:
    commands: dict[str, c.Command] = {
        "sale": market.sale_command(world.listing_id, buyer_id=market.ids["buyer2"]),
        "grant": market.grant_command(world.trade_id, delivery_mode="PRIVACY_COMPUTE"),
        "suspend listing": c.SuspendListing(request_id=rid(), listing_id=world.listing_id),
        "cancel": c.CancelTrade(request_id=rid(), trade_id=world.trade_id),
    }
    command = commands[kind]
    first = market.run(command)
    head = market.head
    for _ in range(3):
        again = market.run(command)
        assert again.replayed
        assert again.position == first.position
        assert again.resource.id == first.resource.id
        assert again.resource.version == first.resource.version
    assert market.head == head


def test_a_replay_returns_the_resource_as_the_original_write_left_it(market: Market) -> None:
    command = c.RegisterParticipant(request_id=rid(), name="Acme", roles=("BUYER",), uscc=uscc())
    first = market.run(command)
    participant_id = str(first.resource.id)
    market.run(c.SuspendParticipant(request_id=rid(), participant_id=participant_id))
    again = market.run(command)
    assert again.replayed
    assert isinstance(again.resource, Participant)
    assert again.resource.state is ParticipantState.ACTIVE
    assert again.resource.version == 1
    assert load(market, Participant, participant_id).state is ParticipantState.SUSPENDED


def test_a_request_id_reused_for_a_different_command_already_exists(market: Market) -> None:
    request_id = rid()
    market.run(
        c.RegisterParticipant(request_id=request_id, name="A", roles=("BUYER",), uscc=uscc())
    )
    fails(
        market,
        AlreadyExists,
        c.RegisterParticipant(request_id=request_id, name="B", roles=("BUYER",), uscc=uscc()),
    )


def test_a_request_id_reused_for_another_kind_of_command_already_exists(
    market: Market, world: World
) -> None:
    request_id = rid()
    market.run(c.SuspendListing(request_id=request_id, listing_id=world.listing_id))
    fails(market, AlreadyExists, c.SuspendAccess(request_id=request_id, grant_id=world.grant_id))


def test_a_request_id_is_compared_in_its_canonical_form(market: Market) -> None:
    command = c.RegisterParticipant(request_id=rid(), name="A", roles=("BUYER",), uscc=uscc())
    first = market.run(command)
    again = market.run(replace(command, request_id=command.request_id.upper()))
    assert again.replayed
    assert again.position == first.position


def test_a_rejected_request_can_be_retried_with_the_same_request_id(
    market: Market, world: World
) -> None:
    market.run(c.SuspendListing(request_id=rid(), listing_id=world.listing_id))
    command = market.sale_command(world.listing_id)
    fails(market, LedgerError, command)
    market.run(c.ReinstateListing(request_id=rid(), listing_id=world.listing_id))
    out = market.run(command)
    assert not out.replayed
    assert out.resource.id == entity_id("trade", command.request_id)


def test_new_entity_ids_derive_from_the_request_id(market: Market, world: World) -> None:
    register_command = register(roles=("DATA_DEALER",))(market, world)
    out = market.run(register_command)
    assert out.resource.id == entity_id("participant", register_command.request_id)

    certify_command = certify()(market, world)
    out = market.run(certify_command)
    assert isinstance(out.resource, Participant)
    certification_id = str(entity_id("certification", certify_command.request_id))
    assert set(out.resource.certifications) == {world.certification_id, certification_id}

    listing_command = submit()(market, world)
    out = market.run(listing_command)
    assert out.resource.id == entity_id("listing", listing_command.request_id)

    sale_command = market.sale_command(world.listing_id, buyer_id=market.ids["buyer2"])
    out = market.run(sale_command)
    assert out.resource.id == entity_id("trade", sale_command.request_id)

    grant_command = market.grant_command(str(out.resource.id))
    out = market.run(grant_command)
    assert out.resource.id == entity_id("grant", grant_command.request_id)


def test_entity_ids_are_the_same_in_two_independent_ledgers(market: Market) -> None:
    other = build_application(Settings(database_url="memory:"), FakeClock())
    command = c.RegisterParticipant(request_id=rid(), name="A", roles=("BUYER",), uscc=uscc())
    assert market.run(command).resource.id == other.execute(command, market.actor).resource.id


# --- etags and races ---------------------------------------------------------------


def test_a_stale_etag_is_a_conflict_and_writes_nothing(market: Market) -> None:
    dealer = load(market, Participant, market.ids["dealer"])
    assert dealer.version == 2  # registered and certified
    fails(
        market,
        Conflict,
        c.SuspendParticipant(request_id=rid(), participant_id=market.ids["dealer"], etag="1"),
    )
    market.run(
        c.SuspendParticipant(request_id=rid(), participant_id=market.ids["dealer"], etag="2")
    )
    assert load(market, Participant, market.ids["dealer"]).state is ParticipantState.SUSPENDED


def test_a_stale_listing_etag_on_a_sale_is_a_conflict(market: Market, world: World) -> None:
    version = load(market, Listing, world.listing_id).version
    fails(market, Conflict, market.sale_command(world.listing_id, listing_etag=str(version - 1)))
    assert market.run(market.sale_command(world.listing_id, listing_etag=str(version)))


def race(
    market: Market, monkeypatch: pytest.MonkeyPatch, handler: str, rivals: list[c.Command]
) -> None:
    """Each rival commits between the handler's decision and its write, in turn."""
    app: MarketLedger = market.app
    original: Callable[[Any, Act], Decision] = getattr(app, handler)
    pending = list(rivals)

    def racing(command: Any, act: Act) -> Decision:
        decision = original(command, act)
        if pending:
            app.execute(pending.pop(0), market.actor)
        return decision

    monkeypatch.setattr(app, handler, racing)


def test_an_etag_guarded_command_that_loses_a_race_is_a_conflict(
    market: Market, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = load(market, Listing, world.listing_id).version
    rival = c.OpenOwnershipDispute(request_id=rid(), listing_id=world.listing_id)
    race(market, monkeypatch, "_suspend_listing", [rival])
    with pytest.raises(Conflict):
        market.run(
            c.SuspendListing(request_id=rid(), listing_id=world.listing_id, etag=str(version))
        )
    listing = load(market, Listing, world.listing_id)
    assert listing.state is ListingState.LISTED
    assert listing.disputed


def test_an_unguarded_command_that_loses_a_race_is_retried(
    market: Market, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rival = c.OpenOwnershipDispute(request_id=rid(), listing_id=world.listing_id)
    race(market, monkeypatch, "_suspend_listing", [rival])
    market.run(c.SuspendListing(request_id=rid(), listing_id=world.listing_id))
    listing = load(market, Listing, world.listing_id)
    assert listing.state is ListingState.SUSPENDED
    assert listing.disputed


def test_a_command_that_loses_every_race_gives_up_with_a_conflict(
    market: Market, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rivals: list[c.Command] = []
    for i in range(10):
        kind = c.OpenOwnershipDispute if i % 2 == 0 else c.ResolveOwnershipDispute
        rivals.append(kind(request_id=rid(), listing_id=world.listing_id))
    race(market, monkeypatch, "_suspend_listing", rivals)
    before = market.head
    with pytest.raises(Conflict):
        market.run(c.SuspendListing(request_id=rid(), listing_id=world.listing_id))
    written = {name for name, _ in events_since(market, before)}
    assert "ListingSuspended" not in written
    assert load(market, Listing, world.listing_id).state is ListingState.LISTED


# --- uniqueness ----------------------------------------------------------------------


def test_a_uscc_registered_twice_already_exists(market: Market) -> None:
    code = uscc()
    market.run(c.RegisterParticipant(request_id=rid(), name="A", roles=("BUYER",), uscc=code))
    fails(
        market,
        AlreadyExists,
        c.RegisterParticipant(request_id=rid(), name="B", roles=("DATA_HOLDER",), uscc=code),
    )


def test_a_foreign_registration_registered_twice_already_exists(market: Market) -> None:
    def foreign() -> c.RegisterParticipant:
        return c.RegisterParticipant(
            request_id=rid(), name="GmbH", roles=("BUYER",), country="DE", registry_number="HRB 7"
        )

    market.run(foreign())
    fails(market, AlreadyExists, foreign())


def test_the_same_registry_number_in_another_country_is_another_party(market: Market) -> None:
    for country in ("DE", "FR"):
        market.run(
            c.RegisterParticipant(
                request_id=rid(),
                name="X",
                roles=("BUYER",),
                country=country,
                registry_number="HRB 7",
            )
        )


def test_a_deregistered_partys_uscc_stays_taken(market: Market) -> None:
    code = uscc()
    out = market.run(c.RegisterParticipant(request_id=rid(), name="A", roles=("BUYER",), uscc=code))
    market.run(c.DeregisterParticipant(request_id=rid(), participant_id=str(out.resource.id)))
    fails(
        market,
        AlreadyExists,
        c.RegisterParticipant(request_id=rid(), name="A2", roles=("BUYER",), uscc=code),
    )


# --- cancelling trades ---------------------------------------------------------------


def transfer_command(market: Market, listing_id: str, *rights: str, **kw: Any) -> c.RecordSale:
    return market.sale_command(
        listing_id, conveyance="TRANSFER", rights=rights, term_start=None, term_end=None, **kw
    )


def test_cancelling_a_transfer_gives_the_rights_back(market: Market, world: World) -> None:
    provider, buyer = market.ids["provider"], market.ids["buyer"]
    trade_id = str(market.run(transfer_command(market, world.listing_id, "HOLD")).resource.id)
    assert load(market, Listing, world.listing_id).holdings[Right.HOLD] == buyer

    before = market.head
    market.run(c.CancelTrade(request_id=rid(), trade_id=trade_id, note="buyer withdrew"))

    assert load(market, Listing, world.listing_id).holdings[Right.HOLD] == provider
    assert load(market, Trade, trade_id).state is TradeState.CANCELLED
    reversal = [e for name, e in events_since(market, before) if name == "RightsTransferred"]
    assert len(reversal) == 1
    assert reversal[0].__dict__["reversal"] is True
    assert reversal[0].__dict__["from_id"] == buyer
    assert reversal[0].__dict__["to_id"] == provider
    # The provider holds HOLD again, so it can transfer it again.
    market.run(transfer_command(market, world.listing_id, "HOLD", buyer_id=market.ids["buyer2"]))
    assert load(market, Listing, world.listing_id).holdings[Right.HOLD] == market.ids["buyer2"]


def test_a_transfer_whose_rights_moved_on_cannot_be_cancelled(market: Market, world: World) -> None:
    dealer = market.ids["dealer"]
    first = market.run(transfer_command(market, world.listing_id, "HOLD", buyer_id=dealer))
    market.run(transfer_command(market, world.listing_id, "HOLD", seller_id=dealer))
    error = fails(
        market, InvalidState, c.CancelTrade(request_id=rid(), trade_id=str(first.resource.id))
    )
    assert error.reason == "RIGHTS_MOVED_ON"


def test_cancelling_a_licence_ends_it(market: Market, world: World) -> None:
    dealer = market.ids["dealer"]
    command = market.sale_command(
        world.listing_id, buyer_id=dealer, rights=("PROCESS_USE", "OPERATE")
    )
    trade_id = str(market.run(command).resource.id)
    listing = load(market, Listing, world.listing_id)
    assert listing.rights_held_by(dealer, market.clock.now()) == {Right.PROCESS_USE, Right.OPERATE}

    before = market.head
    market.run(c.CancelTrade(request_id=rid(), trade_id=trade_id))

    assert "LicenceEnded" in [name for name, _ in events_since(market, before)]
    listing = load(market, Listing, world.listing_id)
    assert trade_id not in listing.licences
    assert not listing.rights_held_by(dealer, market.clock.now())
    assert listing.holdings[Right.OPERATE] == market.ids["provider"]
    # The dealer can no longer sell on.
    fails(market, LedgerError, market.sale_command(world.listing_id, seller_id=dealer))


def test_cancelling_a_trade_revokes_its_grants_in_the_same_write(
    market: Market, world: World
) -> None:
    second = market.grant(world.trade_id, delivery_mode="PRIVACY_COMPUTE")
    market.run(c.SuspendAccess(request_id=rid(), grant_id=second))
    command = c.CancelTrade(request_id=rid(), trade_id=world.trade_id)
    before = market.head
    out = market.run(command)
    events = events_since(market, before)
    assert out.position == market.head == before + len(events)
    assert {e.request_id for _, e in events} == {command.request_id}
    assert [n for n, _ in events].count("AccessRevoked") == 2
    for grant_id in (world.grant_id, second):
        grant = load(market, AccessGrant, grant_id)
        assert grant.status is GrantState.REVOKED
        assert grant.revocation_reason is RevocationReason.CONTRACT_TERMINATED


def test_a_cancelled_trade_cannot_be_cancelled_again(market: Market, world: World) -> None:
    market.run(c.CancelTrade(request_id=rid(), trade_id=world.trade_id))
    error = fails(market, InvalidState, c.CancelTrade(request_id=rid(), trade_id=world.trade_id))
    assert error.reason == "TRADE_CANCELLED"


def test_a_settled_trade_cannot_be_cancelled(market: Market, world: World) -> None:
    market.run(c.SettleTrade(request_id=rid(), trade_id=world.trade_id, settlement_ref="PAY-7"))
    error = fails(market, InvalidState, c.CancelTrade(request_id=rid(), trade_id=world.trade_id))
    assert error.reason == "TRADE_SETTLED"
    assert load(market, AccessGrant, world.grant_id).status is GrantState.ACTIVE


# --- dispatch ------------------------------------------------------------------------


@pytest.mark.parametrize("command", c.ALL_COMMANDS, ids=lambda command: command.kind)
def test_every_command_kind_has_a_method_of_its_name(command: type[c.Command]) -> None:
    method = re.sub(r"(?<!^)(?=[A-Z])", "_", command.kind).lower()
    assert callable(getattr(MarketLedger, method))
