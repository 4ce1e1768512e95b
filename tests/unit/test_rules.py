"""The enforced rules R01-R16, rule by rule, through the application.

Every rejection names its rule (``.rule``) and reason (``.reason``) and writes nothing (the
head of the log does not move); the allowed case sits beside it. Cascades (R01, R14, R15)
are checked to happen in the same atomic write as the command that causes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

import pytest

from ledger.application import commands as c
from ledger.application.app import Decision, MarketLedger
from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, event_type
from ledger.domain.errors import RuleViolation
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.rules import check_r11_grant_source
from ledger.domain.trade import Trade
from ledger.domain.values import (
    CertificationState,
    Classification,
    DeliveryMode,
    GrantState,
    ListingState,
    ParticipantState,
    RevocationReason,
    Right,
    TradeState,
)
from tests.market import Market, rid

A = TypeVar("A", bound=LedgerAggregate)

# --- helpers ---------------------------------------------------------------------------


def load(market: Market, cls: type[A], aggregate_id: str) -> A:
    aggregate: LedgerAggregate = market.app.repository.get(UUID(aggregate_id))
    assert isinstance(aggregate, cls)
    return aggregate


def listing_of(market: Market, listing_id: str) -> Listing:
    return load(market, Listing, listing_id)


def grant_of(market: Market, grant_id: str) -> AccessGrant:
    return load(market, AccessGrant, grant_id)


def participant_of(market: Market, name: str) -> Participant:
    return load(market, Participant, market.ids[name])


def only_certification(market: Market, name: str) -> str:
    certifications = participant_of(market, name).certifications
    assert len(certifications) == 1
    return next(iter(certifications))


def rejected(market: Market, reason: str, action: Callable[[], object]) -> RuleViolation:
    """Runs ``action``, expects the rule violation ``reason`` and that nothing was written."""
    before = market.head
    with pytest.raises(RuleViolation) as caught:
        action()
    error = caught.value
    assert error.reason == reason, str(error)
    assert error.rule == reason[:3]
    assert market.head == before, "a rejected command must write nothing"
    return error


def rejects(market: Market, command: c.Command, reason: str) -> RuleViolation:
    return rejected(market, reason, lambda: market.run(command))


def events_since(market: Market, position: int) -> list[tuple[str, LedgerEvent]]:
    """The events written after ``position``, by catalogue name."""
    notifications = market.app.recorder.select_notifications(position + 1, 10_000)
    events: list[tuple[str, LedgerEvent]] = []
    for notification in notifications:
        event = market.app.mapper.to_domain_event(notification)
        assert isinstance(event, LedgerEvent)
        events.append((event_type(notification.topic), event))
    return events


def one_write(market: Market, command: c.Command) -> list[tuple[str, LedgerEvent]]:
    """Runs ``command`` and returns its events, checking they form one write of it alone."""
    before = market.head
    outcome = market.run(command)
    events = events_since(market, before)
    assert outcome.position == market.head == before + len(events)
    assert {event.request_id for _, event in events} == {command.request_id}
    assert events[-1][0] == "RequestAccepted", "the request marker closes the write"
    return events


def names_of(events: list[tuple[str, LedgerEvent]]) -> list[str]:
    return [name for name, _ in events]


def transfer(market: Market, listing_id: str, *rights: str, **overrides: Any) -> c.RecordSale:
    return market.sale_command(
        listing_id,
        conveyance="TRANSFER",
        rights=rights,
        term_start=None,
        term_end=None,
        **overrides,
    )


def suspend_participant(market: Market, name: str) -> None:
    market.run(c.SuspendParticipant(request_id=rid(), participant_id=market.ids[name]))


def certified(market: Market, name: str, *roles: str, **certify: Any) -> str:
    participant_id = market.participant(name, *roles)
    market.certify(participant_id, **certify)
    return participant_id


def dealer_with_licence(market: Market, listing_id: str) -> str:
    """The standard dealer buys a licence of PROCESS_USE and OPERATE (to sell on) from the
    provider."""
    return market.sell(listing_id, buyer_id=market.ids["dealer"], rights=("PROCESS_USE", "OPERATE"))


@pytest.fixture
def listing(market: Market) -> str:
    return market.listed()


# --- R01: CORE data is never circulated ------------------------------------------------


def test_r01_listing_core_data_is_rejected(market: Market) -> None:
    rejected(market, "R01_CORE_DATA", lambda: market.submit(classification="CORE"))


def test_r01_listing_general_data_is_allowed(market: Market) -> None:
    listing_id = market.submit(classification="GENERAL")
    assert listing_of(market, listing_id).state is ListingState.SUBMITTED


def test_r01_reclassifying_to_core_delists_and_revokes_every_grant_in_one_write(
    market: Market, listing: str
) -> None:
    first_trade = market.sell(listing)
    active = market.grant(first_trade)
    suspended = market.grant(first_trade, delivery_mode="PRIVACY_COMPUTE")
    market.run(c.SuspendAccess(request_id=rid(), grant_id=suspended))
    other_trade = market.sell(listing, buyer_id=market.ids["buyer2"])
    other = market.grant(other_trade)
    command = c.ReclassifyListing(request_id=rid(), listing_id=listing, classification="CORE")

    events = one_write(market, command)

    assert names_of(events) == [
        "ListingReclassified",
        "ListingDelisted",
        "AccessRevoked",
        "AccessRevoked",
        "AccessRevoked",
        "RequestAccepted",
    ]
    after = listing_of(market, listing)
    assert after.state is ListingState.DELISTED
    assert after.classification is Classification.CORE
    for grant_id in (active, suspended, other):
        grant = grant_of(market, grant_id)
        assert grant.status is GrantState.REVOKED
        assert grant.revocation_reason is RevocationReason.RECLASSIFIED
    revocations = [event for name, event in events if name == "AccessRevoked"]
    assert {event.originator_id for event in revocations} == {
        UUID(active),
        UUID(suspended),
        UUID(other),
    }
    assert all(event.__dict__["rule"] == "R01" for event in revocations)


def test_r01_reclassifying_a_submitted_listing_to_core_rejects_it(market: Market) -> None:
    listing_id = market.submit()
    events = one_write(
        market, c.ReclassifyListing(request_id=rid(), listing_id=listing_id, classification="CORE")
    )
    assert names_of(events) == ["ListingReclassified", "ListingRejected", "RequestAccepted"]
    assert listing_of(market, listing_id).state is ListingState.REJECTED


def test_r01_sale_after_reclassification_to_core_is_rejected(market: Market, listing: str) -> None:
    market.run(c.ReclassifyListing(request_id=rid(), listing_id=listing, classification="CORE"))
    rejects(market, market.sale_command(listing), "R01_CORE_DATA")


def test_r01_grant_after_reclassification_to_core_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    market.run(c.ReclassifyListing(request_id=rid(), listing_id=listing, classification="CORE"))
    rejects(market, market.grant_command(trade_id), "R01_CORE_DATA")


def test_r01_reclassifying_to_important_keeps_the_listing_and_its_grants(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    market.run(
        c.ReclassifyListing(request_id=rid(), listing_id=listing, classification="IMPORTANT")
    )
    assert listing_of(market, listing).state is ListingState.LISTED
    assert grant_of(market, grant_id).status is GrantState.ACTIVE


def test_r01_a_sale_racing_a_reclassification_to_core_loses(
    market: Market, listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reclassify = c.ReclassifyListing(request_id=rid(), listing_id=listing, classification="CORE")
    race_in_between(market, monkeypatch, "_record_sale", reclassify)
    loses_race(market, market.sale_command(listing), reclassify, "R01_CORE_DATA")
    assert listing_of(market, listing).state is ListingState.DELISTED


# --- R02: the venue is an active, certified exchange -----------------------------------


def test_r02_listing_on_a_participant_without_the_exchange_role_is_rejected(
    market: Market,
) -> None:
    rejected(
        market,
        "R02_NOT_AN_EXCHANGE",
        lambda: market.submit(exchange_id=market.ids["dealer"]),
    )


def test_r02_listing_on_a_suspended_exchange_is_rejected(market: Market) -> None:
    suspend_participant(market, "exchange")
    rejected(market, "R02_EXCHANGE_NOT_ACTIVE", market.submit)


def test_r02_listing_on_an_uncertified_exchange_is_rejected(market: Market) -> None:
    uncertified = market.participant("exchange2", "EXCHANGE")
    rejected(market, "R02_EXCHANGE_NOT_CERTIFIED", lambda: market.submit(exchange_id=uncertified))


def test_r02_listing_on_an_exchange_whose_certification_is_suspended_is_rejected(
    market: Market,
) -> None:
    market.run(
        c.SuspendCertification(
            request_id=rid(),
            participant_id=market.ids["exchange"],
            certification_id=only_certification(market, "exchange"),
        )
    )
    rejected(market, "R02_EXCHANGE_NOT_CERTIFIED", market.submit)


def test_r02_listing_on_an_exchange_whose_certification_expired_is_rejected(
    market: Market,
) -> None:
    short = certified(market, "exchange2", "EXCHANGE", days=1)
    market.clock.advance(timedelta(days=2))
    rejected(market, "R02_EXCHANGE_NOT_CERTIFIED", lambda: market.submit(exchange_id=short))


def test_r02_approval_after_the_exchange_was_suspended_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    market.assess(listing_id)
    suspend_participant(market, "exchange")
    rejects(
        market, c.ApproveListing(request_id=rid(), listing_id=listing_id), "R02_EXCHANGE_NOT_ACTIVE"
    )


def test_r02_listing_on_an_active_certified_exchange_is_allowed(market: Market) -> None:
    listing_id = market.listed()
    assert listing_of(market, listing_id).exchange_id == market.ids["exchange"]


def test_r02_a_listing_racing_a_suspension_of_its_exchange_loses(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["exchange"])
    race_in_between(market, monkeypatch, "_submit_listing", suspend)
    loses_race(market, market.submit_command(), suspend, "R02_EXCHANGE_NOT_ACTIVE")


# --- R03: no listing without a passing assessment by an eligible assessor --------------


def test_r03_an_assessment_by_the_provider_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    rejected(
        market,
        "R03_ASSESSOR_IS_PROVIDER",
        lambda: market.assess(listing_id, assessor="provider"),
    )


def test_r03_an_assessment_by_a_participant_without_the_assessor_role_is_rejected(
    market: Market,
) -> None:
    listing_id = market.submit()
    rejected(market, "R03_NOT_AN_ASSESSOR", lambda: market.assess(listing_id, assessor="dealer"))


def test_r03_an_assessment_by_a_suspended_assessor_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    suspend_participant(market, "assessor")
    rejected(market, "R03_ASSESSOR_NOT_ACTIVE", lambda: market.assess(listing_id))


def test_r03_an_assessment_outside_the_assessors_categories_is_rejected(market: Market) -> None:
    listing_id = market.submit(category="TRANSPORT")
    rejected(market, "R03_ASSESSOR_NOT_CERTIFIED", lambda: market.assess(listing_id))


def test_r03_an_assessment_above_the_assessors_classification_is_rejected(
    market: Market,
) -> None:
    certified(market, "junior", "ASSESSOR", max_classification="GENERAL")
    listing_id = market.submit(classification="IMPORTANT")
    rejected(
        market, "R03_ASSESSOR_NOT_CERTIFIED", lambda: market.assess(listing_id, assessor="junior")
    )


def test_r03_approval_without_an_assessment_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    rejects(market, c.ApproveListing(request_id=rid(), listing_id=listing_id), "R03_NOT_ASSESSED")


def test_r03_approval_after_a_failed_assessment_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    market.assess(listing_id, passed=False)
    rejects(
        market, c.ApproveListing(request_id=rid(), listing_id=listing_id), "R03_ASSESSMENT_FAILED"
    )


def test_r03_the_latest_assessment_decides_the_approval(market: Market) -> None:
    listing_id = market.submit()
    market.assess(listing_id, passed=True)
    market.assess(listing_id, passed=False)
    rejects(
        market, c.ApproveListing(request_id=rid(), listing_id=listing_id), "R03_ASSESSMENT_FAILED"
    )


def test_r03_approval_after_a_passing_assessment_by_a_certified_assessor_is_allowed(
    market: Market,
) -> None:
    listing_id = market.submit()
    market.assess(listing_id)
    market.approve(listing_id)
    listing = listing_of(market, listing_id)
    assert listing.state is ListingState.LISTED
    assert listing.assessment is not None
    assert listing.assessment.assessor_id == market.ids["assessor"]


# --- R04: the provider holds OPERATE; no circulation under an ownership dispute --------


def open_dispute(market: Market, listing_id: str) -> None:
    market.run(
        c.OpenOwnershipDispute(
            request_id=rid(), listing_id=listing_id, claimant_id=market.ids["buyer2"]
        )
    )


def test_r04_listing_without_operate_is_rejected(market: Market) -> None:
    rejected(
        market,
        "R04_PROVIDER_LACKS_OPERATE",
        lambda: market.submit(rights=("HOLD", "PROCESS_USE")),
    )


def test_r04_listing_with_operate_only_is_allowed(market: Market) -> None:
    listing_id = market.submit(rights=("OPERATE",))
    assert listing_of(market, listing_id).holdings == {Right.OPERATE: market.ids["provider"]}


def test_r04_approving_a_disputed_listing_is_rejected(market: Market) -> None:
    listing_id = market.submit()
    market.assess(listing_id)
    open_dispute(market, listing_id)
    rejects(
        market, c.ApproveListing(request_id=rid(), listing_id=listing_id), "R04_OWNERSHIP_DISPUTED"
    )


def test_r04_selling_a_disputed_listing_is_rejected(market: Market, listing: str) -> None:
    open_dispute(market, listing)
    rejects(market, market.sale_command(listing), "R04_OWNERSHIP_DISPUTED")


def test_r04_granting_on_a_disputed_listing_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    open_dispute(market, listing)
    rejects(market, market.grant_command(trade_id), "R04_OWNERSHIP_DISPUTED")


def test_r04_selling_after_the_dispute_is_resolved_is_allowed(market: Market, listing: str) -> None:
    open_dispute(market, listing)
    market.run(c.ResolveOwnershipDispute(request_id=rid(), listing_id=listing))
    trade_id = market.sell(listing)
    assert market.grant(trade_id)


# --- R05: sales and new grants only on LISTED listings ---------------------------------


def listing_in_state(market: Market, state: str) -> str:
    if state == "SUBMITTED":
        return market.submit()
    if state == "REJECTED":
        listing_id = market.submit()
        market.run(c.RejectListing(request_id=rid(), listing_id=listing_id))
        return listing_id
    listing_id = market.listed()
    if state == "SUSPENDED":
        market.run(c.SuspendListing(request_id=rid(), listing_id=listing_id))
    elif state == "DELISTED":
        market.run(c.DelistListing(request_id=rid(), listing_id=listing_id))
    assert listing_of(market, listing_id).state.name == state
    return listing_id


@pytest.mark.parametrize("state", ["SUBMITTED", "REJECTED", "SUSPENDED", "DELISTED"])
def test_r05_sale_on_a_listing_that_is_not_listed_is_rejected(market: Market, state: str) -> None:
    listing_id = listing_in_state(market, state)
    error = rejects(market, market.sale_command(listing_id), "R05_LISTING_NOT_LISTED")
    assert error.field == "listing_id"


def test_r05_grant_on_a_suspended_listing_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    rejects(market, market.grant_command(trade_id), "R05_LISTING_NOT_LISTED")


def test_r05_sale_on_listed_listing_is_allowed(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    assert load(market, Trade, trade_id).state is TradeState.EXECUTED


def test_r05_sale_and_grant_after_the_listing_is_reinstated_are_allowed(
    market: Market, listing: str
) -> None:
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    market.run(c.ReinstateListing(request_id=rid(), listing_id=listing))
    trade_id = market.sell(listing)
    assert grant_of(market, market.grant(trade_id)).status is GrantState.ACTIVE


# --- R06: no scenario, no trade -------------------------------------------------------


def test_r06_sale_for_a_scenario_the_listing_does_not_declare_is_rejected(
    market: Market, listing: str
) -> None:
    rejects(
        market,
        market.sale_command(listing, scenario="marketing-profiling"),
        "R06_SCENARIO_NOT_ALLOWED",
    )


def test_r06_grant_for_another_scenario_than_its_trades_is_rejected(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing, scenario="credit-risk-scoring")
    rejects(
        market,
        market.grant_command(trade_id, scenario="clinical-research"),
        "R06_SCENARIO_MISMATCH",
    )


def test_r06_sale_and_grant_for_a_declared_scenario_are_allowed(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing, scenario="clinical-research")
    grant_id = market.grant(trade_id, scenario="clinical-research")
    assert grant_of(market, grant_id).scenario == "clinical-research"


# --- R07: active parties; a reseller is a certified dealer ----------------------------


def test_r07_sale_by_a_suspended_seller_is_rejected(market: Market, listing: str) -> None:
    suspend_participant(market, "provider")
    rejects(market, market.sale_command(listing), "R07_SELLER_NOT_ACTIVE")


def test_r07_sale_to_a_suspended_buyer_is_rejected(market: Market, listing: str) -> None:
    suspend_participant(market, "buyer")
    rejects(market, market.sale_command(listing), "R07_BUYER_NOT_ACTIVE")


def test_r07_sale_to_a_deregistered_buyer_is_rejected(market: Market, listing: str) -> None:
    market.run(c.DeregisterParticipant(request_id=rid(), participant_id=market.ids["buyer"]))
    rejects(market, market.sale_command(listing), "R07_BUYER_NOT_ACTIVE")


def test_r07_resale_by_a_seller_that_is_not_a_dealer_is_rejected(
    market: Market, listing: str
) -> None:
    market.run(transfer(market, listing, "PROCESS_USE"))
    rejects(
        market,
        transfer(
            market,
            listing,
            "PROCESS_USE",
            seller_id=market.ids["buyer"],
            buyer_id=market.ids["buyer2"],
        ),
        "R07_SELLER_NOT_DEALER",
    )


def test_r07_resale_by_a_dealer_whose_certification_is_suspended_is_rejected(
    market: Market, listing: str
) -> None:
    dealer_with_licence(market, listing)
    market.run(
        c.SuspendCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
        )
    )
    rejects(
        market,
        market.sale_command(listing, seller_id=market.ids["dealer"]),
        "R07_DEALER_NOT_CERTIFIED",
    )


def test_r07_resale_by_an_uncertified_dealer_is_rejected(market: Market, listing: str) -> None:
    newcomer = market.participant("newcomer", "DATA_DEALER")
    market.sell(listing, buyer_id=newcomer)
    rejects(market, market.sale_command(listing, seller_id=newcomer), "R07_DEALER_NOT_CERTIFIED")


def test_r07_resale_by_a_dealer_certified_for_other_categories_is_rejected(
    market: Market, listing: str
) -> None:
    certified(market, "logistics-dealer", "DATA_DEALER", categories=("LOGISTICS",))
    dealer_id = market.ids["logistics-dealer"]
    market.sell(listing, buyer_id=dealer_id)
    rejects(market, market.sale_command(listing, seller_id=dealer_id), "R07_DEALER_NOT_CERTIFIED")


def test_r07_resale_by_a_certified_dealer_holding_a_licence_is_allowed(
    market: Market, listing: str
) -> None:
    dealer_with_licence(market, listing)
    trade_id = market.sell(listing, seller_id=market.ids["dealer"], term_end=market.later(90))
    trade = load(market, Trade, trade_id)
    assert trade.seller_id == market.ids["dealer"]
    assert trade.buyer_id == market.ids["buyer"]


def test_r07_sale_by_the_provider_itself_needs_no_dealer_certification(
    market: Market, listing: str
) -> None:
    assert not participant_of(market, "provider").certifications
    assert market.sell(listing)


def test_r07_a_sale_racing_a_suspension_of_its_seller_loses(
    market: Market, listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["provider"])
    race_in_between(market, monkeypatch, "_record_sale", suspend)
    loses_race(market, market.sale_command(listing), suspend, "R07_SELLER_NOT_ACTIVE")


# --- R08: IMPORTANT data only to certified buyers or regulators ------------------------


@pytest.fixture
def important(market: Market) -> str:
    return market.listed(classification="IMPORTANT")


def test_r08_important_data_sold_to_an_uncertified_buyer_is_rejected(
    market: Market, important: str
) -> None:
    error = rejects(market, market.sale_command(important), "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT")
    assert error.field == "buyer_id"


def test_r08_important_data_sold_to_a_buyer_certified_only_for_general_data_is_rejected(
    market: Market, important: str
) -> None:
    certified(market, "general-dealer", "DATA_DEALER", max_classification="GENERAL")
    rejects(
        market,
        market.sale_command(important, buyer_id=market.ids["general-dealer"]),
        "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
    )


def test_r08_important_data_sold_to_a_buyer_whose_certification_expired_is_rejected(
    market: Market, important: str
) -> None:
    certified(market, "short-dealer", "DATA_DEALER", days=2)
    market.clock.advance(timedelta(days=3))
    rejects(
        market,
        market.sale_command(important, buyer_id=market.ids["short-dealer"]),
        "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
    )


def test_r08_important_data_sold_to_a_buyer_certified_for_important_data_is_allowed(
    market: Market, important: str
) -> None:
    assert market.sell(important, buyer_id=market.ids["dealer"])


def test_r08_important_data_sold_to_a_regulator_is_allowed(market: Market, important: str) -> None:
    assert market.sell(important, buyer_id=market.ids["regulator"])


def test_r08_general_data_sold_to_an_uncertified_buyer_is_allowed(
    market: Market, listing: str
) -> None:
    assert market.sell(listing, buyer_id=market.ids["buyer"])


def test_r08_a_sale_racing_a_revocation_of_the_buyers_certification_loses(
    market: Market, important: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoke = c.RevokeCertification(
        request_id=rid(),
        participant_id=market.ids["dealer"],
        certification_id=only_certification(market, "dealer"),
        reason="REGULATOR_ORDER",
    )
    race_in_between(market, monkeypatch, "_record_sale", revoke)
    loses_race(
        market,
        market.sale_command(important, buyer_id=market.ids["dealer"]),
        revoke,
        "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
    )


# --- R09: no self-dealing ------------------------------------------------------------


def test_r09_sale_to_oneself_is_rejected(market: Market, listing: str) -> None:
    rejects(
        market,
        market.sale_command(listing, buyer_id=market.ids["provider"]),
        "R09_SELLER_IS_BUYER",
    )


def test_r09_the_venues_exchange_buying_on_its_own_venue_is_rejected(
    market: Market, listing: str
) -> None:
    rejects(
        market,
        market.sale_command(listing, buyer_id=market.ids["exchange"]),
        "R09_EXCHANGE_IS_PARTY",
    )


def test_r09_the_venues_exchange_selling_on_its_own_venue_is_rejected(
    market: Market, listing: str
) -> None:
    rejects(
        market,
        market.sale_command(listing, seller_id=market.ids["exchange"]),
        "R09_EXCHANGE_IS_PARTY",
    )


def test_r09_another_exchange_buying_on_this_venue_is_allowed(market: Market, listing: str) -> None:
    other = certified(market, "exchange2", "EXCHANGE")
    assert load(market, Trade, market.sell(listing, buyer_id=other)).buyer_id == other


# --- R10: rights conveyed are held; HOLD has one holder ------------------------------


def test_r10_licensing_hold_is_rejected(market: Market, listing: str) -> None:
    rejects(
        market,
        market.sale_command(listing, rights=("HOLD", "PROCESS_USE")),
        "R10_HOLD_NOT_LICENSABLE",
    )


def test_r10_selling_a_right_the_seller_does_not_hold_is_rejected(market: Market) -> None:
    listing_id = market.listed(rights=("PROCESS_USE", "OPERATE"))
    rejects(market, transfer(market, listing_id, "HOLD"), "R10_RIGHTS_NOT_HELD")


def test_r10_a_second_transfer_of_the_same_right_is_rejected(market: Market, listing: str) -> None:
    market.run(transfer(market, listing, "HOLD"))
    error = rejects(
        market,
        transfer(market, listing, "HOLD", buyer_id=market.ids["buyer2"]),
        "R10_RIGHTS_NOT_HELD",
    )
    assert error.field == "rights"
    assert listing_of(market, listing).holdings[Right.HOLD] == market.ids["buyer"]


def test_r10_a_dealer_cannot_transfer_a_right_it_only_holds_under_licence(
    market: Market, listing: str
) -> None:
    dealer_with_licence(market, listing)
    rejects(
        market,
        transfer(market, listing, "PROCESS_USE", seller_id=market.ids["dealer"]),
        "R10_RIGHTS_NOT_HELD",
    )


def test_r10_a_dealer_cannot_sublicense_after_its_licence_ended(
    market: Market, listing: str
) -> None:
    dealer_with_licence(market, listing)
    market.clock.advance(timedelta(days=200))
    rejects(
        market,
        market.sale_command(listing, seller_id=market.ids["dealer"]),
        "R10_OPERATE_NOT_HELD",
    )


def test_r10_a_licensee_without_operate_cannot_sublicense(market: Market, listing: str) -> None:
    market.sell(listing, buyer_id=market.ids["dealer"], rights=("PROCESS_USE",))
    rejects(
        market,
        market.sale_command(listing, seller_id=market.ids["dealer"]),
        "R10_OPERATE_NOT_HELD",
    )


def test_r10_a_provider_that_transferred_operate_away_cannot_license(
    market: Market, listing: str
) -> None:
    market.run(transfer(market, listing, "OPERATE", buyer_id=market.ids["dealer"]))
    rejects(market, market.sale_command(listing), "R10_OPERATE_NOT_HELD")


def test_r10_a_licensee_cannot_sublicense_more_than_it_was_licensed(
    market: Market, listing: str
) -> None:
    market.sell(listing, buyer_id=market.ids["dealer"], rights=("OPERATE",))
    rejects(
        market,
        market.sale_command(listing, seller_id=market.ids["dealer"], rights=("PROCESS_USE",)),
        "R10_RIGHTS_NOT_HELD",
    )


def test_r10_transferring_hold_moves_it_to_its_one_new_holder(market: Market, listing: str) -> None:
    market.run(transfer(market, listing, "HOLD"))
    after = listing_of(market, listing)
    assert after.holdings[Right.HOLD] == market.ids["buyer"]
    assert Right.HOLD not in after.exclusive_rights_of(market.ids["provider"])
    assert after.exclusive_rights_of(market.ids["provider"]) == {Right.PROCESS_USE, Right.OPERATE}


def test_r10_licensing_keeps_the_sellers_rights_and_is_not_exclusive(
    market: Market, listing: str
) -> None:
    dealer_with_licence(market, listing)
    certified(market, "dealer2", "DATA_DEALER")
    dealer2 = market.ids["dealer2"]
    market.sell(listing, buyer_id=dealer2, rights=("PROCESS_USE", "OPERATE"))
    after = listing_of(market, listing)
    now = market.clock.now()
    provider = market.ids["provider"]
    assert after.exclusive_rights_of(provider) == {Right.HOLD, Right.PROCESS_USE, Right.OPERATE}
    for licensee in (market.ids["dealer"], dealer2):
        assert after.rights_held_by(licensee, now) == {Right.PROCESS_USE, Right.OPERATE}
        assert not after.exclusive_rights_of(licensee)
    # Both licensees can sell on, side by side.
    market.sell(listing, seller_id=market.ids["dealer"], term_end=market.later(30))
    market.sell(listing, seller_id=dealer2, term_end=market.later(30))


def race_in_between(
    market: Market, monkeypatch: pytest.MonkeyPatch, handler: str, rival: c.Command
) -> None:
    """Makes the next command handled by ``handler`` lose a race: ``rival`` commits after
    the handler decided and before its write, so the write conflicts and is retried."""
    app: MarketLedger = market.app
    original: Callable[[Any, Act], Decision] = getattr(app, handler)
    raced: list[c.Command] = []

    def racing(command: Any, act: Act) -> Decision:
        decision = original(command, act)
        if not raced:
            raced.append(rival)
            app.execute(rival, market.actor)
        return decision

    monkeypatch.setattr(app, handler, racing)


def loses_race(market: Market, command: c.Command, rival: c.Command, reason: str) -> None:
    """Runs ``command``, which a rival overtakes: it fails with ``reason`` after the
    retry, and only the rival's events were written."""
    before = market.head
    with pytest.raises(RuleViolation) as caught:
        market.run(command)
    assert caught.value.reason == reason, str(caught.value)
    written = events_since(market, before)
    assert written, "the rival committed"
    assert {event.request_id for _, event in written} == {rival.request_id}


