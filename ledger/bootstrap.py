"""The composition root: builds the ledger's parts from :class:`Settings`.

Nothing connects at import; entry points and tests call these functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.application.app import MarketLedger
from ledger.application.events import EventLog
from ledger.application.guard import StoreGuard
from ledger.application.recorders import FENCED_FACTORIES
from ledger.clock import Clock
from ledger.domain.errors import InvalidArgument, Unavailable
from ledger.projections.db import Database, PostgresDatabase, SqliteDatabase
from ledger.projections.engine import ProjectionManager
from ledger.projections.leases import AlwaysHeld, Leases, PostgresLeases, lock_key
from ledger.projections.listen import LogListener
from ledger.settings import Settings

if TYPE_CHECKING:
    from ledger.audit.replay_workers import ReplayWorkers


def store_env(settings: Settings) -> dict[str, str]:
    """Translates ``LEDGER_DATABASE_URL`` into the event store library's settings.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``;
    ``postgresql://user:password@host:port/dbname?schema=name``; ``memory:`` (tests only).
    """
    url = settings.database_url
    parts = urlsplit(url)
    if parts.scheme == "memory":
        # In-process only (tests): nothing survives the process.
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        dbname = path[1:] if path.startswith("/") else path
        if not dbname:
            raise InvalidArgument.of("database_url", f"no database file in {url!r}")
        if dbname != ":memory:" and not dbname.startswith("file:"):
            Path(dbname).parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": dbname,
            "SQLITE_LOCK_TIMEOUT": str(int(settings.connect_timeout_s)),
        }
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qs(parts.query)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": str(settings.pool_size),
            "POSTGRES_MAX_OVERFLOW": str(settings.pool_size),
            # The pool's wait for a free connection; the library retries it ten times.
            "POSTGRES_CONNECT_TIMEOUT": str(max(1, int(settings.connect_timeout_s))),
            "POSTGRES_MAX_WAITING": "64",
            # A connection that dies with the server is replaced before use.
            "POSTGRES_PRE_PING": "y",
            "POSTGRES_LOCK_TIMEOUT": str(max(1, int(settings.connect_timeout_s))),
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "30",
        }
        if "schema" in query:
            env["POSTGRES_SCHEMA"] = query["schema"][0]
        return env
    raise InvalidArgument.of(
        "database_url",
        f"unsupported scheme {parts.scheme!r}: use sqlite:///path.db or postgresql://…",
    )


def backend_name(settings: Settings) -> str:
    scheme = urlsplit(settings.database_url).scheme
    return {"postgres": "postgresql"}.get(scheme, scheme)


def ensure_schema(env: dict[str, str]) -> None:
    """Creates the configured PostgreSQL schema if it is missing (tables come with the app)."""
    schema = env.get("POSTGRES_SCHEMA")
    if not schema:
        return
    import psycopg
    from psycopg.sql import SQL, Identifier

    conninfo = postgres_conninfo(env, int(env["POSTGRES_CONNECT_TIMEOUT"]))
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
    except psycopg.OperationalError as e:
        raise Unavailable(f"PostgreSQL is unavailable: {e}") from e


def postgres_conninfo(env: dict[str, str], connect_timeout_s: int) -> str:
    import psycopg

    return psycopg.conninfo.make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        connect_timeout=str(connect_timeout_s),
    )


def store_probe(env: dict[str, str]) -> Callable[[], None] | None:
    """A cheap check that the database answers, on a connection of its own (not the pool's,
    whose waits and retries are what the guard exists to cut short)."""
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        return None
    return _KeptProbe(postgres_conninfo(env, 1))


class _KeptProbe:
    """``SELECT 1`` on one connection kept between probes (a new connection each time
    made the database start a backend process twice a second for every ledger process).
    A failure on the kept connection is tried once more on a new one, because a server
    that restarted has closed it; unacknowledged sends fail after a second."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: Any = None

    def __call__(self) -> None:
        import psycopg

        for attempt in (1, 2):
            if self._conn is None:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, tcp_user_timeout=1000)
            try:
                self._conn.execute("SELECT 1")
                return
            except psycopg.Error:
                conn, self._conn = self._conn, None
                conn.close()
                if attempt == 2:
                    raise


def _reconnect_promptly() -> None:
    """Makes the connection pool retry a lost server every quarter second instead of
    backing off exponentially (to minutes): a ledger must be back as soon as its database is."""
    from psycopg_pool.base import AttemptWithBackoff

    AttemptWithBackoff.INITIAL_DELAY = 0.25
    AttemptWithBackoff.DELAY_BACKOFF = 1.0


def _guard_connections(app: MarketLedger) -> None:
    """Routes every connection the recorder takes through the guard: while the store is
    down the library's retry loop ends at once (``Unavailable`` is not an error it retries),
    and a connection that fails trips the guard for every other caller."""
    datastore = app.recorder.datastore  # type: ignore[attr-defined]
    take_connection = datastore.get_connection
    guard = app.guard

    @contextmanager
    def guarded_connection() -> Iterator[Any]:
        guard.check()
        try:
            with take_connection() as conn:
                yield conn
        except (OperationalError, InterfaceError) as e:
            guard.trip(str(e))
            raise

    datastore.get_connection = guarded_connection


