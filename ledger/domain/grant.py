"""Access grants: a buyer's right to use a listing's data, one way, for one scenario."""

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
    check_r06_grant_scenario,
    check_r11_grant_source,
    check_r12_cross_border,
    check_r14_grantee_active,
    check_r15_listing_active,
    check_r16_not_revoked,
    check_r16_revocation_reason,
)
from ledger.domain.trade import Trade
from ledger.domain.values import (
    CrossBorderBasis,
    DeliveryMode,
    GrantState,
    RevocationReason,
    TradeState,
)


class AccessGrant(LedgerAggregate):
    """Access to a listing's data for the buyer of a trade."""

    TOPIC = "ledger/AccessGrant"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/AccessGranted"
        trade_id: str
        listing_id: str
        exchange_id: str
        grantee_id: str
        delivery_mode: str
        scenario: str
        valid_from: datetime
        valid_until: datetime | None
        destination_country: str
        cross_border_basis: dict[str, Any] | None
        usage_limit: int | None

        def apply(self, aggregate: AccessGrant) -> None:
            aggregate.trade_id = self.trade_id
            aggregate.listing_id = self.listing_id
            aggregate.exchange_id = self.exchange_id
            aggregate.grantee_id = self.grantee_id
            aggregate.delivery_mode = DeliveryMode[self.delivery_mode]
            aggregate.scenario = self.scenario
            aggregate.valid_from = self.valid_from
            aggregate.valid_until = self.valid_until
            aggregate.destination_country = self.destination_country
            aggregate.cross_border_basis = CrossBorderBasis.from_json(self.cross_border_basis)
            aggregate.usage_limit = self.usage_limit
            aggregate.uses = 0
            aggregate.units_used = 0
            aggregate.status = GrantState.ACTIVE
            aggregate.revocation_reason = None

    class Suspended(LedgerEvent):
        TOPIC = "ledger/AccessSuspended"
        note: str
        rule: str

        def apply(self, aggregate: AccessGrant) -> None:
            aggregate.status = GrantState.SUSPENDED

    class Reinstated(LedgerEvent):
        TOPIC = "ledger/AccessReinstated"

        def apply(self, aggregate: AccessGrant) -> None:
            aggregate.status = GrantState.ACTIVE

    class Revoked(LedgerEvent):
        TOPIC = "ledger/AccessRevoked"
        reason: str
        note: str
        rule: str

        def apply(self, aggregate: AccessGrant) -> None:
            aggregate.status = GrantState.REVOKED
            aggregate.revocation_reason = RevocationReason[self.reason]

    class Used(LedgerEvent):
        TOPIC = "ledger/AccessUsed"
        delivery_mode: str
        scenario: str
        used_at: datetime
        units: int

        def apply(self, aggregate: AccessGrant) -> None:
            aggregate.uses += 1
            aggregate.units_used += self.units

    trade_id: str
    listing_id: str
    exchange_id: str
    grantee_id: str
    delivery_mode: DeliveryMode
    scenario: str
    valid_from: datetime
    valid_until: datetime | None
    destination_country: str
    cross_border_basis: CrossBorderBasis | None
    usage_limit: int | None
    uses: int
    units_used: int
    status: GrantState
    revocation_reason: RevocationReason | None

    def __init__(self) -> None:
        """State is set by the created event's ``apply``, on creation and on replay."""

    @classmethod
    def grant(
        cls,
        grant_id: UUID,
        trade: Trade,
        listing: Listing,
        grantee: Participant,
        delivery_mode: DeliveryMode,
        scenario: str,
        valid_from: datetime,
        valid_until: datetime | None,
        destination_country: str,
        cross_border_basis: CrossBorderBasis | None,
        usage_limit: int | None,
        act: Act,
    ) -> AccessGrant:
        """Grants access after every rule that governs grants, and attaches the grant to
        its listing, grantee and trade, so that it conflicts with any concurrent
        suspension or cancellation of them (the caller saves all four in one write)."""
        validate_scenario(scenario)
        if valid_until is not None and valid_until <= valid_from:
            raise InvalidArgument.of("valid_until", "the validity ends before it starts")
        if usage_limit is not None and usage_limit <= 0:
            raise InvalidArgument.of("usage_limit", "must be positive when given")
        grantee_id = str(grantee.id)
        check_r01_not_core(listing.classification, "grant access to it")
        check_r05_listing_is_listed(listing)
        check_r04_not_disputed(listing, "grant access to it")
        check_r06_grant_scenario(trade, scenario)
        check_r11_grant_source(trade, listing, grantee_id, delivery_mode, valid_from, valid_until)
        check_r12_cross_border(listing, destination_country, cross_border_basis)
        check_r14_grantee_active(grantee)
        grant: AccessGrant = create(
            cls,
            cls.Created,
            grant_id,
            act,
            trade_id=str(trade.id),
            listing_id=str(listing.id),
            exchange_id=listing.exchange_id,
            grantee_id=grantee_id,
            delivery_mode=delivery_mode.name,
            scenario=scenario,
            valid_from=valid_from,
            valid_until=valid_until,
            destination_country=destination_country,
            cross_border_basis=cross_border_basis.to_json() if cross_border_basis else None,
            usage_limit=usage_limit,
        )
        grant.attach_to(trade, listing, grantee, act)
        return grant

    def attach_to(self, trade: Trade, listing: Listing, grantee: Participant, act: Act) -> None:
        grant_ref = str(self.id)
        trade.attach_grant(grant_ref, act)
        listing.attach_grant(grant_ref, act)
        grantee.attach_grant(grant_ref, act)

    def suspend(self, note: str, act: Act, rule: str = "") -> None:
        if self.status is not GrantState.ACTIVE:
            raise InvalidState(
                f"GRANT_{self.status.name}",
                f"only an ACTIVE grant can be suspended; it is {self.status.name}",
            )
        self.trigger(self.Suspended, act, note=note, rule=rule)

    def reinstate(self, trade: Trade, listing: Listing, grantee: Participant, act: Act) -> None:
        """Reinstates a suspended grant when its listing, grantee and trade allow it again,
        touching them as a new grant does (R14, R15, R16)."""
        check_r16_not_revoked(self.status is GrantState.REVOKED, "grant")
        if self.status is not GrantState.SUSPENDED:
            raise InvalidState(
                f"GRANT_{self.status.name}", "only a SUSPENDED grant can be reinstated"
            )
        check_r15_listing_active(listing)
        check_r14_grantee_active(grantee)
        if trade.state is TradeState.CANCELLED:
            raise InvalidState("TRADE_CANCELLED", "the grant's trade was cancelled")
        self.trigger(self.Reinstated, act)
        self.attach_to(trade, listing, grantee, act)

    def revoke(self, reason: RevocationReason | None, note: str, act: Act, rule: str = "") -> None:
        reason = check_r16_revocation_reason(reason, note)
        if self.status is GrantState.REVOKED:
            raise InvalidState("GRANT_REVOKED", "the grant is already revoked")
        self.trigger(self.Revoked, act, reason=reason.name, note=note, rule=rule)

    def record_use(
        self, delivery_mode: DeliveryMode, scenario: str, used_at: datetime, units: int, act: Act
    ) -> None:
        """Records a reported use as a fact; uses outside the grant are findings of R18,
        not rejections, because the use already happened."""
        validate_scenario(scenario)
        if units <= 0:
            raise InvalidArgument.of("units", "a use consumes at least one unit")
        self.trigger(
            self.Used,
            act,
            delivery_mode=delivery_mode.name,
            scenario=scenario,
            used_at=used_at,
            units=units,
        )

    @property
    def is_live(self) -> bool:
        """Whether a cascade must still act on this grant (it is not revoked)."""
        return self.status is not GrantState.REVOKED

    def state_at(self, at: datetime) -> GrantState:
        if (
            self.status is GrantState.ACTIVE
            and self.valid_until is not None
            and at >= self.valid_until
        ):
            return GrantState.EXPIRED
        return self.status