def test_r10_of_two_concurrent_transfers_of_the_same_right_exactly_one_succeeds(
    market: Market, listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = transfer(market, listing, "HOLD", buyer_id=market.ids["buyer2"])
    race_in_between(market, monkeypatch, "_record_sale", winner)
    loses_race(market, transfer(market, listing, "HOLD"), winner, "R10_RIGHTS_NOT_HELD")
    assert listing_of(market, listing).holdings[Right.HOLD] == market.ids["buyer2"]


# --- R11: grants derive from a live trade, for its buyer, within its term --------------


def test_r11_grant_from_a_cancelled_trade_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    market.run(c.CancelTrade(request_id=rid(), trade_id=trade_id))
    rejects(market, market.grant_command(trade_id), "R11_TRADE_NOT_ACTIVE")


def test_r11_grant_starting_before_the_trades_term_is_rejected(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing)
    error = rejects(
        market,
        market.grant_command(trade_id, valid_from=market.clock.now() - timedelta(days=3)),
        "R11_OUTSIDE_TRADE_TERM",
    )
    assert error.field == "valid_from"


def test_r11_grant_ending_after_the_trades_term_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    error = rejects(
        market,
        market.grant_command(trade_id, valid_until=market.later(365)),
        "R11_OUTSIDE_TRADE_TERM",
    )
    assert error.field == "valid_until"


def test_r11_open_ended_grant_from_a_licence_with_a_term_is_rejected(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing)
    rejects(market, market.grant_command(trade_id, valid_until=None), "R11_OUTSIDE_TRADE_TERM")


def test_r11_grant_for_a_delivery_mode_the_listing_does_not_offer_is_rejected(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing)
    rejects(
        market,
        market.grant_command(trade_id, delivery_mode="DATASET_DOWNLOAD"),
        "R11_DELIVERY_MODE_NOT_OFFERED",
    )


def test_r11_grant_to_anyone_but_the_trades_buyer_is_rejected_by_the_rule(
    market: Market, listing: str
) -> None:
    trade = load(market, Trade, market.sell(listing))
    with pytest.raises(RuleViolation) as caught:
        check_r11_grant_source(
            trade,
            listing_of(market, listing),
            market.ids["buyer2"],
            DeliveryMode.API,
            market.clock.now(),
            market.later(30),
        )
    assert caught.value.reason == "R11_GRANTEE_NOT_BUYER"


def test_r11_the_application_grants_to_the_trades_buyer(market: Market, listing: str) -> None:
    trade_id = market.sell(listing, buyer_id=market.ids["buyer2"])
    assert grant_of(market, market.grant(trade_id)).grantee_id == market.ids["buyer2"]


def test_r11_grant_from_a_settled_trade_is_allowed(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="PAY-1"))
    assert grant_of(market, market.grant(trade_id)).status is GrantState.ACTIVE


