"""Batches: many commands in one transaction, each as if it had run alone; and group
commit, which batches the single commands that arrive together."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import pytest

from ledger.application import commands as c
from ledger.application.app import Decision, Outcome
from ledger.application.group_commit import GroupCommit
from ledger.application.markers import RequestMarker, entity_id, request_marker_id
from ledger.application.working_set import CleanCache
from ledger.domain.base import Act, event_type
from ledger.domain.errors import AlreadyExists, NotFound, RuleViolation
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import TradeState
from tests.market import Market, rid


def batch(market: Market, *commands: c.Command) -> list[Outcome | Exception]:
    market.tick()
    return market.app.execute_batch([(command, market.actor) for command in commands])


def written_since(market: Market, position: int) -> list[tuple[int, str, str]]:
    """(position, event type, request_id) of each event after ``position``."""
    return [
        (n.id, event_type(n.topic), market.app.mapper.to_domain_event(n).request_id)  # type: ignore[attr-defined]
        for n in market.app.recorder.select_notifications(position + 1, 10_000)
    ]


def sale_and_grant(market: Market, listing_id: str) -> tuple[c.RecordSale, c.GrantAccess]:
    sale = market.sale_command(listing_id)
    trade_id = str(entity_id("trade", sale.request_id))
    return sale, market.grant_command(trade_id)


def test_a_command_sees_what_earlier_commands_of_its_batch_did(market: Market) -> None:
    listing_id = market.listed()
    sale, grant = sale_and_grant(market, listing_id)
    settle = c.SettleTrade(request_id=rid(), trade_id=grant.trade_id, settlement_ref="S-1")
    before = market.head
    results = batch(market, sale, grant, settle)
    assert all(isinstance(r, Outcome) for r in results), results
    outcomes = [r for r in results if isinstance(r, Outcome)]
    positions = [o.position for o in outcomes]
    assert positions == sorted(positions)
    assert len(set(positions)) == 3
    # Each command's events come after those of the commands before it, its marker last.
    written = written_since(market, before)
    order = [request_id for _, _, request_id in written]
    assert order == sorted(order, key=[sale.request_id, grant.request_id, settle.request_id].index)
    for outcome, command in zip(outcomes, (sale, grant, settle), strict=True):
        last = max(p for p, _, r in written if r == command.request_id)
        assert outcome.position == last
    trade = market.app.get(Trade, grant.trade_id, market.actor)
    assert trade.state is TradeState.SETTLED


def test_each_outcome_shows_the_resource_as_its_own_command_left_it(market: Market) -> None:
    sale, grant = sale_and_grant(market, market.listed())
    sold, _granted = batch(market, sale, grant)
    assert isinstance(sold, Outcome)
    assert sold.resource.version == 1
    assert isinstance(sold.resource, Trade)
    assert not sold.resource.grant_ids
    assert market.app.get(Trade, grant.trade_id, market.actor).version == 2


def test_a_failed_command_leaves_no_trace_and_the_batch_goes_on(market: Market) -> None:
    listing_id = market.listed()
    sale, grant = sale_and_grant(market, listing_id)
    unknown = market.grant_command(str(entity_id("trade", rid())))
    other_sale = market.sale_command(listing_id)
    before = market.head
    results = batch(market, sale, unknown, other_sale, grant)
    assert isinstance(results[1], NotFound)
    assert [isinstance(r, Outcome) for r in results] == [True, False, True, True]
    written = {request_id for _, _, request_id in written_since(market, before)}
    assert written == {sale.request_id, other_sale.request_id, grant.request_id}


def test_a_command_that_fails_after_changing_state_is_undone_for_the_rest(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing_id = market.listed()
    sale, grant = sale_and_grant(market, listing_id)
    settle = c.SettleTrade(request_id=rid(), trade_id=grant.trade_id, settlement_ref="S-1")
    settle_for_real = market.app._settle_trade
    rejected: list[tuple[str, str | None]] = []
    market.app.rejection_listeners.append(lambda rule, venue: rejected.append((rule, venue)))

    def settles_then_fails(command: c.SettleTrade, act: Act) -> Decision:
        settle_for_real(command, act)  # the trade is SETTLED in the working state...
        raise RuleViolation("R11", "TEST_REFUSED", "refused after the change")

    monkeypatch.setattr(market.app, "_settle_trade", settles_then_fails)
    before = market.head
    results = batch(market, sale, settle, grant)
    assert isinstance(results[1], RuleViolation)
    granted = results[2]
    assert isinstance(granted, Outcome), granted  # ...but the grant saw it EXECUTED
    trade = market.app.get(Trade, grant.trade_id, market.actor)
    assert trade.state is TradeState.EXECUTED
    assert trade.version == 2  # created, then the grant: no settlement
    kinds = [kind for _, kind, _ in written_since(market, before)]
    assert "TradeSettled" not in kinds
    exchange = market.ids["exchange"]
    assert rejected == [("R11", exchange)]


def test_a_request_repeated_in_one_batch_replays_the_first(market: Market) -> None:
    sale = market.sale_command(market.listed())
    first, again = batch(market, sale, sale)
    assert isinstance(first, Outcome)
    assert isinstance(again, Outcome)
    assert again.replayed
    assert not first.replayed
    assert (again.position, again.resource.id) == (first.position, first.resource.id)


def test_a_request_id_reused_in_one_batch_for_another_request_already_exists(
    market: Market,
) -> None:
    sale = market.sale_command(market.listed())
    other = market.sale_command(sale.listing_id, request_id=sale.request_id, scenario="other")
    before = market.head
    first, reused = batch(market, sale, other)
    assert isinstance(first, Outcome)
    assert isinstance(reused, AlreadyExists)
    written = {request_id for _, _, request_id in written_since(market, before)}
    assert written == {sale.request_id}


def test_a_batch_of_failures_writes_nothing(market: Market) -> None:
    before = market.head
    unknown = market.grant_command(str(entity_id("trade", rid())))
    results = batch(market, unknown, unknown)
    assert all(isinstance(r, NotFound) for r in results)
    assert market.head == before


def test_a_single_command_runs_alone_when_no_batch_is_under_way() -> None:
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    group: GroupCommit[int, int] = GroupCommit(run)
    assert group.submit([1]) == [1]
    assert group.submit([2, 3]) == [2, 3]
    assert batches == [[1], [2, 3]]


def test_commands_that_wait_for_a_batch_share_the_next_one() -> None:
    first_running = threading.Event()
    release = threading.Event()
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            first_running.set()
            release.wait(10)
        return [10 * i for i in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    results: dict[int, list[int]] = {}

    def submit(n: int) -> None:
        results[n] = group.submit([n])

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert first_running.wait(10)
    waiting = [threading.Thread(target=submit, args=(n,)) for n in range(1, 6)]
    for t in waiting:
        t.start()
    while sum(len(q.items) for q in group._queue) < 5:  # all five queued behind the first
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *waiting]:
        t.join(10)
    assert results == {n: [10 * n] for n in range(6)}
    assert len(batches) == 2
    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2, 3, 4, 5]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    first_running = threading.Event()
    release = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            first_running.set()
            release.wait(10)
        if len(calls) == 2:
            raise OSError("the store went away")
        return items

    group: GroupCommit[int, int] = GroupCommit(run)
    outcomes: dict[int, Any] = {}

    def submit(n: int) -> None:
        try:
            outcomes[n] = group.submit([n])
        except OSError as e:
            outcomes[n] = e

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert first_running.wait(10)
    failing = [threading.Thread(target=submit, args=(n,)) for n in (1, 2)]
    for t in failing:
        t.start()
    while sum(len(q.items) for q in group._queue) < 2:
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *failing]:
        t.join(10)
    assert outcomes[0] == [0]
    assert isinstance(outcomes[1], OSError)
    assert isinstance(outcomes[2], OSError)
    assert group.submit([3]) == [3]


def test_a_group_never_exceeds_its_item_limit() -> None:
    first_running = threading.Event()
    release = threading.Event()
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            first_running.set()
            release.wait(10)
        return items

    group: GroupCommit[int, int] = GroupCommit(run, max_items=4)
    threads = [threading.Thread(target=group.submit, args=([0],))]
    threads[0].start()
    assert first_running.wait(10)
    more = [threading.Thread(target=group.submit, args=([n, n],)) for n in range(1, 5)]
    for t in more:
        t.start()
    while sum(len(q.items) for q in group._queue) < 8:
        threading.Event().wait(0.01)
    release.set()
    for t in [*threads, *more]:
        t.join(10)
    assert sizes == [1, 4, 4]


def test_with_two_lanes_a_batch_is_decided_while_another_is_under_way() -> None:
    both_running = threading.Barrier(2, timeout=10)
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        both_running.wait()  # each waits for the other: they must run at once
        return items

    group: GroupCommit[str, str] = GroupCommit(run, lanes=2, keys=lambda item: [item])
    results: dict[str, list[str]] = {}
    threads = [
        threading.Thread(target=lambda k=key: results.update({k: group.submit([k])}))
        for key in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"a": ["a"], "b": ["b"]}
    assert sorted(map(tuple, batches)) == [("a",), ("b",)]


def test_a_submission_naming_a_key_of_a_batch_under_way_waits_for_it() -> None:
    first_running = threading.Event()
    release = threading.Event()
    running = 0
    most_at_once = 0
    batches: list[list[str]] = []
    lock = threading.Lock()

    def run(items: list[str]) -> list[str]:
        nonlocal running, most_at_once
        with lock:
            batches.append(list(items))
            running += 1
            most_at_once = max(most_at_once, running)
        if len(batches) == 1:
            first_running.set()
            release.wait(10)
        with lock:
            running -= 1
        return items

    group: GroupCommit[str, str] = GroupCommit(run, lanes=2, keys=lambda item: [item[0]])
    first = threading.Thread(target=group.submit, args=(["x1"],))
    first.start()
    assert first_running.wait(10)
    same = threading.Thread(target=group.submit, args=(["x2"],))
    same.start()
    while not group._queue:  # queued behind the batch that names x
        threading.Event().wait(0.01)
    other = group.submit(["y1"])  # names nothing under way: runs in the second lane
    assert other == ["y1"]
    assert [b for b in batches if b != ["x1"]] == [["y1"]]
    release.set()
    for t in (first, same):
        t.join(10)
    assert batches == [["x1"], ["y1"], ["x2"]]
    assert most_at_once == 2


def test_a_batch_on_cached_aggregates_reads_the_store_once(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing_id = market.listed()
    assert all(isinstance(r, Outcome) for r in batch(market, *sale_and_grant(market, listing_id)))
    recorder = market.app.recorder
    reads: list[int] = []
    select = recorder.select_events_after  # type: ignore[attr-defined]

    def counted(after: Any) -> Any:
        reads.append(len(after))
        return select(after)

    monkeypatch.setattr(recorder, "select_events_after", counted)
    results = batch(market, *sale_and_grant(market, listing_id))
    assert all(isinstance(r, Outcome) for r in results), results
    # The listing, its exchange and provider, the parties and the new ids: one read.
    assert len(reads) == 1


def test_the_cache_of_stored_aggregates_is_bounded_and_keeps_no_request_markers(
    market: Market,
) -> None:
    listing_id = market.listed()
    sale, grant = sale_and_grant(market, listing_id)
    batch(market, sale, grant)
    trade = market.app.get(Trade, grant.trade_id, market.actor)
    marker: RequestMarker = market.app.repository.get(request_marker_id(sale.request_id))
    cache = CleanCache(2, uncached=(RequestMarker,))
    cache.put(marker)
    assert len(cache) == 0
    listing: Listing = market.app.repository.get(UUID(trade.listing_id))
    for aggregate in (trade, listing, trade):
        cache.put(aggregate)
    assert cache.get(trade.id) is trade
    assert cache.get(listing.id) is listing
    other: Participant = market.app.repository.get(UUID(trade.buyer_id))
    cache.put(other)  # the least recently used (the trade) goes
    assert len(cache) == 2
    assert cache.get(trade.id) is None


def test_an_undone_command_leaves_no_trace_for_later_batches_either(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale, grant = sale_and_grant(market, market.listed())
    settle = c.SettleTrade(request_id=rid(), trade_id=grant.trade_id, settlement_ref="S-1")
    settle_for_real = market.app._settle_trade

    def settles_then_fails(command: c.SettleTrade, act: Act) -> Decision:
        settle_for_real(command, act)
        raise RuleViolation("R11", "TEST_REFUSED", "refused after the change")

    # The sale creates the trade; the failing settlement changes it and is undone, and
    # no later command of the batch touches the trade again.
    monkeypatch.setattr(market.app, "_settle_trade", settles_then_fails)
    sold, refused = batch(market, sale, settle)
    assert isinstance(sold, Outcome)
    assert isinstance(refused, RuleViolation)
    monkeypatch.undo()
    again = c.SettleTrade(request_id=rid(), trade_id=grant.trade_id, settlement_ref="S-2")
    settled = batch(market, again)[0]
    assert isinstance(settled, Outcome), settled
    assert settled.resource.version == 2
    trade = market.app.get(Trade, grant.trade_id, market.actor)
    assert trade.state is TradeState.SETTLED
    assert trade.version == 2
