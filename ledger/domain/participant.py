"""Participants (organisations of the market) and their certifications."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, create
from ledger.domain.errors import InvalidArgument, InvalidState, NotFound
from ledger.domain.rules import check_r16_not_revoked, check_r16_revocation_reason
from ledger.domain.values import (
    CERTIFIABLE_ROLES,
    Category,
    CertificationLevel,
    CertificationState,
    Classification,
    ParticipantRole,
    ParticipantState,
    PartyIdentifier,
    RevocationReason,
    covers,
    names,
)


@dataclass(frozen=True)
class Certification:
    """A certification issued by the registry; EXPIRED is derived from the time."""

    id: str
    level: CertificationLevel
    categories: frozenset[Category]
    max_classification: Classification
    valid_from: datetime
    valid_until: datetime
    reference: str
    state: CertificationState = CertificationState.VALID
    revocation_reason: RevocationReason | None = None
    note: str = ""

    def state_at(self, at: datetime) -> CertificationState:
        if self.state is CertificationState.VALID and at >= self.valid_until:
            return CertificationState.EXPIRED
        return self.state

    def is_valid_at(self, at: datetime) -> bool:
        return self.state is CertificationState.VALID and covers(
            self.valid_from, self.valid_until, at
        )

    def covers(self, category: Category | None, classification: Classification | None) -> bool:
        if category is not None and category not in self.categories:
            return False
        return classification is None or classification.rank <= self.max_classification.rank


class Participant(LedgerAggregate):
    """An organisation identified by its USCC or foreign registry number."""

    TOPIC = "ledger/Participant"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/ParticipantRegistered"
        party: dict[str, Any]
        name: str
        roles: list[str]

        def apply(self, aggregate: Participant) -> None:
            aggregate.party = PartyIdentifier.from_json(self.party)
            aggregate.name = self.name
            aggregate.roles = frozenset(ParticipantRole[r] for r in self.roles)
            aggregate.state = ParticipantState.ACTIVE
            aggregate.certifications = {}
            aggregate.grant_ids = set()

    class Suspended(LedgerEvent):
        TOPIC = "ledger/ParticipantSuspended"
        note: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.state = ParticipantState.SUSPENDED

    class Reinstated(LedgerEvent):
        TOPIC = "ledger/ParticipantReinstated"

        def apply(self, aggregate: Participant) -> None:
            aggregate.state = ParticipantState.ACTIVE

    class Deregistered(LedgerEvent):
        TOPIC = "ledger/ParticipantDeregistered"
        note: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.state = ParticipantState.DEREGISTERED

    class CertificationIssued(LedgerEvent):
        TOPIC = "ledger/CertificationIssued"
        certification_id: str
        level: str
        categories: list[str]
        max_classification: str
        valid_from: datetime
        valid_until: datetime
        reference: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.certifications[self.certification_id] = Certification(
                id=self.certification_id,
                level=CertificationLevel[self.level],
                categories=frozenset(Category[c] for c in self.categories),
                max_classification=Classification[self.max_classification],
                valid_from=self.valid_from,
                valid_until=self.valid_until,
                reference=self.reference,
            )

    class CertificationSuspended(LedgerEvent):
        TOPIC = "ledger/CertificationSuspended"
        certification_id: str
        note: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.set_certification_state(self.certification_id, CertificationState.SUSPENDED)

    class CertificationReinstated(LedgerEvent):
        TOPIC = "ledger/CertificationReinstated"
        certification_id: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.set_certification_state(self.certification_id, CertificationState.VALID)

    class CertificationRevoked(LedgerEvent):
        TOPIC = "ledger/CertificationRevoked"
        certification_id: str
        reason: str
        note: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.set_certification_state(
                self.certification_id,
                CertificationState.REVOKED,
                revocation_reason=RevocationReason[self.reason],
                note=self.note,
            )

    class GrantActivated(LedgerEvent):
        """A grant to this participant became active (R14: grants race suspensions here)."""

        TOPIC = "ledger/ParticipantGrantActivated"
        grant_id: str

        def apply(self, aggregate: Participant) -> None:
            aggregate.grant_ids.add(self.grant_id)

    party: PartyIdentifier
    name: str
    roles: frozenset[ParticipantRole]
    state: ParticipantState
    certifications: dict[str, Certification]
    grant_ids: set[str]

    # --- commands -------------------------------------------------------------------

    def __init__(self) -> None:
        """State is set by the created event's ``apply``, on creation and on replay."""

    @classmethod
    def register(
        cls,
        participant_id: UUID,
        party: PartyIdentifier,
        name: str,
        roles: frozenset[ParticipantRole],
        act: Act,
    ) -> Participant:
        if not name.strip():
            raise InvalidArgument.of("name", "must not be empty")
        if not roles:
            raise InvalidArgument.of("roles", "a participant has at least one role")
        participant: Participant = create(
            cls,
            cls.Created,
            participant_id,
            act,
            party=party.to_json(),
            name=name.strip(),
            roles=names(roles),
        )
        return participant

    def suspend(self, note: str, act: Act) -> None:
        self._require_state(ParticipantState.ACTIVE, "suspend")
        self.trigger(self.Suspended, act, note=note)

    def reinstate(self, act: Act) -> None:
        self._require_state(ParticipantState.SUSPENDED, "reinstate")
        self.trigger(self.Reinstated, act)

    def deregister(self, note: str, act: Act) -> None:
        if self.state is ParticipantState.DEREGISTERED:
            raise InvalidState("PARTICIPANT_DEREGISTERED", "participant is already deregistered")
        self.trigger(self.Deregistered, act, note=note)

    def issue_certification(
        self,
        certification_id: str,
        level: CertificationLevel,
        categories: frozenset[Category],
        max_classification: Classification,
        valid_from: datetime,
        valid_until: datetime,
        reference: str,
        act: Act,
    ) -> None:
        if self.state is ParticipantState.DEREGISTERED:
            raise InvalidState("PARTICIPANT_DEREGISTERED", "cannot certify a deregistered party")
        if not self.roles & CERTIFIABLE_ROLES:
            raise InvalidState(
                "PARTICIPANT_NOT_CERTIFIABLE",
                "certifications are issued to dealers, exchanges, service platforms and "
                "assessors; the participant has none of these roles",
            )
        if valid_until <= valid_from:
            raise InvalidArgument.of("valid_until", "must be after valid_from")
        if not reference.strip():
            raise InvalidArgument.of("reference", "the certificate reference is required")
        if certification_id in self.certifications:
            raise InvalidState("CERTIFICATION_EXISTS", "certification id already issued")
        self.trigger(
            self.CertificationIssued,
            act,
            certification_id=certification_id,
            level=level.name,
            categories=names(categories),
            max_classification=max_classification.name,
            valid_from=valid_from,
            valid_until=valid_until,
            reference=reference.strip(),
        )

    def suspend_certification(self, certification_id: str, note: str, act: Act) -> None:
        certification = self.certification(certification_id)
        if certification.state is not CertificationState.VALID:
            raise InvalidState(
                f"CERTIFICATION_{certification.state.name}",
                f"only a VALID certification can be suspended; it is {certification.state.name}",
            )
        self.trigger(self.CertificationSuspended, act, certification_id=certification_id, note=note)

    def reinstate_certification(self, certification_id: str, act: Act) -> None:
        certification = self.certification(certification_id)
        check_r16_not_revoked(certification.state is CertificationState.REVOKED, "certification")
        if certification.state is not CertificationState.SUSPENDED:
            raise InvalidState(
                f"CERTIFICATION_{certification.state.name}",
                "only a SUSPENDED certification can be reinstated",
            )
        self.trigger(self.CertificationReinstated, act, certification_id=certification_id)

    def revoke_certification(
        self, certification_id: str, reason: RevocationReason | None, note: str, act: Act
    ) -> None:
        certification = self.certification(certification_id)
        reason = check_r16_revocation_reason(reason, note)
        if certification.state is CertificationState.REVOKED:
            raise InvalidState("CERTIFICATION_REVOKED", "certification is already revoked")
        self.trigger(
            self.CertificationRevoked,
            act,
            certification_id=certification_id,
            reason=reason.name,
            note=note,
        )

    def attach_grant(self, grant_id: str, act: Act) -> None:
        self.trigger(self.GrantActivated, act, grant_id=grant_id)

    # --- queries --------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return self.state is ParticipantState.ACTIVE

    def has_role(self, role: ParticipantRole) -> bool:
        return role in self.roles

    def certification(self, certification_id: str) -> Certification:
        try:
            return self.certifications[certification_id]
        except KeyError:
            raise NotFound("certification", certification_id, "certification_id") from None

    def valid_certification(
        self,
        at: datetime,
        category: Category | None = None,
        classification: Classification | None = None,
    ) -> Certification | None:
        """Returns a certification valid at ``at`` that covers the category and
        classification, if the participant has one."""
        for certification in self.certifications.values():
            if certification.is_valid_at(at) and certification.covers(category, classification):
                return certification
        return None

    def set_certification_state(
        self, certification_id: str, state: CertificationState, **changes: Any
    ) -> None:
        self.certifications[certification_id] = replace(
            self.certifications[certification_id], state=state, **changes
        )

    def _require_state(self, state: ParticipantState, action: str) -> None:
        if self.state is not state:
            raise InvalidState(
                f"PARTICIPANT_{self.state.name}",
                f"cannot {action} a participant that is {self.state.name}",
            )