def test_r11_open_ended_grant_from_a_transfer_without_a_term_is_allowed(
    market: Market, listing: str
) -> None:
    trade_id = str(market.run(transfer(market, listing, "PROCESS_USE")).resource.id)
    grant = grant_of(market, market.grant(trade_id, valid_until=None))
    assert grant.valid_until is None


# --- R12: cross-border transfers need a legal basis ----------------------------------


def cross_border(market: Market, trade_id: str, kind: str = "", ref: str = "") -> c.GrantAccess:
    return market.grant_command(
        trade_id,
        destination_country="DE",
        cross_border_basis_kind=kind,
        cross_border_basis_ref=ref,
    )


def test_r12_important_data_abroad_without_a_security_assessment_is_rejected(
    market: Market, important: str
) -> None:
    trade_id = market.sell(important, buyer_id=market.ids["regulator"])
    rejects(market, cross_border(market, trade_id), "R12_SECURITY_ASSESSMENT_REQUIRED")


def test_r12_important_data_abroad_under_a_standard_contract_is_rejected(
    market: Market, important: str
) -> None:
    trade_id = market.sell(important, buyer_id=market.ids["regulator"])
    rejects(
        market,
        cross_border(market, trade_id, "STANDARD_CONTRACT", "SCC-1"),
        "R12_SECURITY_ASSESSMENT_REQUIRED",
    )


