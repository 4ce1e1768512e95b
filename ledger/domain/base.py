"""The base of every aggregate and event: the envelope each event carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.domain import Aggregate

TOPIC_PREFIX = "ledger/"


@dataclass(frozen=True)
class Act:
    """Who acts, on whose request, and when: the envelope of every event of one command.

    ``recorded_at`` is the server clock when the command was accepted; ``effective_at`` is
    when the act took effect in the world, given by the caller, never after ``recorded_at``.
    """

    actor: str
    role: str
    request_id: str
    effective_at: datetime
    recorded_at: datetime


class LedgerEvent(Aggregate.Event):
    """An event of the catalogue: a past-tense fact with its envelope."""

    effective_at: datetime
    actor: str
    role: str
    request_id: str


class LedgerAggregate(Aggregate):
    """An aggregate whose events carry an :class:`Act` and the recorded time."""

    TOPIC: ClassVar[str]

    def trigger(self, event_class: type[LedgerEvent], act: Act, **fields: Any) -> None:
        """Appends an event of ``event_class`` with the envelope of ``act``."""
        self.trigger_event(
            event_class,
            timestamp=act.recorded_at,
            effective_at=act.effective_at,
            actor=act.actor,
            role=act.role,
            request_id=act.request_id,
            **fields,
        )


def event_type(topic: str) -> str:
    """Returns the catalogue name of an event or aggregate from its stable topic."""
    return topic.removeprefix(TOPIC_PREFIX)


def create(
    aggregate_class: type[Any], event_class: type[Any], aggregate_id: Any, act: Act, **fields: Any
) -> Any:
    """Creates a new aggregate of ``aggregate_class`` from its first event."""
    return aggregate_class._create(
        event_class,
        id=aggregate_id,
        timestamp=act.recorded_at,
        effective_at=act.effective_at,
        actor=act.actor,
        role=act.role,
        request_id=act.request_id,
        **fields,
    )
