"""The compliance projection: findings of R17-R19 as of any moment, scoped to an exchange,
the same when rebuilt, and the enforced-rule rejection counts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application.events import EventLog
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.errors import LedgerError
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.rules import RULE_SET_VERSION
from ledger.domain.trade import Trade
from ledger.domain.values import Classification, GrantState, TradeState
from ledger.projections.compliance import (
    TIME_FORMAT,
    Compliance,
    Finding,
    Report,
    ensure_rejections_table,
    parse_time_text,
    projection_version,
    record_rejection,
    rejections,
    time_text,
)
from ledger.projections.db import SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import Market, new_market, rid

WINDOW = timedelta(days=7)
A = TypeVar("A")


class Harness:
    """The market, a compliance projection over its log, and shortcuts to read both."""

    def __init__(
        self,
        market: Market,
        window_days: int = 7,
        batch_size: int = 2000,
        up_to_position: int | None = None,
    ) -> None:
        self.market = market
        self.compliance = Compliance(settlement_window_days=window_days)
        recorder = market.app.recorder
        self.manager = ProjectionManager(
            SqliteDatabase(":memory:"),
            EventLog(recorder if up_to_position is None else Truncated(recorder, up_to_position)),
            [self.compliance],
            batch_size=batch_size,
        )
        self.manager.setup()

    def report(
        self,
        at: datetime | None = None,
        exchange_id: str | None = None,
        as_of_position: int | None = None,
    ) -> Report:
        self.manager.catch_up()
        tables = self.manager.live(Compliance.name).tables
        with self.manager.db.transaction() as tx:
            return self.compliance.report(
                tx,
                tables,
                exchange_id,
                time_text(at or self.market.clock.now()),
                as_of_position,
            )

    def findings(self, rule: str, at: datetime | None = None) -> list[Finding]:
        return [f for f in self.report(at).findings if f.rule == rule]

    def position(self, event_type: str, aggregate_id: str, nth: int = -1) -> int:
        """The position of the ``nth`` event of a type on an aggregate."""
        events, _ = EventLog(self.market.app.recorder).read(0, 1_000_000)
        positions = [
            int(e["position"])
            for e in events
            if e["type"] == event_type and e["aggregate_id"] == aggregate_id
        ]
        return positions[nth]


class Truncated:
    """A recorder seen as it stood when ``stop`` was the head of its log."""

    def __init__(self, recorder: Any, stop: int) -> None:
        self.recorder = recorder
        self.stop = stop

    def max_notification_id(self) -> int:
        return min(int(self.recorder.max_notification_id() or 0), self.stop)

    def select_notifications(self, start: int, limit: int, stop: int | None = None) -> Any:
        return self.recorder.select_notifications(
            start, limit, stop=self.stop if stop is None else min(stop, self.stop)
        )


@pytest.fixture
def h(market: Market) -> Harness:
    return Harness(market)


# --- R17 ------------------------------------------------------------------------------


def certified_buyer(
    market: Market, name: str = "dealer-buyer", days: int = 10
) -> tuple[str, datetime]:
    """A buyer whose only certification covering IMPORTANT lasts ``days``, and its expiry."""
    buyer = market.participant(name, "BUYER", "DATA_DEALER")
    expiry = market.later(days)
    market.certify(buyer, days=days)
    return buyer, expiry


def important_grant(market: Market, buyer: str) -> tuple[str, str, str]:
    listing = market.listed(classification="IMPORTANT")
    trade = market.sell(listing, buyer_id=buyer)
    return listing, trade, market.grant(trade)


def test_r17_grant_active_after_the_grantees_certification_expired(h: Harness) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    listing, _, grant = important_grant(m, buyer)
    m.clock.set(expiry + timedelta(days=1))

    # Check nothing is found as of just before the expiry, one finding from it on.
    assert h.findings("R17", expiry - timedelta(microseconds=1)) == []
    [finding] = h.findings("R17")
    assert finding.subject_type == "AccessGrant"
    assert finding.subject_id == grant
    assert finding.reason == "CERTIFICATION_EXPIRED"
    assert finding.first_seen_time == time_text(expiry)
    assert finding.first_seen_position is None  # time, not an event, opened it
    assert finding.is_open
    assert finding.listing_id == listing
    assert finding.participant_ids == (buyer,)
    assert finding.exchange_id == m.ids["exchange"]
    assert finding.rule_set_version == RULE_SET_VERSION
    assert finding.evidence_positions == tuple(
        sorted(
            [
                h.position("CertificationIssued", buyer),
                h.position("ListingSubmitted", listing),
                h.position("AccessGranted", grant),
            ]
        )
    )


def test_r17_is_cleared_when_the_grant_stops_being_active(h: Harness) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    _, _, grant = important_grant(m, buyer)
    m.clock.set(expiry + timedelta(days=2))
    m.run(c.SuspendAccess(request_id=rid(), grant_id=grant))
    suspended_at = m.clock.now()
    m.clock.advance(timedelta(days=1))

    [finding] = h.findings("R17")
    assert finding.cleared_time == time_text(suspended_at)
    assert finding.cleared_position == h.position("AccessSuspended", grant)
    # As of before the suspension, the finding is still open.
    [earlier] = h.findings("R17", suspended_at - timedelta(seconds=1))
    assert earlier.is_open
    assert earlier.first_seen_time == finding.first_seen_time


def test_r17_is_cleared_when_a_new_covering_certification_becomes_valid(h: Harness) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    important_grant(m, buyer)
    m.clock.set(expiry + timedelta(days=3))
    m.certify(buyer, days=365)
    renewed_at = m.clock.now()

    [finding] = h.findings("R17", renewed_at + timedelta(days=1))
    assert finding.first_seen_time == time_text(expiry)
    assert finding.cleared_time == time_text(renewed_at)
    assert finding.cleared_position == h.position("CertificationIssued", buyer)


def test_r17_reinstating_a_grant_after_the_expiry_opens_a_finding_at_that_event(
    h: Harness,
) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    _, _, grant = important_grant(m, buyer)
    m.run(c.SuspendAccess(request_id=rid(), grant_id=grant))
    m.clock.set(expiry + timedelta(days=1))
    m.run(c.ReinstateAccess(request_id=rid(), grant_id=grant))

    [finding] = h.findings("R17")
    assert finding.first_seen_time == time_text(m.clock.now())
    assert finding.first_seen_position == h.position("AccessReinstated", grant)
    assert finding.first_seen_position in finding.evidence_positions


def test_r17_needs_an_important_listing_and_a_grantee_that_is_not_a_regulator(
    h: Harness,
) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    general = m.listed()
    m.grant(m.sell(general, buyer_id=buyer))
    important_grant(m, m.ids["regulator"])
    _, _, revoked = important_grant(m, certified_buyer(m, "revoked-before-expiry")[0])
    m.run(c.RevokeAccess(request_id=rid(), grant_id=revoked, reason="CONTRACT_TERMINATED"))
    m.clock.set(expiry + timedelta(days=30))

    assert h.findings("R17") == []


def test_r17_ends_with_the_grants_own_validity(h: Harness) -> None:
    m = h.market
    buyer, expiry = certified_buyer(m, days=10)
    listing = m.listed(classification="IMPORTANT")
    trade = m.sell(listing, buyer_id=buyer)
    grant_end = m.later(20)
    m.grant(trade, valid_until=grant_end)
    m.clock.set(expiry + timedelta(days=30))

    [finding] = h.findings("R17")
    assert finding.first_seen_time == time_text(expiry)
    assert finding.cleared_time == time_text(grant_end)
    assert finding.cleared_position is None  # the grant expired by time


# --- R18 ------------------------------------------------------------------------------


def use(m: Market, grant: str, **overrides: object) -> None:
    fields: dict[str, object] = {
        "request_id": rid(),
        "grant_id": grant,
        "delivery_mode": "API",
        "scenario": "credit-risk-scoring",
    }
    fields.update(overrides)
    m.run(c.RecordAccessUse(**fields))  # type: ignore[arg-type]


def test_r18_a_compliant_use_is_no_finding(h: Harness) -> None:
    _, _, grant = h.market.granted()
    use(h.market, grant)
    assert h.findings("R18") == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"delivery_mode": "PRIVACY_COMPUTE"}, "DELIVERY_MODE_MISMATCH"),
        ({"scenario": "clinical-research"}, "SCENARIO_MISMATCH"),
    ],
)
def test_r18_a_use_in_another_mode_or_scenario(
    h: Harness, overrides: dict[str, object], reason: str
) -> None:
    _, _, grant = h.market.granted()
    use(h.market, grant, **overrides)
    [finding] = h.findings("R18")
    assert finding.reason == reason
    used = h.position("AccessUsed", grant)
    assert finding.evidence_positions == (h.position("AccessGranted", grant), used)
    assert finding.first_seen_position == used
    assert finding.first_seen_time == time_text(h.market.clock.now())
    assert finding.is_open
    assert finding.subject_id == grant


def test_r18_a_use_after_the_validity_ended(h: Harness) -> None:
    m = h.market
    _, _, grant = m.granted()  # valid for 90 days
    m.clock.advance(timedelta(days=91))
    use(m, grant)
    assert [f.reason for f in h.findings("R18")] == ["OUTSIDE_VALIDITY"]


def test_r18_a_use_dated_before_the_validity_began(h: Harness) -> None:
    m = h.market
    _, _, grant = m.granted()
    use(m, grant, used_at=m.clock.now() - timedelta(hours=1))
    # Before the grant existed it was neither valid nor active.
    assert sorted(f.reason for f in h.findings("R18")) == ["GRANT_NOT_ACTIVE", "OUTSIDE_VALIDITY"]


def test_r18_a_use_while_the_grant_was_suspended(h: Harness) -> None:
    m = h.market
    _, _, grant = m.granted()
    m.run(c.SuspendAccess(request_id=rid(), grant_id=grant))
    use(m, grant)
    m.run(c.ReinstateAccess(request_id=rid(), grant_id=grant))
    use(m, grant)  # active again: compliant
    [finding] = h.findings("R18")
    assert finding.reason == "GRANT_NOT_ACTIVE"
    assert finding.first_seen_position == h.position("AccessUsed", grant, nth=0)


def test_r18_uses_beyond_the_usage_limit(h: Harness) -> None:
    m = h.market
    trade = m.sell(m.listed())
    grant = m.grant(trade, usage_limit=3)
    use(m, grant, units=2)
    use(m, grant, units=1)
    use(m, grant, units=1)
    use(m, grant, units=5)
    findings = h.findings("R18")
    assert [f.reason for f in findings] == ["USAGE_LIMIT_EXCEEDED"] * 2
    assert [f.first_seen_position for f in findings] == [
        h.position("AccessUsed", grant, nth=2),
        h.position("AccessUsed", grant, nth=3),
    ]


def test_r18_findings_are_never_cleared_and_respect_the_as_of_point(h: Harness) -> None:
    m = h.market
    _, _, grant = m.granted()
    before = m.clock.now()
    use(m, grant, scenario="clinical-research")
    m.run(c.RevokeAccess(request_id=rid(), grant_id=grant, reason="MISUSE_DETECTED"))
    m.clock.advance(timedelta(days=400))
    [finding] = h.findings("R18")
    assert finding.is_open
    assert h.findings("R18", before) == []
    used = h.position("AccessUsed", grant)
    assert h.report(as_of_position=used - 1).findings_by_rule().get("R18") is None
    assert h.report(as_of_position=used).findings_by_rule()["R18"] == 1


# --- R19 ------------------------------------------------------------------------------


def test_r19_a_trade_not_settled_within_the_window(h: Harness) -> None:
    m = h.market
    listing = m.listed()
    executed = m.clock.now() + timedelta(seconds=1)  # the sale's tick
    trade = m.sell(listing)
    assert m.clock.now() == executed

    assert h.findings("R19", executed + WINDOW - timedelta(microseconds=1)) == []
    [finding] = h.findings("R19", executed + WINDOW)
    assert finding.subject_type == "Trade"
    assert finding.subject_id == trade
    assert finding.first_seen_time == time_text(executed + WINDOW)
    assert finding.first_seen_position is None
    assert finding.evidence_positions == (h.position("SaleRecorded", trade),)
    assert finding.participant_ids == (m.ids["provider"], m.ids["buyer"])
    assert finding.is_open


def test_r19_settled_late_clears_the_finding_then(h: Harness) -> None:
    m = h.market
    trade = m.sell(m.listed())
    executed = m.clock.now()
    m.clock.advance(timedelta(days=9))
    m.run(c.SettleTrade(request_id=rid(), trade_id=trade, settlement_ref="PAY-1"))
    settled = m.clock.now()
    settled_position = h.position("TradeSettled", trade)
    m.clock.advance(timedelta(days=1))

    [finding] = h.findings("R19")
    assert finding.first_seen_time == time_text(executed + WINDOW)
    assert finding.cleared_time == time_text(settled)
    assert finding.cleared_position == settled_position
    assert settled_position in finding.evidence_positions
    # As of the day before, by time and by position, the settlement was not yet known.
    [earlier] = h.findings("R19", settled - timedelta(days=1))
    assert earlier.is_open
    [by_position] = h.report(as_of_position=settled_position - 1).findings
    assert by_position.is_open


@pytest.mark.parametrize("close", ["settle", "cancel"])
def test_r19_a_trade_closed_within_the_window_is_no_finding(h: Harness, close: str) -> None:
    m = h.market
    trade = m.sell(m.listed())
    m.clock.advance(WINDOW - timedelta(seconds=2))  # the command ticks one second
    if close == "settle":
        m.run(c.SettleTrade(request_id=rid(), trade_id=trade, settlement_ref="PAY-1"))
    else:
        m.run(c.CancelTrade(request_id=rid(), trade_id=trade))
    m.clock.advance(timedelta(days=30))
    assert h.findings("R19") == []


def test_r19_window_is_configurable(market: Market) -> None:
    h = Harness(market, window_days=2)
    trade = market.sell(market.listed())
    market.clock.advance(timedelta(days=3))
    [finding] = h.findings("R19")
    assert finding.subject_id == trade
    assert h.report().settlement_window_days == 2


# --- scope, versions, rebuilds and rejections -----------------------------------------


def test_a_report_for_an_exchange_holds_only_its_findings(h: Harness) -> None:
    m = h.market
    other = m.participant("exchange2", "EXCHANGE")
    m.certify(other)
    here = m.sell(m.listed())
    there = m.sell(m.listed(exchange_id=other))
    m.clock.advance(timedelta(days=8))

    assert {f.subject_id for f in h.report(exchange_id=m.ids["exchange"]).findings} == {here}
    assert {f.subject_id for f in h.report(exchange_id=other).findings} == {there}
    assert {f.subject_id for f in h.report().findings} == {here, there}
    assert h.report(exchange_id="no-such-exchange").findings == ()


def test_a_report_rejects_a_time_that_is_not_canonical(h: Harness) -> None:
    tables = h.manager.live(Compliance.name).tables
    with h.manager.db.transaction() as tx, pytest.raises(ValueError, match="canonical"):
        h.compliance.report(tx, tables, None, "2026-11-24 08:00:00")


def test_the_version_follows_the_rule_set() -> None:
    assert Compliance.version == projection_version(RULE_SET_VERSION)
    assert projection_version("2026.1") != projection_version("2026.2")
    assert projection_version("2026.1", 1) != projection_version("2026.1", 2)
    assert 0 < Compliance.version < 2**31


def busy_market(m: Market) -> None:
    """A market with every kind of finding, opened and cleared."""
    buyer, expiry = certified_buyer(m, days=10)
    _, trade, grant = important_grant(m, buyer)
    use(m, grant, delivery_mode="PRIVACY_COMPUTE")
    late = m.sell(m.listed())
    m.clock.set(expiry + timedelta(days=1))
    m.run(c.SettleTrade(request_id=rid(), trade_id=trade, settlement_ref="PAY-1"))
    m.run(c.SuspendAccess(request_id=rid(), grant_id=grant))
    use(m, grant)
    m.run(c.CancelTrade(request_id=rid(), trade_id=late))
    m.run(c.ReclassifyListing(request_id=rid(), listing_id=m.listed(), classification="CORE"))


def test_incremental_and_rebuilt_projections_are_equal(market: Market) -> None:
    h = Harness(market, batch_size=7)
    busy_market(market)
    h.manager.catch_up()
    busy_market(market)
    incremental = h.report()
    digest = h.manager.digest(Compliance.name)
    assert len({f.rule for f in incremental.findings}) == 3

    first = h.manager.live(Compliance.name).generation
    h.manager.rebuild(Compliance.name)
    h.manager.catch_up()
    assert h.manager.live(Compliance.name).generation != first
    assert h.manager.digest(Compliance.name) == digest
    assert h.report() == incremental


def test_rejections_are_counted_per_rule_exchange_and_day(h: Harness) -> None:
    with h.manager.db.transaction() as tx:
        ensure_rejections_table(tx)  # idempotent: the projection created it already
        record_rejection(tx, "2026-11-24", "R05", "ex-1")
        record_rejection(tx, "2026-11-24", "R05", "ex-1")
        record_rejection(tx, "2026-11-25", "R08", "ex-2")
        record_rejection(tx, "2026-11-25", "R02", None)
        assert rejections(tx, "ex-1", "2026-11-25") == {"R05": 2}
        assert rejections(tx, "ex-2", "2026-11-24") == {}
        assert rejections(tx, None, "2026-11-24") == {"R05": 2}
        assert rejections(tx, None, "2026-11-25") == {"R02": 1, "R05": 2, "R08": 1}
    report = h.report(datetime.fromisoformat("2026-11-25T12:00:00+00:00"), exchange_id="ex-2")
    assert report.rejections == {"R08": 1}
    # A rebuild keeps the counts: they are not part of any generation.
    h.manager.rebuild(Compliance.name)
    h.manager.catch_up()
    assert h.report(datetime.fromisoformat("2026-11-25T12:00:00+00:00")).rejections == {
        "R02": 1,
        "R05": 2,
        "R08": 1,
    }


# --- properties over random markets ---------------------------------------------------

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("sell"), st.booleans()),
        st.tuples(
            st.just("use"),
            st.sampled_from(["API", "PRIVACY_COMPUTE"]),
            st.sampled_from(["credit-risk-scoring", "clinical-research"]),
            st.integers(1, 3),
        ),
        st.tuples(st.sampled_from(["settle", "cancel", "suspend", "reinstate", "revoke"])),
        st.tuples(st.sampled_from(["certify", "catch_up"])),
        st.tuples(st.just("wait"), st.integers(0, 12)),
    ),
    min_size=8,
    max_size=30,
)


def play(
    m: Market, h: Harness, actions: Sequence[tuple[Any, ...]]
) -> tuple[str, list[str], list[str]]:
    """Runs random acts on a small market (acts the rules reject write nothing); returns
    the buyer, its trades and its grants."""
    buyer, _ = certified_buyer(m, days=5)
    listings = {False: m.listed(), True: m.listed(classification="IMPORTANT")}
    trades: list[str] = []
    grants: list[str] = []
    for kind, *args in actions:
        try:
            if kind == "sell":
                trades.append(m.sell(listings[args[0]], buyer_id=buyer))
                grants.append(m.grant(trades[-1], usage_limit=4))
            elif kind == "use" and grants:
                mode, scenario, units = args
                use(m, grants[-1], delivery_mode=mode, scenario=scenario, units=units)
            elif kind in ("settle", "cancel") and trades:
                closing = c.SettleTrade if kind == "settle" else c.CancelTrade
                m.run(closing(request_id=rid(), trade_id=trades[-1]))
            elif kind in ("suspend", "reinstate") and grants:
                toggle = c.SuspendAccess if kind == "suspend" else c.ReinstateAccess
                m.run(toggle(request_id=rid(), grant_id=grants[-1]))
            elif kind == "revoke" and grants:
                m.run(
                    c.RevokeAccess(request_id=rid(), grant_id=grants[-1], reason="OTHER", note="x")
                )
            elif kind == "certify":
                m.certify(buyer, days=5)
            elif kind == "catch_up":
                h.manager.catch_up()
            elif kind == "wait":
                m.clock.advance(timedelta(days=args[0]))
        except LedgerError:
            pass
    return buyer, trades, grants


def load(m: Market, cls: type[A], aggregate_id: str) -> A:
    aggregate: object = m.app.repository.get(UUID(aggregate_id))
    assert isinstance(aggregate, cls)
    return aggregate


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, batch_size=st.integers(1, 60), data=st.data())
def test_any_market_reads_the_same_incrementally_rebuilt_and_as_of_the_past(
    actions: list[tuple[Any, ...]], batch_size: int, data: st.DataObject
) -> None:
    clock = FakeClock()
    market = new_market(build_application(Settings(database_url="memory:"), clock), clock)
    h = Harness(market, batch_size=batch_size)
    buyer_id, trades, grants = play(market, h, actions)
    report = h.report()
    digest = h.manager.digest(Compliance.name)
    for rule, count in report.findings_by_rule().items():
        event(f"{rule} findings: {min(count, 3)}+")

    # The open findings are what the aggregates themselves say about this moment.
    now = clock.now()
    buyer = load(market, Participant, buyer_id)
    certified = buyer.valid_certification(now, None, Classification.IMPORTANT) is not None
    expected_r17 = {
        grant_id
        for grant_id in grants
        if (grant := load(market, AccessGrant, grant_id)).state_at(now) is GrantState.ACTIVE
        and load(market, Listing, grant.listing_id).classification is Classification.IMPORTANT
        and not certified
    }
    expected_r19 = {
        trade_id
        for trade_id in trades
        if (trade := load(market, Trade, trade_id)).state is TradeState.EXECUTED
        and trade.executed_at + WINDOW <= now
    }
    open_findings = {(f.rule, f.subject_id) for f in report.findings if f.is_open}
    event(f"open R17 findings: {min(len(expected_r17), 2)}")
    assert {s for r, s in open_findings if r == "R17"} == expected_r17
    assert {s for r, s in open_findings if r == "R19"} == expected_r19

    # Rebuilt from scratch: the same tables, row for row, and the same report.
    h.manager.rebuild(Compliance.name)
    h.manager.catch_up()
    assert h.manager.digest(Compliance.name) == digest
    assert h.report() == report

    # As of a past position: what a projection that had stopped there reports.
    position = data.draw(st.integers(0, market.head), label="as_of_position")
    past = Harness(market, up_to_position=position)
    assert h.report(as_of_position=position).findings == past.report().findings


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_time_text_is_the_canonical_utc_text_and_parses_back(at: datetime) -> None:
    text = time_text(at)
    utc = at.astimezone(UTC)
    assert text == f"{utc.year:04d}{utc.strftime(TIME_FORMAT.removeprefix('%Y'))}"
    assert parse_time_text(text) == utc
