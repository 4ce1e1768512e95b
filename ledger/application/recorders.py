"""Event recorders that also check *read fences*.

A command's rules often read an aggregate they do not change (a sale checks that its
seller and buyer are ACTIVE). Writing to those aggregates would make every sale by one
party conflict with every other; not checking them at all would let a sale commit after
a concurrent suspension of its seller. A read fence is the middle way: the command passes
``read_versions={aggregate_id: version}`` to ``save``, and the recorder, inside the same
transaction and after it holds the write lock, fails with ``IntegrityError`` if any of
those aggregates has moved on. The command is then retried against the new state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteFactory
from eventsourcing.utils import Environment, EnvType
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier

ReadVersions = Mapping[UUID, int]
# ``select_events_after({aggregate_id: version})`` returns each aggregate's stored events
# after the given version, in order: one query for a whole batch of commands instead of
# one per aggregate.
After = Mapping[UUID, int]
EventsById = dict[UUID, list[StoredEvent]]

_SQLITE_CHUNK = 500


def array_literal(values: Iterable[UUID | int]) -> str:
    """A PostgreSQL array literal of ids or integers (cast in the statement): their
    text needs no quoting, and one string is several times cheaper to send than an
    array psycopg dumps element by element (1 ms of CPU for 600 ids, as text)."""
    return "{" + ",".join(map(str, values)) + "}"


@contextmanager
def _as_library_errors() -> Iterator[None]:
    """psycopg's errors as the library's ``get_connection`` raises them (the callers
    catch the library's), for a connection held across several uses."""
    try:
        yield
    except psycopg.InterfaceError as e:
        raise InterfaceError(str(e)) from e
    except psycopg.OperationalError as e:
        raise OperationalError(str(e)) from e
    except psycopg.DataError as e:
        raise DataError(str(e)) from e
    except psycopg.IntegrityError as e:
        raise IntegrityError(str(e)) from e
    except psycopg.InternalError as e:
        raise InternalError(str(e)) from e
    except psycopg.ProgrammingError as e:
        raise ProgrammingError(str(e)) from e
    except psycopg.NotSupportedError as e:
        raise NotSupportedError(str(e)) from e
    except psycopg.DatabaseError as e:
        raise DatabaseError(str(e)) from e


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def _moved(read_versions: ReadVersions, current: Mapping[UUID, int]) -> list[UUID]:
    return [i for i, version in read_versions.items() if current.get(i, 0) != version]


def _fail(moved: list[UUID]) -> None:
    msg = f"read fence: {', '.join(map(str, moved))} changed since the command read them"
    raise IntegrityError(msg)


class FencedPostgresApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = threading.local()
        take_connection = self.datastore.get_connection

        @contextmanager
        def get_connection() -> Iterator[Any]:
            held = getattr(self._held, "connection", None)
            if held is None:
                with take_connection() as conn:
                    yield conn
            else:
                with _as_library_errors():
                    yield held

        self.datastore.get_connection = get_connection  # type: ignore[method-assign]
        # One typed array per column instead of an array of the composite type: ids and
        # versions as array literals, topics and states in binary, without per-row text
        # escaping, which makes large batches several times cheaper to send.
        self.insert_events_statement = self._on_events(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::uuid[], %s::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        )
        # Each aggregate's newer events by a probe of the events' key: a lateral subquery
        # that cannot be flattened (OFFSET 0) keeps the planner of a table without
        # statistics (a store just loaded, autovacuum off) from merging the ids with a
        # walk of the whole index instead, which grows with the store (25 ms a batch at
        # 100k events, against well under 1 ms).
        self.select_events_after_statement = self._on_events(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%s::uuid[], %s::bigint[]) AS r(id, version) "
            "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state "
            "FROM {schema}.{table} "
            "WHERE originator_id = r.id AND originator_version > r.version OFFSET 0) AS e "
            "ORDER BY e.originator_id, e.originator_version"
        )
        # The read fence (see ``_insert_events``).
        self.fence_statement = self._on_events(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM {schema}.{table} e "
            "JOIN unnest(%s::uuid[], %s::bigint[]) AS r(id, version) "
            "ON e.originator_id = r.id AND e.originator_version = r.version + 1"
        )

    def _on_events(self, text: str) -> Composed:
        """A statement on the events table, named ``{schema}.{table}`` in ``text``."""
        return SQL(text).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
        )

    def _insert_stored_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.row_factory = tuple_row
        curs.execute(
            self.insert_events_statement,
            (
                array_literal(_as_uuid(e.originator_id) for e in stored_events),
                array_literal(e.originator_version for e in stored_events),
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        read_versions: ReadVersions | None = kwargs.get("read_versions")
        if not read_versions:
            return
        # Under the table lock every earlier write is committed and visible to the fence
        # (READ COMMITTED takes a snapshot per statement). The fence fails *in the
        # database*: if a read aggregate has an event after the version read, that event
        # is inserted again, which breaks the events' unique key. The inner pipeline
        # block syncs on exit, so that failure is raised here, before the events' own
        # insert is queued, and it unwinds (and rolls back) the recorder's transaction.
        ids, versions = zip(*read_versions.items(), strict=True)
        with curs.connection.pipeline():
            self._lock_table(curs)
            curs.execute(self.fence_statement, (array_literal(ids), array_literal(versions)))

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = [row[0] for row in curs.fetchall()]
        if len(ids) != len(stored_events):
            msg = f"{len(ids)} notification ids for {len(stored_events)} events"
            raise ProgrammingError(msg)
        return ids

    @contextmanager
    def one_connection(self) -> Iterator[None]:
        """Within the block, this thread's reads and writes take one connection from the
        pool: a batch's read and write then cost one checkout (and one liveness check of
        the connection, a round trip) instead of one each."""
        if getattr(self._held, "connection", None) is not None:
            yield
            return
        with self.datastore.get_connection() as conn:
            self._held.connection = conn
            try:
                yield
            finally:
                self._held.connection = None

    def select_events_after(self, after: After) -> EventsById:
        found: EventsById = {}
        if not after:
            return found
        ids, versions = zip(*after.items(), strict=True)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self.select_events_after_statement,
                (array_literal(ids), array_literal(versions)),
                prepare=True,
            )
            for row in curs.fetchall():
                found.setdefault(row["originator_id"], []).append(
                    StoredEvent(
                        originator_id=row["originator_id"],
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                )
        return found


class FencedSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # After the inserts this transaction holds the write lock, so no other write can
        # commit before it and what it reads is the latest state.
        returning = super()._insert_events(c, stored_events, **kwargs)
        read_versions: ReadVersions | None = kwargs.get("read_versions")
        if read_versions:
            marks = ",".join("?" * len(read_versions))
            c.execute(
                f"SELECT originator_id, MAX(originator_version) FROM {self.events_table_name} "  # noqa: S608
                f"WHERE originator_id IN ({marks}) GROUP BY originator_id",
                [i.hex for i in read_versions],
            )
            current = {UUID(row[0]): row[1] for row in c.fetchall()}
            moved = _moved(read_versions, current)
            if moved:
                _fail(moved)
        return returning

    def select_events_after(self, after: After) -> EventsById:
        found: EventsById = {}
        items = list(after.items())
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(items), _SQLITE_CHUNK):
                chunk = dict(items[start : start + _SQLITE_CHUNK])
                by_hex = {i.hex: i for i in chunk}
                c.execute(
                    "SELECT originator_id, originator_version, topic, state "  # noqa: S608
                    f"FROM {self.events_table_name} "
                    f"WHERE originator_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY originator_id, originator_version",
                    list(by_hex),
                )
                for row in c.fetchall():
                    originator_id = by_hex[row["originator_id"]]
                    if row["originator_version"] > chunk[originator_id]:
                        found.setdefault(originator_id, []).append(
                            StoredEvent(
                                originator_id=originator_id,
                                originator_version=row["originator_version"],
                                topic=row["topic"],
                                state=row["state"],
                            )
                        )
        return found


class FencedPOPOApplicationRecorder(POPOApplicationRecorder):
    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        read_versions: ReadVersions | None = kwargs.get("read_versions")
        if read_versions:
            current = {i: max(self._stored_events_index[str(i)], default=0) for i in read_versions}
            moved = _moved(read_versions, current)
            if moved:
                _fail(moved)

    def select_events_after(self, after: After) -> EventsById:
        found: EventsById = {}
        for originator_id, version in after.items():
            events = list(self.select_events(originator_id, gt=version))
            if events:
                found[originator_id] = events
        return found


class FencedPostgresFactory(PostgresFactory):
    application_recorder_class = FencedPostgresApplicationRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # Short statements only: PostgreSQL's JIT compiler spent tens of milliseconds on
        # any whose estimate passed jit_above_cost, as the estimates of a table without
        # statistics (a store just loaded, autovacuum off) do, for sub-millisecond work.
        # Given at connect (the pool opens at its first use), it costs no round trip.
        pool_kwargs = self.datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict)
        pool_kwargs["options"] = "-c jit=off"


class FencedSQLiteFactory(SQLiteFactory):
    application_recorder_class = FencedSQLiteApplicationRecorder


class FencedPOPOFactory(POPOFactory):
    def application_recorder(self) -> POPOApplicationRecorder:
        return FencedPOPOApplicationRecorder()


# The library's persistence module → the fenced factory used in its place.
FENCED_FACTORIES = {
    "eventsourcing.postgres": "ledger.application.recorders:FencedPostgresFactory",
    "eventsourcing.sqlite": "ledger.application.recorders:FencedSQLiteFactory",
    "eventsourcing.popo": "ledger.application.recorders:FencedPOPOFactory",
}
