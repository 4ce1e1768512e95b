"""A store of realistic events, fast: a small market written through the application,
then its stored rows copied under fresh aggregate ids until the log is long enough.

Benchmarks use it; the copies decode like any business event (their aggregates'
histories are not meant to be loaded as aggregates).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from eventsourcing.persistence import StoredEvent

from ledger.application import commands as c
from ledger.application.app import Actor, MarketLedger
from ledger.application.events import EventLog
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.settings import Settings

ADMIN = Actor("admin", "admin")
_EPOCH = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def write_template_market(app: MarketLedger, clock: FakeClock, listings: int = 4) -> None:
    """Writes a small market: parties, certified listings, sales, grants, uses, settlements."""

    def run(command: c.Command) -> str:
        clock.advance(timedelta(seconds=1))
        return str(app.execute(command, ADMIN).resource.id)

    def party(name: str, role: str, serial: int, certify: bool) -> str:
        from ledger.domain.values import uscc_check_character

        body = f"91310000{serial:09d}"
        participant = run(
            c.RegisterParticipant(
                request_id=str(uuid.uuid4()),
                name=name,
                roles=(role,),
                uscc=body + uscc_check_character(body),
            )
        )
        if certify:
            run(
                c.IssueCertification(
                    request_id=str(uuid.uuid4()),
                    participant_id=participant,
                    level="CORE",
                    categories=("MEDICAL", "LOGISTICS", "FINANCIAL"),
                    max_classification="IMPORTANT",
                    valid_from=None,
                    valid_until=clock.now() + timedelta(days=365),
                    reference="CERT-2026-0001",
                )
            )
        return participant

    exchange = party("上海数据交易所", "EXCHANGE", 1, certify=True)
    provider = party("Ruijin Hospital", "DATA_HOLDER", 2, certify=False)
    assessor = party("Compliance Law Firm", "ASSESSOR", 3, certify=True)
    buyer = party("Pudong Insurance", "BUYER", 4, certify=False)
    for n in range(listings):
        listing = run(
            c.SubmitListing(
                request_id=str(uuid.uuid4()),
                exchange_id=exchange,
                provider_id=provider,
                title=f"出院记录 discharge records {n}",
                category="MEDICAL",
                classification="GENERAL",
                pi_level="NONE",
                rights=("HOLD", "PROCESS_USE", "OPERATE"),
                delivery_modes=("API", "PRIVACY_COMPUTE"),
                scenarios=("credit-risk-scoring", "clinical-research"),
                price_currency="CNY",
                price_amount_minor=1_250_000 + n,
            )
        )
        run(
            c.RecordAssessment(
                request_id=str(uuid.uuid4()),
                listing_id=listing,
                assessor_id=assessor,
                passed=True,
                reference="LAW-2026-001",
            )
        )
        run(c.ApproveListing(request_id=str(uuid.uuid4()), listing_id=listing))
        trade = run(
            c.RecordSale(
                request_id=str(uuid.uuid4()),
                listing_id=listing,
                seller_id=provider,
                buyer_id=buyer,
                rights=("PROCESS_USE",),
                conveyance="LICENCE",
                scenario="credit-risk-scoring",
                price_currency="CNY",
                price_amount_minor=500_000 + n,
                term_start=clock.now() - timedelta(days=1),
                term_end=clock.now() + timedelta(days=180),
            )
        )
        grant = run(
            c.GrantAccess(
                request_id=str(uuid.uuid4()),
                trade_id=trade,
                delivery_mode="API",
                scenario="credit-risk-scoring",
                valid_until=clock.now() + timedelta(days=90),
            )
        )
        for _ in range(3):
            run(
                c.RecordAccessUse(
                    request_id=str(uuid.uuid4()),
                    grant_id=grant,
                    delivery_mode="API",
                    scenario="credit-risk-scoring",
                    units=7 + n,
                )
            )
        run(c.SettleTrade(request_id=str(uuid.uuid4()), trade_id=trade, settlement_ref="PAY-1"))


def seed_store(settings: Settings, business_events: int, batch: int = 2000) -> int:
    """Fills an empty store with at least ``business_events`` business events (the
    template market, then copies of its rows, markers included); returns the head."""
    clock = FakeClock(_EPOCH)
    app = build_application(settings, clock)
    try:
        write_template_market(app, clock)
        return _copy_rows(app, business_events, batch)
    finally:
        app.close()


def _copy_rows(app: MarketLedger, business_events: int, batch: int) -> int:
    log = EventLog(app.recorder)
    template = app.recorder.select_notifications(1, 100_000)
    per_copy = len(log.read(0, 100_000)[0])
    written = per_copy
    pending: list[StoredEvent] = []
    while written < business_events:
        for row in template:
            pending.append(
                StoredEvent(
                    originator_id=uuid.uuid4(),
                    originator_version=row.originator_version,
                    topic=row.topic,
                    state=row.state,
                )
            )
        written += per_copy
        if len(pending) >= batch:
            app.recorder.insert_events(pending)
            pending = []
    if pending:
        app.recorder.insert_events(pending)
    return log.head()
