"""The read scenarios through a real server: ``check`` (CheckAccess next to an empty
unary call from the same clients) and ``replay`` (ReplayEvents next to a raw
scan+decode of the same store)."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.api.principals import Role
from ledger.application.events import EventLog
from ledger.bench.dataset import GrantRef, Market
from ledger.bench.load import LoadResult, run_load
from ledger.bench.runner import Options, Result
from ledger.bench.server import (
    BenchServer,
    Finished,
    child_env,
    deployment,
    run_measured,
    serving,
)
from ledger.bench.stores import load_market, temporary_store
from ledger.v1 import access_pb2, access_pb2_grpc, common_pb2

CHECK_CLIENTS = (16, 4)
# Server replicas on PostgreSQL (see ledger.bench.server.deployment).
CHECK_REPLICAS = 2
ALLOWED_SHARE = 0.9
SCAN_BATCH = 10_000
REPLAY_TIMEOUT_S = 3600.0


def check_requests(
    market: Market, exchange_id: str, seed: int
) -> list[access_pb2.CheckAccessRequest]:
    """Checks of real grants of one venue: nine in ten ask about an ACTIVE grant as it was
    granted (allowed); the rest ask about a revoked grant, or about a scenario of the
    listing that the grant does not cover (denied, unless another grant covers it)."""
    rng = random.Random(f"checks/{seed}")
    mine = [g for g in market.grants if g.exchange_id == exchange_id]
    if not mine:
        raise ValueError("the data set holds no grants of that exchange; use more events")
    active = [g for g in mine if g.active] or mine
    revoked = [g for g in mine if not g.active]
    scenarios = {listing.id: listing.scenarios for listing in market.listings}
    requests = []
    for _ in range(min(4000, 4 * len(mine))):
        draw = rng.random()
        if draw < ALLOWED_SHARE:
            grant = rng.choice(active)
            requests.append(_check_request(grant, grant.scenario))
        elif draw < (1 + ALLOWED_SHARE) / 2 and revoked:
            grant = rng.choice(revoked)
            requests.append(_check_request(grant, grant.scenario))
        else:
            grant = rng.choice(active)
            others = [s for s in scenarios[grant.listing_id] if s != grant.scenario]
            requests.append(_check_request(grant, rng.choice(others or [grant.scenario])))
    return requests


def _check_request(grant: GrantRef, scenario: str) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        grantee_id=grant.grantee_id,
        listing_id=grant.listing_id,
        delivery_mode=common_pb2.DeliveryMode.Value("DELIVERY_MODE_" + grant.mode),
        scenario=scenario,
    )


def busiest_exchange(market: Market) -> str:
    """The exchange with the most sampled grants: its principal asks the checks."""
    counts = {e: 0 for e in market.exchanges}
    for grant in market.grants:
        counts[grant.exchange_id] = counts.get(grant.exchange_id, 0) + 1
    return max(counts, key=lambda e: counts[e])


def check_load(
    servers: Sequence[BenchServer],
    requests: Sequence[access_pb2.CheckAccessRequest],
    clients: int,
    max_calls: int,
    seconds: float,
    role: Role = Role.EXCHANGE,
) -> tuple[LoadResult, float]:
    """CheckAccess from ``clients`` clients, which take the servers in turn; returns the
    load and the allowed share."""
    allowed = [0, 0]

    def factory(channel: grpc.Channel, client: int) -> Callable[[int], int]:
        # run_load gives client i the address of server i % len(servers).
        metadata = servers[client % len(servers)].metadata(role)
        stub = access_pb2_grpc.AccessServiceStub(channel)
        offset = client * 7919

        def call(n: int) -> int:
            response = stub.CheckAccess(
                requests[(offset + n) % len(requests)], metadata=metadata, timeout=30
            )
            allowed[response.allowed] += 1
            return 1

        return call

    addresses = [server.address for server in servers]
    load = run_load(addresses, clients, factory, max_calls, seconds, warmup_calls=20)
    return load, allowed[1] / max(1, sum(allowed))


def empty_load(
    servers: Sequence[BenchServer], clients: int, max_calls: int, seconds: float
) -> LoadResult:
    """The baseline: ``grpc.health.v1.Health/Check``, an empty unary call on the same
    servers, through the same interceptors, from the same kind of clients."""

    def factory(channel: grpc.Channel, client: int) -> Callable[[int], int]:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        def call(n: int) -> int:
            stub.Check(request, timeout=30)
            return 1

        return call

    addresses = [server.address for server in servers]
    return run_load(addresses, clients, factory, max_calls, seconds, warmup_calls=20)


def check(options: Options) -> Result:
    """CheckAccess over the grants of a generated market, at 16 and at 4 clients, next
    to an empty unary call from the same clients, on the scale-out deployment."""
    seconds = options.window_s
    max_calls = max(500, 50 * options.events)
    runs: dict[str, dict[str, Any]] = {}
    with temporary_store(options.backend, options.postgres_url) as settings:
        app, market = load_market(settings, options.events, options.seed, options.progress)
        app.close()
        exchange = busiest_exchange(market)
        requests = check_requests(market, exchange, options.seed)
        with deployment(settings, exchange, options.backend, CHECK_REPLICAS) as servers:
            caught_up_s = servers[0].wait_for_projections(
                options.catch_up_timeout_s, options.progress
            )
            for clients in CHECK_CLIENTS:
                empty = empty_load(servers, clients, max_calls, seconds)
                checks, allowed = check_load(servers, requests, clients, max_calls, seconds)
                runs[str(clients)] = {
                    "empty": empty.summary(),
                    "check": checks.summary(),
                    "allowed_share": round(allowed, 3),
                }
            # An unscoped caller (an auditor) skips the venue check's listing read.
            unscoped, _ = check_load(
                servers, requests, CHECK_CLIENTS[0], max_calls, seconds, Role.AUDITOR
            )
            server_rss = max(server.peak_rss_mb() for server in servers)
    many, few = runs[str(CHECK_CLIENTS[0])], runs[str(CHECK_CLIENTS[1])]
    qps, empty_qps = many["check"]["qps"], many["empty"]["qps"]
    p99, empty_p99 = many["check"]["p99_ms"], many["empty"]["p99_ms"]
    ratio = qps / empty_qps if empty_qps else 0.0
    errors = any(run[kind]["errors"] for run in runs.values() for kind in ("empty", "check"))
    met = ratio >= 0.5 and p99 <= 2 * empty_p99 and few["check"]["p99_ms"] < 5.0 and not errors
    return Result(
        "check",
        options.backend,
        options.events,
        qps,
        "calls/s",
        "empty unary call (Health/Check), same server and clients",
        empty_qps,
        ratio,
        ">= 0.5x empty QPS; p99 <= 2x empty p99; p99 < 5 ms at 4 clients",
        met,
        {
            "grants": market.grant_count,
            "caller": "exchange (venue-scoped)",
            "servers": len(servers),
            "p99_ms": p99,
            "empty_p99_ms": empty_p99,
            "p99_ratio": round(p99 / empty_p99, 2) if empty_p99 else None,
            "p99_ms_at_4": few["check"]["p99_ms"],
            "by_clients": runs,
            "unscoped_caller_at_16": unscoped.summary(),
            "catch_up_s": round(caught_up_s, 1),
            "server_peak_rss_mb": round(server_rss, 1),  # the largest replica's
        },
    )


def scan_decode(log: EventLog) -> tuple[int, float]:
    """The baseline of reads: ``EventLog.read`` over the whole store, in this process."""
    started = time.perf_counter()
    position = count = 0
    while True:
        events, last = log.read(position, SCAN_BATCH)
        if last == position:
            break
        count += len(events)
        position = last
    return count, time.perf_counter() - started


def replay_in_child(server: BenchServer, timeout_s: float = REPLAY_TIMEOUT_S) -> Finished:
    """Streams the whole log to a client process; its output is a JSON object."""
    finished = run_measured(
        [sys.executable, "-m", "ledger.bench.replay_client", server.address],
        child_env(server.log_file.parent),
        timeout_s,
        stdin=server.tokens[Role.AUDITOR] + "\n",
    )
    if finished.returncode != 0:
        raise RuntimeError(f"the replay client failed: {finished.stderr[-2000:]}")
    return finished


def replay(options: Options) -> Result:
    """ReplayEvents of a whole generated store to a client process, next to a raw
    scan+decode of the same store in this process."""
    with temporary_store(options.backend, options.postgres_url) as settings:
        app, _market = load_market(settings, options.events, options.seed, options.progress)
        try:
            scanned, scan_s = scan_decode(EventLog(app.recorder))
        finally:
            app.close()
        with serving(settings) as server:
            caught_up_s = server.wait_for_projections(options.catch_up_timeout_s, options.progress)
            finished = replay_in_child(server)
            server_peaks = server.peak_rss_by_process_mb()
    received = json.loads(finished.stdout)
    rate = received["events"] / received["seconds"]
    baseline = scanned / scan_s
    return Result(
        "replay",
        options.backend,
        received["events"],
        rate,
        "events/s",
        "EventLog.read scan+decode of the same store",
        baseline,
        rate / baseline,
        ">= 100,000 events/s streamed",
        rate >= 100_000 and received["events"] == scanned,
        {
            "scanned_events": scanned,
            "messages": received["messages"],
            "client_peak_rss_mb": round(finished.peak_rss_mb, 1),
            # The server's process and its replay workers', summed; then each apart.
            "server_peak_rss_mb": round(sum(server_peaks), 1),
            "server_peak_rss_by_process_mb": [round(peak, 1) for peak in server_peaks],
            "catch_up_s": round(caught_up_s, 1),
        },
    )
