"""The canonical form of stored events: what projections fold, the audit chain hashes and
auditors replay.

A canonical event is a plain dict with exactly the keys of the audit contract
(``service.md``): position, aggregate_id, aggregate_type, version, type, recorded_at,
effective_at, actor, role, request_id, payload. Timestamps are RFC 3339 UTC strings with
microseconds and ``Z``. Infrastructure events (idempotency and uniqueness markers) are not
part of the business log and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import Notification

from ledger.application.identity import IDENTITY_TOPICS
from ledger.application.markers import INFRASTRUCTURE_TOPICS
from ledger.domain.base import event_type
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade

CanonicalEvent = dict[str, Any]

BUSINESS_AGGREGATES: tuple[type[Any], ...] = (Participant, Listing, Trade, AccessGrant)
ENVELOPE = ("timestamp", "originator_topic", "effective_at", "actor", "role", "request_id")
SKIPPED_TOPICS = INFRASTRUCTURE_TOPICS | IDENTITY_TOPICS


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


def _plain(value: Any) -> Any:
    """Replaces the transcoder's tagged values (times, UUIDs) by their canonical text."""
    if isinstance(value, dict):
        tag = value.get("_type_")
        if tag == "datetime_iso":
            return utc_text(value["_data_"])
        if tag == "uuid_hex":
            data = value["_data_"]
            return f"{data[:8]}-{data[8:12]}-{data[12:16]}-{data[16:20]}-{data[20:]}"
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


def canonical_events(notifications: Iterable[Notification]) -> list[CanonicalEvent]:
    events = []
    for notification in notifications:
        event = canonical_event(notification)
        if event is not None:
            events.append(event)
    return events


class EventLog:
    """Reads the global log in position order, in batches, as canonical events."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

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
        notifications: Sequence[Notification] = self.recorder.select_notifications(
            after + 1, limit, stop=stop
        )
        if not notifications:
            return [], after
        return canonical_events(notifications), notifications[-1].id
