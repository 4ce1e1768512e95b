"""The write scenarios: ``append`` (one command per call, many clients) and ``ingest``
(batches of commands per call), each through a real server, next to raw writes of the
same store in this process."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.api.principals import Role
from ledger.application.app import MarketLedger
from ledger.application.events import EventLog
from ledger.application.markers import entity_id
from ledger.bench.dataset import ListingRef, Market, setup_market
from ledger.bench.load import LoadResult, run_load
from ledger.bench.runner import Options, Result
from ledger.bench.server import deployment, serving
from ledger.bench.stores import temporary_store
from ledger.bootstrap import build_application, ensure_schema, postgres_conninfo, store_env
from ledger.settings import Settings
from ledger.v1 import access_pb2, access_pb2_grpc, common_pb2, trade_pb2, trade_pb2_grpc

APPEND_CLIENTS = 16
INGEST_CLIENTS = 4
INGEST_BATCH = 200
INGEST_REPLICAS = 2
# One sale, its grant, a use of the grant and the settlement: the shape of an ingest.
INGEST_GROUP = 4
CALL_TIMEOUT_S = 60.0
SCRATCH_TABLE = "bench_scratch_events"


class Tick(Aggregate):
    """The baseline's aggregate: created with one small event."""

    def __init__(self, value: int) -> None:
        self.value = value


class RawSaves(Application[uuid.UUID]):
    """The event store library alone, on a table of its own in the same database."""

    name = "BenchRawSaves"


def raw_saves(settings: Settings, max_saves: int, max_seconds: float) -> tuple[int, float]:
    """The baseline of ``append``: one new aggregate per ``save``, one after another;
    returns the events written and the seconds it took."""
    env = store_env(settings)
    ensure_schema(env)
    app = RawSaves(env={**env, "CREATE_TABLE": "y"})
    try:
        app.save(Tick(-1))  # creates the connection, like the server's first command
        count = 0
        started = time.perf_counter()
        deadline = started + max_seconds
        while count < max_saves and time.perf_counter() < deadline:
            app.save(Tick(count))
            count += 1
        return count, time.perf_counter() - started
    finally:
        app.close()


