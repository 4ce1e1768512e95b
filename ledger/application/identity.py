"""The ledger's identity: a stable id per event store, written by the first server to start.

Checkpoints are signed over the ledger id, so it must never change for a store; it is
kept in the store itself, as a small aggregate at a fixed id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import NAMESPACE_URL, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, create

if TYPE_CHECKING:
    from ledger.application.app import MarketLedger

# Fixed forever: every server of a store looks the identity up at this id.
IDENTITY_ID = uuid5(uuid5(NAMESPACE_URL, "urn:ledger:v1:identity"), "ledger")

SYSTEM_ACTOR = "ledger"
SYSTEM_ROLE = "system"


class LedgerIdentity(LedgerAggregate):
    """Names the ledger an event store holds."""

    TOPIC = "ledger/LedgerIdentity"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/LedgerInitialised"
        ledger_id: str

        def apply(self, aggregate: LedgerIdentity) -> None:
            aggregate.ledger_id = self.ledger_id

    ledger_id: str

    def __init__(self) -> None:
        """State is set by the created event's ``apply``."""

    @classmethod
    def initialise(cls, act: Act) -> LedgerIdentity:
        identity: LedgerIdentity = create(
            cls, cls.Created, IDENTITY_ID, act, ledger_id=str(uuid4())
        )
        return identity


# Infrastructure events, like the request markers: not part of the business catalogue.
IDENTITY_TOPICS = frozenset({LedgerIdentity.Created.TOPIC})


def ensure_ledger_id(app: MarketLedger) -> str:
    """Returns the store's ledger id, writing a new one if the store has none yet.

    Safe when several servers start at once: one write wins, the others read it.
    """
    with app.database_errors():
        found = _read(app)
        if found is not None:
            return found
        now = app.clock.now()
        act = Act(
            actor=SYSTEM_ACTOR,
            role=SYSTEM_ROLE,
            request_id=str(IDENTITY_ID),
            effective_at=now,
            recorded_at=now,
        )
        identity = LedgerIdentity.initialise(act)
        try:
            app.save(identity)
        except IntegrityError:
            found = _read(app)
            assert found is not None  # for mypy: the winner's write is committed
            return found
        return identity.ledger_id


def _read(app: MarketLedger) -> str | None:
    try:
        identity: LedgerAggregate = app.repository.get(IDENTITY_ID)
    except AggregateNotFoundError:
        return None
    assert isinstance(identity, LedgerIdentity)  # for mypy
    return identity.ledger_id
