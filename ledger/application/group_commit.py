"""Group commit: commands that arrive together share one transaction.

Writers are serialised by the event store anyway (one table lock on PostgreSQL, one
writer on SQLite), so a thread that finds a batch under way queues its commands instead
of waiting for the lock. When the batch under way is written, the first queued caller
leads the next batch: it takes everything queued (up to ``max_items`` commands) and
runs it as one. A caller alone runs at once; under load, the cost of a transaction is
shared by every command in it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Submission(Generic[Item, Result]):
    __slots__ = ("error", "items", "leads", "ready", "results")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.ready = threading.Event()
        self.leads = False
        self.results: list[Result] = []
        self.error: BaseException | None = None

    def outcome(self) -> list[Result]:
        if self.error is not None:
            raise self.error
        return self.results


class GroupCommit(Generic[Item, Result]):
    """Runs submissions of items through ``run_batch``, one batch at a time, each batch
    gathering every submission that waited for the one before it."""

    def __init__(
        self, run_batch: Callable[[list[Item]], list[Result]], max_items: int = 1000
    ) -> None:
        self._run_batch = run_batch
        self._max_items = max_items
        self._lock = threading.Lock()
        self._queue: list[_Submission[Item, Result]] = []
        self._busy = False

    def submit(self, items: Sequence[Item]) -> list[Result]:
        """Runs ``items`` (in order, in one batch) and returns one result per item."""
        mine: _Submission[Item, Result] = _Submission(items)
        with self._lock:
            self._queue.append(mine)
            leads = not self._busy
            self._busy = True
        if not leads:
            mine.ready.wait()
            if not mine.leads:
                return mine.outcome()
        self._lead(mine)
        return mine.outcome()

    def _lead(self, mine: _Submission[Item, Result]) -> None:
        with self._lock:
            self._queue.remove(mine)
            group = [mine]
            count = len(mine.items)
            while self._queue and count + len(self._queue[0].items) <= self._max_items:
                count += len(self._queue[0].items)
                group.append(self._queue.pop(0))
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
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.leads = True
                    successor.ready.set()
                else:
                    self._busy = False
