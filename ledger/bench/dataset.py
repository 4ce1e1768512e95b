"""Realistic market histories at scale, generated through the domain model.

Every event is produced by the aggregates' own command methods, so the history obeys the
rules exactly as commands through the API would; it is written in large batches (many
aggregates per ``save``) because the point is to load millions of events quickly. The
same seed gives the same history.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ledger.application.app import MarketLedger
from ledger.application.markers import entity_id
from ledger.domain.base import Act, LedgerAggregate
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import (
    Category,
    CertificationLevel,
    Classification,
    Conveyance,
    DeliveryMode,
    GrantState,
    Money,
    ParticipantRole,
    PartyIdentifier,
    PersonalInformationLevel,
    RevocationReason,
    Right,
    uscc_check_character,
)

SCENARIOS = (
    "credit-risk-scoring",
    "route-optimisation",
    "clinical-research",
    "demand-forecasting",
    "fraud-detection",
    "urban-planning",
    "insurance-pricing",
    "supply-chain-visibility",
)
CATEGORIES = (
    Category.MEDICAL,
    Category.INDUSTRIAL,
    Category.LOGISTICS,
    Category.TRANSPORT,
    Category.FINANCIAL,
    Category.PUBLIC,
    Category.GEOSPATIAL,
)
MODES = (
    DeliveryMode.API,
    DeliveryMode.PRIVACY_COMPUTE,
    DeliveryMode.SANDBOX,
    DeliveryMode.DATASET_DOWNLOAD,
)
# Histories start this long ago: acts of about 0.2 s apart fit ten million events into
# three weeks, so recent grants (valid for 180 days) are still valid when a bench runs.
HISTORY_START: Final = timedelta(days=60)
GRANT_SAMPLE: Final = 5000


@dataclass(frozen=True)
class ListingRef:
    """What a client needs to sell on a listing: its parties and its allowed terms."""

    id: str
    exchange_id: str
    provider_id: str
    scenarios: tuple[str, ...]
    modes: tuple[str, ...]


@dataclass(frozen=True)
class GrantRef:
    """One grant of a history, as a CheckAccess request asks about it."""

    grantee_id: str
    listing_id: str
    exchange_id: str
    mode: str
    scenario: str
    active: bool


@dataclass(frozen=True)
class Market:
    """The parties and listings of a generated market, and a uniform sample of its
    grants (reservoir-sampled, at most ``GRANT_SAMPLE``)."""

    events: int
    exchanges: tuple[str, ...]
    buyers: tuple[str, ...]
    listings: tuple[ListingRef, ...]
    grants: tuple[GrantRef, ...] = ()
    grant_count: int = 0


@dataclass
class _World:
    rng: random.Random
    now: datetime
    exchanges: list[Participant] = field(default_factory=list)
    holders: list[Participant] = field(default_factory=list)
    assessors: list[Participant] = field(default_factory=list)
    buyers: list[Participant] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)
    serial: int = 0

    def act(self, role: str = "exchange", actor: str = "bench-exchange") -> Act:
        self.now += timedelta(milliseconds=self.rng.randint(50, 400))
        request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return Act(actor, role, request_id, self.now, self.now)

    def uscc(self) -> str:
        self.serial += 1
        body = f"91{self.rng.randint(110000, 659999):06d}{self.serial:09d}"
        return body + uscc_check_character(body)


def _participant(world: _World, name: str, roles: frozenset[ParticipantRole]) -> Participant:
    act = world.act("registry", "bench-registry")
    return Participant.register(
        entity_id("participant", act.request_id),
        PartyIdentifier(uscc=world.uscc()),
        name,
        roles,
        act,
    )


def _certify(world: _World, participant: Participant) -> None:
    act = world.act("registry", "bench-registry")
    participant.issue_certification(
        str(entity_id("certification", act.request_id)),
        CertificationLevel.CORE,
        frozenset(CATEGORIES),
        Classification.IMPORTANT,
        act.effective_at - timedelta(days=1),
        act.effective_at + timedelta(days=3650),
        f"CERT-{world.serial}",
        act,
    )


def _listing_ref(listing: Listing) -> ListingRef:
    return ListingRef(
        str(listing.id),
        listing.exchange_id,
        listing.provider_id,
        tuple(sorted(listing.scenarios)),
        tuple(sorted(m.name for m in listing.delivery_modes)),
    )


def setup_market(app: MarketLedger, seed: int, listings: int, buyers: int) -> Market:
    """Writes a market ready to trade and nothing else: one certified exchange and
    assessor, data holders, ``buyers`` buyers and ``listings`` approved listings, all on
    that exchange (so that one venue's principal may sell on every one of them)."""
    world = _World(random.Random(seed), datetime.now(tz=UTC) - timedelta(days=1))
    exchange = _participant(world, "Data Exchange", frozenset({ParticipantRole.EXCHANGE}))
    assessor = _participant(world, "Law Firm", frozenset({ParticipantRole.ASSESSOR}))
    for certified in (exchange, assessor):
        _certify(world, certified)
    world.exchanges.append(exchange)
    world.assessors.append(assessor)
    for i in range(max(1, listings // 4)):
        world.holders.append(
            _participant(world, f"Data Holder {i}", frozenset({ParticipantRole.DATA_HOLDER}))
        )
    for i in range(buyers):
        world.buyers.append(_participant(world, f"Buyer {i}", frozenset({ParticipantRole.BUYER})))
    made = [_new_listing(world, lambda *_: None) for _ in range(listings)]
    recordings = app.save(*world.exchanges, *world.assessors, *world.holders, *world.buyers, *made)
    return Market(
        len(recordings),
        (str(exchange.id),),
        tuple(str(b.id) for b in world.buyers),
        tuple(_listing_ref(listing) for listing in made),
    )


def generate(
    app: MarketLedger,
    events: int,
    seed: int = 0,
    batch_events: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> Market:
    """Writes a market history of at least ``events`` stored events; returns its parties,
    listings and a sample of its grants."""
    world = _World(random.Random(seed), datetime.now(tz=UTC) - HISTORY_START)
    # The sample has a generator of its own, so that sampling leaves the history as it is.
    sampler = random.Random(f"grants/{seed}")
    sample: list[GrantRef] = []
    grants = 0
    pending: dict[uuid.UUID, LedgerAggregate] = {}
    written = 0

    def touch(*aggregates: LedgerAggregate) -> None:
        for aggregate in aggregates:
            pending[aggregate.id] = aggregate

    def flush() -> None:
        nonlocal written
        if not pending:
            return
        recordings = app.save(*pending.values())
        written += len(recordings)
        pending.clear()
        if progress is not None:
            progress(written)

    for i in range(5):
        exchange = _participant(world, f"Data Exchange {i}", frozenset({ParticipantRole.EXCHANGE}))
        _certify(world, exchange)
        world.exchanges.append(exchange)
    for i in range(4):
        assessor = _participant(world, f"Law Firm {i}", frozenset({ParticipantRole.ASSESSOR}))
        _certify(world, assessor)
        world.assessors.append(assessor)
    for i in range(40):
        world.holders.append(
            _participant(world, f"Data Holder {i}", frozenset({ParticipantRole.DATA_HOLDER}))
        )
    for i in range(400):
        world.buyers.append(_participant(world, f"Buyer {i}", frozenset({ParticipantRole.BUYER})))
    touch(*world.exchanges, *world.assessors, *world.holders, *world.buyers)

    rng = world.rng
    for iteration in range(1, 2**62):
        if iteration % 50 == 0:
            # Counting pending events walks every pending aggregate: do it now and then.
            count = _count(pending)
            if count >= batch_events:
                flush()
                count = 0
            if written + count >= events:
                break
        if not world.listings or rng.random() < 0.01:
            world.listings.append(_new_listing(world, touch))
        listing = rng.choice(world.listings[-50:])
        buyer = rng.choice(world.buyers)
        seller = next(p for p in world.holders if str(p.id) == listing.provider_id)
        act = world.act()
        trade = Trade.record_sale(
            entity_id("trade", act.request_id),
            listing,
            seller,
            buyer,
            frozenset({Right.PROCESS_USE}),
            Conveyance.LICENCE,
            rng.choice(sorted(listing.scenarios)),
            act.effective_at - timedelta(days=1),
            act.effective_at + timedelta(days=365),
            Money("CNY", rng.randint(10_000, 50_000_000)),
            f"PAY-{world.serial}",
            act,
        )
        grant_act = world.act()
        grant = AccessGrant.grant(
            entity_id("grant", grant_act.request_id),
            trade,
            listing,
            buyer,
            rng.choice(sorted(listing.delivery_modes, key=lambda m: m.name)),
            trade.scenario,
            grant_act.effective_at,
            grant_act.effective_at + timedelta(days=180),
            "CN",
            None,
            rng.choice((None, 1000, 10_000)),
            grant_act,
        )
        for _ in range(rng.randint(0, 6)):
            use = world.act()
            grant.record_use(
                grant.delivery_mode, grant.scenario, use.effective_at, rng.randint(1, 20), use
            )
        if rng.random() < 0.8:
            trade.settle(f"SETTLED-{world.serial}", world.act())
        if rng.random() < 0.05:
            grant.revoke(RevocationReason.CONTRACT_TERMINATED, "", world.act())
        touch(trade, grant, listing, buyer)
        grants += 1
        slot = grants - 1 if grants <= GRANT_SAMPLE else sampler.randrange(grants)
        if slot < GRANT_SAMPLE:
            ref = GrantRef(
                str(buyer.id),
                str(listing.id),
                listing.exchange_id,
                grant.delivery_mode.name,
                grant.scenario,
                grant.status is GrantState.ACTIVE,
            )
            if slot == len(sample):
                sample.append(ref)
            else:
                sample[slot] = ref
    flush()
    return Market(
        written,
        tuple(str(e.id) for e in world.exchanges),
        tuple(str(b.id) for b in world.buyers),
        tuple(_listing_ref(listing) for listing in world.listings),
        tuple(sample),
        grants,
    )


def _count(pending: dict[uuid.UUID, LedgerAggregate]) -> int:
    return sum(len(a.pending_events) for a in pending.values())


def _new_listing(world: _World, touch: Callable[..., None]) -> Listing:
    rng = world.rng
    exchange = rng.choice(world.exchanges)
    provider = rng.choice(world.holders)
    assessor = rng.choice(world.assessors)
    category = rng.choice(CATEGORIES)
    pi_level = rng.choice((PersonalInformationLevel.NONE, PersonalInformationLevel.PERSONAL))
    act = world.act()
    listing = Listing.submit(
        entity_id("listing", act.request_id),
        exchange,
        provider,
        f"{category.name.title()} dataset {world.serial}",
        category,
        Classification.GENERAL,
        pi_level,
        frozenset(Right),
        frozenset(rng.sample(MODES, 2)),
        sorted(rng.sample(SCENARIOS, 3)),
        Money("CNY", rng.randint(100_000, 90_000_000)),
        {"compliance_assessment_ref": f"CA-{world.serial}"},
        act,
    )
    listing.record_assessment(assessor, True, f"LAW-{world.serial}", "", world.act("assessor"))
    listing.approve(exchange, world.act())
    touch(listing)
    return listing
