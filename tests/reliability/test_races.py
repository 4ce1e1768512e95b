"""Races across two ``ledger serve`` processes on one PostgreSQL schema.

Each round sends conflicting commands at the same moment, split over both servers:
TRANSFER sales of a listing's HOLD (exactly one may win; every loser is told why), and
grants racing the suspension of their grantee or of their listing (a grant may win
the race, but then the suspension must catch it: none ends ACTIVE on a suspended one).
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from ledger.application.app import Actor, MarketLedger
from ledger.application.markers import entity_id
from ledger.bootstrap import build_application
from ledger.client import LedgerCallError
from ledger.domain.listing import Listing
from ledger.domain.values import Right
from ledger.settings import Settings
from ledger.v1 import (
    access_pb2,
    audit_pb2,
    common_pb2,
    listing_pb2,
    participant_pb2,
    trade_pb2,
)
from tests.reliability.support import (
    SCALE,
    Identity,
    Market,
    MarketWriter,
    ServeProcess,
    Stubs,
    connect,
    grant_request,
    make_identity,
    report,
    rid,
    transfer_request,
)

pytestmark = pytest.mark.postgres

ROUNDS = 20 * SCALE
RACERS = 6
GRANT_RACERS = 2
CALL_TIMEOUT_S = 20.0
BARRIER_TIMEOUT_S = 30.0
ADMIN = Actor("reliability-test", "admin")


@dataclass(frozen=True)
class Result:
    """How one racing call ended: OK, or its status code and ErrorInfo reason."""

    code: grpc.StatusCode
    reason: str = ""
    domain: str = ""
    response: Message | None = None

    @property
    def won(self) -> bool:
        return self.code is grpc.StatusCode.OK

    @property
    def told_why(self) -> bool:
        """A loser learns it lost to a rule (with the rule's reason) or to a race."""
        if self.code is grpc.StatusCode.ABORTED:
            return True
        return (
            self.code is grpc.StatusCode.FAILED_PRECONDITION
            and bool(self.reason)
            and self.domain == "ledger.v1"
        )


@dataclass
class Arena:
    """Both servers' stubs, the market, and a pool of racing threads."""

    stubs: tuple[Stubs, Stubs]
    identity: Identity
    market: Market
    app: MarketLedger
    pool: ThreadPoolExecutor

    @property
    def writer(self) -> MarketWriter:
        return MarketWriter(self.stubs[0], self.identity.admin)

    def race(self, calls: list[Callable[[Stubs], Message]]) -> list[Result]:
        """Runs the calls at the same moment, call ``i`` on server ``i % 2``."""
        barrier = threading.Barrier(len(calls))

        def run(i: int) -> Result:
            barrier.wait(BARRIER_TIMEOUT_S)
            return attempt(lambda: calls[i](self.stubs[i % 2]))

        return list(self.pool.map(run, range(len(calls))))

    def holder_of_hold(self, listing_id: str) -> str:
        """HOLD's holder in the listing as stored (read in this process)."""
        listing = self.app.get(Listing, listing_id, ADMIN)
        return listing.holdings[Right.HOLD]

    def current_holders_of_hold(self, listing_id: str) -> list[tuple[str, str]]:
        """HOLD's current holders and the trades that made them so, as the ownership
        projection of the other server tells them."""
        response = self.call(
            self.stubs[1].audit.GetOwnership, audit_pb2.GetOwnershipRequest(listing_id=listing_id)
        )
        assert isinstance(response, audit_pb2.GetOwnershipResponse)
        return [
            (h.holder_id, h.via_trade_id)
            for rights in response.rights
            if rights.right == common_pb2.RIGHT_HOLD
            for h in rights.holders
            if not h.HasField("until_position")
        ]

    def call(self, method: Callable[..., Message], request: Message) -> Message:
        return method(request, metadata=self.identity.admin, timeout=CALL_TIMEOUT_S)

    def rpc(self, service: str, method: str, request: Message) -> Callable[[Stubs], Message]:
        """Sends ``request`` to ``service.method`` of whichever server it is given."""

        def send(stubs: Stubs) -> Message:
            return self.call(getattr(getattr(stubs, service), method), request)

        return send


def attempt(send: Callable[[], Message]) -> Result:
    try:
        response = send()
    except grpc.RpcError as error:
        decoded = LedgerCallError.from_rpc_error(error, "race")
        return Result(decoded.code, decoded.reason, decoded.domain)
    return Result(grpc.StatusCode.OK, response=response)


def until_applied(send: Callable[[], Message]) -> Message:
    """Sends one request until it is applied: the same request_id after a lost race."""
    for _ in range(10):
        result = attempt(send)
        if result.won:
            assert result.response is not None
            return result.response
        assert result.code is grpc.StatusCode.ABORTED, result
    pytest.fail("a suspension lost ten races in a row")


@pytest.fixture
def arena(pg_schema_url: str, tmp_path: Path) -> Iterator[Arena]:
    identity = make_identity(tmp_path / "identity")
    servers = [ServeProcess(pg_schema_url, identity, tmp_path, name) for name in ("a", "b")]
    app = build_application(Settings(database_url=pg_schema_url))
    try:
        for server in servers:
            server.start()
        with (
            connect(servers[0].address) as a,
            connect(servers[1].address) as b,
            ThreadPoolExecutor(RACERS + 1, thread_name_prefix="racer") as pool,
        ):
            market = MarketWriter(a, identity.admin).market(
                identity, buyers=RACERS, listings=1, grants=0
            )
            yield Arena((a, b), identity, market, app, pool)
        for server in servers:
            server.stop()
    finally:
        for server in servers:
            server.close()
        app.close()


def test_racing_transfers_of_hold_across_two_servers_have_exactly_one_winner(
    arena: Arena, pytestconfig: pytest.Config
) -> None:
    m = arena.market
    losses: Counter[str] = Counter()
    wins_per_server: Counter[int] = Counter()
    for _ in range(ROUNDS):
        listing_id = arena.writer.listed(m)
        requests = [transfer_request(listing_id, m.provider, buyer) for buyer in m.buyers]
        results = arena.race([arena.rpc("trades", "RecordSale", r) for r in requests])
        winners = [i for i, r in enumerate(results) if r.won]
        assert len(winners) == 1, results
        winner = winners[0]
        wins_per_server[winner % 2] += 1
        for i, result in enumerate(results):
            if i == winner:
                continue
            assert result.told_why, result
            if result.code is grpc.StatusCode.FAILED_PRECONDITION:
                assert result.reason.startswith("R10_"), result
            losses[result.reason or result.code.name] += 1
            # A loser wrote nothing: its trade does not exist.
            trade_id = str(entity_id("trade", requests[i].request_id))
            get = arena.rpc("trades", "GetTrade", trade_pb2.GetTradeRequest(trade_id=trade_id))
            lost = attempt(functools.partial(get, arena.stubs[1]))
            assert lost.code is grpc.StatusCode.NOT_FOUND, lost
        assert arena.holder_of_hold(listing_id) == m.buyers[winner]
        won = results[winner].response
        assert isinstance(won, trade_pb2.RecordSaleResponse)
        assert won.trade.buyer_id == m.buyers[winner]
        assert arena.current_holders_of_hold(listing_id) == [(m.buyers[winner], won.trade.id)]
    report(
        pytestconfig,
        "races/transfers",
        rounds=ROUNDS,
        racers=RACERS,
        winners_per_round=1,
        wins_by_server={"a": wins_per_server[0], "b": wins_per_server[1]},
        losses=dict(losses),
    )


def grant_state(arena: Arena, grant_id: str) -> int:
    response = arena.call(
        arena.stubs[1].access.GetGrant, access_pb2.GetGrantRequest(grant_id=grant_id)
    )
    assert isinstance(response, access_pb2.GetGrantResponse)
    return int(response.grant.state)


def race_grants_against(
    arena: Arena,
    trade_id: str,
    suspend: Callable[[Stubs], Message],
    round_number: int,
    refusals: Counter[str],
) -> list[str]:
    """Races GRANT_RACERS grants of ``trade_id`` against ``suspend`` (on alternating
    servers); the suspension is then completed if it lost a race. Returns the ids of the
    grants that were made, and counts why the others were refused."""
    requests = [grant_request(trade_id) for _ in range(GRANT_RACERS)]
    calls = [arena.rpc("access", "GrantAccess", r) for r in requests]
    # The suspension goes first or last, so it runs on either server over the rounds.
    calls.insert(0 if round_number % 2 else len(calls), suspend)
    suspension_at = 0 if round_number % 2 else len(calls) - 1
    results = arena.race(calls)
    suspension = results.pop(suspension_at)
    if not suspension.won:
        assert suspension.code is grpc.StatusCode.ABORTED, suspension
        refusals["suspension ABORTED, sent again"] += 1
        until_applied(functools.partial(suspend, arena.stubs[round_number % 2]))
    granted = []
    for request, result in zip(requests, results, strict=True):
        if result.won:
            granted.append(str(entity_id("grant", request.request_id)))
        else:
            assert result.told_why, result
            refusals[result.reason or result.code.name] += 1
            grant_id = str(entity_id("grant", request.request_id))
            get = arena.rpc("access", "GetGrant", access_pb2.GetGrantRequest(grant_id=grant_id))
            assert attempt(functools.partial(get, arena.stubs[0])).code is grpc.StatusCode.NOT_FOUND
    return granted


def test_grants_racing_the_suspension_of_their_grantee_never_end_active(
    arena: Arena, pytestconfig: pytest.Config
) -> None:
    m = arena.market
    granted_first: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
    for n in range(ROUNDS):
        grantee = arena.writer.register(f"Grantee {n}", common_pb2.PARTICIPANT_ROLE_BUYER)
        trade_id = arena.writer.licence(m.listings[0], m.provider, grantee)
        suspend = participant_pb2.SuspendParticipantRequest(
            request_id=rid(), participant_id=grantee, reason_note="race"
        )
        granted = race_grants_against(
            arena, trade_id, arena.rpc("participants", "SuspendParticipant", suspend), n, refusals
        )
        participant = arena.call(
            arena.stubs[0].participants.GetParticipant,
            participant_pb2.GetParticipantRequest(participant_id=grantee),
        )
        assert isinstance(participant, participant_pb2.GetParticipantResponse)
        assert participant.participant.state == participant_pb2.PARTICIPANT_STATE_SUSPENDED
        for grant_id in granted:
            assert grant_state(arena, grant_id) == access_pb2.GRANT_STATE_SUSPENDED, grant_id
        granted_first[len(granted)] += 1
    report(
        pytestconfig,
        "races/grant-vs-suspend-participant",
        rounds=ROUNDS,
        rounds_by_grants_won_before_suspension=dict(sorted(granted_first.items())),
        grant_refusals=dict(refusals),
        active_on_suspended=0,
    )


def test_grants_racing_the_suspension_of_their_listing_never_end_active(
    arena: Arena, pytestconfig: pytest.Config
) -> None:
    m = arena.market
    granted_first: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
    for n in range(ROUNDS):
        listing_id = arena.writer.listed(m)
        trade_id = arena.writer.licence(listing_id, m.provider, m.buyers[n % len(m.buyers)])
        suspend = listing_pb2.SuspendListingRequest(
            request_id=rid(), listing_id=listing_id, reason_note="race"
        )
        granted = race_grants_against(
            arena, trade_id, arena.rpc("listings", "SuspendListing", suspend), n, refusals
        )
        listing = arena.call(
            arena.stubs[0].listings.GetListing, listing_pb2.GetListingRequest(listing_id=listing_id)
        )
        assert isinstance(listing, listing_pb2.GetListingResponse)
        assert listing.listing.state == listing_pb2.LISTING_STATE_SUSPENDED
        for grant_id in granted:
            assert grant_state(arena, grant_id) == access_pb2.GRANT_STATE_SUSPENDED, grant_id
        granted_first[len(granted)] += 1
    report(
        pytestconfig,
        "races/grant-vs-suspend-listing",
        rounds=ROUNDS,
        rounds_by_grants_won_before_suspension=dict(sorted(granted_first.items())),
        grant_refusals=dict(refusals),
        active_on_suspended=0,
    )
