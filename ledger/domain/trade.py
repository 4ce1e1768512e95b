"""Trades: a sale of rights in a listing, from seller to buyer."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, create
from ledger.domain.errors import InvalidArgument, InvalidState
from ledger.domain.listing import Listing, validate_scenario
from ledger.domain.participant import Participant
from ledger.domain.rules import (
    check_r01_not_core,
    check_r04_not_disputed,
    check_r05_listing_is_listed,
    check_r06_sale_scenario,
    check_r07_parties,
    check_r08_important_buyer,
    check_r09_no_self_dealing,
    check_r10_rights_held,
)
from ledger.domain.values import Conveyance, Money, Right, TradeState, names


class Trade(LedgerAggregate):
    """A sale recorded on an exchange."""

    TOPIC = "ledger/Trade"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/SaleRecorded"
        listing_id: str
        exchange_id: str
        seller_id: str
        buyer_id: str
        rights: list[str]
        conveyance: str
        scenario: str
        term_start: datetime | None
        term_end: datetime | None
        price: dict[str, Any]
        settlement_ref: str

        def apply(self, aggregate: Trade) -> None:
            aggregate.listing_id = self.listing_id
            aggregate.exchange_id = self.exchange_id
            aggregate.seller_id = self.seller_id
            aggregate.buyer_id = self.buyer_id
            aggregate.rights = frozenset(Right[r] for r in self.rights)
            aggregate.conveyance = Conveyance[self.conveyance]
            aggregate.scenario = self.scenario
            aggregate.term_start = self.term_start
            aggregate.term_end = self.term_end
            aggregate.price = Money.from_json(self.price)
            aggregate.settlement_ref = self.settlement_ref
            aggregate.state = TradeState.EXECUTED
            aggregate.executed_at = self.effective_at
            aggregate.grant_ids = set()

    class Settled(LedgerEvent):
        TOPIC = "ledger/TradeSettled"
        settlement_ref: str

        def apply(self, aggregate: Trade) -> None:
            aggregate.state = TradeState.SETTLED
            aggregate.settlement_ref = self.settlement_ref

    class Cancelled(LedgerEvent):
        TOPIC = "ledger/TradeCancelled"
        note: str

        def apply(self, aggregate: Trade) -> None:
            aggregate.state = TradeState.CANCELLED

    class GrantActivated(LedgerEvent):
        """A grant derived from this trade became active (R11: grants race cancellation)."""

        TOPIC = "ledger/TradeGrantActivated"
        grant_id: str

        def apply(self, aggregate: Trade) -> None:
            aggregate.grant_ids.add(self.grant_id)

    listing_id: str
    exchange_id: str
    seller_id: str
    buyer_id: str
    rights: frozenset[Right]
    conveyance: Conveyance
    scenario: str
    term_start: datetime | None
    term_end: datetime | None
    price: Money
    settlement_ref: str
    state: TradeState
    executed_at: datetime
    grant_ids: set[str]

    def __init__(self) -> None:
        """State is set by the created event's ``apply``, on creation and on replay."""

    @classmethod
    def record_sale(
        cls,
        trade_id: UUID,
        listing: Listing,
        seller: Participant,
        buyer: Participant,
        rights: frozenset[Right],
        conveyance: Conveyance,
        scenario: str,
        term_start: datetime | None,
        term_end: datetime | None,
        price: Money,
        settlement_ref: str,
        act: Act,
    ) -> Trade:
        """Records a sale after every rule of the catalogue that governs sales, and moves or
        licenses the rights on the listing (the caller saves both in one write)."""
        if not rights:
            raise InvalidArgument.of("rights", "a sale conveys at least one right")
        validate_scenario(scenario)
        if conveyance is Conveyance.LICENCE and (term_start is None or term_end is None):
            raise InvalidArgument.of("term_end", "a LICENCE has a term with a start and an end")
        if term_start is not None and term_end is not None and term_end <= term_start:
            raise InvalidArgument.of("term_end", "the term ends before it starts")
        seller_id, buyer_id = str(seller.id), str(buyer.id)
        check_r01_not_core(listing.classification, "sell it")
        check_r05_listing_is_listed(listing)
        check_r04_not_disputed(listing, "sell it")
        check_r06_sale_scenario(listing, scenario)
        check_r09_no_self_dealing(listing, seller_id, buyer_id)
        check_r07_parties(listing, seller, buyer, act.effective_at)
        check_r08_important_buyer(listing, buyer, act.effective_at)
        check_r10_rights_held(listing, seller_id, rights, conveyance, act.effective_at)
        trade: Trade = create(
            cls,
            cls.Created,
            trade_id,
            act,
            listing_id=str(listing.id),
            exchange_id=listing.exchange_id,
            seller_id=seller_id,
            buyer_id=buyer_id,
            rights=names(rights),
            conveyance=conveyance.name,
            scenario=scenario,
            term_start=term_start,
            term_end=term_end,
            price=price.to_json(),
            settlement_ref=settlement_ref,
        )
        trade_ref = str(trade_id)
        if conveyance is Conveyance.TRANSFER:
            listing.transfer_rights(trade_ref, seller_id, buyer_id, rights, act)
        else:
            listing.license_rights(
                trade_ref, seller_id, buyer_id, rights, term_start, term_end, act
            )
        return trade

    def settle(self, settlement_ref: str, act: Act) -> None:
        self._require_executed("settle")
        if not settlement_ref.strip() and not self.settlement_ref:
            raise InvalidArgument.of("settlement_ref", "a settlement needs a payment reference")
        self.trigger(
            self.Settled, act, settlement_ref=settlement_ref.strip() or self.settlement_ref
        )

    def cancel(self, listing: Listing, note: str, act: Act) -> None:
        """Cancels an executed trade and gives its rights back: a transfer is reversed
        (only while the buyer still holds every right), a licence ends."""
        self._require_executed("cancel")
        trade_ref = str(self.id)
        if self.conveyance is Conveyance.TRANSFER:
            if not self.rights <= listing.exclusive_rights_of(self.buyer_id):
                raise InvalidState(
                    "RIGHTS_MOVED_ON",
                    "the buyer no longer holds every right of this transfer; record a new "
                    "sale instead of cancelling",
                )
            listing.transfer_rights(
                trade_ref, self.buyer_id, self.seller_id, self.rights, act, reversal=True
            )
        else:
            listing.end_licence(trade_ref, act)
        self.trigger(self.Cancelled, act, note=note)

    def attach_grant(self, grant_id: str, act: Act) -> None:
        self.trigger(self.GrantActivated, act, grant_id=grant_id)

    def _require_executed(self, action: str) -> None:
        if self.state is not TradeState.EXECUTED:
            raise InvalidState(
                f"TRADE_{self.state.name}",
                f"only an EXECUTED trade can be {action}d; it is {self.state.name}",
            )
