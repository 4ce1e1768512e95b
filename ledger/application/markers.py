"""Idempotency and uniqueness markers: aggregates saved in the same write as the events
they guard, so a retried or duplicated command can never write twice."""

from __future__ import annotations

from functools import lru_cache
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, create

# Namespaces of derived ids: fixed forever, because ids derived from them are stored.
REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ledger:v1:request")
ENTITY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ledger:v1:entity")
PARTY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ledger:v1:party")


# A command derives the same ids several times (to load them, to check for a replay, to
# create them); uuid5 is a SHA-1 and an object, so recent ones are kept.
@lru_cache(maxsize=8192)
def request_marker_id(request_id: str) -> UUID:
    return uuid5(REQUEST_NAMESPACE, request_id)


@lru_cache(maxsize=8192)
def entity_id(kind: str, request_id: str) -> UUID:
    """The id of the entity a command creates, derived from its request_id."""
    return uuid5(ENTITY_NAMESPACE, f"{kind}:{request_id}")


def party_key_id(party_key: str) -> UUID:
    return uuid5(PARTY_NAMESPACE, party_key)


class RequestMarker(LedgerAggregate):
    """Records that a request_id was used, by which request, with which result."""

    TOPIC = "ledger/RequestMarker"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/RequestAccepted"
        command: str
        fingerprint: str
        resource_type: str
        resource_id: str
        resource_version: int

        def apply(self, aggregate: RequestMarker) -> None:
            aggregate.command = self.command
            aggregate.fingerprint = self.fingerprint
            aggregate.resource_type = self.resource_type
            aggregate.resource_id = self.resource_id
            aggregate.resource_version = self.resource_version

    command: str
    fingerprint: str
    resource_type: str
    resource_id: str
    resource_version: int

    def __init__(self) -> None:
        """State is set by the created event's ``apply``."""

    @classmethod
    def accept(
        cls,
        command: str,
        fingerprint: str,
        resource: LedgerAggregate,
        act: Act,
    ) -> RequestMarker:
        marker: RequestMarker = create(
            cls,
            cls.Created,
            request_marker_id(act.request_id),
            act,
            command=command,
            fingerprint=fingerprint,
            resource_type=type(resource).__name__,
            resource_id=str(resource.id),
            resource_version=resource.version,
        )
        return marker


class PartyKey(LedgerAggregate):
    """Claims a legal identity (USCC or foreign registry number) for one participant."""

    TOPIC = "ledger/PartyKey"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/PartyKeyClaimed"
        party_key: str
        participant_id: str

        def apply(self, aggregate: PartyKey) -> None:
            aggregate.party_key = self.party_key
            aggregate.participant_id = self.participant_id

    party_key: str
    participant_id: str

    def __init__(self) -> None:
        """State is set by the created event's ``apply``."""

    @classmethod
    def claim(cls, party_key: str, participant_id: UUID, act: Act) -> PartyKey:
        key: PartyKey = create(
            cls,
            cls.Created,
            party_key_id(party_key),
            act,
            party_key=party_key,
            participant_id=str(participant_id),
        )
        return key


# Infrastructure events: kept in the log for durability, not part of the business catalogue.
INFRASTRUCTURE_TOPICS = frozenset({RequestMarker.Created.TOPIC, PartyKey.Created.TOPIC})
