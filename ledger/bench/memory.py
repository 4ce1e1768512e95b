"""The ``memory`` scenario: peak RSS of a rebuild, of a server serving replay and
checks (its replay workers' peaks added to its own), and of a replay client, at N events
and again once the store holds more."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from ledger.application.events import EventLog
from ledger.bench.dataset import Market
from ledger.bench.reads import busiest_exchange, check_load, check_requests, replay_in_child
from ledger.bench.runner import Options, Result
from ledger.bench.server import child_env, run_measured, serving
from ledger.bench.stores import load_market, temporary_store
from ledger.bootstrap import build_application
from ledger.projections.registry import all_projections
from ledger.settings import Settings

LIMIT_MB = 300.0
GROWTH = 1.15
CHECK_CLIENTS = 4
# The store grows this many times between the two measurements (the spec's 1M and 10M).
FULL_GROWTH = 10
QUICK_GROWTH = 2


def rebuild_peaks(settings: Settings, timeout_s: float) -> dict[str, float]:
    """Runs ``ledger projections rebuild NAME`` for each projection, one process each,
    with no server running (so that the command does the work itself); returns each
    one's peak RSS in MiB."""
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-rebuild-") as directory:
        env = child_env(Path(directory))
        for projection in all_projections(settings):
            finished = run_measured(
                [
                    sys.executable,
                    "-m",
                    "ledger",
                    "projections",
                    "--database-url",
                    settings.database_url,
                    "rebuild",
                    projection.name,
                ],
                env,
                timeout_s,
            )
            if finished.returncode != 0:
                raise RuntimeError(
                    f"rebuild of {projection.name} failed: {finished.stderr[-2000:]}"
                )
            peaks[projection.name] = round(finished.peak_rss_mb, 1)
    return peaks


def measure(settings: Settings, market: Market, options: Options) -> dict[str, Any]:
    """The peaks at the store's current size."""
    app = build_application(settings)
    try:
        head = EventLog(app.recorder).head()
    finally:
        app.close()
    # Bounds that grow with the store: the larger one may be ten times the size.
    timeout_s = max(options.catch_up_timeout_s, head / 200)
    rebuilds = rebuild_peaks(settings, timeout_s)
    exchange = busiest_exchange(market)
    requests = check_requests(market, exchange, options.seed)
    with serving(settings, exchange) as server:
        server.wait_for_projections(timeout_s, options.progress)
        replayed = replay_in_child(server, timeout_s)
        checks, _allowed = check_load(
            [server], requests, CHECK_CLIENTS, 100 * options.events, options.window_s
        )
        server_peaks = server.peak_rss_by_process_mb()
    return {
        "events": head,
        "rebuild_mb": max(rebuilds.values()),
        # The server's process and its replay workers', summed.
        "server_mb": round(sum(server_peaks), 1),
        "server_by_process_mb": [round(peak, 1) for peak in server_peaks],
        "replay_client_mb": round(replayed.peak_rss_mb, 1),
        "rebuild_by_projection_mb": rebuilds,
        "checks_served": checks.calls,
    }


def memory(options: Options) -> Result:
    """Peaks at N events, then at 2N (quick) or 10N (full) in the same store."""
    small = options.events
    large = small * (QUICK_GROWTH if options.quick else FULL_GROWTH)
    with temporary_store(options.backend, options.postgres_url) as settings:
        app, market = load_market(settings, small, options.seed, options.progress)
        app.close()
        at_small = measure(settings, market, options)
        # Another market beside the first, of the same shape, up to the larger size.
        app, _ = load_market(
            settings, large - at_small["events"], options.seed + 1, options.progress
        )
        app.close()
        at_large = measure(settings, market, options)
    kinds = ("rebuild_mb", "server_mb", "replay_client_mb")
    peak_small = max(at_small[k] for k in kinds)
    peak_large = max(at_large[k] for k in kinds)
    growth = {k: round(at_large[k] / at_small[k], 3) for k in kinds}
    met = peak_large < LIMIT_MB and peak_small < LIMIT_MB and max(growth.values()) <= GROWTH
    return Result(
        "memory",
        options.backend,
        at_large["events"],
        peak_large,
        "MB peak RSS",
        f"the same peaks at {at_small['events']:,} events",
        peak_small,
        peak_large / peak_small,
        f"< {LIMIT_MB:.0f} MB everywhere; each peak within +15% from N to {large // small}N",
        met,
        {"growth": growth, "at_n": at_small, "at_large": at_large},
    )
