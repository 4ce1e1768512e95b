"""Listings: a data product on one exchange, with the rights held in it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.base import Act, LedgerAggregate, LedgerEvent, create
from ledger.domain.errors import InvalidArgument, InvalidState
from ledger.domain.participant import Participant
from ledger.domain.rules import (
    check_r01_not_core,
    check_r02_exchange_eligible,
    check_r03_assessor_eligible,
    check_r03_passing_assessment,
    check_r04_not_disputed,
    check_r04_provider_holds_operate,
    check_r13_sensitive_evidence,
)
from ledger.domain.values import (
    Category,
    Classification,
    DeliveryMode,
    ListingState,
    Money,
    PersonalInformationLevel,
    RevocationReason,
    Right,
    covers,
    names,
)

MAX_SCENARIO_LENGTH = 128


@dataclass(frozen=True)
class Assessment:
    assessor_id: str
    passed: bool
    reference: str
    notes: str


@dataclass(frozen=True)
class Licence:
    """Non-exclusive rights licensed to a holder for a term by a LICENCE trade."""

    trade_id: str
    licensee_id: str
    rights: frozenset[Right]
    term_start: datetime | None
    term_end: datetime | None


def validate_scenarios(scenarios: list[str], field: str = "scenarios") -> list[str]:
    """Returns the scenarios, sorted and unique, or raises naming the bad one."""
    if not scenarios:
        raise InvalidArgument.of(field, "无场景不交易: at least one declared scenario is required")
    for i, scenario in enumerate(scenarios):
        validate_scenario(scenario, f"{field}[{i}]")
    return sorted(set(scenarios))


def validate_scenario(scenario: str, field: str = "scenario") -> str:
    if not scenario or not scenario.strip():
        raise InvalidArgument.of(field, "a scenario names a declared use and cannot be empty")
    if len(scenario) > MAX_SCENARIO_LENGTH or scenario != scenario.strip():
        raise InvalidArgument.of(
            field, f"at most {MAX_SCENARIO_LENGTH} characters, no surrounding spaces"
        )
    return scenario


class Listing(LedgerAggregate):
    """A data product offered on one exchange."""

    TOPIC = "ledger/Listing"

    class Created(Aggregate.Created, LedgerEvent):
        TOPIC = "ledger/ListingSubmitted"
        exchange_id: str
        provider_id: str
        title: str
        category: str
        classification: str
        pi_level: str
        rights: list[str]
        delivery_modes: list[str]
        scenarios: list[str]
        list_price: dict[str, Any]
        evidence: dict[str, str]

        def apply(self, aggregate: Listing) -> None:
            aggregate.exchange_id = self.exchange_id
            aggregate.provider_id = self.provider_id
            aggregate.title = self.title
            aggregate.category = Category[self.category]
            aggregate.classification = Classification[self.classification]
            aggregate.pi_level = PersonalInformationLevel[self.pi_level]
            aggregate.provider_rights = frozenset(Right[r] for r in self.rights)
            aggregate.delivery_modes = frozenset(DeliveryMode[m] for m in self.delivery_modes)
            aggregate.scenarios = frozenset(self.scenarios)
            aggregate.list_price = Money.from_json(self.list_price)
            aggregate.evidence = dict(self.evidence)
            aggregate.state = ListingState.SUBMITTED
            aggregate.disputed = False
            aggregate.assessment = None
            aggregate.holdings = {right: self.provider_id for right in aggregate.provider_rights}
            aggregate.licences = {}
            aggregate.grant_ids = set()

    class AssessmentRecorded(LedgerEvent):
        TOPIC = "ledger/AssessmentRecorded"
        assessor_id: str
        passed: bool
        reference: str
        notes: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.assessment = Assessment(
                self.assessor_id, self.passed, self.reference, self.notes
            )

    class Approved(LedgerEvent):
        TOPIC = "ledger/ListingApproved"

        def apply(self, aggregate: Listing) -> None:
            aggregate.state = ListingState.LISTED

    class Rejected(LedgerEvent):
        TOPIC = "ledger/ListingRejected"
        note: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.state = ListingState.REJECTED

    class Suspended(LedgerEvent):
        TOPIC = "ledger/ListingSuspended"
        note: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.state = ListingState.SUSPENDED

    class Reinstated(LedgerEvent):
        TOPIC = "ledger/ListingReinstated"

        def apply(self, aggregate: Listing) -> None:
            aggregate.state = ListingState.LISTED

    class Delisted(LedgerEvent):
        TOPIC = "ledger/ListingDelisted"
        reason: str
        note: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.state = ListingState.DELISTED

    class Reclassified(LedgerEvent):
        TOPIC = "ledger/ListingReclassified"
        previous: str
        classification: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.classification = Classification[self.classification]

    class DisputeOpened(LedgerEvent):
        TOPIC = "ledger/OwnershipDisputeOpened"
        claimant_id: str
        note: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.disputed = True

    class DisputeResolved(LedgerEvent):
        TOPIC = "ledger/OwnershipDisputeResolved"
        note: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.disputed = False

    class RightsTransferred(LedgerEvent):
        TOPIC = "ledger/RightsTransferred"
        trade_id: str
        from_id: str
        to_id: str
        rights: list[str]
        reversal: bool

        def apply(self, aggregate: Listing) -> None:
            for right in self.rights:
                aggregate.holdings[Right[right]] = self.to_id

    class RightsLicensed(LedgerEvent):
        TOPIC = "ledger/RightsLicensed"
        trade_id: str
        licensor_id: str
        licensee_id: str
        rights: list[str]
        term_start: datetime | None
        term_end: datetime | None

        def apply(self, aggregate: Listing) -> None:
            # Only a licence that includes OPERATE lets its holder sell on (R10), so only
            # those are part of the listing's state; every licence is in the ownership view.
            if Right.OPERATE.name not in self.rights:
                return
            aggregate.licences[self.trade_id] = Licence(
                self.trade_id,
                self.licensee_id,
                frozenset(Right[r] for r in self.rights),
                self.term_start,
                self.term_end,
            )

    class LicenceEnded(LedgerEvent):
        TOPIC = "ledger/LicenceEnded"
        trade_id: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.licences.pop(self.trade_id, None)

    class GrantActivated(LedgerEvent):
        """A grant on this listing became active (R15: grants race suspensions here)."""

        TOPIC = "ledger/ListingGrantActivated"
        grant_id: str

        def apply(self, aggregate: Listing) -> None:
            aggregate.grant_ids.add(self.grant_id)

    exchange_id: str
    provider_id: str
    title: str
    category: Category
    classification: Classification
    pi_level: PersonalInformationLevel
    provider_rights: frozenset[Right]
    delivery_modes: frozenset[DeliveryMode]
    scenarios: frozenset[str]
    list_price: Money
    evidence: dict[str, str]
    state: ListingState
    disputed: bool
    assessment: Assessment | None
    holdings: dict[Right, str]
    licences: dict[str, Licence]
    grant_ids: set[str]

    # --- commands -------------------------------------------------------------------

    def __init__(self) -> None:
        """State is set by the created event's ``apply``, on creation and on replay."""

    @classmethod
    def submit(
        cls,
        listing_id: UUID,
        exchange: Participant,
        provider: Participant,
        title: str,
        category: Category,
        classification: Classification,
        pi_level: PersonalInformationLevel,
        rights: frozenset[Right],
        delivery_modes: frozenset[DeliveryMode],
        scenarios: list[str],
        list_price: Money,
        evidence: dict[str, str],
        act: Act,
    ) -> Listing:
        if not title.strip():
            raise InvalidArgument.of("title", "must not be empty")
        if not rights:
            raise InvalidArgument.of("rights", "name the rights the provider holds")
        if not delivery_modes:
            raise InvalidArgument.of("delivery_modes", "name at least one delivery mode")
        scenarios = validate_scenarios(scenarios)
        check_r01_not_core(classification, "list it")
        check_r02_exchange_eligible(exchange, act.effective_at)
        check_r04_provider_holds_operate(rights)
        check_r13_sensitive_evidence(
            pi_level,
            evidence.get("pi_impact_assessment_ref", ""),
            evidence.get("consent_basis_ref", ""),
        )
        listing: Listing = create(
            cls,
            cls.Created,
            listing_id,
            act,
            exchange_id=str(exchange.id),
            provider_id=str(provider.id),
            title=title.strip(),
            category=category.name,
            classification=classification.name,
            pi_level=pi_level.name,
            rights=names(rights),
            delivery_modes=names(delivery_modes),
            scenarios=scenarios,
            list_price=list_price.to_json(),
            evidence={k: v for k, v in sorted(evidence.items()) if v},
        )
        return listing

    def record_assessment(
        self, assessor: Participant, passed: bool, reference: str, notes: str, act: Act
    ) -> None:
        if self.state in (ListingState.DELISTED, ListingState.REJECTED):
            raise InvalidState(
                f"LISTING_{self.state.name}", f"cannot assess a listing that is {self.state.name}"
            )
        if not reference.strip():
            raise InvalidArgument.of("reference", "the assessment report reference is required")
        check_r03_assessor_eligible(
            assessor, self.provider_id, self.category, self.classification, act.effective_at
        )
        self.trigger(
            self.AssessmentRecorded,
            act,
            assessor_id=str(assessor.id),
            passed=passed,
            reference=reference.strip(),
            notes=notes,
        )

    def approve(self, exchange: Participant, act: Act) -> None:
        self._require_state(ListingState.SUBMITTED, "approve")
        check_r01_not_core(self.classification, "list it")
        check_r02_exchange_eligible(exchange, act.effective_at)
        check_r03_passing_assessment(self)
        check_r04_not_disputed(self, "approve it")
        self.trigger(self.Approved, act)

    def reject(self, note: str, act: Act) -> None:
        self._require_state(ListingState.SUBMITTED, "reject")
        self.trigger(self.Rejected, act, note=note)

    def suspend(self, note: str, act: Act) -> None:
        self._require_state(ListingState.LISTED, "suspend")
        self.trigger(self.Suspended, act, note=note)

    def reinstate(self, act: Act) -> None:
        self._require_state(ListingState.SUSPENDED, "reinstate")
        self.trigger(self.Reinstated, act)

    def delist(self, reason: RevocationReason, note: str, act: Act) -> None:
        if self.state not in (ListingState.LISTED, ListingState.SUSPENDED):
            raise InvalidState(
                f"LISTING_{self.state.name}",
                f"only a LISTED or SUSPENDED listing can be delisted; it is {self.state.name}",
            )
        self.trigger(self.Delisted, act, reason=reason.name, note=note)

    def reclassify(self, classification: Classification, act: Act) -> None:
        """Changes the classification; R01: reclassified to CORE, a listed listing is
        delisted (its grants are revoked by the caller in the same write) and a submitted
        one is rejected."""
        if self.state in (ListingState.DELISTED, ListingState.REJECTED):
            raise InvalidState(
                f"LISTING_{self.state.name}",
                f"cannot reclassify a listing that is {self.state.name}",
            )
        if classification is self.classification:
            raise InvalidArgument.of("classification", f"already {classification.name}")
        self.trigger(
            self.Reclassified,
            act,
            previous=self.classification.name,
            classification=classification.name,
        )
        if classification is Classification.CORE:
            if self.state is ListingState.SUBMITTED:
                self.trigger(self.Rejected, act, note="R01: reclassified to CORE")
            else:
                self.delist(RevocationReason.RECLASSIFIED, "R01: reclassified to CORE", act)

    def open_dispute(self, claimant_id: str, note: str, act: Act) -> None:
        if self.disputed:
            raise InvalidState("DISPUTE_OPEN", "an ownership dispute is already open")
        if self.state in (ListingState.DELISTED, ListingState.REJECTED):
            raise InvalidState(f"LISTING_{self.state.name}", "the listing is closed")
        self.trigger(self.DisputeOpened, act, claimant_id=claimant_id, note=note)

    def resolve_dispute(self, note: str, act: Act) -> None:
        if not self.disputed:
            raise InvalidState("NO_OPEN_DISPUTE", "no ownership dispute is open")
        self.trigger(self.DisputeResolved, act, note=note)

    def transfer_rights(
        self,
        trade_id: str,
        from_id: str,
        to_id: str,
        rights: frozenset[Right],
        act: Act,
        *,
        reversal: bool = False,
    ) -> None:
        self.trigger(
            self.RightsTransferred,
            act,
            trade_id=trade_id,
            from_id=from_id,
            to_id=to_id,
            rights=names(rights),
            reversal=reversal,
        )

    def license_rights(
        self,
        trade_id: str,
        licensor_id: str,
        licensee_id: str,
        rights: frozenset[Right],
        term_start: datetime | None,
        term_end: datetime | None,
        act: Act,
    ) -> None:
        self.trigger(
            self.RightsLicensed,
            act,
            trade_id=trade_id,
            licensor_id=licensor_id,
            licensee_id=licensee_id,
            rights=names(rights),
            term_start=term_start,
            term_end=term_end,
        )

    def end_licence(self, trade_id: str, act: Act) -> None:
        if trade_id in self.licences:
            self.trigger(self.LicenceEnded, act, trade_id=trade_id)

    def attach_grant(self, grant_id: str, act: Act) -> None:
        self.trigger(self.GrantActivated, act, grant_id=grant_id)

    # --- queries --------------------------------------------------------------------

    def exclusive_rights_of(self, participant_id: str) -> set[Right]:
        return {right for right, holder in self.holdings.items() if holder == participant_id}

    def rights_held_by(self, participant_id: str, at: datetime) -> set[Right]:
        """Rights held exclusively, plus rights licensed with OPERATE (the right to sell
        them on) for a term that covers ``at``."""
        held = self.exclusive_rights_of(participant_id)
        for licence in self.licences.values():
            if licence.licensee_id == participant_id and covers(
                licence.term_start, licence.term_end, at
            ):
                held |= licence.rights
        return held

    def _require_state(self, state: ListingState, action: str) -> None:
        if self.state is not state:
            raise InvalidState(
                f"LISTING_{self.state.name}",
                f"cannot {action} a listing that is {self.state.name}",
            )
