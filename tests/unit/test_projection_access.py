"""The access projection: ``CheckAccess`` at the head and as of any past moment."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application.app import MarketLedger
from ledger.application.events import CanonicalEvent
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.grant import AccessGrant
from ledger.domain.values import GrantState, covers
from ledger.projections.access import Decision, check_access
from ledger.projections.db import SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings
from tests.market import Market, rid
from tests.unit.test_projection_ownership import (
    GRANTEES,
    MODES,
    SCENARIOS,
    History,
    Step,
    assert_rebuild_matches,
    business_events,
    canonical,
    history_steps,
    last_position,
    new_history,
    open_manager,
    sample_positions,
    sample_times,
)

# --- the reference: the grant aggregates themselves ----------------------------------


def reference_decision(
    app: MarketLedger,
    events: list[CanonicalEvent],
    grantee_id: str,
    listing_id: str,
    mode: str,
    scenario: str,
    at: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
) -> Decision:
    """The decision from each ``AccessGrant`` aggregate at its last version within the
    bound, and the rule of its latest suspension."""
    seen: dict[str, tuple[int, int, str]] = {}  # grant -> (created at, version, rule)
    for e in events:
        if e["aggregate_type"] != "AccessGrant":
            continue
        if as_of_position is not None and e["position"] > as_of_position:
            continue
        if as_of_time is not None and e["recorded_at"] > as_of_time:
            continue
        created, _, rule = seen.get(e["aggregate_id"], (e["position"], 0, ""))
        if e["type"] == "AccessSuspended":
            rule = e["payload"]["rule"]
        seen[e["aggregate_id"]] = (created, e["version"], rule)
    grants: list[tuple[AccessGrant, int, str]] = []
    for grant_id, (created, version, rule) in seen.items():
        grant: Any = app.repository.get(UUID(grant_id), version=version)
        assert isinstance(grant, AccessGrant)
        if grant.grantee_id == grantee_id and grant.listing_id == listing_id:
            grants.append((grant, created, rule))
    if not grants:
        return Decision(allowed=False, grant_id="", reason="NO_GRANT")
    grants = [g for g in grants if g[0].scenario == scenario]
    if not grants:
        return Decision(allowed=False, grant_id="", reason="R06_SCENARIO_NOT_GRANTED")
    grants = [g for g in grants if g[0].delivery_mode.name == mode]
    if not grants:
        return Decision(allowed=False, grant_id="", reason="R11_DELIVERY_MODE_NOT_GRANTED")
    moment = datetime.fromisoformat(at)
    verdicts = []
    for grant, created, rule in grants:
        if grant.status is GrantState.REVOKED:
            verdict = (0, "R16_GRANT_REVOKED")
        elif grant.status is GrantState.SUSPENDED:
            names = {"R14": "R14_GRANTEE_SUSPENDED", "R15": "R15_LISTING_SUSPENDED"}
            verdict = (1, names.get(rule, "GRANT_SUSPENDED"))
        elif not covers(grant.valid_from, grant.valid_until, moment):
            verdict = (2, "R11_OUTSIDE_VALIDITY")
        elif grant.usage_limit is not None and grant.units_used >= grant.usage_limit:
            verdict = (3, "R18_USAGE_LIMIT_REACHED")
        else:
            verdict = (4, "")
        verdicts.append((verdict[0], created, verdict[1], str(grant.id)))
    # The grant that gets furthest through the checks decides; the newest on a tie.
    _, _, reason, grant_id = max(verdicts)
    if reason:
        return Decision(allowed=False, grant_id="", reason=reason)
    return Decision(allowed=True, grant_id=grant_id, reason="")


def assert_access_as_of_agrees(
    history: History, manager: ProjectionManager, rng: random.Random, samples: int, checks: int
) -> int:
    """``check_access`` equals the reference for random questions at random positions and
    times; returns how many it compared."""
    app = history.market.app
    events = business_events(app)
    grants = [e for e in events if e["type"] == "AccessGranted"]
    moments = sorted(
        {e["recorded_at"] for e in events}
        | {g["payload"]["valid_from"] for g in grants}
        | {g["payload"]["valid_until"] for g in grants if g["payload"]["valid_until"]}
    )
    # Mostly bounds after the first grant: before it, every answer is NO_GRANT.
    first = min((g["position"] for g in grants), default=0)
    bounds: list[tuple[int | None, str | None]] = [(None, None)]
    bounds += [(p, None) for p in sample_positions(rng, app.head_position(), samples, first)]
    later = [e for e in events if e["position"] >= first]
    bounds += [(None, at) for at in sample_times(rng, later, samples)]
    listings, grantees = history.listings, [history.party(name) for name in GRANTEES]
    t = manager.live("access").tables
    compared = 0
    with manager.db.transaction() as tx:
        for position, as_of_time in bounds:
            for _ in range(checks):
                if grants and rng.random() < 0.7:
                    # Mostly about an existing grant, so that most answers are not NO_GRANT.
                    p = rng.choice(grants)["payload"]
                    grantee, listing = p["grantee_id"], p["listing_id"]
                    mode = p["delivery_mode"] if rng.random() < 0.8 else rng.choice(MODES)
                    scenario = p["scenario"] if rng.random() < 0.8 else rng.choice(SCENARIOS)
                else:
                    grantee, listing = rng.choice(grantees), rng.choice(listings)
                    mode, scenario = rng.choice(MODES), rng.choice(SCENARIOS)
                at = rng.choice(moments)
                if rng.random() < 0.3:
                    at = canonical(datetime.fromisoformat(at) - timedelta(microseconds=1))
                question = (grantee, listing, mode, scenario, at, position, as_of_time)
                assert check_access(tx, t, *question) == reference_decision(
                    app, events, *question
                ), question
                compared += 1
    return compared


# --- the examples ----------------------------------------------------------------------


@pytest.fixture
def manager(memory_app: MarketLedger) -> Iterator[ProjectionManager]:
    manager = open_manager(memory_app, SqliteDatabase(":memory:"))
    yield manager
    manager.db.close()


def check(
    manager: ProjectionManager,
    market: Market,
    listing_id: str,
    grantee: str = "buyer",
    mode: str = "API",
    scenario: str = "credit-risk-scoring",
    at: datetime | None = None,
    **bounds: Any,
) -> Decision:
    manager.catch_up()
    t = manager.live("access").tables
    moment = canonical(at or market.clock.now())
    with manager.db.transaction() as tx:
        return check_access(
            tx, t, market.ids[grantee], listing_id, mode, scenario, moment, **bounds
        )


def test_an_active_grant_allows_the_granted_use(market: Market, manager: ProjectionManager) -> None:
    listing_id, _, grant_id = market.granted()

    assert check(manager, market, listing_id) == Decision(True, grant_id, "")


def test_after_a_revocation_access_is_denied_but_as_of_before_it_allowed(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, _, grant_id = market.granted()
    before, before_time = market.head, market.clock.now()
    market.run(c.RevokeAccess(request_id=rid(), grant_id=grant_id, reason="MISUSE_DETECTED"))

    assert check(manager, market, listing_id) == Decision(False, "", "R16_GRANT_REVOKED")
    assert check(manager, market, listing_id, as_of_position=before).allowed
    assert check(manager, market, listing_id, as_of_time=canonical(before_time)).allowed
    revoked = last_position(market.app, "AccessRevoked")
    assert not check(manager, market, listing_id, as_of_position=revoked).allowed


def test_a_suspended_grant_is_denied_until_it_is_reinstated(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, _, grant_id = market.granted()
    market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id, note="review"))
    suspended = market.head

    denied = check(manager, market, listing_id)
    market.run(c.ReinstateAccess(request_id=rid(), grant_id=grant_id))

    assert denied == Decision(False, "", "GRANT_SUSPENDED")
    assert check(manager, market, listing_id).allowed
    assert check(manager, market, listing_id, as_of_position=suspended) == denied


def test_suspending_the_listing_denies_its_grants_and_reinstating_it_does_not_allow_them(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, _, _ = market.granted()
    before = market.head
    market.run(c.SuspendListing(request_id=rid(), listing_id=listing_id))

    suspended = check(manager, market, listing_id)
    market.run(c.ReinstateListing(request_id=rid(), listing_id=listing_id))

    assert suspended == Decision(False, "", "R15_LISTING_SUSPENDED")
    assert check(manager, market, listing_id) == suspended
    assert check(manager, market, listing_id, as_of_position=before).allowed


def test_suspending_the_grantee_denies_its_grants(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, _, _ = market.granted()
    market.run(c.SuspendParticipant(request_id=rid(), participant_id=market.ids["buyer"]))

    assert check(manager, market, listing_id) == Decision(False, "", "R14_GRANTEE_SUSPENDED")


def test_delisting_revokes_so_access_is_denied_for_good(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, _, _ = market.granted()
    market.run(c.DelistListing(request_id=rid(), listing_id=listing_id))

    assert check(manager, market, listing_id).reason == "R16_GRANT_REVOKED"


def test_a_denial_names_the_first_check_that_fails(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.listed()
    trade_id = market.sell(listing_id)
    valid_from, valid_until = market.later(1), market.later(30)
    market.grant(trade_id, valid_from=valid_from, valid_until=valid_until)
    during = valid_from + timedelta(days=1)

    def reason(**kw: Any) -> str:
        return check(manager, market, listing_id, at=kw.pop("at", during), **kw).reason

    assert reason(grantee="buyer2") == "NO_GRANT"
    assert reason(scenario="clinical-research") == "R06_SCENARIO_NOT_GRANTED"
    assert reason(mode="PRIVACY_COMPUTE") == "R11_DELIVERY_MODE_NOT_GRANTED"
    assert reason(at=valid_from - timedelta(microseconds=1)) == "R11_OUTSIDE_VALIDITY"
    assert reason(at=valid_from) == ""
    assert reason(at=valid_until) == "R11_OUTSIDE_VALIDITY"


def test_a_grant_whose_units_reach_its_limit_is_denied_but_allowed_as_of_before(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id = market.listed()
    grant_id = market.grant(market.sell(listing_id), usage_limit=3)
    use = c.RecordAccessUse(
        request_id=rid(), grant_id=grant_id, delivery_mode="API", scenario="credit-risk-scoring"
    )
    market.run(use)
    one_used = market.head
    market.run(c.RecordAccessUse(**{**use.__dict__, "request_id": rid(), "units": 2}))

    assert check(manager, market, listing_id).reason == "R18_USAGE_LIMIT_REACHED"
    assert check(manager, market, listing_id, as_of_position=one_used).allowed


def test_of_several_grants_the_one_that_allows_decides(
    market: Market, manager: ProjectionManager
) -> None:
    listing_id, trade_id, old = market.granted()
    new = market.grant(trade_id)
    market.run(c.RevokeAccess(request_id=rid(), grant_id=old, reason="CONSENT_WITHDRAWN"))

    assert check(manager, market, listing_id) == Decision(True, new, "")
    market.run(c.SuspendAccess(request_id=rid(), grant_id=new, note="review"))
    assert check(manager, market, listing_id).reason == "GRANT_SUSPENDED", "not the revoked one"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    steps=history_steps(max_size=40),
    batch_size=st.sampled_from((1, 3, 7, 2000)),
    rebuild_batch_size=st.sampled_from((2, 5, 2000)),
    catch_up_every=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_incremental_access_equals_a_rebuild_and_agrees_with_the_aggregates_as_of(
    steps: list[Step], batch_size: int, rebuild_batch_size: int, catch_up_every: int, seed: int
) -> None:
    clock = FakeClock()
    history = new_history(build_application(Settings(database_url="memory:"), clock), clock)
    manager = open_manager(history.market.app, SqliteDatabase(":memory:"), batch_size)

    history.play(steps, manager, catch_up_every)

    assert_access_as_of_agrees(history, manager, random.Random(seed), samples=5, checks=12)
    assert_rebuild_matches(manager, "access", rebuild_batch_size)
