"""The aggregates one batch of commands reads and changes, loaded once for the batch.

A batch (an ingest call, or the single commands that arrived together) runs command
after command against one working set and is written in one transaction. Later
commands see what earlier ones did, as if each had been written on its own. A command
that fails leaves no trace: the aggregates it changed go back to their state before it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from copy import deepcopy
from dataclasses import is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ledger.domain.base import LedgerAggregate

# The references an aggregate holds to others, loaded along with it: a sale names the
# listing, a grant its trade, the trade its listing and parties.
REFERENCE_SUFFIX = "_id"


class BatchReader(Protocol):
    def select_events_after(self, after: Mapping[UUID, int]) -> dict[UUID, list[StoredEvent]]: ...


class CleanCache:
    """Aggregates as stored, most recently used last; shared by the batches under way.

    Each entry is at a version that was committed; a batch brings it up to date with the
    events stored after that version (by any process) before using a copy of it.
    """

    def __init__(self, maxsize: int, uncached: tuple[type, ...] = ()) -> None:
        self.maxsize = maxsize
        # Aggregates written once and seldom read again (request markers) are not kept.
        self.uncached = uncached
        self._entries: OrderedDict[UUID, LedgerAggregate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID) -> LedgerAggregate | None:
        with self._lock:
            aggregate = self._entries.get(aggregate_id)
            if aggregate is not None:
                self._entries.move_to_end(aggregate_id)
            return aggregate

    def put(self, aggregate: LedgerAggregate) -> None:
        if isinstance(aggregate, self.uncached):
            return
        with self._lock:
            current = self._entries.get(aggregate.id)
            if current is not None and current.version > aggregate.version:
                # A batch that committed later already left a newer version here.
                return
            self._entries[aggregate.id] = aggregate
            self._entries.move_to_end(aggregate.id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def discard(self, aggregate_id: UUID) -> None:
        with self._lock:
            self._entries.pop(aggregate_id, None)

    def __len__(self) -> int:
        return len(self._entries)


def snapshot(aggregate: LedgerAggregate) -> LedgerAggregate:
    """An independent copy of an aggregate's state, without its pending events.

    Aggregates hold immutable values (strings, numbers, times, enums, frozen
    dataclasses, tuples, frozensets) and sets, dicts and lists of them: those containers
    are copied one level deep, which is all independence needs and several times
    cheaper than ``deepcopy``; anything else is deep-copied.
    """
    copy = object.__new__(type(aggregate))
    state = copy.__dict__
    for name, value in aggregate.__dict__.items():
        state[name] = _copied(value)
    state["_pending_events"] = []
    return copy


_IMMUTABLE_TYPES: set[type] = {str, int, float, bool, bytes, type(None), datetime, UUID}


def _immutable(value: object) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE_TYPES:
        return True
    if issubclass(kind, Enum | frozenset | tuple) or (
        is_dataclass(kind) and kind.__dataclass_params__.frozen  # type: ignore[attr-defined]
    ):
        _IMMUTABLE_TYPES.add(kind)
        return True
    return False


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE_TYPES or _immutable(value):
        return value
    if (kind is set or kind is list) and all(
        type(v) in _IMMUTABLE_TYPES or _immutable(v) for v in value
    ):
        return kind(value)
    if kind is dict and all(type(v) in _IMMUTABLE_TYPES or _immutable(v) for v in value.values()):
        return dict(value)
    return deepcopy(value)


class WorkingSet:
    def __init__(self, reader: BatchReader, mapper: Mapper[UUID], cache: CleanCache) -> None:
        self._reader = reader
        self._mapper = mapper
        self._cache = cache
        self._aggregates: dict[UUID, LedgerAggregate] = {}
        self._absent: set[UUID] = set()
        # Each loaded aggregate as stored (not to be changed), and its version in the
        # store; version 0 if the batch creates it.
        self._clean: dict[UUID, LedgerAggregate] = {}
        self._stored: dict[UUID, int] = {}
        # For the command under way: pending events of each aggregate it touched, at the
        # first touch.
        self._marks: dict[UUID, int] = {}
        self._changed: dict[UUID, LedgerAggregate] = {}
        self._events: list[Any] = []
        self._read: set[UUID] = set()

    # --- loading --------------------------------------------------------------------

    def load(self, ids: Iterable[UUID], follow_references: bool = True) -> None:
        """Loads the aggregates of ``ids`` not loaded yet in one query and, when
        ``follow_references``, those they refer to (in the same query where the cache
        knows them, else in one more)."""
        wanted = dict.fromkeys(ids)
        if follow_references:
            # What the cached aggregates refer to is known before the read: asked for in
            # the same query, the references need no second one unless an aggregate
            # came in new or refers to something new.
            for aggregate_id in list(wanted):
                cached = self._cache.get(aggregate_id)
                if cached is not None:
                    wanted.update(dict.fromkeys(_references(cached)))
        loaded = self._load(wanted)
        if follow_references:
            self._load(ref for aggregate in loaded for ref in _references(aggregate))

    def _load(self, ids: Iterable[UUID]) -> list[LedgerAggregate]:
        wanted = [
            i for i in dict.fromkeys(ids) if i not in self._aggregates and i not in self._absent
        ]
        if not wanted:
            return []
        clean = {i: self._cache.get(i) for i in wanted}
        after = {i: (a.version if a is not None else 0) for i, a in clean.items()}
        stored = self._reader.select_events_after(after)
        loaded = []
        for i, cached in clean.items():
            events = stored.get(i, ())
            if cached is None and not events:
                self._absent.add(i)
                continue
            # Cached entries are never changed in place: a batch may still hold them.
            aggregate: Any = snapshot(cached) if cached is not None and events else cached
            for event in events:
                aggregate = self._mapper.to_domain_event(event).mutate(aggregate)  # type: ignore[attr-defined]
            assert isinstance(aggregate, LedgerAggregate)  # for mypy
            if events:
                self._cache.put(aggregate)
            self._clean[i] = aggregate
            self._stored[i] = aggregate.version
            self._aggregates[i] = working = snapshot(aggregate)
            loaded.append(working)
        return loaded

    def get(self, aggregate_id: UUID) -> LedgerAggregate | None:
        """The aggregate as the command under way sees it; None if it does not exist."""
        if aggregate_id not in self._aggregates and aggregate_id not in self._absent:
            self._load([aggregate_id])
        aggregate = self._aggregates.get(aggregate_id)
        if aggregate is not None and aggregate_id not in self._marks:
            self._marks[aggregate_id] = len(aggregate.pending_events)
        return aggregate

    # --- one command at a time ------------------------------------------------------

    def begin(self) -> None:
        """Starts the next command."""
        self._marks.clear()

    def accept(self, changed: Iterable[LedgerAggregate], read: Iterable[LedgerAggregate]) -> None:
        """Keeps what the command under way changed, for the commands after it; its
        events are written after those of the commands before it, aggregate by
        aggregate in the order given."""
        seen: set[UUID] = set()
        for aggregate in changed:
            if aggregate.id in seen:
                continue
            seen.add(aggregate.id)
            self._events.extend(aggregate.pending_events[self._marks.get(aggregate.id, 0) :])
            self._aggregates[aggregate.id] = aggregate
            self._absent.discard(aggregate.id)
            self._stored.setdefault(aggregate.id, 0)
            self._changed[aggregate.id] = aggregate
        self._read.update(a.id for a in read)
        self._marks.clear()

    def discard(self) -> None:
        """Puts back every aggregate the failed command under way changed."""
        for aggregate_id, mark in self._marks.items():
            aggregate = self._aggregates[aggregate_id]
            if len(aggregate.pending_events) != mark:
                restored = self._restore(aggregate, mark)
                self._aggregates[aggregate_id] = restored
                if aggregate_id in self._changed:
                    # Changed by an earlier command: what is written and then cached is
                    # the state that command left.
                    self._changed[aggregate_id] = restored
        self._marks.clear()

    def _restore(self, aggregate: LedgerAggregate, mark: int) -> LedgerAggregate:
        kept = aggregate.pending_events[:mark]
        clean = self._clean.get(aggregate.id)
        restored: Any = snapshot(clean) if clean is not None else None
        for event in kept:
            restored = event.mutate(restored)
        assert isinstance(restored, LedgerAggregate)  # for mypy
        restored.pending_events[:] = kept
        return restored

    # --- writing --------------------------------------------------------------------

    def events(self) -> list[Any]:
        """The events of the accepted commands, in the order they are to be written."""
        return self._events

    def read_versions(self) -> dict[UUID, int]:
        """Read fences: the stored versions of what the batch read and did not change."""
        return {i: self._stored[i] for i in self._read if i not in self._changed}

    def written(self) -> None:
        """After the batch's transaction committed: its aggregates are as stored."""
        for aggregate in self._changed.values():
            aggregate.pending_events.clear()
            self._cache.put(aggregate)


def _references(aggregate: LedgerAggregate) -> Iterator[UUID]:
    for name, value in aggregate.__dict__.items():
        if name.endswith(REFERENCE_SUFFIX) and isinstance(value, str | UUID):
            try:
                yield value if isinstance(value, UUID) else UUID(value)
            except ValueError:
                continue
