"""Garbage collector settings for the long-running processes (``ledger serve`` and
``ledger projections run``).

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

# New container objects between young-generation collections (default 700).
YOUNG_THRESHOLD = 20_000


def settle_after_start() -> None:
    """Collects what starting left behind and exempts the rest (modules, classes,
    descriptors, settings) from future collections, then spaces collections out."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
