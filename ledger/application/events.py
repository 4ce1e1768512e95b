"""The canonical form of stored events: what projections fold, the audit chain hashes and
auditors replay.

A canonical event is a plain dict with exactly the keys of the audit contract
(``service.md``): position, aggregate_id, aggregate_type, version, type, recorded_at,
effective_at, actor, role, request_id, payload. Timestamps are RFC 3339 UTC strings with
microseconds and ``Z``. Infrastructure events (idempotency and uniqueness markers) are not
part of the business log and are skipped.

``canonical_event`` is the reference conversion. ``canonical_rows`` gives the same events
several times faster, because the log is read in bulk (rebuilds, replays): a stored state
whose only tagged values are its envelope's times and top-level payload members (nearly
every one) is converted in place; any other goes through ``canonical_event`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import orjson
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import InterfaceError, Notification, OperationalError
from eventsourcing.utils import retry

from ledger.application.identity import IDENTITY_TOPICS
from ledger.application.markers import INFRASTRUCTURE_TOPICS
from ledger.domain.base import event_type
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade

CanonicalEvent = dict[str, Any]

# A stored event as read in bulk: (position, aggregate id as canonical UUID text,
# aggregate version, topic, state).
StoredRow = tuple[int, str, int, str, bytes]

BUSINESS_AGGREGATES: tuple[type[Any], ...] = (Participant, Listing, Trade, AccessGrant)
ENVELOPE = ("timestamp", "originator_topic", "effective_at", "actor", "role", "request_id")
SKIPPED_TOPICS = INFRASTRUCTURE_TOPICS | IDENTITY_TOPICS

_TAG: Final = b'"_type_"'
# A key or value spelled with a \u escape could hide a tag from a byte count.
_ESCAPE: Final = b"\\u"
_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")


def _event_topics() -> dict[str, tuple[str, str]]:
    """Maps each stable event topic to (event type, aggregate type)."""
    topics: dict[str, tuple[str, str]] = {}
    for aggregate in BUSINESS_AGGREGATES:
        for value in vars(aggregate).values():
            if isinstance(value, type) and issubclass(value, CanMutateAggregate):
                topic = getattr(value, "TOPIC", None)
                if topic and topic.startswith("ledger/"):
                    topics[topic] = (event_type(topic), event_type(aggregate.TOPIC))
    return topics


EVENT_TOPICS = _event_topics()
EVENT_TYPES = frozenset(event for event, _ in EVENT_TOPICS.values())


def utc_text(iso: str) -> str:
    """Normalises a stored ISO 8601 UTC time to ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if len(iso) == 32 and iso.endswith("+00:00"):
        return iso[:26] + "Z"
    if len(iso) == 25 and iso.endswith("+00:00"):  # no fractional part when microsecond is 0
        return iso[:19] + ".000000Z"
    msg = f"stored time {iso!r} is not in UTC"
    raise ValueError(msg)


def _uuid_text(data: str) -> str:
    return f"{data[:8]}-{data[8:12]}-{data[12:16]}-{data[16:20]}-{data[20:]}"


