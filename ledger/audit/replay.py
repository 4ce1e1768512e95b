"""Replay of the event log for auditors: events in log order with their kept chain
hashes, filtered, batched into messages, and read only as fast as they are taken.

``EventReplay.messages`` reads the log a span of positions at a time (``READ_BATCH``)
and encodes it. Encoding holds the interpreter lock, so one process bounds the stream:
given a pool of worker processes (``ReplayWorkers``, which a server keeps), each span is
read and encoded by a worker, a few spans ahead of the client (``window``), and the
messages go out in log order. Without one, reading and encoding each run in a thread of
its own, one batch ahead of the next step: while a batch is on its way to the client the
next one is encoded, and while that is encoded the one after is read. Either way a
stalled client holds a bounded number of batches in the server. Events are sent once the
``chain`` projection has hashed them; a stream that is not following ends at the head of
the log as it was when the stream started (or at ``to_position``).

An unfiltered replay encodes the stored rows for the wire directly (``encode_rows``); a
filtered one decodes them into canonical events, which the filters look at, and encodes
those (``encode_event``): the same bytes either way.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, TypeVar, cast

from ledger.application.events import EVENT_TYPES, CanonicalEvent
from ledger.audit.canonical import format_time
from ledger.audit.stored import AuditReader, LinkedRow, decode_rows
from ledger.audit.wire import encode_event, encode_rows
from ledger.domain.errors import FieldViolation, InvalidArgument, Unavailable
from ledger.projections.chain import AuditChain
from ledger.projections.db import Tx
from ledger.projections.engine import Tables

DEFAULT_EVENTS_PER_MESSAGE: Final = 500
MAX_EVENTS_PER_MESSAGE: Final = 5000
# A message stays well under the server's 4 MiB limit, whatever the payloads hold.
MAX_MESSAGE_BYTES: Final = 1 << 20
# Stored events read, decoded and encoded at a time: a stalled client holds the messages
# of two batches and the rows of one more, a few MiB.
READ_BATCH: Final = 1000
CHAIN_RECHECK_S: Final = 1.0
# How long a stream waits for the chain projection to hash events that are stored.
CHAIN_WAIT_S: Final = 30.0
# How often a following stream looks for new events (and whether its client left).
FOLLOW_POLL_S: Final = 0.02
# How often a reader thread waiting to hand over a batch looks whether its client left.
HANDOVER_POLL_S: Final = 0.5
MAX_FILTER_VALUES: Final = 1000
# Streams a server runs at once: a stalled client keeps its worker thread, and the
# server's other clients need the rest (it has 16 by default).
MAX_REPLAY_STREAMS: Final = 8

_Batch = TypeVar("_Batch")

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class ReplayQuery:
    """What to replay. Positions are inclusive (``to_position`` None: no end); times are
    canonical texts compared with ``recorded_at`` (``since`` inclusive, ``until``
    exclusive)."""

    from_position: int = 0
    to_position: int | None = None
    aggregate_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    since: str | None = None
    until: str | None = None
    follow: bool = False
    max_events_per_message: int = DEFAULT_EVENTS_PER_MESSAGE

    @classmethod
    def create(
        cls,
        *,
        from_position: int = 0,
        to_position: int | None = None,
        aggregate_ids: Iterable[str] = (),
        event_types: Iterable[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        follow: bool = False,
        max_events_per_message: int = 0,
    ) -> ReplayQuery:
        """Validates a request; raises ``InvalidArgument`` naming every bad field.

        ``max_events_per_message`` 0 means the default; more than the maximum is capped.
        """
        problems: list[FieldViolation] = []

        def bad(field: str, description: str) -> None:
            problems.append(FieldViolation(field, description))

        if from_position < 0:
            bad("from_position", "must not be negative")
        if to_position is not None and to_position < max(from_position, 1):
            bad("to_position", "must be at least from_position (and positive); 0 = no end")
        ids = [value.strip().lower() for value in aggregate_ids]
        types = list(event_types)
        if len(ids) > MAX_FILTER_VALUES:
            bad("aggregate_ids", f"at most {MAX_FILTER_VALUES} ids")
        for value in ids:
            if not _UUID.fullmatch(value):
                bad("aggregate_ids", f"{value[:64]!r} is not a UUID")
                break
        unknown = sorted(set(types) - EVENT_TYPES)
        if unknown:
            bad(
                "event_types",
                f"unknown event types {', '.join(map(repr, unknown[:5]))}; "
                f"known: {', '.join(sorted(EVENT_TYPES))}",
            )
        if since is not None and until is not None and until <= since:
            bad("until", "must be after since")
        if max_events_per_message < 0:
            bad("max_events_per_message", "must not be negative; 0 = the server's default")
        if problems:
            raise InvalidArgument(*problems)
        return cls(
            from_position=from_position,
            to_position=to_position,
            aggregate_ids=frozenset(ids),
            event_types=frozenset(types),
            since=None if since is None else format_time(since),
            until=None if until is None else format_time(until),
            follow=follow,
            max_events_per_message=min(
                max_events_per_message or DEFAULT_EVENTS_PER_MESSAGE, MAX_EVENTS_PER_MESSAGE
            ),
        )

    def predicate(self) -> Callable[[CanonicalEvent], bool] | None:
        """Returns the filter on single events, or None when every event passes."""
        ids, types, since, until = self.aggregate_ids, self.event_types, self.since, self.until
        if not (ids or types or since or until):
            return None

        def matches(event: CanonicalEvent) -> bool:
            if ids and event["aggregate_id"] not in ids:
                return False
            if types and event["type"] not in types:
                return False
            recorded: str = event["recorded_at"]
            # Canonical times have one fixed width, so text order is time order.
            if since is not None and recorded < since:
                return False
            return until is None or recorded < until

        return matches


@dataclass(frozen=True)
class Span:
    """Positions ``after`` (excluded) to ``stop`` (included) of the log, all hashed by
    the chain generation whose tables are ``chain``."""

    after: int
    stop: int
    chain: Tables


class EncodingPool(Protocol):
    """Reads and encodes spans of the log elsewhere (``ReplayWorkers``)."""

    window: int
    """How many spans a stream has read and encoded ahead at most."""

    def submit(self, query: ReplayQuery, span: Span) -> Future[list[bytes]]:
        """The messages of ``encode_span(read_span(reader, span), query)``."""
        ...


class EventReplay:
    """Streams the log with its kept chain hashes."""

    def __init__(
        self,
        reader: AuditReader,
        head: Callable[[], int],
        read_batch: int = READ_BATCH,
        chain_wait_s: float = CHAIN_WAIT_S,
        follow_poll_s: float = FOLLOW_POLL_S,
        pool: EncodingPool | None = None,
    ) -> None:
        self._reader = reader
        self._head = head
        self._read_batch = read_batch
        self._chain_wait_s = chain_wait_s
        self._follow_poll_s = follow_poll_s
        self._pool = pool

    def batches(
        self, query: ReplayQuery, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[list[tuple[CanonicalEvent, str]]]:
        """Yields the matching events with their chain hashes, in log order, a read batch
        at a time."""
        matches = query.predicate()
        for rows in self._rows(query, is_active):
            batch = matching(rows, matches)
            rows.clear()  # while suspended, hold only what is yielded
            yield batch
            del batch

    def messages(
        self, query: ReplayQuery, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[bytes]:
        """Yields encoded ``ReplayEventsResponse`` messages of at most
        ``max_events_per_message`` events (and about 1 MiB) each, never empty, read and
        encoded a few batches ahead of the client: by the pool's processes if there is
        one, else in this one, the log read one batch ahead of its encoding and encoded
        one batch ahead of the client, each in a thread of its own."""
        if self._pool is not None:
            yield from self._pooled(self._pool, query, is_active)
            return
        for messages in _ahead(lambda alive: self._encoded(query, alive), is_active):
            yield from messages
            del messages

    def _encoded(self, query: ReplayQuery, is_active: Callable[[], bool]) -> Iterator[list[bytes]]:
        """Yields the messages of each read batch (lists that may be empty)."""
        for rows in _ahead(lambda alive: self._rows(query, alive), is_active):
            messages = encode_span(rows, query)
            # Emptied in place, so that the suspended reader no longer holds them either.
            rows.clear()
            yield messages
            del messages

    def _pooled(
        self, pool: EncodingPool, query: ReplayQuery, is_active: Callable[[], bool]
    ) -> Iterator[bytes]:
        """``messages`` from the pool: up to ``pool.window`` spans submitted ahead of the
        one whose messages go out, their messages taken in order."""
        pending: deque[Future[list[bytes]]] = deque()
        spans = self._spans(query, is_active)
        ended = waiting = False
        try:
            while True:
                # A following stream at the head waits for the chain only once what it
                # has submitted is out.
                while not (ended or waiting) and len(pending) < pool.window:
                    span = next(spans, _END)
                    if span is _END:
                        ended = True
                    elif span is None:
                        waiting = True
                    else:
                        pending.append(pool.submit(query, cast(Span, span)))
                if pending:
                    messages = _result(pending[0], is_active)
                    if messages is None:
                        return  # the client left
                    pending.popleft()
                    yield from messages
                    del messages
                elif ended:
                    return
                waiting = False
        finally:
            for future in pending:
                future.cancel()
            spans.close()

    def _rows(self, query: ReplayQuery, is_active: Callable[[], bool]) -> Iterator[list[LinkedRow]]:
        """Yields the stored rows of each span of the query that holds any, each row with
        its kept chain hash; markers may be among them."""
        for span in self._spans(query, is_active):
            if span is None:
                continue
            rows = read_span(self._reader, span)
            if rows:
                yield rows
                del rows  # while suspended, hold only what is yielded

    def _spans(
        self, query: ReplayQuery, is_active: Callable[[], bool]
    ) -> Generator[Span | None, None, None]:
        """Yields the spans of the log up to the end of the query, in order, of at most
        ``read_batch`` positions each and hashed by the chain projection; None each time
        before it waits for the chain to hash more (then it sleeps when resumed)."""
        after = max(query.from_position - 1, 0)
        end = query.to_position
        if not query.follow:
            head = self._head()
            end = head if end is None else min(end, head)
        waited_since: float | None = None
        chain: tuple[Tables, int] | None = None
        looked_at = 0.0
        while is_active():
            if end is not None and after >= end:
                return
            covered = chain[1] if chain is not None else 0
            # The registry is read again only when what it said is used up, or has aged:
            # a rebuilt chain's old tables are dropped a few seconds after it retires.
            if covered <= after or time.monotonic() - looked_at > CHAIN_RECHECK_S:
                chain, looked_at = self._kept_chain(), time.monotonic()
                covered = chain[1] if chain is not None else 0
            if covered <= after:
                # Nothing hashed beyond ``after`` yet: wait for the chain projection.
                waited_since = waited_since or time.monotonic()
                if not query.follow and time.monotonic() - waited_since > self._chain_wait_s:
                    raise Unavailable(
                        f"the chain projection has not hashed position {after + 1} after "
                        f"{self._chain_wait_s:.0f} s; see `ledger projections status`"
                    )
                yield None
                time.sleep(self._follow_poll_s)
                continue
            waited_since = None
            assert chain is not None  # for mypy: covered > 0
            stop = min(covered, after + self._read_batch)
            if end is not None:
                stop = min(stop, end)
            yield Span(after, stop, chain[0])
            after = stop

    def _kept_chain(self) -> tuple[Tables, int] | None:
        """The live generation of the chain projection and the position it has hashed."""
        with self._reader.snapshot() as tx:
            return kept_chain(tx)


def read_span(reader: AuditReader, span: Span) -> list[LinkedRow]:
    """The stored rows of a span (markers may be among them), each with the chain hash
    kept for it."""
    try:
        return _read_span(reader, span.after, span.stop, span.chain)
    except Unavailable:
        raise
    except Exception:
        # The generation read may have been retired and dropped meanwhile (a rebuild);
        # its successor holds the same hashes.
        with reader.snapshot() as tx:
            chain = kept_chain(tx)
        if chain is None:
            raise
        return _read_span(reader, span.after, span.stop, chain[0])


def _read_span(reader: AuditReader, after: int, stop: int, chain: Tables) -> list[LinkedRow]:
    rows: list[LinkedRow] = []
    while after < stop:
        # At most one row a position: one read takes the span whole.
        read, last = reader.read_linked(after, stop - after, stop, chain)
        rows += read
        if last <= after:
            break
        after = last
    return rows


def matching(
    rows: Sequence[LinkedRow], matches: Callable[[CanonicalEvent], bool] | None
) -> list[tuple[CanonicalEvent, str]]:
    """The canonical events of stored rows that ``matches`` keeps (all if it is None),
    each with its chain hash ("" where the chain kept none)."""
    hashes = {row[0]: row[5] for row in rows}
    events = decode_rows([row[:5] for row in rows])
    return [
        (event, hashes[event["position"]] or "")
        for event in events
        if matches is None or matches(event)
    ]


def encode_span(rows: Sequence[LinkedRow], query: ReplayQuery) -> list[bytes]:
    """The messages of the events of ``rows`` that the query keeps (none, if it keeps
    none). Unfiltered, the stored rows are encoded for the wire directly; filtered, they
    are decoded into canonical events, which the filters look at, and those are encoded:
    the same bytes either way."""
    matches = query.predicate()
    if matches is None:
        framed = encode_rows(rows)
    else:
        framed = [encode_event(event, chain_hash) for event, chain_hash in matching(rows, matches)]
    return _pack(framed, query.max_events_per_message)


def _result(future: Future[list[bytes]], is_active: Callable[[], bool]) -> list[bytes] | None:
    """What ``future`` holds once done; None if ``is_active()`` turns False first."""
    while is_active():
        try:
            return future.result(HANDOVER_POLL_S)
        except FutureTimeout:
            continue
        except CancelledError:
            raise Unavailable("the server is stopping; retry") from None
    return None


def _pack(framed: Sequence[bytes], limit: int) -> list[bytes]:
    """Joins framed events into messages of at most ``limit`` events and about 1 MiB."""
    messages: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for encoded in framed:
        if pending and (len(pending) >= limit or size + len(encoded) > MAX_MESSAGE_BYTES):
            messages.append(b"".join(pending))
            pending, size = [], 0
        pending.append(encoded)
        size += len(encoded)
    if pending:
        messages.append(b"".join(pending))
    return messages


_END: Final = object()
_EMPTY: Final = object()


class _Slot:
    """Hands items one at a time from a producer thread to its consumer."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._item: object = _EMPTY

    def put(self, item: object, alive: Callable[[], bool]) -> bool:
        """Hands ``item`` over and returns once the consumer has taken it (True), or
        when ``alive()`` turns False first (False)."""
        with self._changed:
            self._item = item
            self._changed.notify_all()
            while self._item is not _EMPTY:
                if not alive():
                    return False
                self._changed.wait(HANDOVER_POLL_S)
        return True

    def take(self, timeout_s: float) -> object:
        """Takes the item handed over, waiting up to ``timeout_s``; ``_EMPTY`` if none."""
        with self._changed:
            if self._item is _EMPTY:
                self._changed.wait(timeout_s)
            item, self._item = self._item, _EMPTY
            if item is not _EMPTY:
                self._changed.notify_all()
            return item