# Aggregates stay cached between commands; each read still fetches the events written
# since (by any process), and hands out a copy, so a rejected command corrupts nothing.
CACHE_ENV = {
    "AGGREGATE_CACHE_MAXSIZE": "20000",
    "AGGREGATE_CACHE_FASTFORWARD": "y",
    "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
}


@contextmanager
def one_setup_at_a_time(env: dict[str, str]) -> Iterator[None]:
    """On PostgreSQL, lets one process at a time set up a store (its schema, the event
    store's tables, type and function, the projections' tables). Run at once by two
    processes, such statements fail even with IF NOT EXISTS ("duplicate key value",
    "tuple concurrently updated"), and server replicas may well start together."""
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        yield
        return
    import psycopg

    key = lock_key(env.get("POSTGRES_SCHEMA") or "public", "store set-up")
    conninfo = postgres_conninfo(env, int(env["POSTGRES_CONNECT_TIMEOUT"]))
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as e:
        raise Unavailable(f"PostgreSQL is unavailable: {e}") from e
    with conn:
        # A session lock: released by the unlock, or by the server if this process dies.
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            # If the connection is gone, so is the lock.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def build_application(settings: Settings, clock: Clock | None = None) -> MarketLedger:
    """Builds the ledger application on the configured event store."""
    env = {**store_env(settings), **CACHE_ENV}
    env["PERSISTENCE_MODULE"] = FENCED_FACTORIES[env["PERSISTENCE_MODULE"]]
    probe = store_probe(store_env(settings))
    if probe is not None:
        _reconnect_promptly()
    try:
        with one_setup_at_a_time(store_env(settings)):
            ensure_schema(env)
            app = MarketLedger(env=env, clock=clock)
        if probe is not None:
            app.guard = StoreGuard(probe)
            _guard_connections(app)
        return app
    except (OperationalError, InterfaceError) as e:
        raise Unavailable(f"the event store is unavailable: {e}") from e


def build_projections(settings: Settings, app: MarketLedger) -> ProjectionManager:
    """Builds the projection engine on the event store's database, set up and woken by
    every write of ``app``."""
    from ledger.projections.registry import all_projections

    env = store_env(settings)
    module = env["PERSISTENCE_MODULE"]
    db: Database
    leases: Leases = AlwaysHeld()
    if module == "eventsourcing.postgres":
        conninfo = postgres_conninfo(env, max(1, int(settings.connect_timeout_s)))
        schema = env.get("POSTGRES_SCHEMA", "public")
        # A read (CheckAccess) holds a connection for one statement; as many as the event
        # store's pool, since every server replica's connections count against the
        # database's limit. A read waits for a connection no longer than one takes to
        # open: while the database is down, a few reads stuck in the pool would otherwise
        # hold the server's read threads past their callers' deadlines.
        db = PostgresDatabase(
            conninfo,
            schema,
            check=app.guard.check,
            read_pool_size=settings.pool_size,
            pool_timeout_s=max(1.0, settings.connect_timeout_s),
        )
        leases = PostgresLeases(conninfo, schema)
    elif module == "eventsourcing.sqlite":
        db = SqliteDatabase(env["SQLITE_DBNAME"])
    else:
        db = SqliteDatabase(":memory:")
    manager = ProjectionManager(
        db, EventLog(app.recorder), all_projections(settings), leases=leases
    )
    with one_setup_at_a_time(env):
        manager.setup()
    app.write_listeners.append(lambda _position: manager.wake())
    if module == "eventsourcing.postgres":
        # Other processes' writes (replicas, a separate projection worker) wake it too.
        channel: str = app.recorder.channel_name  # type: ignore[attr-defined]
        manager.listener = LogListener(conninfo, channel, manager.wake)
    return manager


def build_replay_workers(
    settings: Settings, app: MarketLedger, db: Database
) -> ReplayWorkers | None:
    """The pool of processes that read and encode a server's ``ReplayEvents`` streams
    (``settings.replay_workers`` of them, not started yet); None where the server encodes
    them itself: with 0, or on a store that no other process can open (in memory)."""
    from ledger.audit.replay_workers import MAX_PROCESSES, ReplayWorkers
    from ledger.audit.stored import store_address

    count = settings.replay_workers
    if not 0 <= count <= MAX_PROCESSES:
        raise ValueError(
            f"LEDGER_REPLAY_WORKERS: expected 0 (none: the server encodes replays itself) "
            f"to {MAX_PROCESSES}, not {count}"
        )
    address = store_address(app.recorder, db)
    if count == 0 or address is None:
        return None
    return ReplayWorkers(address, count)