def _plain(value: Any) -> Any:
    """Replaces the transcoder's tagged values (times, UUIDs) by their canonical text."""
    if isinstance(value, dict):
        tag = value.get("_type_")
        if tag == "datetime_iso":
            return utc_text(value["_data_"])
        if tag == "uuid_hex":
            return _uuid_text(value["_data_"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def canonical_event(notification: Notification) -> CanonicalEvent | None:
    """Returns the canonical form of one stored business event, or None for a marker."""
    kinds = EVENT_TOPICS.get(notification.topic)
    if kinds is None:
        if notification.topic in SKIPPED_TOPICS:
            return None
        msg = f"position {notification.id}: unknown event topic {notification.topic!r}"
        raise ValueError(msg)
    state: dict[str, Any] = orjson.loads(notification.state)
    payload = {k: _plain(v) for k, v in state.items() if k not in ENVELOPE}
    return {
        "position": notification.id,
        "aggregate_id": str(notification.originator_id),
        "aggregate_type": kinds[1],
        "version": notification.originator_version,
        "type": kinds[0],
        "recorded_at": utc_text(state["timestamp"]["_data_"]),
        "effective_at": utc_text(state["effective_at"]["_data_"]),
        "actor": state["actor"],
        "role": state["role"],
        "request_id": state["request_id"],
        "payload": payload,
    }


def canonical_rows(rows: Iterable[StoredRow]) -> list[CanonicalEvent]:
    """Returns the canonical events of stored rows in order, markers left out: each equal
    to ``canonical_event``'s, which also raises the errors of rows that have none."""
    events: list[CanonicalEvent] = []
    append = events.append
    topics = EVENT_TOPICS
    loads = orjson.loads
    for position, aggregate_id, version, topic, state in rows:
        kinds = topics.get(topic)
        if kinds is None:
            if topic in SKIPPED_TOPICS:
                continue
            msg = f"position {position}: unknown event topic {topic!r}"
            raise ValueError(msg)
        try:
            split = split_state(loads(state), state, topic)
            if split is None:
                raise _Generic
            data, recorded_at, effective_at, actor, role, request_id = split
            append(
                {
                    "position": position,
                    "aggregate_id": aggregate_id,
                    "aggregate_type": kinds[1],
                    "version": version,
                    "type": kinds[0],
                    "recorded_at": recorded_at[:26] + "Z"
                    if len(recorded_at) == 32 and recorded_at[26:] == "+00:00"
                    else utc_text(recorded_at),
                    "effective_at": effective_at[:26] + "Z"
                    if len(effective_at) == 32 and effective_at[26:] == "+00:00"
                    else utc_text(effective_at),
                    "actor": actor,
                    "role": role,
                    "request_id": request_id,
                    "payload": data,
                }
            )
        except (_Generic, ValueError, KeyError, TypeError, AttributeError):
            # The reference decides: it converts what the fast path does not cover, and
            # raises the error of a state that has no canonical form.
            event = canonical_event(
                Notification(
                    id=position,
                    originator_id=aggregate_id,
                    originator_version=version,
                    topic=topic,
                    state=state,
                )
            )
            if event is not None:
                append(event)
    return events


class _Generic(Exception):
    """A stored state outside the fast path of ``canonical_rows``."""


def split_state(
    data: dict[str, Any], state: bytes, topic: str
) -> tuple[dict[str, Any], str, str, str, str, str] | None:
    """The fast path's reading of a decoded stored state: ``(payload, recorded_at,
    effective_at, actor, role, request_id)``, the times as stored and the payload (what
    is left once the envelope is taken out) untagged; None where the fast path does not
    cover the state, and the reference decoder decides. A malformed state raises
    ``KeyError``, ``TypeError`` or ``AttributeError``."""
    stamp = data.pop("timestamp")
    effective = data.pop("effective_at")
    actor = data.pop("actor")
    role = data.pop("role")
    request_id = data.pop("request_id")
    data.pop("originator_topic", None)
    if not untag_payload(state, topic, stamp, effective, data):
        return None
    return data, stamp["_data_"], effective["_data_"], actor, role, request_id


def untag_payload(state: bytes, topic: str, stamp: Any, effective: Any, payload: Any) -> bool:
    """Whether a stored state is on the fast path of ``canonical_rows``, given the two
    envelope times and the payload that is left once the envelope is taken out of it:
    the times are tagged, and every other tag is a top-level payload member, which this
    replaces by its text (checked by their count). Where it returns False the state goes
    to ``canonical_event``, which converts what the fast path does not cover and raises
    the error of a state that has no canonical form."""
    tags = state.count(_TAG)
    return (
        "_type_" in stamp
        and "_type_" in effective
        # Looking for a backslash first is several times faster (and most states have none).
        and (state.find(b"\\") < 0 or _ESCAPE not in state)
        and (tags == 2 or _untag(payload, tags - 2, topic))
    )


def _untag(payload: dict[str, Any], expected: int, topic: str) -> bool:
    """Replaces tagged times and UUIDs at the payload's top level by their text; True if
    they were all of its ``expected`` tags (else the state is left to the reference).

    The keys found tagged are remembered per topic: a state of the same shape (nearly
    every one) is converted by looking at those keys alone."""
    keys = _TAGGED_KEYS.get(topic)
    if keys is not None and len(keys) == expected and _untag_keys(payload, keys):
        return True
    found: list[str] = []
    for key, value in payload.items():
        if type(value) is dict and "_type_" in value:
            text = _untagged(value)
            if text is None:
                return False
            payload[key] = text
            found.append(key)
    if len(found) != expected:
        return False
    _TAGGED_KEYS[topic] = tuple(found)
    return True


# The payload keys that held the tags of the last state of each topic.
_TAGGED_KEYS: dict[str, tuple[str, ...]] = {}


def _untag_keys(payload: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """``_untag`` on the given keys, each of which must hold a tag it converts."""
    for key in keys:
        value = payload.get(key)
        if type(value) is not dict or "_type_" not in value:
            return False
        text = _untagged(value)
        if text is None:
            return False
        payload[key] = text
    return True


def _untagged(value: dict[str, Any]) -> str | None:
    """The text of a tagged time or UUID (the reference's conversion), else None."""
    tag = value["_type_"]
    if tag == "datetime_iso":
        return utc_text(value["_data_"])
    if tag == "uuid_hex":
        return _uuid_text(value["_data_"])
    return None


class EventLog:
    """Reads the global log in position order, in batches, as canonical events."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._select = _row_reader(recorder)

    def head(self) -> int:
        return int(self.recorder.max_notification_id() or 0)

    def recorded_at(self, position: int) -> float | None:
        """When the first stored event at or after ``position`` was recorded (epoch
        seconds), or None past the head."""
        notifications = self.recorder.select_notifications(position, 1)
        if not notifications:
            return None
        stamp = orjson.loads(notifications[0].state)["timestamp"]["_data_"]
        return datetime.fromisoformat(stamp).timestamp()

    def read(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[list[CanonicalEvent], int]:
        """Returns the business events after ``after`` (at most ``limit`` stored events
        read) and the last position read, which callers track even when every event
        read was a marker."""
        rows, last = self.rows(after, limit, stop)
        return canonical_rows(rows), last

    def rows(
        self, after: int, limit: int, stop: int | None = None
    ) -> tuple[Sequence[StoredRow], int]:
        """Returns the stored rows after ``after`` (at most ``limit``, markers among them)
        and the last position read, as ``read`` does before decoding them."""
        if self._select is not None:
            rows = self._select(after, limit, stop)
            return rows, rows[-1][0] if rows else after
        notifications: Sequence[Notification] = self.recorder.select_notifications(
            after + 1, limit, stop=stop
        )
        stored = [
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in notifications
        ]
        return stored, stored[-1][0] if stored else after


RowReader = Callable[[int, int, "int | None"], Sequence[StoredRow]]


def _row_reader(recorder: Any) -> RowReader | None:
    """Reads the store's table directly, as plain rows with the aggregate id already in its
    canonical text (the library's reads build a ``Notification`` and a ``UUID`` per event);
    None for a recorder that only offers ``select_notifications``."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    if isinstance(recorder, PostgresApplicationRecorder):
        return _postgres_reader(recorder)
    if (
        isinstance(recorder, SQLiteApplicationRecorder)
        and recorder.datastore.originator_id_type == "uuid"
    ):
        return _sqlite_reader(recorder)
    return None


def _postgres_reader(recorder: Any) -> RowReader:
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    # One open-ended statement, an upper bound applied to its rows: given a bound too
    # (``notification_id <= stop``), the planner of a table without statistics (a store
    # just loaded, with autovacuum off or not yet run) estimated the range's rows badly
    # and sorted everything after ``after`` on disk instead of walking the index, for
    # every batch. A range (after, stop] holds at most stop - after positions, so the
    # first min(limit, stop - after) rows after ``after`` include the first ``limit`` of it.
    open_ended = SQL(
        "SELECT notification_id, originator_id::text, originator_version, topic, state "
        "FROM {schema}.{table} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
    )

    # As the library's own reads: a connection lost since it was pooled is replaced.
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select(after: int, limit: int, stop: int | None) -> Sequence[StoredRow]:
        if stop is not None:
            if stop <= after:
                return []
            limit = min(limit, stop - after)
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.row_factory = tuple_row
            # Binary results: the states arrive as bytes, not as hex text to decode.
            cursor.execute(open_ended, (after, limit), prepare=True, binary=True)
            rows: list[StoredRow] = cursor.fetchall()
        if stop is not None and rows and rows[-1][0] > stop:
            rows = [row for row in rows if row[0] <= stop]
        return rows

    return select


def _sqlite_reader(recorder: Any) -> RowReader:
    table = recorder.events_table_name
    columns = "SELECT rowid, originator_id, originator_version, topic, state"
    open_ended = f"{columns} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?"
    bounded = f"{columns} FROM {table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?"
    hex_id = _HEX_ID.fullmatch

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select(after: int, limit: int, stop: int | None) -> Sequence[StoredRow]:
        with recorder.datastore.transaction(commit=False) as cursor:
            if stop is None:
                cursor.execute(open_ended, (after, limit))
            else:
                cursor.execute(bounded, (after, stop, limit))
            rows = cursor.fetchall()
        # The library stores UUIDs as 32 lowercase hex digits.
        return [
            (
                position,
                _uuid_text(stored) if hex_id(stored) else str(UUID(stored)),
                version,
                topic,
                state,
            )
            for position, stored, version, topic, state in rows
        ]

    return select
