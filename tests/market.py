"""A small market built through the application, for tests: ids, parties and shortcuts."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.application import commands as c
from ledger.application.app import Actor, MarketLedger, Outcome
from ledger.clock import FakeClock
from ledger.domain.values import uscc_check_character

ADMIN = Actor("admin", "admin")
_serial = itertools.count(1)


def rid() -> str:
    """A fresh request_id."""
    return str(uuid.uuid4())


def uscc(n: int | None = None) -> str:
    """A valid Unified Social Credit Code, unique per call unless ``n`` is given."""
    body = f"91110000{(next(_serial) if n is None else n):09d}"
    return body + uscc_check_character(body)


@dataclass
class Market:
    """Drives a :class:`MarketLedger` with sensible defaults, one command per method."""

    app: MarketLedger
    clock: FakeClock
    actor: Actor = ADMIN
    ids: dict[str, str] = field(default_factory=dict)

    def tick(self) -> datetime:
        return self.clock.advance(timedelta(seconds=1))

    @property
    def head(self) -> int:
        return self.app.head_position()

    def run(self, command: c.Command) -> Outcome:
        self.tick()
        return self.app.execute(command, self.actor)

    def later(self, days: int) -> datetime:
        return self.clock.now() + timedelta(days=days)

    # --- participants ---------------------------------------------------------------

    def participant(self, name: str, *roles: str, **kw: Any) -> str:
        out = self.run(c.RegisterParticipant(request_id=rid(), name=name, roles=roles, uscc=uscc()))
        self.ids[name] = str(out.resource.id)
        return self.ids[name]

    def certify(
        self,
        participant_id: str,
        categories: tuple[str, ...] = ("MEDICAL", "INDUSTRIAL", "LOGISTICS", "FINANCIAL"),
        max_classification: str = "IMPORTANT",
        days: int = 365,
    ) -> str:
        out = self.run(
            c.IssueCertification(
                request_id=rid(),
                participant_id=participant_id,
                level="CORE",
                categories=categories,
                max_classification=max_classification,
                valid_from=None,
                valid_until=self.later(days),
                reference=f"CERT-{next(_serial)}",
            )
        )
        return sorted(out.resource.certifications)[-1]  # type: ignore[attr-defined]

    def standard_parties(self) -> dict[str, str]:
        """An exchange, a provider, a dealer, an assessor, two buyers and a regulator."""
        exchange = self.participant("exchange", "EXCHANGE")
        self.certify(exchange)
        self.participant("provider", "DATA_HOLDER")
        dealer = self.participant("dealer", "DATA_DEALER")
        self.certify(dealer)
        assessor = self.participant("assessor", "ASSESSOR")
        self.certify(assessor)
        self.participant("buyer", "BUYER")
        self.participant("buyer2", "BUYER")
        self.participant("regulator", "REGULATOR")
        return self.ids

    # --- listings -------------------------------------------------------------------

    def submit(self, **overrides: Any) -> str:
        return str(self.run(self.submit_command(**overrides)).resource.id)

    def submit_command(self, **overrides: Any) -> c.SubmitListing:
        fields: dict[str, Any] = {
            "request_id": rid(),
            "exchange_id": self.ids["exchange"],
            "provider_id": self.ids["provider"],
            "title": "Hospital discharge records",
            "category": "MEDICAL",
            "classification": "GENERAL",
            "pi_level": "NONE",
            "rights": ("HOLD", "PROCESS_USE", "OPERATE"),
            "delivery_modes": ("API", "PRIVACY_COMPUTE"),
            "scenarios": ("credit-risk-scoring", "clinical-research"),
            "price_currency": "CNY",
            "price_amount_minor": 1_250_000,
        }
        fields.update(overrides)
        return c.SubmitListing(**fields)

    def assess(self, listing_id: str, passed: bool = True, assessor: str = "assessor") -> Outcome:
        return self.run(
            c.RecordAssessment(
                request_id=rid(),
                listing_id=listing_id,
                assessor_id=self.ids[assessor],
                passed=passed,
                reference="LAW-2026-001",
            )
        )

    def approve(self, listing_id: str) -> Outcome:
        return self.run(c.ApproveListing(request_id=rid(), listing_id=listing_id))

    def listed(self, **overrides: Any) -> str:
        listing_id = self.submit(**overrides)
        self.assess(listing_id)
        self.approve(listing_id)
        return listing_id

    # --- trades and grants ----------------------------------------------------------

    def sale_command(self, listing_id: str, **overrides: Any) -> c.RecordSale:
        fields: dict[str, Any] = {
            "request_id": rid(),
            "listing_id": listing_id,
            "seller_id": self.ids["provider"],
            "buyer_id": self.ids["buyer"],
            "rights": ("PROCESS_USE",),
            "conveyance": "LICENCE",
            "scenario": "credit-risk-scoring",
            "price_currency": "CNY",
            "price_amount_minor": 500_000,
            "term_start": self.clock.now() - timedelta(days=1),
            "term_end": self.later(180),
        }
        fields.update(overrides)
        return c.RecordSale(**fields)

    def sell(self, listing_id: str, **overrides: Any) -> str:
        return str(self.run(self.sale_command(listing_id, **overrides)).resource.id)

    def grant_command(self, trade_id: str, **overrides: Any) -> c.GrantAccess:
        fields: dict[str, Any] = {
            "request_id": rid(),
            "trade_id": trade_id,
            "delivery_mode": "API",
            "scenario": "credit-risk-scoring",
            "valid_until": self.later(90),
        }
        fields.update(overrides)
        return c.GrantAccess(**fields)

    def grant(self, trade_id: str, **overrides: Any) -> str:
        return str(self.run(self.grant_command(trade_id, **overrides)).resource.id)

    def granted(self) -> tuple[str, str, str]:
        """A listed listing, a licence sale to ``buyer`` and an active grant."""
        listing_id = self.listed()
        trade_id = self.sell(listing_id)
        return listing_id, trade_id, self.grant(trade_id)


def new_market(app: MarketLedger, clock: FakeClock) -> Market:
    market = Market(app, clock)
    market.standard_parties()
    return market