def test_r12_important_data_abroad_under_a_security_assessment_is_allowed(
    market: Market, important: str
) -> None:
    trade_id = market.sell(important, buyer_id=market.ids["regulator"])
    out = market.run(cross_border(market, trade_id, "SECURITY_ASSESSMENT", "CAC-2026-7"))
    grant = out.resource
    assert isinstance(grant, AccessGrant)
    assert grant.destination_country == "DE"


@pytest.mark.parametrize("pi_level", ["PERSONAL", "SENSITIVE"])
def test_r12_personal_information_abroad_without_a_basis_is_rejected(
    market: Market, pi_level: str
) -> None:
    listing_id = market.listed(
        pi_level=pi_level, pi_impact_assessment_ref="PIA-1", consent_basis_ref="CONSENT-1"
    )
    trade_id = market.sell(listing_id)
    rejects(market, cross_border(market, trade_id), "R12_CROSS_BORDER_BASIS_REQUIRED")


@pytest.mark.parametrize("kind", ["SECURITY_ASSESSMENT", "STANDARD_CONTRACT", "CERTIFICATION"])
def test_r12_personal_information_abroad_with_a_basis_is_allowed(market: Market, kind: str) -> None:
    listing_id = market.listed(pi_level="PERSONAL")
    trade_id = market.sell(listing_id)
    assert market.run(cross_border(market, trade_id, kind, "BASIS-1")).resource


