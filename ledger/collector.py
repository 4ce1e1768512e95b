"""Garbage collector settings: for the long-running processes (``ledger serve`` and
``ledger projections run``), and around bulk work (catching projections up, encoding a
replay).

Python's defaults start a young-generation collection every 700 new container objects.
A batch of commands or events makes tens of thousands of them that live until the batch
is written (events, their states, aggregate copies), so the defaults ran a collection
every few commands, each one going over the batch so far, and full collections went over
everything the process had loaded at start: about a fifth of an ingest's CPU. Nearly
all of a batch's objects are freed by reference counting; the collector is only needed
for the rare cycle, so it can run far less often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# New container objects between young-generation collections (default 700).
YOUNG_THRESHOLD = 20_000
# The same while batches of decoded events come and go.
BULK_YOUNG_THRESHOLD = 50_000


def settle_after_start() -> None:
    """Collects what starting left behind and exempts the rest (modules, classes,
    descriptors, settings) from future collections, then spaces collections out."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextmanager
def bulk() -> Iterator[None]:
    """Collects garbage less often while batches of decoded events come and go: the
    objects alive before are frozen (a full collection no longer walks them) and the
    youngest generation is collected after ``BULK_YOUNG_THRESHOLD`` allocations. A
    batch's events are freed by reference counting; cycles are rare and still collected.
    The settings before are restored after."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(BULK_YOUNG_THRESHOLD, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
