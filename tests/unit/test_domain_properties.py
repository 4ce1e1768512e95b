"""Invariants of the market under random command sequences (hypothesis, stateful).

Random commands, many of them doomed, run through ``MarketLedger.execute`` against a
fresh in-memory ledger per example. A command may fail with any ``LedgerError``; after
every step, whatever happened, the invariants below hold over every aggregate:

* a failed command wrote nothing;
* ``HOLD`` has exactly one holder, every transfer moved rights away from their holder,
  and no licence includes ``HOLD``;
* no grant is ACTIVE on a listing that is not LISTED, to a grantee that is not ACTIVE, or
  from a cancelled trade;
* CORE data is never LISTED;
* a grant or certification once REVOKED stays REVOKED.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.application import commands as c
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.base import LedgerAggregate
from ledger.domain.errors import LedgerError
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import (
    CertificationState,
    Classification,
    GrantState,
    ListingState,
    ParticipantState,
    Right,
    TradeState,
)
from ledger.settings import Settings
from tests.market import Market, new_market, rid

A = TypeVar("A", bound=LedgerAggregate)

SCENARIOS = ("credit-risk-scoring", "clinical-research")
RIGHT_SETS = (
    ("HOLD",),
    ("PROCESS_USE",),
    ("OPERATE",),
    ("PROCESS_USE", "OPERATE"),
    ("HOLD", "PROCESS_USE", "OPERATE"),
)
BUYERS = ("buyer", "buyer2", "dealer", "dealer2", "regulator")
REASONS = ("MISUSE_DETECTED", "CONSENT_WITHDRAWN", "OTHER", "")
index = st.integers(min_value=0, max_value=1_000)


class MarketMachine(RuleBasedStateMachine):
    """A market of standard parties whose commands are chosen by hypothesis."""

    market: Market

    def __init__(self) -> None:
        super().__init__()
        self.listings: list[str] = []
        self.trades: list[str] = []
        self.grants: list[str] = []
        self.revoked_grants: set[str] = set()
        self.revoked_certifications: set[tuple[str, str]] = set()
        self.accepted = 0
        self.rejected = 0

    # --- machinery ---------------------------------------------------------------------

    @initialize(classification=st.sampled_from(["GENERAL", "IMPORTANT"]))
    def open_market(self, classification: str) -> None:
        clock = FakeClock()
        self.market = new_market(build_application(Settings(database_url="memory:"), clock), clock)
        self.listings.append(self.market.listed())
        self.listings.append(self.market.listed(classification=classification))
        # A second certified dealer, so resales and certification cascades happen.
        dealer = self.market.participant("dealer2", "DATA_DEALER")
        self.market.certify(dealer)

    def run(self, command: c.Command) -> Any:
        """Runs a command; a failure must leave the log exactly as it was."""
        before = self.market.head
        try:
            outcome = self.market.app.execute(command, self.market.actor)
        except LedgerError:
            assert self.market.head == before, f"failed {command.kind} wrote events"
            self.rejected += 1
            return None
        event(f"accepted {command.kind}")
        assert outcome.position == self.market.head > before
        self.accepted += 1
        return outcome.resource

    def load(self, cls: type[A], aggregate_id: str) -> A:
        aggregate: LedgerAggregate = self.market.app.repository.get(UUID(aggregate_id))
        assert isinstance(aggregate, cls)
        return aggregate

    def parties(self) -> list[str]:
        """Participant ids in a stable order (by name: ids derive from random request ids,
        and hypothesis needs the same choices when it replays an example)."""
        return [self.market.ids[name] for name in sorted(self.market.ids)]

    def party(self, i: int) -> str:
        parties = self.parties()
        return parties[i % len(parties)]

    def certified_party(self, i: int) -> tuple[str, str] | None:
        """A (participant, certification) pair, if anyone holds a certification."""
        pairs = []
        for participant_id in self.parties():
            participant = self.load(Participant, participant_id)
            pairs += [(participant_id, cert) for cert in participant.certifications]
        return pairs[i % len(pairs)] if pairs else None

    @staticmethod
    def pick(items: list[str], i: int) -> str | None:
        return items[i % len(items)] if items else None

    # --- participants ------------------------------------------------------------------

    @rule(
        i=index,
        action=st.sampled_from(["suspend", "suspend", "reinstate", "reinstate", "deregister"]),
    )
    def change_participant(self, i: int, action: str) -> None:
        participant_id = self.party(i)
        commands: dict[str, c.Command] = {
            "suspend": c.SuspendParticipant(request_id=rid(), participant_id=participant_id),
            "reinstate": c.ReinstateParticipant(request_id=rid(), participant_id=participant_id),
            "deregister": c.DeregisterParticipant(request_id=rid(), participant_id=participant_id),
        }
        self.run(commands[action])

    @rule(i=index, action=st.sampled_from(["suspend", "reinstate", "reinstate", "revoke"]))
    def change_certification(self, i: int, action: str) -> None:
        pair = self.certified_party(i)
        if pair is None:
            return
        participant_id, cert_id = pair
        command: c.Command
        if action == "suspend":
            command = c.SuspendCertification(
                request_id=rid(), participant_id=participant_id, certification_id=cert_id
            )
        elif action == "reinstate":
            command = c.ReinstateCertification(
                request_id=rid(), participant_id=participant_id, certification_id=cert_id
            )
        else:
            command = c.RevokeCertification(
                request_id=rid(),
                participant_id=participant_id,
                certification_id=cert_id,
                reason="REGULATOR_ORDER",
            )
        self.run(command)

    @rule(i=index)
    def certify(self, i: int) -> None:
        participant_id = self.party(i)
        try:
            self.market.certify(participant_id)
        except LedgerError:
            self.rejected += 1

    # --- listings ----------------------------------------------------------------------

    @rule(classification=st.sampled_from(["GENERAL", "IMPORTANT", "CORE"]))
    def list_another(self, classification: str) -> None:
        if len(self.listings) >= 4:
            return
        try:
            self.listings.append(self.market.listed(classification=classification))
        except LedgerError:
            self.rejected += 1

    @rule(
        i=index,
        action=st.sampled_from(
            ["suspend", "reinstate", "reinstate", "delist", "dispute", "resolve", "resolve"]
        ),
    )
    def change_listing(self, i: int, action: str) -> None:
        listing_id = self.pick(self.listings, i)
        assert listing_id is not None
        commands: dict[str, c.Command] = {
            "suspend": c.SuspendListing(request_id=rid(), listing_id=listing_id),
            "reinstate": c.ReinstateListing(request_id=rid(), listing_id=listing_id),
            "delist": c.DelistListing(request_id=rid(), listing_id=listing_id),
            "dispute": c.OpenOwnershipDispute(request_id=rid(), listing_id=listing_id),
            "resolve": c.ResolveOwnershipDispute(request_id=rid(), listing_id=listing_id),
        }
        self.run(commands[action])

    @rule(i=index, classification=st.sampled_from(["GENERAL", "IMPORTANT", "GENERAL", "CORE"]))
    def reclassify(self, i: int, classification: str) -> None:
        listing_id = self.pick(self.listings, i)
        assert listing_id is not None
        self.run(
            c.ReclassifyListing(
                request_id=rid(), listing_id=listing_id, classification=classification
            )
        )

    # --- trades ------------------------------------------------------------------------

    @rule(
        listing_i=index,
        seller_i=index,
        buyer_i=index,
        from_holder=st.booleans(),
        rights=st.sampled_from(RIGHT_SETS),
        conveyance=st.sampled_from(["TRANSFER", "LICENCE"]),
        scenario=st.sampled_from(SCENARIOS),
        days=st.integers(min_value=1, max_value=120),
    )
    def sell(
        self,
        listing_i: int,
        seller_i: int,
        buyer_i: int,
        from_holder: bool,
        rights: tuple[str, ...],
        conveyance: str,
        scenario: str,
        days: int,
    ) -> None:
        """Any sale at all: most are refused by some rule."""
        listing_id = self.pick(self.listings, listing_i)
        assert listing_id is not None
        seller = self.party(seller_i)
        if from_holder:
            holder = self.load(Listing, listing_id).holdings.get(Right[rights[0]])
            seller = holder or seller
        self.record_sale(
            listing_id, seller, self.party(buyer_i), rights, conveyance, scenario, days
        )

    @rule(
        listing_i=index,
        buyer=st.sampled_from(BUYERS),
        rights=st.sampled_from(RIGHT_SETS),
        conveyance=st.sampled_from(["TRANSFER", "LICENCE"]),
        scenario=st.sampled_from(SCENARIOS),
        days=st.integers(min_value=1, max_value=120),
    )
    def sell_a_listed_listing_from_its_holder(
        self,
        listing_i: int,
        buyer: str,
        rights: tuple[str, ...],
        conveyance: str,
        scenario: str,
        days: int,
    ) -> None:
        """A sale that stands a chance: on a LISTED listing, by the holder of the rights
        (of OPERATE, for a licence), to a buyer or dealer."""
        listed = [
            listing_id
            for listing_id in self.listings
            if self.load(Listing, listing_id).state is ListingState.LISTED
        ]
        if not listed:
            return
        listing_id = listed[listing_i % len(listed)]
        key = Right.OPERATE if conveyance == "LICENCE" else Right[rights[0]]
        seller = self.load(Listing, listing_id).holdings.get(key, self.market.ids["provider"])
        self.record_sale(
            listing_id, seller, self.market.ids[buyer], rights, conveyance, scenario, days
        )

    def record_sale(
        self,
        listing_id: str,
        seller: str,
        buyer: str,
        rights: tuple[str, ...],
        conveyance: str,
        scenario: str,
        days: int,
    ) -> None:
        licence = conveyance == "LICENCE"
        now = self.market.clock.now()
        trade = self.run(
            c.RecordSale(
                request_id=rid(),
                listing_id=listing_id,
                seller_id=seller,
                buyer_id=buyer,
                rights=rights,
                conveyance=conveyance,
                scenario=scenario,
                price_currency="CNY",
                price_amount_minor=100,
                term_start=now - timedelta(days=1) if licence else None,
                term_end=now + timedelta(days=days) if licence else None,
            )
        )
        if trade is not None:
            self.trades.append(str(trade.id))

    @rule(i=index, action=st.sampled_from(["settle", "cancel"]))
    def close_trade(self, i: int, action: str) -> None:
        trade_id = self.pick(self.trades, i)
        if trade_id is None:
            return
        command: c.Command = (
            c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="PAY-1")
            if action == "settle"
            else c.CancelTrade(request_id=rid(), trade_id=trade_id)
        )
        self.run(command)

    # --- grants ------------------------------------------------------------------------

    @rule(i=index, mode=st.sampled_from(["API", "PRIVACY_COMPUTE", "SANDBOX"]), days=index)
    def grant(self, i: int, mode: str, days: int) -> None:
        self.grant_access(i, mode, days)

    @rule(i=index, mode=st.sampled_from(["API", "PRIVACY_COMPUTE"]), days=index)
    def grant_on_the_latest_trade(self, i: int, mode: str, days: int) -> None:
        self.grant_access(len(self.trades) - 1 - i % 3, mode, days)

    def grant_access(self, i: int, mode: str, days: int) -> None:
        trade_id = self.pick(self.trades, i)
        if trade_id is None:
            return
        trade = self.load(Trade, trade_id)
        valid_until = trade.term_end or self.market.clock.now() + timedelta(days=1 + days % 60)
        grant = self.run(
            c.GrantAccess(
                request_id=rid(),
                trade_id=trade_id,
                delivery_mode=mode,
                scenario=trade.scenario,
                valid_until=valid_until,
            )
        )
        if grant is not None:
            self.grants.append(str(grant.id))

    @rule(i=index, action=st.sampled_from(["suspend", "reinstate", "revoke"]), reason=index)
    def change_grant(self, i: int, action: str, reason: int) -> None:
        self.change_access(self.pick(self.grants, i), action, reason)

    @rule(action=st.sampled_from(["suspend", "reinstate", "revoke"]), reason=index)
    def change_the_latest_grant(self, action: str, reason: int) -> None:
        self.change_access(self.grants[-1] if self.grants else None, action, reason)

    def change_access(self, grant_id: str | None, action: str, reason: int) -> None:
        if grant_id is None:
            return
        command: c.Command
        if action == "suspend":
            command = c.SuspendAccess(request_id=rid(), grant_id=grant_id)
        elif action == "reinstate":
            command = c.ReinstateAccess(request_id=rid(), grant_id=grant_id)
        else:
            command = c.RevokeAccess(
                request_id=rid(), grant_id=grant_id, reason=REASONS[reason % len(REASONS)]
            )
        self.run(command)

    @rule(days=st.integers(min_value=1, max_value=60))
    def time_passes(self, days: int) -> None:
        self.market.clock.advance(timedelta(days=days))

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def rights_have_one_holder_and_move_only_from_it(self) -> None:
        store = self.market.app.repository.event_store
        for listing_id in self.listings:
            holdings: dict[str, str] = {}
            for fact in store.get(UUID(listing_id)):
                if isinstance(fact, Listing.Created):
                    holdings = {right: fact.provider_id for right in fact.rights}
                elif isinstance(fact, Listing.RightsTransferred):
                    for right in fact.rights:
                        assert holdings[right] == fact.from_id, "moved from a non-holder"
                        holdings[right] = fact.to_id
                elif isinstance(fact, Listing.RightsLicensed):
                    assert "HOLD" not in fact.rights, "HOLD was licensed"
            listing = self.load(Listing, listing_id)
            assert {right.name: holder for right, holder in listing.holdings.items()} == holdings
            assert all(Right.HOLD not in lic.rights for lic in listing.licences.values())

    @invariant()
    def core_data_is_never_listed(self) -> None:
        for listing_id in self.listings:
            listing = self.load(Listing, listing_id)
            if listing.classification is Classification.CORE:
                assert listing.state in (ListingState.DELISTED, ListingState.REJECTED)

    @invariant()
    def active_grants_stand_on_listed_listings_live_trades_and_active_grantees(self) -> None:
        for grant_id in self.grants:
            grant = self.load(AccessGrant, grant_id)
            if grant.status is not GrantState.ACTIVE:
                continue
            listing = self.load(Listing, grant.listing_id)
            grantee = self.load(Participant, grant.grantee_id)
            trade = self.load(Trade, grant.trade_id)
            assert listing.state is ListingState.LISTED, f"ACTIVE grant on {listing.state}"
            assert grantee.state is ParticipantState.ACTIVE, f"ACTIVE grant to {grantee.state}"
            assert trade.state is not TradeState.CANCELLED
            assert grant_id in listing.grant_ids
            assert grant_id in grantee.grant_ids
            assert grant_id in trade.grant_ids

    @invariant()
    def revocation_is_final(self) -> None:
        for grant_id in self.grants:
            if self.load(AccessGrant, grant_id).status is GrantState.REVOKED:
                self.revoked_grants.add(grant_id)
        for grant_id in self.revoked_grants:
            assert self.load(AccessGrant, grant_id).status is GrantState.REVOKED
        for participant_id in self.market.ids.values():
            participant = self.load(Participant, participant_id)
            for cert_id, certification in participant.certifications.items():
                if certification.state is CertificationState.REVOKED:
                    self.revoked_certifications.add((participant_id, cert_id))
        for participant_id, cert_id in self.revoked_certifications:
            certification = self.load(Participant, participant_id).certifications[cert_id]
            assert certification.state is CertificationState.REVOKED


MarketMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestMarketInvariants = MarketMachine.TestCase
