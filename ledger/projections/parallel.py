"""Catching up in several processes: the projections split into groups, each group
folded by a process of its own, so that a catch-up (a new store, a rebuild of every
projection) uses more than one core; the folds of one process share one interpreter.

Each worker is an ordinary engine on its group: it reads and decodes the log itself,
advances each generation by compare-and-set in the transaction of its rows, stops a
failing one exactly at its event, switches a rebuilt one live atomically and, on
PostgreSQL, holds the leases of its group. The calling process folds the first group,
then once the workers have ended, whatever they left (a worker that died or lost the
database), so the result never depends on a worker finishing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from ledger import collector
from ledger.projections.engine import ProjectionManager
from ledger.settings import Settings

# The relative cost of each projection in a catch-up, decoding included (measured on
# generated markets: the chain decodes every event and hashes its canonical JSON, which
# the projections in its group then share; the others fold a few kinds each). Only the
# balance of the groups depends on them.
FOLD_COST: Mapping[str, float] = {
    "chain": 3.0,
    "compliance": 1.5,
    "access": 1.3,
    "catalogue": 0.7,
    "ownership": 0.6,
}
# A worker process's start (an interpreter, its imports, its connections), in the same
# units for a catch-up of ``COST_EVENTS`` events: about half a second of the two that
# 100,000 events take. It does not grow with the events, so it weighs less the further
# behind the catch-up starts. The calling process starts at once, so it takes more of
# the folds of a short catch-up.
WORKER_START_COST = 1.0
COST_EVENTS = 100_000

# Below this many events behind, a catch-up stays in one process: starting a worker
# (an interpreter and its imports) costs more than it saves.
MIN_EVENTS_PER_WORKER = 20_000


def groups(names: Sequence[str], count: int, events: int = COST_EVENTS) -> list[list[str]]:
    """Splits projections into at most ``count`` groups of about equal cost for a
    catch-up of ``events`` events (the costliest first, each to the group with the least
    so far; the first group is the calling process's, the others start with a worker's
    start), in a stable order."""
    count = max(1, min(count, len(names)))
    split: list[list[str]] = [[] for _ in range(count)]
    start = WORKER_START_COST * COST_EVENTS / max(1, events)
    load = [0.0] + [start] * (count - 1)
    for name in sorted(names, key=lambda n: (-FOLD_COST.get(n, 1.0), n)):
        lightest = load.index(min(load))
        split[lightest].append(name)
        load[lightest] += FOLD_COST.get(name, 1.0)
    return [group for group in split if group]


def default_processes() -> int:
    """One process per core the program may run on (on SQLite too: a worker folds a
    batch before it takes the write lock, which it holds only to write the rows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def catch_up(
    settings: Settings,
    manager: ProjectionManager,
    processes: int | None = None,
    timeout_s: float = 3600.0,
    min_events_per_worker: int = MIN_EVENTS_PER_WORKER,
) -> None:
    """Brings every active generation of ``manager`` to the head, folding the
    projections in ``processes`` processes (this one included; by default see
    ``default_processes``) when they are at least ``min_events_per_worker`` events each
    behind and the store is shared (SQLite or PostgreSQL, not in memory)."""
    deadline = time.monotonic() + timeout_s
    names = list(manager.projections)
    wanted = default_processes() if processes is None else processes
    lag = _lag(manager)
    count = min(wanted, max(1, lag // max(1, min_events_per_worker)))
    if settings.database_url.startswith("memory:") or count < 2:
        with collector.bulk():
            manager.catch_up(timeout_s)
        return
    mine, *theirs = groups(names, count, lag)
    workers = [_start(settings, group, timeout_s) for group in theirs]
    try:
        with collector.bulk():
            manager.catch_up(timeout_s, mine, drop=False)
        for worker in workers:
            worker.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TimeoutError("projections did not catch up in time") from None
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    # What a worker left (it died, or the database failed it) is folded here.
    with collector.bulk():
        manager.catch_up(max(1.0, deadline - time.monotonic()))


def _lag(manager: ProjectionManager) -> int:
    """How far the generation furthest behind is from the head."""
    head = manager.log.head()
    positions = [
        g.position
        for g in manager.generations()
        if g.name in manager.projections and g.state not in ("FAILED", "RETIRED")
    ]
    return head - min(positions) if positions else 0


def _start(settings: Settings, names: list[str], timeout_s: float) -> subprocess.Popen[bytes]:
    """Starts a worker process for ``names``: a fresh interpreter that imports only the
    engine (not the program that called), given the settings as ``LEDGER_*`` variables."""
    env = dict(os.environ)
    for field in fields(settings):
        value = getattr(settings, field.name)
        key = f"LEDGER_{field.name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(timeout_s), *names], env=env, stdin=subprocess.DEVNULL
    )


def _work(settings: Settings, names: list[str], timeout_s: float) -> None:
    """A worker process: catches up the generations of ``names``, then exits (retired
    tables are left for the calling process to drop)."""
    from ledger.bootstrap import build_application, build_projections

    app: Any = build_application(settings)
    try:
        manager = build_projections(settings, app)
        try:
            with collector.bulk():
                manager.catch_up(timeout_s, names, drop=False)
        finally:
            manager.leases.release()
            manager.db.close()
    finally:
        app.close()


if __name__ == "__main__":
    _work(Settings.from_env(), sys.argv[2:], float(sys.argv[1]))
