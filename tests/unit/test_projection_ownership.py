"""The ownership projection: who holds which rights, at the head and as of the past.

This module also holds the random market histories that the access and integration tests
play: a history is a list of steps, each an action and a seed for its choices, run
through ``MarketLedger``. Many steps fail with a ``LedgerError``; that is part of the game.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent, EventLog, utc_text
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.errors import LedgerError
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import Right
from ledger.projections.access import Access
from ledger.projections.db import Database, SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.projections.ownership import Holding, Ownership, by_right, ownership_at
from ledger.settings import Settings
from tests.market import Market, new_market, rid

SCENARIOS = ("credit-risk-scoring", "clinical-research")
MODES = ("API", "PRIVACY_COMPUTE", "SANDBOX")
RIGHT_SETS = (
    ("HOLD",),
    ("PROCESS_USE",),
    ("OPERATE",),
    ("PROCESS_USE", "OPERATE"),
    ("HOLD", "PROCESS_USE", "OPERATE"),
)
SELLERS = ("provider", "dealer", "buyer")
GRANTEES = ("buyer", "buyer2", "dealer", "regulator")
# Repeated actions are drawn more often.
ACTIONS = (
    *("sell",) * 6,
    *("grant",) * 4,
    *("use",) * 5,
    "suspend_grant",
    "reinstate_grant",
    "revoke_grant",
    "suspend_listing",
    "reinstate_listing",
    "delist",
    "suspend_party",
    "reinstate_party",
    "cancel",
    "list",
    "wait",
)
Step = tuple[str, int]


def canonical(at: datetime) -> str:
    return utc_text(at.isoformat())


def history_steps(min_size: int = 10, max_size: int = 40) -> st.SearchStrategy[list[Step]]:
    """Steps from a seeded generator: hypothesis's own draws favour small, simple values,
    which here would mean histories of the same few failing commands."""
    return st.builds(
        lambda seed, count: random_steps(random.Random(seed), count),
        st.integers(0, 2**32),
        st.integers(min_size, max_size),
    )


def random_steps(rng: random.Random, count: int) -> list[Step]:
    return [(rng.choice(ACTIONS), rng.randrange(2**16)) for _ in range(count)]


def open_manager(app: MarketLedger, db: Database, batch_size: int = 2000) -> ProjectionManager:
    manager = ProjectionManager(db, EventLog(app.recorder), [Ownership(), Access()], batch_size)
    manager.setup()
    return manager


@dataclass
class History:
    """A market on which random steps are played, and the ids they created."""

    market: Market
    listings: list[str] = field(default_factory=list)
    trades: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, market: Market) -> History:
        history = cls(market)
        history.listings += [market.listed(), market.listed()]
        return history

    def load(self, cls: type[Any], aggregate_id: str) -> Any:
        aggregate: Any = self.market.app.repository.get(UUID(aggregate_id))
        assert isinstance(aggregate, cls)
        return aggregate

    def run(self, command: c.Command) -> str | None:
        try:
            return str(self.market.run(command).resource.id)
        except LedgerError:
            return None

    def party(self, name: str) -> str:
        return self.market.ids[name]

    def play(self, steps: list[Step], manager: ProjectionManager, catch_up_every: int) -> None:
        """Plays the steps, catching the projections up after every few of them."""
        for i, step in enumerate(steps, 1):
            self.step(*step)
            if i % catch_up_every == 0:
                manager.catch_up()
        manager.catch_up()

    def pick(self, rng: random.Random, ids: list[str], cls: type[Any], state: str) -> str:
        """Mostly one in ``state`` (so that most commands can succeed), else any."""
        fitting = [i for i in ids if _state(self.load(cls, i)) == state]
        return rng.choice(fitting if fitting and rng.random() < 0.85 else ids)

    def step(self, action: str, seed: int) -> None:
        rng = random.Random(seed)
        listing_id = self.pick(rng, self.listings, Listing, "LISTED")
        if action == "sell":
            self.sell(rng, listing_id)
        elif action == "grant" and self.trades:
            recent = self.trades[-3:] if rng.random() < 0.6 else self.trades
            self.grant(rng, self.pick(rng, recent, Trade, "EXECUTED"))
        elif action.endswith("_grant") or action == "use":
            if self.grants:
                self.change_grant(rng, action)
        elif action == "suspend_listing":
            self.run(c.SuspendListing(request_id=rid(), listing_id=listing_id))
        elif action == "reinstate_listing":
            suspended = self.pick(rng, self.listings, Listing, "SUSPENDED")
            self.run(c.ReinstateListing(request_id=rid(), listing_id=suspended))
        elif action == "delist" and rng.random() < 0.3:
            self.run(c.DelistListing(request_id=rid(), listing_id=listing_id))
        elif action == "suspend_party":
            party = self.party(rng.choice(GRANTEES))
            self.run(c.SuspendParticipant(request_id=rid(), participant_id=party))
        elif action == "reinstate_party":
            parties = [self.party(name) for name in GRANTEES]
            party = self.pick(rng, parties, Participant, "SUSPENDED")
            self.run(c.ReinstateParticipant(request_id=rid(), participant_id=party))
        elif action == "cancel" and self.trades:
            trade_id = self.pick(rng, self.trades, Trade, "EXECUTED")
            self.run(c.CancelTrade(request_id=rid(), trade_id=trade_id))
        elif action == "list" and len(self.listings) < 5:
            with contextlib.suppress(LedgerError):
                self.listings.append(self.market.listed())
        elif action == "wait":
            self.market.clock.advance(timedelta(days=rng.choice((1, 2, 5))))

    def change_grant(self, rng: random.Random, action: str) -> None:
        wanted = {"reinstate_grant": "SUSPENDED", "use": "ACTIVE"}.get(action, "ACTIVE")
        grants = self.grants
        if action == "use" and rng.random() < 0.7:
            # Mostly grants with a usage limit, so that some reach it.
            limited = [g for g in grants if self.load(AccessGrant, g).usage_limit is not None]
            grants = limited or grants
        grant_id = self.pick(rng, grants, AccessGrant, wanted)
        command: c.Command
        if action == "use":
            grant = self.load(AccessGrant, grant_id)
            mode = grant.delivery_mode.name if rng.random() < 0.8 else rng.choice(MODES)
            command = c.RecordAccessUse(
                request_id=rid(),
                grant_id=grant_id,
                delivery_mode=mode,
                scenario=grant.scenario,
                units=rng.choice((1, 1, 2)),
            )
        elif action == "suspend_grant":
            command = c.SuspendAccess(request_id=rid(), grant_id=grant_id, note="review")
        elif action == "reinstate_grant":
            command = c.ReinstateAccess(request_id=rid(), grant_id=grant_id)
        else:
            reason = rng.choice(("MISUSE_DETECTED", "CONSENT_WITHDRAWN", "OTHER"))
            command = c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason=reason, note="n")
        self.run(command)

    def sell(self, rng: random.Random, listing_id: str) -> None:
        licence = rng.random() < 0.5
        rights = rng.choice(RIGHT_SETS[1:4] if licence and rng.random() < 0.9 else RIGHT_SETS)
        seller = self.party(rng.choice(SELLERS))
        if rng.random() < 0.7:
            # Mostly from the holder, so that rights move on along a chain of holders.
            holder = self.load(Listing, listing_id).holdings.get(Right[rights[-1]])
            seller = holder or seller
        buyers = [self.party(name) for name in GRANTEES if self.party(name) != seller]
        now = self.market.clock.now()
        trade_id = self.run(
            self.market.sale_command(
                listing_id,
                seller_id=seller,
                buyer_id=rng.choice(buyers),
                rights=rights,
                conveyance="LICENCE" if licence else "TRANSFER",
                scenario=rng.choice(SCENARIOS),
                term_start=now - timedelta(days=1) if licence else None,
                term_end=now + timedelta(days=rng.choice((1, 3, 30))) if licence else None,
            )
        )
        if trade_id is not None:
            self.trades.append(trade_id)

    def grant(self, rng: random.Random, trade_id: str) -> None:
        trade = self.load(Trade, trade_id)
        now = self.market.clock.now()
        valid_from = now + timedelta(hours=6) if rng.random() < 0.2 else None
        valid_until = now + timedelta(days=rng.choice((1, 2, 10)))
        if trade.term_end is not None and (valid_until > trade.term_end or rng.random() < 0.3):
            valid_until = trade.term_end
        grant_id = self.run(
            c.GrantAccess(
                request_id=rid(),
                trade_id=trade_id,
                delivery_mode=rng.choice(MODES[:2] if rng.random() < 0.9 else MODES),
                scenario=trade.scenario if rng.random() < 0.9 else rng.choice(SCENARIOS),
                valid_from=valid_from,
                valid_until=valid_until,
                usage_limit=rng.choice((None, 1, 2, 3)),
            )
        )
        if grant_id is not None:
            self.grants.append(grant_id)


def _state(aggregate: Any) -> str:
    state = getattr(aggregate, "state", None) or aggregate.status
    return str(state.name)


def new_history(app: MarketLedger, clock: FakeClock) -> History:
    return History.open(new_market(app, clock))


def assert_rebuild_matches(manager: ProjectionManager, name: str, batch_size: int) -> None:
    """A from-scratch rebuild (in batches of another size) ends with the same rows."""
    manager.catch_up()
    before = manager.live(name)
    digest = manager.digest(name)
    manager.batch_size = batch_size
    manager.rebuild(name)
    manager.catch_up()
    after = manager.live(name)
    assert after.generation > before.generation
    assert after.position == before.position
    assert manager.digest(name) == digest


def business_events(app: MarketLedger) -> list[CanonicalEvent]:
    log = EventLog(app.recorder)
    events: list[CanonicalEvent] = []
    position = 0
    while True:
        batch, last = log.read(position, 5000)
        if last == position:
            return events
        events += batch
        position = last


def last_position(app: MarketLedger, event_type: str) -> int:
    """The position of the latest business event of that type."""
    return max(e["position"] for e in business_events(app) if e["type"] == event_type)


def sample_positions(rng: random.Random, head: int, count: int, start: int = 1) -> list[int]:
    return sorted({0, head, *(rng.randint(min(start, head), head) for _ in range(count))})


def sample_times(rng: random.Random, events: list[CanonicalEvent], count: int) -> list[str]:
    """Recorded times of events, and instants between them."""
    times = {e["recorded_at"] for e in events}
    chosen = set(rng.sample(sorted(times), min(count, len(times))))
    for moment in list(chosen):
        chosen.add(canonical(datetime.fromisoformat(moment) - timedelta(milliseconds=1)))
    return sorted(chosen)


# --- the reference fold ------------------------------------------------------------------


def reference_holdings(
    events: list[CanonicalEvent],
    listing_id: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
) -> list[Holding]:
    """What the holdings of a listing must be, folded in memory from the canonical events
    up to the bound: the holdings in force then (licences whose term ended are not)."""
    rows: list[dict[str, Any]] = []
    for e in events:
        if as_of_position is not None and e["position"] > as_of_position:
            continue
        if as_of_time is not None and e["recorded_at"] > as_of_time:
            continue
        p = e["payload"]
        if e["type"] in ("LicenceEnded", "TradeCancelled"):
            # The listing ends a licence with OPERATE; a cancellation ends the others.
            trade_id = p["trade_id"] if e["type"] == "LicenceEnded" else e["aggregate_id"]
            licence = [r for r in rows if r["via_trade_id"] == trade_id and not r["exclusive"]]
            operate = any(r["right"] == "OPERATE" for r in licence)
            if e["type"] == "LicenceEnded" or not operate:
                for r in licence:
                    r["until_position"] = 0  # ended; the position does not matter here
        if e["aggregate_id"] != listing_id:
            continue
        if e["type"] == "ListingSubmitted":
            for right in p["rights"]:
                rows.append(_opened(e, right, p["provider_id"], None))
        elif e["type"] == "RightsTransferred":
            for right in p["rights"]:
                [current] = [
                    r
                    for r in rows
                    if r["right"] == right and r["exclusive"] and r["until_position"] is None
                ]
                assert current["holder_id"] == p["from_id"], "moved from a non-holder"
                current["until_position"] = 0
                rows.append(_opened(e, right, p["to_id"], p["trade_id"]))
        elif e["type"] == "RightsLicensed":
            for right in p["rights"]:
                rows.append(_opened(e, right, p["licensee_id"], p["trade_id"], licence=p))
    return sorted(
        (
            Holding(**r)
            for r in rows
            if r["until_position"] is None
            and (as_of_time is None or r["term_end"] is None or r["term_end"] > as_of_time)
        ),
        key=lambda h: (h.right, h.since_position, h.holder_id),
    )


def _opened(
    e: CanonicalEvent,
    right: str,
    holder: str,
    trade: str | None,
    licence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "right": right,
        "holder_id": holder,
        "since_position": e["position"],
        "until_position": None,
        "via_trade_id": trade,
        "exclusive": licence is None,
        "term_start": None if licence is None else licence["term_start"],
        "term_end": None if licence is None else licence["term_end"],
        "since_time": e["recorded_at"],
        "until_time": None,
    }


def aggregate_holdings(
    app: MarketLedger,
    events: list[CanonicalEvent],
    listing_id: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
) -> set[tuple[str, str, bool, str | None]]:
    """(right, holder, exclusive, licensing trade) as the ``Listing`` aggregate itself saw
    them at its last version within the bound."""
    versions = [
        e["version"]
        for e in events
        if e["aggregate_id"] == listing_id
        and (as_of_position is None or e["position"] <= as_of_position)
        and (as_of_time is None or e["recorded_at"] <= as_of_time)
    ]
    if not versions:
        return set()
    listing: Any = app.repository.get(UUID(listing_id), version=max(versions))
    assert isinstance(listing, Listing)
    held: set[tuple[str, str, bool, str | None]]
    held = {(right.name, holder, True, None) for right, holder in listing.holdings.items()}
    for licence in listing.licences.values():
        ended = licence.term_end is not None and canonical(licence.term_end) <= (as_of_time or "")
        if as_of_time is not None and ended:
            continue
        held |= {(r.name, licence.licensee_id, False, licence.trade_id) for r in licence.rights}
    return held


def summary(holdings: list[Holding]) -> set[tuple[str, str, bool, str | None]]:
    """What the aggregate keeps of the holdings: a licence only if it includes OPERATE."""
    operating = {h.via_trade_id for h in holdings if not h.exclusive and h.right == "OPERATE"}
    return {
        (h.right, h.holder_id, h.exclusive, None if h.exclusive else h.via_trade_id)
        for h in holdings
        if h.exclusive or h.via_trade_id in operating
    }


def assert_ownership_as_of_agrees(
    app: MarketLedger,
    manager: ProjectionManager,
    listings: list[str],
    rng: random.Random,
    samples: int,
) -> int:
    """``ownership_at`` equals the reference fold and the aggregates, at random positions
    and times; returns how many reads it compared."""
    events = business_events(app)
    t = manager.live("ownership").tables
    bounds: list[tuple[int | None, str | None]] = [(None, None)]
    bounds += [(p, None) for p in sample_positions(rng, app.head_position(), samples)]
    bounds += [(None, at) for at in sample_times(rng, events, samples)]
    compared = 0
    with manager.db.transaction() as tx:
        for listing_id in listings:
            for position, at in bounds:
                holdings = ownership_at(tx, t, listing_id, position, at)
                expected = reference_holdings(events, listing_id, position, at)
                assert holdings == expected, (listing_id, position, at)
                assert summary(holdings) == aggregate_holdings(
                    app, events, listing_id, position, at
                )
                compared += 1
    return compared


# --- the examples ----------------------------------------------------------------------


@pytest.fixture
def manager(memory_app: MarketLedger) -> Iterator[ProjectionManager]:
    manager = open_manager(memory_app, SqliteDatabase(":memory:"))
    yield manager
    manager.db.close()


def holdings_of(manager: ProjectionManager, listing_id: str, **bounds: Any) -> list[Holding]:
    manager.catch_up()
    t = manager.live("ownership").tables
    with manager.db.transaction() as tx:
        return ownership_at(tx, t, listing_id, **bounds)


def test_a_submitted_listing_gives_its_provider_an_exclusive_holding_of_each_right(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.submit(rights=("HOLD", "OPERATE"))
    submitted = last_position(market.app, "ListingSubmitted")

    holdings = holdings_of(manager, listing_id)

    assert [h.right for h in holdings] == ["HOLD", "OPERATE"]
    for h in holdings:
        assert h.holder_id == market.ids["provider"]
        assert h.exclusive
        assert (h.since_position, h.until_position, h.via_trade_id) == (submitted, None, None)
        assert h.since_time == canonical(market.clock.now())
        assert h.term_end is None


def test_a_transfer_ends_the_sellers_holding_and_begins_the_buyers(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.listed()
    before = market.head
    trade_id = market.sell(
        listing_id, conveyance="TRANSFER", rights=("HOLD",), term_start=None, term_end=None
    )
    moved = last_position(market.app, "RightsTransferred")

    hold = by_right(holdings_of(manager, listing_id))["HOLD"]
    history = by_right(holdings_of(manager, listing_id, include_ended=True))["HOLD"]
    earlier = by_right(holdings_of(manager, listing_id, as_of_position=before))["HOLD"]

    assert [(h.holder_id, h.via_trade_id, h.exclusive) for h in hold] == [
        (market.ids["buyer"], trade_id, True)
    ]
    assert hold[0].since_position == moved
    provider, buyer = history
    assert provider.holder_id == market.ids["provider"]
    assert provider.until_position == moved
    assert provider.until_time == buyer.since_time
    assert [h.holder_id for h in earlier] == [market.ids["provider"]]
    assert earlier[0].until_position is None, "the end was not known yet"


def test_a_licence_adds_a_non_exclusive_holder_for_its_term_until_cancelled(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.listed()
    term_end = market.later(30)
    trade_id = market.sell(listing_id, rights=("PROCESS_USE",), term_end=term_end)
    licensed = last_position(market.app, "RightsLicensed")

    use = by_right(holdings_of(manager, listing_id))["PROCESS_USE"]
    market.run(c.CancelTrade(request_id=rid(), trade_id=trade_id))
    after = by_right(holdings_of(manager, listing_id))["PROCESS_USE"]

    assert [(h.holder_id, h.exclusive) for h in use] == [
        (market.ids["provider"], True),
        (market.ids["buyer"], False),
    ]
    assert (use[1].via_trade_id, use[1].term_end) == (trade_id, canonical(term_end))
    assert [h.holder_id for h in after] == [market.ids["provider"]]
    during = holdings_of(manager, listing_id, as_of_position=licensed)
    assert market.ids["buyer"] in {h.holder_id for h in during}


def test_as_of_a_time_a_licence_whose_term_had_ended_is_not_held(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.listed()
    term_end = market.later(3)
    market.sell(listing_id, rights=("PROCESS_USE",), term_end=term_end)

    def licensees(at: datetime) -> set[str]:
        holdings = holdings_of(manager, listing_id, as_of_time=canonical(at))
        return {h.holder_id for h in holdings if not h.exclusive}

    assert licensees(term_end - timedelta(microseconds=1)) == {market.ids["buyer"]}
    assert licensees(term_end) == set()
    assert licensees(market.clock.now() - timedelta(seconds=1)) == set(), "not licensed yet"
    held = holdings_of(manager, listing_id)
    assert market.ids["buyer"] in {h.holder_id for h in held}, "position bounds keep it"


def test_a_listing_unknown_to_the_projection_has_no_holders(
    market: Market, manager: ProjectionManager
) -> None:
    market.listed()
    assert holdings_of(manager, "00000000-0000-0000-0000-000000000000") == []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    steps=history_steps(),
    batch_size=st.sampled_from((1, 3, 7, 2000)),
    rebuild_batch_size=st.sampled_from((2, 5, 2000)),
    catch_up_every=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_incremental_ownership_equals_a_rebuild_and_agrees_with_the_aggregates_as_of(
    steps: list[Step], batch_size: int, rebuild_batch_size: int, catch_up_every: int, seed: int
) -> None:
    clock = FakeClock()
    history = new_history(build_application(Settings(database_url="memory:"), clock), clock)
    manager = open_manager(history.market.app, SqliteDatabase(":memory:"), batch_size)

    history.play(steps, manager, catch_up_every)

    assert_ownership_as_of_agrees(
        history.market.app, manager, history.listings, random.Random(seed), samples=6
    )
    assert_rebuild_matches(manager, "ownership", rebuild_batch_size)