def test_r12_personal_information_kept_in_china_needs_no_basis(market: Market) -> None:
    listing_id = market.listed(pi_level="PERSONAL")
    trade_id = market.sell(listing_id)
    assert market.grant(trade_id, destination_country="CN")


def test_r12_general_non_personal_data_abroad_needs_no_basis(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    assert market.run(cross_border(market, trade_id)).resource


# --- R13: SENSITIVE personal information needs a PIA and separate consent -------------


def test_r13_sensitive_listing_without_a_pi_impact_assessment_is_rejected(
    market: Market,
) -> None:
    rejected(
        market,
        "R13_PI_IMPACT_ASSESSMENT_REQUIRED",
        lambda: market.submit(pi_level="SENSITIVE", consent_basis_ref="CONSENT-1"),
    )


def test_r13_sensitive_listing_without_a_separate_consent_basis_is_rejected(
    market: Market,
) -> None:
    rejected(
        market,
        "R13_SEPARATE_CONSENT_REQUIRED",
        lambda: market.submit(pi_level="SENSITIVE", pi_impact_assessment_ref="PIA-1"),
    )


def test_r13_sensitive_listing_with_both_references_is_allowed(market: Market) -> None:
    listing_id = market.submit(
        pi_level="SENSITIVE", pi_impact_assessment_ref="PIA-1", consent_basis_ref="CONSENT-1"
    )
    evidence = listing_of(market, listing_id).evidence
    assert evidence["pi_impact_assessment_ref"] == "PIA-1"
    assert evidence["consent_basis_ref"] == "CONSENT-1"


def test_r13_personal_but_not_sensitive_listing_needs_neither_reference(market: Market) -> None:
    assert market.submit(pi_level="PERSONAL")


# --- R14: grants follow their grantee -------------------------------------------------


def dealer_grant(market: Market, listing_id: str) -> str:
    """An active grant to the certified dealer, which bought a licence."""
    return market.grant(dealer_with_licence(market, listing_id))


def test_r14_grant_to_a_suspended_grantee_is_rejected(market: Market, listing: str) -> None:
    trade_id = market.sell(listing)
    suspend_participant(market, "buyer")
    rejects(market, market.grant_command(trade_id), "R14_GRANTEE_NOT_ACTIVE")


def test_r14_suspending_a_participant_suspends_its_active_grants_in_the_same_write(
    market: Market, listing: str
) -> None:
    first = market.grant(market.sell(listing))
    second = market.grant(
        market.sell(listing, scenario="clinical-research"), scenario="clinical-research"
    )
    already = market.grant(market.sell(listing))
    market.run(c.SuspendAccess(request_id=rid(), grant_id=already))
    unrelated = market.grant(market.sell(listing, buyer_id=market.ids["buyer2"]))

    events = one_write(
        market, c.SuspendParticipant(request_id=rid(), participant_id=market.ids["buyer"])
    )

    assert names_of(events) == [
        "ParticipantSuspended",
        "AccessSuspended",
        "AccessSuspended",
        "RequestAccepted",
    ]
    assert {e.originator_id for n, e in events if n == "AccessSuspended"} == {
        UUID(first),
        UUID(second),
    }
    assert all(e.__dict__["rule"] == "R14" for n, e in events if n == "AccessSuspended")
    for grant_id in (first, second, already):
        assert grant_of(market, grant_id).status is GrantState.SUSPENDED
    assert grant_of(market, unrelated).status is GrantState.ACTIVE


def test_r14_suspending_a_certification_suspends_the_holders_grants(
    market: Market, listing: str
) -> None:
    grant_id = dealer_grant(market, listing)
    events = one_write(
        market,
        c.SuspendCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
        ),
    )
    assert names_of(events) == ["CertificationSuspended", "AccessSuspended", "RequestAccepted"]
    assert grant_of(market, grant_id).status is GrantState.SUSPENDED


