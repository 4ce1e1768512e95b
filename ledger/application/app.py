"""The ledger application: one method per command, each one atomic write."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cache, partial
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    Transcoder,
)

from ledger.application import commands as c
from ledger.application import identity as _identity  # noqa: F401 (registers its event topics)
from ledger.application.group_commit import GroupCommit
from ledger.application.guard import StoreGuard
from ledger.application.log import position_of
from ledger.application.markers import PartyKey, RequestMarker, entity_id, party_key_id
from ledger.application.markers import request_marker_id as marker_id_of
from ledger.application.parse import (
    MAX_NAME,
    canonical_uuid,
    parse_enum,
    parse_enum_set,
    parse_etag,
    parse_request_id,
    parse_text,
    parse_uuid,
    require_aware,
)
from ledger.application.transcoder import FastJSONTranscoder
from ledger.application.working_set import BatchReader, CleanCache, WorkingSet, snapshot
from ledger.clock import Clock, SystemClock
from ledger.domain.base import Act, LedgerAggregate
from ledger.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    RuleViolation,
    Unavailable,
)
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import (
    Category,
    CertificationLevel,
    Classification,
    Conveyance,
    CrossBorderBasis,
    CrossBorderBasisKind,
    DeliveryMode,
    GrantState,
    ListingState,
    Money,
    ParticipantRole,
    PartyIdentifier,
    PersonalInformationLevel,
    RevocationReason,
    Right,
)

A = TypeVar("A", bound=LedgerAggregate)
Cmd = TypeVar("Cmd", bound=c.Command)

# Unguarded commands that lose a race are retried against the new state this many
# times; the rules are checked again each time, so a loser ends with the rule's error.
MAX_ATTEMPTS = 8
# Commands run in one transaction at most (an ingest call may carry up to this many).
MAX_BATCH = 1000
# Aggregates kept as stored between batches, brought up to date at the start of each.
CLEAN_CACHE_SIZE = 10_000
# Batches under way at once: one is decided while another waits for the database.
BATCH_LANES = 2


@dataclass(frozen=True)
class Actor:
    """The authenticated principal on whose behalf a command runs.

    ``venues`` limits the exchanges whose listings, trades and grants the actor may touch;
    ``None`` means every venue.
    """

    id: str
    role: str
    venues: frozenset[str] | None = None

    def check_venue(self, exchange_id: str) -> None:
        if self.venues is not None and exchange_id not in self.venues:
            raise PermissionDenied(
                f"{self.role} {self.id} may not act on exchange {exchange_id}'s venue"
            )


@dataclass(frozen=True)
class Outcome:
    """The result of a command: the resource as written, and the log position of the write.

    ``replayed`` is true when the request_id had already been applied; the resource and
    position are then those of the original write.
    """

    resource: LedgerAggregate
    position: int
    replayed: bool = False


@dataclass
class Decision:
    """What a command handler decided: the resource to return, every aggregate to save,
    and the aggregates whose state its rules read without changing them (read fences:
    the write fails, and the command is retried, if any of them moved on meanwhile)."""

    subject: LedgerAggregate
    changed: list[LedgerAggregate]
    read: list[LedgerAggregate] = field(default_factory=list)

    def read_versions(self) -> dict[UUID, int]:
        written = {a.id for a in self.changed}
        return {a.id: a.version for a in self.read if a.id not in written}


Handler = Callable[[Any, Act], Decision]


@dataclass(frozen=True)
class _Accepted:
    """A command of the batch under way, decided; its position is known once written."""

    resource: LedgerAggregate
    marker_id: UUID
    command: str
    fingerprint: str
    replayed: bool

    def outcome(self, positions: Mapping[UUID, int]) -> Outcome:
        return Outcome(self.resource, positions[self.marker_id], self.replayed)


@dataclass
class _Batch:
    """The commands of one transaction: their results so far, and what they read and
    changed."""

    working: WorkingSet
    results: list[_Accepted | Outcome | Exception] = field(default_factory=list)
    accepted: dict[str, _Accepted] = field(default_factory=dict)
    rejections: list[tuple[str, str | None]] = field(default_factory=list)

    def run(self, decide: Callable[[], _Accepted | Outcome]) -> None:
        self.working.begin()
        try:
            self.results.append(decide())
        except (OperationalError, InterfaceError, IntegrityError):
            raise
        except Exception as e:
            # This command fails alone; the batch goes on without a trace of it.
            self.working.discard()
            self.results.append(e)


class MarketLedger(Application[UUID]):
    """Records the acts of a regulated data market as events, one atomic write per command.

    The name must not upper-case to ``LEDGER``: the library reads ``<NAME>_*`` settings.
    """

    name = "MarketLedger"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        guard: StoreGuard | None = None,
    ) -> None:
        super().__init__(env=env)
        self.clock: Clock = clock or SystemClock()
        self.guard = guard or StoreGuard(self._probe_store)
        # Called after every acknowledged write, e.g. to wake the projection engine.
        self.write_listeners: list[Callable[[int], None]] = []
        # Called with (rule id, exchange id or None) for every rejection by an enforced rule.
        self.rejection_listeners: list[Callable[[str, str | None], None]] = []
        self._clean = CleanCache(CLEAN_CACHE_SIZE, uncached=(RequestMarker,))
        self._working = threading.local()
        self._group: GroupCommit[tuple[c.Command, Actor], Outcome | Exception] = GroupCommit(
            self._run_batch, MAX_BATCH, lanes=BATCH_LANES, keys=_named_keys
        )

    def construct_transcoder(self) -> Transcoder:
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def _probe_store(self) -> None:
        self.recorder.max_notification_id()

    # --- machinery ------------------------------------------------------------------

    @contextmanager
    def database_errors(self) -> Iterator[None]:
        """Turns a database that cannot be reached into the retryable ``Unavailable``, and
        fails at once while the guard knows the store is down."""
        self.guard.check()
        try:
            yield
        except (OperationalError, InterfaceError) as e:
            self.guard.trip(str(e))
            raise Unavailable(f"the event store is unavailable: {e}") from e

    def execute(self, command: c.Command, actor: Actor) -> Outcome:
        """Runs one command; concurrent commands may share its transaction (group commit)."""
        (result,) = self.execute_batch([(command, actor)])
        if isinstance(result, Exception):
            raise result
        return result

    def execute_batch(self, items: Sequence[tuple[c.Command, Actor]]) -> list[Outcome | Exception]:
        """Runs commands in order in one transaction, each on its own: a failed command
        leaves no trace and does not stop the others; each result is the outcome or the
        error the command would have had alone."""
        if not items:
            return []
        if getattr(self._working, "batch", None) is not None:
            # Issued from within a command of this thread's batch: its own transaction.
            return self._run_batch(list(items))
        return self._group.submit(items)

    def _run_batch(self, items: list[tuple[c.Command, Actor]]) -> list[Outcome | Exception]:
        with self.database_errors():
            for attempt in range(MAX_ATTEMPTS):
                reader = cast(BatchReader, self.recorder)
                batch = _Batch(WorkingSet(reader, self.mapper, self._clean))
                outer: _Batch | None = getattr(self._working, "batch", None)
                self._working.batch = batch
                # The batch's read and write on one connection, where the store has them.
                one_connection = getattr(self.recorder, "one_connection", nullcontext)
                try:
                    with one_connection():
                        batch.working.load(_named_ids(items))
                        for command, actor in items:
                            batch.run(partial(self._decide, command, actor))
                        positions = self._write(batch)
                except IntegrityError:
                    # A concurrent writer got there first: run the batch again on the new
                    # state, after a little jittered backoff so racing writers fall out of
                    # step. Its rules are checked again, so a loser ends with the rule's error.
                    time.sleep(random.uniform(0, 0.002 * (2**attempt)))
                    continue
                finally:
                    self._working.batch = outer
                for rule, venue in batch.rejections:
                    for rejected in self.rejection_listeners:
                        rejected(rule, venue)
                if positions:
                    head = max(positions.values())
                    for listener in self.write_listeners:
                        listener(head)
                return [
                    r.outcome(positions) if isinstance(r, _Accepted) else r for r in batch.results
                ]
        return [
            Conflict(
                f"{command.kind} lost {MAX_ATTEMPTS} races with concurrent writes; retry later"
            )
            for command, _actor in items
        ]

    def _decide(self, command: c.Command, actor: Actor) -> _Accepted | Outcome:
        """Decides one command of the batch under way and keeps what it changed."""
        batch: _Batch = self._working.batch
        request_id = parse_request_id(command.request_id)
        fingerprint = command.fingerprint()
        earlier = batch.accepted.get(request_id)
        if earlier is not None:
            if earlier.fingerprint != fingerprint:
                raise _reused(request_id, earlier.command)
            self._check_venue(actor, _venue(earlier.resource))
            return replace(earlier, replayed=True)
        replay = self._replay(request_id, fingerprint, actor)
        if replay is not None:
            return replay
        act = self._act(command, actor, request_id)
        handler: Handler = getattr(self, "_" + _method_name(command.kind))
        try:
            decision = handler(command, act)
        except LedgerError as refused:
            # Say nothing about another venue's resources, not even why not.
            venue = self._venue_of(command)
            self._check_venue(actor, venue)
            if isinstance(refused, RuleViolation):
                batch.rejections.append((refused.rule, venue))
            raise
        self._check_venue(actor, _venue(decision.subject))
        marker = RequestMarker.accept(command.kind, fingerprint, decision.subject, act)
        # The marker goes last, so its position is the position of the command's write.
        batch.working.accept([*decision.changed, marker], decision.read)
        accepted = _Accepted(
            snapshot(decision.subject), marker.id, command.kind, fingerprint, replayed=False
        )
        batch.accepted[request_id] = accepted
        return accepted

    def _write(self, batch: _Batch) -> dict[UUID, int]:
        """Writes the batch in one transaction; returns each marker's log position."""
        events = batch.working.events()
        if not events:
            return {}
        # The events in the order the commands made them (``save`` would group them by
        # aggregate), straight to the recorder.
        stored = [self.mapper.to_stored_event(e) for e in events]
        positions = self.recorder.insert_events(stored, read_versions=batch.working.read_versions())
        assert positions is not None  # for mypy: the application recorder returns them
        batch.working.written()
        marker = RequestMarker.Created.TOPIC
        return {
            s.originator_id if isinstance(s.originator_id, UUID) else UUID(s.originator_id): n
            for s, n in zip(stored, positions, strict=True)
            if s.topic == marker
        }

    def _act(self, command: c.Command, actor: Actor, request_id: str) -> Act:
        now = self.clock.now()
        effective_at = require_aware(command.effective_at, "effective_at") or now
        if effective_at > now:
            raise InvalidArgument.of(
                "effective_at", "is in the future; the ledger records acts that took effect"
            )
        return Act(
            actor=actor.id,
            role=actor.role,
            request_id=request_id,
            effective_at=effective_at,
            recorded_at=now,
        )

    def _replay(self, request_id: str, fingerprint: str, actor: Actor) -> Outcome | None:
        marker_id = marker_id_of(request_id)
        try:
            marker = self._aggregate(marker_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(marker, RequestMarker)  # for mypy
        if marker.fingerprint != fingerprint:
            raise _reused(request_id, marker.command)
        resource: LedgerAggregate = self.repository.get(
            UUID(marker.resource_id), version=marker.resource_version
        )
        self._check_venue(actor, _venue(resource))
        return Outcome(resource, self.position_of(marker_id), replayed=True)

    def _aggregate(self, aggregate_id: UUID) -> LedgerAggregate:
        """The latest state of an aggregate; within a batch, as its earlier commands left it."""
        batch: _Batch | None = getattr(self._working, "batch", None)
        if batch is None:
            aggregate: LedgerAggregate = self.repository.get(aggregate_id)
            return aggregate
        found = batch.working.get(aggregate_id)
        if found is None:
            raise AggregateNotFoundError(aggregate_id)
        return found

    @staticmethod
    def _check_venue(actor: Actor, venue: str | None) -> None:
        if venue is not None:
            actor.check_venue(venue)

    def _venue_of(self, command: c.Command) -> str | None:
        """The exchange whose venue a command targets, if it can be told."""
        targets: tuple[tuple[str, type[Listing | Trade | AccessGrant]], ...] = (
            ("grant_id", AccessGrant),
            ("trade_id", Trade),
            ("listing_id", Listing),
        )
        for name, cls in targets:
            value = getattr(command, name, "")
            if value:
                try:
                    return self.load(cls, value, name).exchange_id
                except LedgerError:
                    return None
        venue = getattr(command, "exchange_id", None)
        return str(venue) if venue else None

    def position_of(self, originator_id: UUID, version: int = 1) -> int:
        """Returns the log position of one stored event."""
        return position_of(self.recorder, originator_id, version)

    def load(
        self, cls: type[A], value: str, field: str, etag: str = "", etag_field: str = "etag"
    ) -> A:
        """Loads an aggregate of ``cls`` by the id in a request field, checking its etag."""
        aggregate_id = parse_uuid(value, field)
        expected = parse_etag(etag, etag_field)
        resource = cls.__name__.lower().replace("accessgrant", "grant")
        try:
            aggregate = self._aggregate(aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(resource, aggregate_id, field) from None
        if not isinstance(aggregate, cls):
            raise NotFound(resource, aggregate_id, field)
        if expected is not None and aggregate.version != expected:
            raise Conflict(
                f"{resource} {aggregate_id} is at version {aggregate.version}, not {expected}; "
                "read it again"
            )
        return aggregate

    def get(self, cls: type[A], value: str, actor: Actor, field: str = "id") -> A:
        """Reads one resource for ``actor``; another venue's resource is not found."""
        with self.database_errors():
            resource = self.load(cls, value, field)
        venue = _venue(resource)
        if venue is not None and actor.venues is not None and venue not in actor.venues:
            raise NotFound(type(resource).__name__.lower(), value, field)
        return resource

    def _live_grants(self, grant_ids: set[str]) -> list[AccessGrant]:
        grants = []
        for grant_id in sorted(grant_ids):
            grant = self._aggregate(UUID(grant_id))
            assert isinstance(grant, AccessGrant)  # for mypy
            if grant.is_live:
                grants.append(grant)
        return grants

    def _suspend_grants(
        self, grant_ids: set[str], rule: str, note: str, act: Act
    ) -> list[LedgerAggregate]:
        suspended: list[LedgerAggregate] = []
        for grant in self._live_grants(grant_ids):
            if grant.status is GrantState.ACTIVE:
                grant.suspend(note, act, rule=rule)
                suspended.append(grant)
        return suspended

    def _revoke_grants(
        self, grant_ids: set[str], reason: RevocationReason, rule: str, note: str, act: Act
    ) -> list[LedgerAggregate]:
        revoked: list[LedgerAggregate] = []
        for grant in self._live_grants(grant_ids):
            grant.revoke(reason, note, act, rule=rule)
            revoked.append(grant)
        return revoked

    # --- participants ---------------------------------------------------------------

    def register_participant(self, command: c.RegisterParticipant, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _register_participant(self, cmd: c.RegisterParticipant, act: Act) -> Decision:
        if cmd.uscc and (cmd.country or cmd.registry_number):
            raise InvalidArgument.of("party", "give either a USCC or a foreign registration")
        if cmd.uscc:
            party = PartyIdentifier.domestic(cmd.uscc, "party.uscc")
        elif cmd.country or cmd.registry_number:
            party = PartyIdentifier.foreign(cmd.country, cmd.registry_number, "party.foreign")
        else:
            raise InvalidArgument.of("party", "a USCC or a foreign registration is required")
        name = parse_text(cmd.name, "name", required=True, limit=MAX_NAME)
        roles = parse_enum_set(ParticipantRole, cmd.roles, "roles")
        try:
            claimed = self._aggregate(party_key_id(party.key))
        except AggregateNotFoundError:
            pass
        else:
            assert isinstance(claimed, PartyKey)  # for mypy
            raise AlreadyExists(
                f"{party.key} is already registered as participant {claimed.participant_id}"
            )
        participant_id = entity_id("participant", act.request_id)
        participant = Participant.register(participant_id, party, name, roles, act)
        key = PartyKey.claim(party.key, participant_id, act)
        return Decision(participant, [participant, key])

    def issue_certification(self, command: c.IssueCertification, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _issue_certification(self, cmd: c.IssueCertification, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        level = parse_enum(CertificationLevel, cmd.level, "level")
        categories = parse_enum_set(Category, cmd.categories, "categories")
        max_classification = parse_enum(
            Classification, cmd.max_classification, "max_classification"
        )
        valid_from = require_aware(cmd.valid_from, "valid_from") or act.effective_at
        valid_until = require_aware(cmd.valid_until, "valid_until")
        if valid_until is None:
            raise InvalidArgument.of("valid_until", "a certification has an expiry date")
        reference = parse_text(cmd.reference, "reference", required=True, limit=MAX_NAME)
        certification_id = str(entity_id("certification", act.request_id))
        participant.issue_certification(
            certification_id,
            level,
            categories,
            max_classification,
            valid_from,
            valid_until,
            reference,
            act,
        )
        return Decision(participant, [participant])

    def suspend_certification(self, command: c.SuspendCertification, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _suspend_certification(self, cmd: c.SuspendCertification, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        cert_id = str(parse_uuid(cmd.certification_id, "certification_id"))
        note = parse_text(cmd.note, "note")
        participant.suspend_certification(cert_id, note, act)
        grants = self._suspend_grants(
            participant.grant_ids, "R14", f"R14: grantee's certification {cert_id} suspended", act
        )
        return Decision(participant, [participant, *grants])

    def reinstate_certification(self, command: c.ReinstateCertification, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reinstate_certification(self, cmd: c.ReinstateCertification, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        cert_id = str(parse_uuid(cmd.certification_id, "certification_id"))
        participant.reinstate_certification(cert_id, act)
        return Decision(participant, [participant])

    def revoke_certification(self, command: c.RevokeCertification, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _revoke_certification(self, cmd: c.RevokeCertification, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        cert_id = str(parse_uuid(cmd.certification_id, "certification_id"))
        reason = RevocationReason.parse(cmd.reason, "reason") if cmd.reason else None
        note = parse_text(cmd.note, "note")
        participant.revoke_certification(cert_id, reason, note, act)
        grants = self._revoke_grants(
            participant.grant_ids,
            RevocationReason.CERTIFICATION_LOST,
            "R14",
            f"R14: grantee's certification {cert_id} revoked",
            act,
        )
        return Decision(participant, [participant, *grants])

    def suspend_participant(self, command: c.SuspendParticipant, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _suspend_participant(self, cmd: c.SuspendParticipant, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        note = parse_text(cmd.note, "note")
        participant.suspend(note, act)
        grants = self._suspend_grants(participant.grant_ids, "R14", "R14: grantee suspended", act)
        return Decision(participant, [participant, *grants])

    def reinstate_participant(self, command: c.ReinstateParticipant, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reinstate_participant(self, cmd: c.ReinstateParticipant, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        participant.reinstate(act)
        return Decision(participant, [participant])

    def deregister_participant(self, command: c.DeregisterParticipant, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _deregister_participant(self, cmd: c.DeregisterParticipant, act: Act) -> Decision:
        participant = self.load(Participant, cmd.participant_id, "participant_id", cmd.etag)
        note = parse_text(cmd.note, "note")
        participant.deregister(note, act)
        grants = self._revoke_grants(
            participant.grant_ids, RevocationReason.OTHER, "R14", "R14: grantee deregistered", act
        )
        return Decision(participant, [participant, *grants])

    # --- listings -------------------------------------------------------------------

    def submit_listing(self, command: c.SubmitListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _submit_listing(self, cmd: c.SubmitListing, act: Act) -> Decision:
        exchange = self.load(Participant, cmd.exchange_id, "exchange_id")
        provider = self.load(Participant, cmd.provider_id, "provider_id")
        evidence = {
            "compliance_assessment_ref": parse_text(
                cmd.compliance_assessment_ref, "compliance_assessment_ref", limit=MAX_NAME
            ),
            "pi_impact_assessment_ref": parse_text(
                cmd.pi_impact_assessment_ref, "pi_impact_assessment_ref", limit=MAX_NAME
            ),
            "consent_basis_ref": parse_text(
                cmd.consent_basis_ref, "consent_basis_ref", limit=MAX_NAME
            ),
            "security_assessment_ref": parse_text(
                cmd.security_assessment_ref, "security_assessment_ref", limit=MAX_NAME
            ),
        }
        listing = Listing.submit(
            entity_id("listing", act.request_id),
            exchange,
            provider,
            parse_text(cmd.title, "title", required=True, limit=MAX_NAME),
            parse_enum(Category, cmd.category, "category"),
            parse_enum(Classification, cmd.classification, "classification"),
            parse_enum(PersonalInformationLevel, cmd.pi_level, "pi_level"),
            parse_enum_set(Right, cmd.rights, "rights"),
            parse_enum_set(DeliveryMode, cmd.delivery_modes, "delivery_modes"),
            list(cmd.scenarios),
            Money.parse(cmd.price_currency, cmd.price_amount_minor, "list_price"),
            evidence,
            act,
        )
        return Decision(listing, [listing], read=[exchange, provider])

    def record_assessment(self, command: c.RecordAssessment, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _record_assessment(self, cmd: c.RecordAssessment, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        assessor = self.load(Participant, cmd.assessor_id, "assessor_id")
        listing.record_assessment(
            assessor,
            cmd.passed,
            parse_text(cmd.reference, "reference", required=True, limit=MAX_NAME),
            parse_text(cmd.notes, "notes"),
            act,
        )
        return Decision(listing, [listing], read=[assessor])

    def approve_listing(self, command: c.ApproveListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _approve_listing(self, cmd: c.ApproveListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        exchange = self.load(Participant, listing.exchange_id, "exchange_id")
        listing.approve(exchange, act)
        return Decision(listing, [listing], read=[exchange])

    def reject_listing(self, command: c.RejectListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reject_listing(self, cmd: c.RejectListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.reject(parse_text(cmd.note, "note"), act)
        return Decision(listing, [listing])

    def suspend_listing(self, command: c.SuspendListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _suspend_listing(self, cmd: c.SuspendListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.suspend(parse_text(cmd.note, "note"), act)
        grants = self._suspend_grants(listing.grant_ids, "R15", "R15: listing suspended", act)
        return Decision(listing, [listing, *grants])

    def reinstate_listing(self, command: c.ReinstateListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reinstate_listing(self, cmd: c.ReinstateListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.reinstate(act)
        return Decision(listing, [listing])

    def delist_listing(self, command: c.DelistListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _delist_listing(self, cmd: c.DelistListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.delist(RevocationReason.LISTING_WITHDRAWN, parse_text(cmd.note, "note"), act)
        grants = self._revoke_grants(
            listing.grant_ids,
            RevocationReason.LISTING_WITHDRAWN,
            "R15",
            "R15: listing delisted",
            act,
        )
        return Decision(listing, [listing, *grants])

    def reclassify_listing(self, command: c.ReclassifyListing, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reclassify_listing(self, cmd: c.ReclassifyListing, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.reclassify(parse_enum(Classification, cmd.classification, "classification"), act)
        grants: list[LedgerAggregate] = []
        if listing.state is ListingState.DELISTED:
            grants = self._revoke_grants(
                listing.grant_ids,
                RevocationReason.RECLASSIFIED,
                "R01",
                "R01: listing reclassified to CORE",
                act,
            )
        return Decision(listing, [listing, *grants])

    def open_ownership_dispute(self, command: c.OpenOwnershipDispute, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _open_ownership_dispute(self, cmd: c.OpenOwnershipDispute, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        claimant = ""
        if cmd.claimant_id:
            claimant = str(self.load(Participant, cmd.claimant_id, "claimant_id").id)
        listing.open_dispute(claimant, parse_text(cmd.note, "note"), act)
        return Decision(listing, [listing])

    def resolve_ownership_dispute(
        self, command: c.ResolveOwnershipDispute, actor: Actor
    ) -> Outcome:
        return self.execute(command, actor)

    def _resolve_ownership_dispute(self, cmd: c.ResolveOwnershipDispute, act: Act) -> Decision:
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.etag)
        listing.resolve_dispute(parse_text(cmd.note, "note"), act)
        return Decision(listing, [listing])

    # --- trades ---------------------------------------------------------------------

    def record_sale(self, command: c.RecordSale, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _record_sale(self, cmd: c.RecordSale, act: Act) -> Decision:
        rights = parse_enum_set(Right, cmd.rights, "rights")
        conveyance = parse_enum(Conveyance, cmd.conveyance, "conveyance")
        price = Money.parse(cmd.price_currency, cmd.price_amount_minor, "price")
        term_start = require_aware(cmd.term_start, "term_start")
        term_end = require_aware(cmd.term_end, "term_end")
        listing = self.load(Listing, cmd.listing_id, "listing_id", cmd.listing_etag, "listing_etag")
        seller = self.load(Participant, cmd.seller_id, "seller_id")
        buyer = self.load(Participant, cmd.buyer_id, "buyer_id")
        trade = Trade.record_sale(
            entity_id("trade", act.request_id),
            listing,
            seller,
            buyer,
            rights,
            conveyance,
            cmd.scenario,
            term_start,
            term_end,
            price,
            parse_text(cmd.settlement_ref, "settlement_ref", limit=MAX_NAME),
            act,
        )
        return Decision(trade, [trade, listing], read=[seller, buyer])

    def settle_trade(self, command: c.SettleTrade, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _settle_trade(self, cmd: c.SettleTrade, act: Act) -> Decision:
        trade = self.load(Trade, cmd.trade_id, "trade_id", cmd.etag)
        trade.settle(parse_text(cmd.settlement_ref, "settlement_ref", limit=MAX_NAME), act)
        return Decision(trade, [trade])

    def cancel_trade(self, command: c.CancelTrade, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _cancel_trade(self, cmd: c.CancelTrade, act: Act) -> Decision:
        trade = self.load(Trade, cmd.trade_id, "trade_id", cmd.etag)
        listing = self.load(Listing, trade.listing_id, "listing_id")
        trade.cancel(listing, parse_text(cmd.note, "note"), act)
        grants = self._revoke_grants(
            trade.grant_ids,
            RevocationReason.CONTRACT_TERMINATED,
            "R11",
            "R11: trade cancelled",
            act,
        )
        return Decision(trade, [trade, listing, *grants])

    # --- access ---------------------------------------------------------------------

    def grant_access(self, command: c.GrantAccess, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _grant_access(self, cmd: c.GrantAccess, act: Act) -> Decision:
        mode = parse_enum(DeliveryMode, cmd.delivery_mode, "delivery_mode")
        valid_from = require_aware(cmd.valid_from, "valid_from") or act.effective_at
        valid_until = require_aware(cmd.valid_until, "valid_until")
        destination = cmd.destination_country or "CN"
        if len(destination) != 2 or not destination.isascii() or not destination.isupper():
            raise InvalidArgument.of(
                "destination_country", "an ISO 3166-1 alpha-2 code in capitals; CN if domestic"
            )
        basis = None
        if cmd.cross_border_basis_kind or cmd.cross_border_basis_ref:
            basis = CrossBorderBasis(
                parse_enum(
                    CrossBorderBasisKind, cmd.cross_border_basis_kind, "cross_border_basis.kind"
                ),
                parse_text(
                    cmd.cross_border_basis_ref,
                    "cross_border_basis.reference",
                    required=True,
                    limit=MAX_NAME,
                ),
            )
        trade = self.load(Trade, cmd.trade_id, "trade_id")
        listing = self.load(Listing, trade.listing_id, "listing_id")
        grantee = self.load(Participant, trade.buyer_id, "grantee_id")
        grant = AccessGrant.grant(
            entity_id("grant", act.request_id),
            trade,
            listing,
            grantee,
            mode,
            cmd.scenario,
            valid_from,
            valid_until,
            destination,
            basis,
            cmd.usage_limit,
            act,
        )
        return Decision(grant, [grant, trade, listing, grantee])

    def suspend_access(self, command: c.SuspendAccess, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _suspend_access(self, cmd: c.SuspendAccess, act: Act) -> Decision:
        grant = self.load(AccessGrant, cmd.grant_id, "grant_id", cmd.etag)
        grant.suspend(parse_text(cmd.note, "note"), act)
        return Decision(grant, [grant])

    def reinstate_access(self, command: c.ReinstateAccess, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _reinstate_access(self, cmd: c.ReinstateAccess, act: Act) -> Decision:
        grant = self.load(AccessGrant, cmd.grant_id, "grant_id", cmd.etag)
        trade = self.load(Trade, grant.trade_id, "trade_id")
        listing = self.load(Listing, grant.listing_id, "listing_id")
        grantee = self.load(Participant, grant.grantee_id, "grantee_id")
        grant.reinstate(trade, listing, grantee, act)
        return Decision(grant, [grant, trade, listing, grantee])

    def revoke_access(self, command: c.RevokeAccess, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _revoke_access(self, cmd: c.RevokeAccess, act: Act) -> Decision:
        grant = self.load(AccessGrant, cmd.grant_id, "grant_id", cmd.etag)
        reason = RevocationReason.parse(cmd.reason, "reason") if cmd.reason else None
        grant.revoke(reason, parse_text(cmd.note, "note"), act)
        return Decision(grant, [grant])

    def record_access_use(self, command: c.RecordAccessUse, actor: Actor) -> Outcome:
        return self.execute(command, actor)

    def _record_access_use(self, cmd: c.RecordAccessUse, act: Act) -> Decision:
        grant = self.load(AccessGrant, cmd.grant_id, "grant_id", cmd.etag)
        used_at = require_aware(cmd.used_at, "used_at") or act.effective_at
        if used_at > act.recorded_at:
            raise InvalidArgument.of("used_at", "is in the future")
        grant.record_use(
            parse_enum(DeliveryMode, cmd.delivery_mode, "delivery_mode"),
            cmd.scenario,
            used_at,
            cmd.units,
            act,
        )
        return Decision(grant, [grant])

    def head_position(self) -> int:
        with self.database_errors():
            return self.recorder.max_notification_id() or 0


def _named_ids(items: Sequence[tuple[c.Command, Actor]]) -> list[UUID]:
    """The aggregates a batch names: its request markers and every id field."""
    ids: list[UUID] = []
    for command, _actor in items:
        for name in c.field_names(type(command)):
            if not name.endswith("_id"):
                continue
            value = getattr(command, name)
            try:
                if name == "request_id":
                    ids.append(marker_id_of(parse_request_id(value)))
                elif value:
                    ids.append(canonical_uuid(value) or UUID(value))
            except (ValueError, LedgerError):
                continue  # reported when the command runs
    return ids


def _named_keys(item: tuple[c.Command, Actor]) -> Iterator[str]:
    """The ids a command names, as given: batches that share one are not run at once."""
    command = item[0]
    for name in c.field_names(type(command)):
        if name.endswith("_id"):
            value = getattr(command, name)
            if value:
                yield str(value)


def _reused(request_id: str, command: str) -> AlreadyExists:
    return AlreadyExists(
        f"request_id {request_id} was already used for a different {command} request; "
        "use a new request_id for a new request"
    )


def _venue(resource: LedgerAggregate) -> str | None:
    venue = getattr(resource, "exchange_id", None)
    return str(venue) if venue is not None else None


@cache
def _method_name(kind: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in kind).lstrip("_")
