"""Group commit: commands that arrive together share one transaction.

Writers are serialised by the event store anyway (one table lock on PostgreSQL, one
writer on SQLite), so a thread that finds a batch under way queues its commands instead
of waiting for the lock. When a batch is written, the first queued caller leads the next
one: it takes everything queued (up to ``max_items`` commands) and runs it as one. A
caller alone runs at once; under load, the cost of a transaction is shared by every
command in it.

With ``lanes`` above one, that many batches may be under way at once, so that one is
decided while another waits for the database (its reads, the table lock, the commit),
which would otherwise leave the process idle for that time. Batches in flight together
are kept apart by the ``keys`` their items name (the aggregates a command names): a
submission that names a key of a batch in flight waits for it, as with a single lane,
and the submissions after it may go first.
Nothing depends on that for correctness: concurrent batches are written under the same
optimistic checks (versions and read fences) as those of two server processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Submission(Generic[Item, Result]):
    __slots__ = ("error", "group", "items", "keys", "ready", "results")

    def __init__(self, items: Sequence[Item], keys: frozenset[Hashable]) -> None:
        self.items = items
        self.keys = keys
        self.ready = threading.Event()
        # Set when this submission is to lead a batch: the submissions of that batch.
        self.group: list[_Submission[Item, Result]] | None = None
        self.results: list[Result] = []
        self.error: BaseException | None = None

    def outcome(self) -> list[Result]:
        if self.error is not None:
            raise self.error
        return self.results


class GroupCommit(Generic[Item, Result]):
    """Runs submissions of items through ``run_batch``, at most ``lanes`` batches at a
    time, each batch gathering the submissions that waited for a lane."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        max_items: int = 1000,
        lanes: int = 1,
        keys: Callable[[Item], Iterable[Hashable]] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_items = max_items
        self._lanes = lanes
        self._keys = keys
        self._lock = threading.Lock()
        self._queue: list[_Submission[Item, Result]] = []
        # The keys of each batch under way.
        self._running: list[frozenset[Hashable]] = []

    def submit(self, items: Sequence[Item]) -> list[Result]:
        """Runs ``items`` (in order, in one batch) and returns one result per item."""
        keys: frozenset[Hashable] = frozenset()
        if self._keys is not None and self._lanes > 1:
            keys = frozenset(key for item in items for key in self._keys(item))
        mine: _Submission[Item, Result] = _Submission(items, keys)
        with self._lock:
            self._queue.append(mine)
            group = self._next_group()
        if group is None or group[0] is not mine:
            if group is not None:  # another submission's turn came with this one
                self._hand_over(group)
            mine.ready.wait()
            if mine.group is None:
                return mine.outcome()
            group = mine.group
        self._lead(group)
        return mine.outcome()

    def _next_group(self) -> list[_Submission[Item, Result]] | None:
        """Under the lock: takes the next group off the queue, if a lane is free: the
        queued submissions clear of every batch under way, in order, as many as fit."""
        if not self._queue or len(self._running) >= self._lanes:
            return None
        busy = self._running
        group: list[_Submission[Item, Result]] = []
        count = 0
        for submission in self._queue:
            if any(submission.keys & keys for keys in busy):
                continue  # waits for the batch that names its key
            if group and count + len(submission.items) > self._max_items:
                break
            group.append(submission)
            count += len(submission.items)
        if not group:
            return None
        taken = {id(s) for s in group}
        self._queue[:] = [s for s in self._queue if id(s) not in taken]
        self._running.append(frozenset().union(*(s.keys for s in group)))
        return group

    @staticmethod
    def _hand_over(group: list[_Submission[Item, Result]]) -> None:
        """Wakes the first submission of a group taken off the queue to lead it."""
        group[0].group = group
        group[0].ready.set()

    def _lead(self, group: list[_Submission[Item, Result]]) -> None:
        keys = frozenset().union(*(s.keys for s in group))
        try:
            results = self._run_batch([item for s in group for item in s.items])
            start = 0
            for submission in group:
                submission.results = results[start : start + len(submission.items)]
                start += len(submission.items)
        except BaseException as e:
            for submission in group:
                submission.error = e
        finally:
            for submission in group[1:]:
                submission.ready.set()
            successors = []
            with self._lock:
                self._running.remove(keys)
                while (successor := self._next_group()) is not None:
                    successors.append(successor)
            for successor in successors:
                self._hand_over(successor)