def test_r14_revoking_a_certification_revokes_the_holders_grants(
    market: Market, listing: str
) -> None:
    active = dealer_grant(market, listing)
    suspended = dealer_grant(market, listing)
    market.run(c.SuspendAccess(request_id=rid(), grant_id=suspended))
    events = one_write(
        market,
        c.RevokeCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
            reason="REGULATOR_ORDER",
        ),
    )
    assert names_of(events) == [
        "CertificationRevoked",
        "AccessRevoked",
        "AccessRevoked",
        "RequestAccepted",
    ]
    for grant_id in (active, suspended):
        grant = grant_of(market, grant_id)
        assert grant.status is GrantState.REVOKED
        assert grant.revocation_reason is RevocationReason.CERTIFICATION_LOST


@pytest.mark.parametrize("first", ["ACTIVE", "SUSPENDED"])
def test_r14_deregistering_a_participant_revokes_its_grants(
    market: Market, listing: str, first: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    if first == "SUSPENDED":
        suspend_participant(market, "buyer")
    events = one_write(
        market, c.DeregisterParticipant(request_id=rid(), participant_id=market.ids["buyer"])
    )
    assert names_of(events) == ["ParticipantDeregistered", "AccessRevoked", "RequestAccepted"]
    assert events[1][1].__dict__["rule"] == "R14"
    assert grant_of(market, grant_id).status is GrantState.REVOKED
    assert participant_of(market, "buyer").state is ParticipantState.DEREGISTERED


def test_r14_reinstating_a_participant_does_not_reinstate_its_grants(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    suspend_participant(market, "buyer")
    market.run(c.ReinstateParticipant(request_id=rid(), participant_id=market.ids["buyer"]))
    assert grant_of(market, grant_id).status is GrantState.SUSPENDED


def test_r14_reinstating_a_grant_while_its_grantee_is_suspended_is_rejected(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    suspend_participant(market, "buyer")
    rejects(
        market, c.ReinstateAccess(request_id=rid(), grant_id=grant_id), "R14_GRANTEE_NOT_ACTIVE"
    )


def test_r14_reinstating_a_grant_after_its_grantee_is_reinstated_is_allowed(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    suspend_participant(market, "buyer")
    market.run(c.ReinstateParticipant(request_id=rid(), participant_id=market.ids["buyer"]))
    market.run(c.ReinstateAccess(request_id=rid(), grant_id=grant_id))
    assert grant_of(market, grant_id).status is GrantState.ACTIVE


def test_r14_a_grant_racing_a_suspension_of_its_grantee_loses(
    market: Market, listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trade_id = market.sell(listing)
    suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["buyer"])
    race_in_between(market, monkeypatch, "_grant_access", suspend)
    loses_race(market, market.grant_command(trade_id), suspend, "R14_GRANTEE_NOT_ACTIVE")
    assert participant_of(market, "buyer").state is ParticipantState.SUSPENDED
    assert not participant_of(market, "buyer").grant_ids


# --- R15: grants follow their listing -------------------------------------------------


def test_r15_suspending_a_listing_suspends_its_active_grants_in_the_same_write(
    market: Market, listing: str
) -> None:
    trade_id = market.sell(listing)
    grants = [market.grant(trade_id), market.grant(trade_id, delivery_mode="PRIVACY_COMPUTE")]
    events = one_write(market, c.SuspendListing(request_id=rid(), listing_id=listing))
    assert names_of(events) == [
        "ListingSuspended",
        "AccessSuspended",
        "AccessSuspended",
        "RequestAccepted",
    ]
    assert all(e.__dict__["rule"] == "R15" for n, e in events if n == "AccessSuspended")
    assert all(grant_of(market, g).status is GrantState.SUSPENDED for g in grants)


@pytest.mark.parametrize("listing_state", ["LISTED", "SUSPENDED"])
def test_r15_delisting_revokes_its_grants_as_listing_withdrawn(
    market: Market, listing: str, listing_state: str
) -> None:
    trade_id = market.sell(listing)
    grant_id = market.grant(trade_id)
    if listing_state == "SUSPENDED":
        market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    events = one_write(market, c.DelistListing(request_id=rid(), listing_id=listing))
    assert names_of(events) == ["ListingDelisted", "AccessRevoked", "RequestAccepted"]
    grant = grant_of(market, grant_id)
    assert grant.status is GrantState.REVOKED
    assert grant.revocation_reason is RevocationReason.LISTING_WITHDRAWN


def test_r15_reinstating_a_listing_does_not_reinstate_its_grants(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    events = one_write(market, c.ReinstateListing(request_id=rid(), listing_id=listing))
    assert names_of(events) == ["ListingReinstated", "RequestAccepted"]
    assert listing_of(market, listing).state is ListingState.LISTED
    assert grant_of(market, grant_id).status is GrantState.SUSPENDED


def test_r15_reinstating_a_grant_on_a_suspended_listing_is_rejected(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    rejects(
        market, c.ReinstateAccess(request_id=rid(), grant_id=grant_id), "R15_LISTING_NOT_LISTED"
    )


def test_r15_reinstating_a_grant_after_its_listing_is_reinstated_is_allowed(
    market: Market, listing: str
) -> None:
    grant_id = market.grant(market.sell(listing))
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing))
    market.run(c.ReinstateListing(request_id=rid(), listing_id=listing))
    market.run(c.ReinstateAccess(request_id=rid(), grant_id=grant_id))
    assert grant_of(market, grant_id).status is GrantState.ACTIVE


def test_r15_a_grant_racing_a_suspension_of_its_listing_loses(
    market: Market, listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trade_id = market.sell(listing)
    suspend = c.SuspendListing(request_id=rid(), listing_id=listing)
    race_in_between(market, monkeypatch, "_grant_access", suspend)
    loses_race(market, market.grant_command(trade_id), suspend, "R05_LISTING_NOT_LISTED")
    assert not listing_of(market, listing).grant_ids


# --- R16: revocation is final and reasoned -------------------------------------------


def revoke_grant(market: Market, grant_id: str, reason: str = "MISUSE_DETECTED") -> None:
    market.run(c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason=reason))


def test_r16_reinstating_a_revoked_grant_is_rejected(market: Market) -> None:
    _, _, grant_id = market.granted()
    revoke_grant(market, grant_id)
    rejects(market, c.ReinstateAccess(request_id=rid(), grant_id=grant_id), "R16_REVOKED_IS_FINAL")


def test_r16_a_grant_revoked_by_a_cancelled_trade_is_never_reinstated(market: Market) -> None:
    _, trade_id, grant_id = market.granted()
    market.run(c.CancelTrade(request_id=rid(), trade_id=trade_id))
    assert grant_of(market, grant_id).revocation_reason is RevocationReason.CONTRACT_TERMINATED
    rejects(market, c.ReinstateAccess(request_id=rid(), grant_id=grant_id), "R16_REVOKED_IS_FINAL")


def test_r16_a_grant_revoked_by_its_grantees_certification_stays_revoked(
    market: Market, listing: str
) -> None:
    grant_id = dealer_grant(market, listing)
    market.run(
        c.RevokeCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
            reason="SECURITY_INCIDENT",
        )
    )
    market.certify(market.ids["dealer"])
    rejects(market, c.ReinstateAccess(request_id=rid(), grant_id=grant_id), "R16_REVOKED_IS_FINAL")


def test_r16_reinstating_a_revoked_certification_is_rejected(market: Market) -> None:
    cert_id = only_certification(market, "dealer")
    market.run(
        c.RevokeCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=cert_id,
            reason="REGULATOR_ORDER",
        )
    )
    rejects(
        market,
        c.ReinstateCertification(
            request_id=rid(), participant_id=market.ids["dealer"], certification_id=cert_id
        ),
        "R16_REVOKED_IS_FINAL",
    )
    certification = participant_of(market, "dealer").certifications[cert_id]
    assert certification.state is CertificationState.REVOKED


def test_r16_revoking_a_grant_without_a_reason_is_rejected(market: Market) -> None:
    _, _, grant_id = market.granted()
    error = rejects(
        market,
        c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason=""),
        "R16_REASON_REQUIRED",
    )
    assert error.field == "reason"


@pytest.mark.parametrize("note", ["", "   "])
def test_r16_revoking_a_grant_for_other_without_a_note_is_rejected(
    market: Market, note: str
) -> None:
    _, _, grant_id = market.granted()
    rejects(
        market,
        c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason="OTHER", note=note),
        "R16_NOTE_REQUIRED",
    )


