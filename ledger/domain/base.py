"""The base of every aggregate and event: the envelope each event carries."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, ProgrammingError
from eventsourcing.utils import get_topic, resolve_topic

TOPIC_PREFIX = "ledger/"

E = TypeVar("E", bound="LedgerEvent")


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

    @classmethod
    def of(cls: type[E], state: dict[str, Any]) -> E:
        """The event with these field values (every field, nothing else).

        Built as the library's mapper builds an event read from storage, without the
        frozen dataclass's ``__init__`` (a ``object.__setattr__`` per field): a command
        makes several events, and their construction was a large part of its cost. The
        fields keep the dataclass's order, so the stored state is the same either way.
        """
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _field_names(cls)
        if len(state) != len(names):
            missing = sorted(set(names) - set(state))
            unexpected = sorted(set(state) - set(names))
            msg = f"{cls.__qualname__}: missing fields {missing}, unexpected {unexpected}"
            raise TypeError(msg)
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", {name: state[name] for name in names})
        return event

    def mutate(self, aggregate: Any) -> Any:
        if aggregate is not None:
            return super().mutate(aggregate)
        # A created event. The library's ``mutate`` matches the event's fields against
        # the parameters of the aggregate's ``__init__`` on every call; a ledger
        # aggregate's ``__init__`` takes none (``LedgerAggregate.__init_subclass__``
        # makes sure), its state comes from ``apply``.
        cls: type[LedgerAggregate] = resolve_topic(self.originator_topic)  # type: ignore[attr-defined]
        created = cls.__new__(cls)
        created.__base_init__(self.originator_id, self.originator_version, self.timestamp)
        created.__init__()  # type: ignore[misc]
        self.apply(created)
        return created


_FIELD_NAMES: dict[type[LedgerEvent], tuple[str, ...]] = {}


def _field_names(cls: type[LedgerEvent]) -> tuple[str, ...]:
    topic: str | None = getattr(cls, "TOPIC", None)
    if not topic or resolve_topic(topic) is not cls:
        msg = f"{cls.__qualname__} has no registered TOPIC of its own"
        raise ProgrammingError(msg)
    names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


class LedgerAggregate(Aggregate):
    """An aggregate whose events carry an :class:`Act` and the recorded time."""

    TOPIC: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if list(inspect.signature(cls.__init__).parameters) != ["self"]:
            msg = f"{cls.__qualname__}.__init__ takes no arguments: state comes from events"
            raise ProgrammingError(msg)

    def trigger(self, event_class: type[LedgerEvent], act: Act, **fields: Any) -> None:
        """Appends an event of ``event_class`` with the envelope of ``act``."""
        event = event_class.of(
            {
                "originator_id": self.id,
                "originator_version": self.version + 1,
                "timestamp": act.recorded_at,
                "effective_at": act.effective_at,
                "actor": act.actor,
                "role": act.role,
                "request_id": act.request_id,
                **fields,
            }
        )
        event.mutate(self)
        self.pending_events.append(event)


def event_type(topic: str) -> str:
    """Returns the catalogue name of an event or aggregate from its stable topic."""
    return topic.removeprefix(TOPIC_PREFIX)


def create(
    aggregate_class: type[Any], event_class: type[Any], aggregate_id: Any, act: Act, **fields: Any
) -> Any:
    """Creates a new aggregate of ``aggregate_class`` from its first event."""
    if not isinstance(aggregate_id, UUID):
        msg = f"an aggregate id is a UUID, not {aggregate_id!r}"
        raise TypeError(msg)
    event = event_class.of(
        {
            "originator_id": aggregate_id,
            "originator_version": aggregate_class.INITIAL_VERSION,
            "timestamp": act.recorded_at,
            "originator_topic": get_topic(aggregate_class),
            "effective_at": act.effective_at,
            "actor": act.actor,
            "role": act.role,
            "request_id": act.request_id,
            **fields,
        }
    )
    aggregate = event.mutate(None)
    aggregate.pending_events.append(event)
    return aggregate