def _ahead(
    produce: Callable[[Callable[[], bool]], Iterator[_Batch]], is_active: Callable[[], bool]
) -> Iterator[_Batch]:
    """Yields what ``produce(alive)`` yields, running it in a thread of its own one item
    ahead of the caller: it makes the next item while the caller uses the last one, and
    no further. ``produce`` is to stop when ``alive()`` turns False: when ``is_active()``
    does, or when the caller stops taking items. Its error, if any, is raised here after
    the items before it."""
    slot = _Slot()
    stopped = threading.Event()

    def alive() -> bool:
        return not stopped.is_set() and is_active()

    def run() -> None:
        outcome: object = _END
        try:
            for item in produce(alive):
                if not slot.put(item, alive):
                    return
                del item  # while the next one is made, the caller holds this one
        except BaseException as error:  # handed over, and raised by the caller
            outcome = error
        slot.put(outcome, alive)

    # The thread runs in the caller's context (its log fields, for one).
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), name="replay-read", daemon=True)
    thread.start()
    try:
        while True:
            item = slot.take(HANDOVER_POLL_S)
            if item is _EMPTY:
                if thread.is_alive():
                    continue
                return  # it stopped because the caller's client left
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(_Batch, item)  # what ``produce`` yielded
            del item
    finally:
        stopped.set()


def kept_chain(tx: Tx) -> tuple[Tables, int] | None:
    """Returns the tables of the chain projection's live generation and the position it
    has hashed up to (None if it has none).

    Read from the engine's registry directly rather than ``ProjectionManager.live``, so
    that following streams poll it in a read-only transaction.
    """
    row = tx.fetchone(
        "SELECT generation, position FROM projection_generations WHERE name = ? AND live = 1",
        (AuditChain.name,),
    )
    if row is None:
        return None
    return Tables(AuditChain.name, int(row[0])), int(row[1])