def _timestamp(at: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(at)
    return result


@dataclass(frozen=True)
class Terms:
    """The fixed terms every generated sale and grant uses."""

    term_start: Timestamp
    term_end: Timestamp
    valid_from: Timestamp
    valid_until: Timestamp

    @classmethod
    def now(cls) -> Terms:
        now = datetime.now(tz=UTC)
        return cls(
            _timestamp(now - timedelta(days=1)),
            _timestamp(now + timedelta(days=365)),
            _timestamp(now - timedelta(hours=1)),
            _timestamp(now + timedelta(days=180)),
        )


class Orders:
    """The requests one client sends: sales on its own listing to its own buyers, so that
    clients do not contend for one aggregate (contention on a listing serialises by
    design), and request ids derived from the seed."""

    def __init__(self, market: Market, client: int, clients: int, seed: int, terms: Terms):
        self.listing: ListingRef = market.listings[client % len(market.listings)]
        self.buyers = market.buyers[client::clients] or market.buyers
        self.terms = terms
        self.namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"ledger-bench/{seed}/{client}")

    def request_id(self, key: str) -> str:
        return str(uuid.uuid5(self.namespace, key))

    def sale(self, n: int) -> trade_pb2.RecordSaleRequest:
        listing = self.listing
        return trade_pb2.RecordSaleRequest(
            request_id=self.request_id(f"sale/{n}"),
            listing_id=listing.id,
            seller_id=listing.provider_id,
            buyer_id=self.buyers[n % len(self.buyers)],
            rights=[common_pb2.RIGHT_PROCESS_USE],
            conveyance=common_pb2.CONVEYANCE_LICENCE,
            scenario=listing.scenarios[n % len(listing.scenarios)],
            term_start=self.terms.term_start,
            term_end=self.terms.term_end,
            price=common_pb2.Money(currency="CNY", amount_minor=10_000 + 37 * n),
            settlement_ref=f"PAY-{n}",
        )

    def grant(self, n: int, trade_id: str) -> access_pb2.GrantAccessRequest:
        listing = self.listing
        return access_pb2.GrantAccessRequest(
            request_id=self.request_id(f"grant/{n}"),
            trade_id=trade_id,
            delivery_mode=common_pb2.DeliveryMode.Value(
                "DELIVERY_MODE_" + listing.modes[n % len(listing.modes)]
            ),
            scenario=listing.scenarios[n % len(listing.scenarios)],
            valid_from=self.terms.valid_from,
            valid_until=self.terms.valid_until,
            destination_country="CN",
            usage_limit=10_000,
        )

    def use(
        self, n: int, grant: access_pb2.GrantAccessRequest
    ) -> access_pb2.RecordAccessUseRequest:
        return access_pb2.RecordAccessUseRequest(
            request_id=self.request_id(f"use/{n}"),
            grant_id=str(entity_id("grant", grant.request_id)),
            delivery_mode=grant.delivery_mode,
            scenario=grant.scenario,
            units=1 + n % 20,
        )

    def settle(self, n: int, trade_id: str) -> trade_pb2.SettleTradeRequest:
        return trade_pb2.SettleTradeRequest(
            request_id=self.request_id(f"settle/{n}"),
            trade_id=trade_id,
            settlement_ref=f"SETTLED-{n}",
        )

    def batch(self, call: int, size: int) -> trade_pb2.IngestCommandsRequest:
        commands: list[trade_pb2.Command] = []
        for k in range(size // INGEST_GROUP):
            n = call * size + k
            sale = self.sale(n)
            trade_id = str(entity_id("trade", sale.request_id))
            grant = self.grant(n, trade_id)
            commands += [
                trade_pb2.Command(record_sale=sale),
                trade_pb2.Command(grant_access=grant),
                trade_pb2.Command(record_access_use=self.use(n, grant)),
                trade_pb2.Command(settle_trade=self.settle(n, trade_id)),
            ]
        return trade_pb2.IngestCommandsRequest(commands=commands)


def _market(settings: Settings, options: Options, clients: int) -> tuple[MarketLedger, Market]:
    app = build_application(settings)
    return app, setup_market(app, options.seed, listings=2 * clients, buyers=8 * clients)


def _measured(
    app: MarketLedger, run: Callable[[Callable[[], None]], LoadResult]
) -> tuple[LoadResult, int]:
    """Runs a load and returns it with the stored positions written while it was timed
    (the head is read once the clients are connected and warmed up)."""
    log = EventLog(app.recorder)
    before: list[int] = []
    result = run(lambda: before.append(log.head()))
    return result, log.head() - before[0]


def append(options: Options) -> Result:
    """RecordSale then GrantAccess, one command per call, from 16 clients on channels of
    their own, next to one ``Application.save()`` of a new aggregate at a time."""
    clients = APPEND_CLIENTS
    max_pairs = max(4 * clients, options.events // 8)
    with temporary_store(options.backend, options.postgres_url) as settings:
        app, market = _market(settings, options, clients)
        try:
            # Half the baseline before the server runs and half after, so that a
            # machine that slows down or speeds up meanwhile weighs on both sides.
            before = raw_saves(settings, 4 * max_pairs, options.window_s / 2)
            terms = Terms.now()
            with serving(settings, market.exchanges[0]) as server:
                metadata = server.metadata(Role.EXCHANGE)

                def factory(channel: grpc.Channel, client: int) -> Callable[[int], int]:
                    orders = Orders(market, client, clients, options.seed, terms)
                    trades = trade_pb2_grpc.TradeServiceStub(channel)
                    grants = access_pb2_grpc.AccessServiceStub(channel)

                    def pair(n: int) -> int:
                        sale = trades.RecordSale(
                            orders.sale(n), metadata=metadata, timeout=CALL_TIMEOUT_S
                        )
                        grants.GrantAccess(
                            orders.grant(n, sale.trade.id),
                            metadata=metadata,
                            timeout=CALL_TIMEOUT_S,
                        )
                        return 2

                    return pair

                load, stored = _measured(
                    app,
                    lambda started: run_load(
                        server.address,
                        clients,
                        factory,
                        max_pairs,
                        options.window_s,
                        warmup_calls=1,
                        on_start=started,
                    ),
                )
                server_rss = server.peak_rss_mb()
            after = raw_saves(settings, 4 * max_pairs, options.window_s / 2)
        finally:
            app.close()
    baseline_events, baseline_s = before[0] + after[0], before[1] + after[1]
    rate = stored / load.seconds
    baseline = baseline_events / baseline_s
    ratio = rate / baseline
    return Result(
        "append",
        options.backend,
        stored,
        rate,
        "events/s",
        "raw Application.save(), one new aggregate per save",
        baseline,
        ratio,
        ">= 1.0x the baseline's events/s",
        ratio >= 1.0 and not load.errors,
        {
            "clients": clients,
            "commands_per_s": round(load.items_per_s, 1),
            "stored_events_per_command": round(stored / max(1, load.items), 2),
            "pair_p50_ms": round(load.percentile_ms(0.5), 2),
            "pair_p99_ms": round(load.percentile_ms(0.99), 2),
            "errors": dict(load.errors),
            "baseline_saves": baseline_events,
            "baseline_before_after": [round(n / t, 1) for n, t in (before, after)],
            "server_peak_rss_mb": round(server_rss, 1),
        },
    )


def ingest(options: Options) -> Result:
    """IngestCommands batches of 200 commands from a few clients, next to a raw batched
    insert of the rows they wrote into a scratch table of the same database."""
    clients = INGEST_CLIENTS
    size = INGEST_BATCH
    max_calls = max(2 * clients, options.events // (3 * size))
    with temporary_store(options.backend, options.postgres_url) as settings:
        app, market = _market(settings, options, clients)
        try:
            terms = Terms.now()
            failures: list[int] = []
            with deployment(
                settings, market.exchanges[0], options.backend, INGEST_REPLICAS
            ) as servers:

                def factory(channel: grpc.Channel, client: int) -> Callable[[int], int]:
                    # run_load gives client i the address of server i % len(servers).
                    metadata = servers[client % len(servers)].metadata(Role.EXCHANGE)
                    orders = Orders(market, client, clients, options.seed, terms)
                    trades = trade_pb2_grpc.TradeServiceStub(channel)
                    # An exchange sends records it already holds: the requests are built
                    # before the clock starts (as far as a fair share of the calls goes),
                    # so the clients do not take the server's CPU to build them.
                    ready = [orders.batch(n, size) for n in range(2 * max_calls // clients + 2)]

                    def batch(n: int) -> int:
                        request = ready[n] if n < len(ready) else orders.batch(n, size)
                        response = trades.IngestCommands(
                            request, metadata=metadata, timeout=CALL_TIMEOUT_S
                        )
                        failures.append(
                            sum(1 for r in response.results if r.WhichOneof("kind") == "error")
                        )
                        return len(response.results)

                    return batch

                log = EventLog(app.recorder)
                load, stored = _measured(
                    app,
                    lambda started: run_load(
                        [server.address for server in servers],
                        clients,
                        factory,
                        max_calls,
                        options.window_s,
                        warmup_calls=1,
                        on_start=started,
                    ),
                )
                head = log.head()
            rows_per_call = max(1, stored // max(1, load.calls))
            baseline_rows, baseline_s = raw_insert(
                settings, app, head - stored, head, rows_per_call
            )
        finally:
            app.close()
    rate = stored / load.seconds
    baseline = baseline_rows / baseline_s
    ratio = rate / baseline
    return Result(
        "ingest",
        options.backend,
        stored,
        rate,
        "events/s",
        "raw batched insert of the same rows",
        baseline,
        ratio,
        ">= 10,000 events/s and >= 0.25x baseline",
        rate >= 10_000 and ratio >= 0.25 and not load.errors,
        {
            "clients": clients,
            "commands_per_call": size,
            "commands_per_s": round(load.items_per_s, 1),
            "stored_rows_per_call": rows_per_call,
            "call_p50_ms": round(load.percentile_ms(0.5), 1),
            "call_p99_ms": round(load.percentile_ms(0.99), 1),
            "failed_commands": sum(failures),
            "errors": dict(load.errors),
        },
    )


def raw_insert(
    settings: Settings, app: MarketLedger, after: int, upto: int, batch: int
) -> tuple[int, float]:
    """The baseline of ``ingest``: the stored rows at positions ``after+1..upto`` inserted
    again, ``batch`` rows per transaction, into a scratch table shaped like the events
    table; returns the rows inserted and the seconds it took."""
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    env = store_env(settings)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
        return _postgres_insert(env, table, after, upto, batch)
    return _sqlite_insert(env["SQLITE_DBNAME"], table, after, upto, batch)


def _batches(rows: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _postgres_insert(
    env: dict[str, str], table: str, after: int, upto: int, batch: int
) -> tuple[int, float]:
    import psycopg
    from psycopg.sql import SQL, Identifier

    schema = Identifier(env.get("POSTGRES_SCHEMA", "public"))
    scratch = SQL("{}.{}").format(schema, Identifier(SCRATCH_TABLE))
    with psycopg.connect(postgres_conninfo(env, 10)) as conn:
        rows = conn.execute(
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {}.{} "
                "WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id"
            ).format(schema, Identifier(table)),
            (after, upto),
        ).fetchall()
        conn.execute(
            SQL(
                "CREATE TABLE {} (originator_id uuid NOT NULL, originator_version bigint "
                "NOT NULL, topic text, state bytea, notification_id bigserial UNIQUE, "
                "PRIMARY KEY (originator_id, originator_version))"
            ).format(scratch)
        )
        conn.commit()
        insert = SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)"
        ).format(scratch)
        started = time.perf_counter()
        with conn.cursor() as cursor:
            for rows_of_call in _batches(rows, batch):
                cursor.executemany(insert, rows_of_call)
                conn.commit()
        seconds = time.perf_counter() - started
    return len(rows), seconds


def _sqlite_insert(path: str, table: str, after: int, upto: int, batch: int) -> tuple[int, float]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            f"SELECT originator_id, originator_version, topic, state FROM {table} "  # noqa: S608
            "WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (after, upto),
        ).fetchall()
        conn.execute(
            f"CREATE TABLE {SCRATCH_TABLE} (originator_id TEXT, originator_version INTEGER, "
            "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"
        )
        conn.commit()
        started = time.perf_counter()
        for rows_of_call in _batches(rows, batch):
            conn.executemany(
                f"INSERT INTO {SCRATCH_TABLE} (originator_id, originator_version, topic, state) "  # noqa: S608
                "VALUES (?, ?, ?, ?)",
                rows_of_call,
            )
            conn.commit()
        return len(rows), time.perf_counter() - started
    finally:
        conn.close()
