"""The fast event encoder writes exactly the bytes the library's encoder writes."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import JSONTranscoder
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application.transcoder import FastJSONTranscoder
from tests.market import Market, rid


def transcoders() -> tuple[JSONTranscoder, JSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        Application.register_transcodings(Application.__new__(Application), transcoder)
    return library, fast


LIBRARY, FAST = transcoders()

moments = (
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30))]
        ),
    )
    | st.datetimes()
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers()  # beyond 64 bits orjson refuses and the library's encoder writes it
    | st.text()
    | moments
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_any_event_shaped_state_is_written_byte_for_byte_as_the_library_does(
    state: dict[str, Any],
) -> None:
    try:
        expected = LIBRARY.encode(state)
    except UnicodeEncodeError:  # a lone surrogate: neither can write it
        return
    assert FAST.encode(state) == expected
    assert FAST.decode(FAST.encode(state)) == LIBRARY.decode(expected)


def test_every_event_a_market_writes_is_written_as_the_library_does(market: Market) -> None:
    listing_id, trade_id, grant_id = market.granted()
    market.run(c.SuspendAccess(request_id=rid(), grant_id=grant_id, note="check"))
    market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="S-1"))
    market.run(c.DelistListing(request_id=rid(), listing_id=listing_id, note="done"))
    notifications = market.app.recorder.select_notifications(1, 100_000)
    assert len(notifications) > 20
    for n in notifications:
        event = market.app.mapper.to_domain_event(n)
        state = dict(vars(event))
        state.pop("originator_id")
        state.pop("originator_version")
        assert FAST.encode(state) == LIBRARY.encode(state) == n.state, n.topic


# The values orjson writes natively but unlike the library (floats in its own shortest
# form, UUIDs and plain enums as strings) must never be event fields.
ALLOWED = {str, int, bool, datetime, type(None), list, dict, typing.Any}


def _leaves(hint: Any) -> set[Any]:
    args = typing.get_args(hint)
    if not args:
        return {hint}
    return {typing.get_origin(hint)} | {leaf for arg in args for leaf in _leaves(arg)}


def test_no_event_field_holds_a_value_the_two_would_write_differently() -> None:
    import ledger.application.app  # noqa: F401 (imports every aggregate and its events)

    def subclasses(cls: type) -> set[type]:
        found: set[type] = set(cls.__subclasses__())
        return found.union(*(subclasses(s) for s in found))

    events = [e for e in subclasses(Aggregate.Event) if e.__module__.startswith("ledger.")]
    assert len(events) > 20
    for event in events:
        hints = typing.get_type_hints(event)
        for name, hint in hints.items():
            if name in ("originator_id", "originator_version", "originator_topic"):
                continue
            if typing.get_origin(hint) is typing.ClassVar:
                continue
            leaves = _leaves(hint) - {typing.Union, type(int | None)}
            assert leaves <= ALLOWED, f"{event.__qualname__}.{name}: {hint}"


def test_a_time_stamp_written_again_is_written_as_the_first_time() -> None:
    # UTC time stamps are formatted once and remembered; the same instant in another
    # zone, or with other microseconds, is another text.
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    shifted = moment.astimezone(timezone(timedelta(hours=8)))
    states: list[dict[str, Any]] = [
        {"at": moment, "until": moment},
        {"at": shifted},
        {"at": moment.replace(microsecond=1)},
        {"at": moment},
    ]
    for state in states:
        assert FAST.encode(state) == LIBRARY.encode(state)
    assert FAST.encode(states[0]) != FAST.encode({"at": shifted, "until": shifted})


def test_remembered_time_stamps_are_bounded() -> None:
    fast = FastJSONTranscoder()
    Application.register_transcodings(Application.__new__(Application), fast)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for second in range(10_000):
        moment = start + timedelta(seconds=second)
        assert fast.encode({"at": moment}) == LIBRARY.encode({"at": moment})
    assert len(fast._utc_tags) <= 4096