def test_r16_revoking_a_certification_without_a_reason_is_rejected(market: Market) -> None:
    rejects(
        market,
        c.RevokeCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
            reason="",
        ),
        "R16_REASON_REQUIRED",
    )


def test_r16_revoking_a_certification_for_other_without_a_note_is_rejected(
    market: Market,
) -> None:
    rejects(
        market,
        c.RevokeCertification(
            request_id=rid(),
            participant_id=market.ids["dealer"],
            certification_id=only_certification(market, "dealer"),
            reason="OTHER",
        ),
        "R16_NOTE_REQUIRED",
    )


def test_r16_revoking_for_other_with_a_note_is_allowed(market: Market) -> None:
    _, _, grant_id = market.granted()
    market.run(
        c.RevokeAccess(
            request_id=rid(), grant_id=grant_id, reason="OTHER", note="court order 2026-17"
        )
    )
    grant = grant_of(market, grant_id)
    assert grant.status is GrantState.REVOKED
    assert grant.revocation_reason is RevocationReason.OTHER


def test_r16_reinstating_a_suspended_grant_and_certification_is_allowed(market: Market) -> None:
    _, _, grant_id = market.granted()
    market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id))
    market.run(c.ReinstateAccess(request_id=rid(), grant_id=grant_id))
    assert grant_of(market, grant_id).status is GrantState.ACTIVE
    cert_id = only_certification(market, "dealer")
    for command in (
        c.SuspendCertification(
            request_id=rid(), participant_id=market.ids["dealer"], certification_id=cert_id
        ),
        c.ReinstateCertification(
            request_id=rid(), participant_id=market.ids["dealer"], certification_id=cert_id
        ),
    ):
        market.run(command)
    assert participant_of(market, "dealer").certifications[cert_id].state is (
        CertificationState.VALID
    )


# --- every enforced rule is covered ---------------------------------------------------


def _test_names() -> Iterator[str]:
    yield from (name for name in globals() if name.startswith("test_r"))


def test_every_enforced_rule_has_tests() -> None:
    covered = {name[5:8].upper() for name in _test_names()}
    assert covered >= {f"R{n:02d}" for n in range(1, 17)}


def test_r03_an_assessment_racing_a_suspension_of_its_assessor_loses(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing_id = market.submit()
    suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["assessor"])
    race_in_between(market, monkeypatch, "_record_assessment", suspend)
    command = c.RecordAssessment(
        request_id=rid(),
        listing_id=listing_id,
        assessor_id=market.ids["assessor"],
        passed=True,
        reference="LAW-2026-002",
    )
    loses_race(market, command, suspend, "R03_ASSESSOR_NOT_ACTIVE")


def test_r02_an_approval_racing_a_suspension_of_its_exchange_loses(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing_id = market.submit()
    market.assess(listing_id)
    suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["exchange"])
    race_in_between(market, monkeypatch, "_approve_listing", suspend)
    loses_race(
        market,
        c.ApproveListing(request_id=rid(), listing_id=listing_id),
        suspend,
        "R02_EXCHANGE_NOT_ACTIVE",
    )
