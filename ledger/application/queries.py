"""Reads served from the projections: lists, and the operators' view of the engine."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog

from ledger.application.app import Actor, MarketLedger
from ledger.application.parse import parse_enum, parse_uuid
from ledger.domain.base import LedgerAggregate
from ledger.domain.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing, validate_scenario
from ledger.domain.participant import Participant
from ledger.domain.trade import Trade
from ledger.domain.values import DeliveryMode
from ledger.projections.access import Decision as AccessDecision
from ledger.projections.access import check_access, decide, exchange_of, grant_rows_query
from ledger.projections.catalogue import list_ids
from ledger.projections.compliance import Compliance, Report, record_rejection, time_text
from ledger.projections.db import Database, Row
from ledger.projections.engine import Generation, ProjectionManager, Status, Tables
from ledger.projections.ownership import Holding, ownership_at

A = TypeVar("A", bound=LedgerAggregate)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

log = structlog.get_logger(__name__)

TABLES: dict[type[LedgerAggregate], str] = {
    Participant: "participants",
    Listing: "listings",
    Trade: "trades",
    AccessGrant: "grants",
}


@dataclass(frozen=True)
class Page(Generic[A]):
    items: list[A]
    next_page_token: str


def _page_token(table: str, position: int | None) -> str:
    if position is None:
        return ""
    return base64.urlsafe_b64encode(f"{table}:{position}".encode()).decode()


def head_statement(recorder: Any, db: Database) -> str | None:
    """The statement that reads the head of the log in the projections' own database (so
    that one statement can read it with a projection's rows), or None when the log is
    kept elsewhere (the in-memory stores of tests)."""
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    # The library's own statements (``max_notification_id``), on its table names.
    table = recorder.events_table_name
    if isinstance(recorder, PostgresApplicationRecorder):
        schema = recorder.datastore.schema
        if db.dialect == "postgresql" and getattr(db, "schema", None) == schema:
            return f'SELECT MAX(notification_id) FROM "{schema}"."{table}"'  # noqa: S608 (the library's table name)
    elif isinstance(recorder, SQLiteApplicationRecorder):
        pool = recorder.datastore.pool
        same_file = getattr(db, "path", None) == pool.db_name
        if db.dialect == "sqlite" and same_file and not pool.is_sqlite_memory_mode:
            return f"SELECT MAX(rowid) FROM {table}"  # noqa: S608 (the library's table name)
    return None


def _after(table: str, token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, position = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != table or not position.isdigit():
            raise ValueError(token)
        return int(position)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidArgument.of(
            "page_token", "not a page token of this list; pass next_page_token unchanged"
        ) from None


class Queries:
    """Answers reads from the read models, scoped to the caller's venues."""

    def __init__(
        self,
        app: MarketLedger,
        projections: ProjectionManager,
        consistency_timeout_s: float = 2.0,
    ) -> None:
        self.app = app
        self.projections = projections
        self.consistency_timeout_s = consistency_timeout_s
        self.head_sql = head_statement(app.recorder, projections.db)
        app.rejection_listeners.append(self.record_rejection)

    def page(
        self,
        cls: type[A],
        filters: dict[str, str],
        page_size: int,
        page_token: str,
        actor: Actor,
    ) -> Page[A]:
        """A page of resources of ``cls`` matching ``filters`` (column → value)."""
        if page_size < 0:
            raise InvalidArgument.of("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        table = TABLES[cls]
        after = _after(table, page_token)
        venues = actor.venues if cls is not Participant else None
        live = self._live("catalogue")
        with self.projections.db.transaction() as tx:
            ids, next_position = list_ids(
                tx,
                live.tables,
                table,
                {k: v for k, v in filters.items() if v},
                after,
                size,
                venues,
            )
        items = []
        for resource_id in ids:
            try:
                items.append(self.app.get(cls, resource_id, actor))
            except NotFound:
                continue
        return Page(items, _page_token(table, next_position))

    def _live(self, name: str) -> Any:
        try:
            return self.projections.live(name)
        except KeyError as e:
            raise Unavailable(f"the {name} projection is not ready: {e}") from None

    def compliance_report(
        self,
        exchange_id: str,
        as_of_time: datetime | None,
        as_of_position: int | None,
        actor: Actor,
    ) -> Report:
        """The findings and rejections for one exchange (or the market), as of a time or
        position; a venue-scoped caller must name one of its exchanges."""
        if actor.venues is not None:
            if not exchange_id:
                raise PermissionDenied(
                    "a caller scoped to exchanges must name one of them in exchange_id"
                )
            actor.check_venue(exchange_id)
        compliance = self.projections.projection("compliance")
        assert isinstance(compliance, Compliance)  # for mypy
        live = self._live("compliance")
        at = time_text(as_of_time or self.app.clock.now())
        position = live.position if as_of_position is None else min(as_of_position, live.position)
        with self.projections.db.transaction() as tx:
            return compliance.report(tx, live.tables, exchange_id or None, at, position)

    def record_rejection(self, rule: str, exchange_id: str | None) -> None:
        """Counts a rejection by an enforced rule (they write no event, so no projection
        sees them); a failure to count never changes the caller's answer."""
        try:
            with self.projections.db.transaction() as tx:
                record_rejection(tx, time_text(self.app.clock.now())[:10], rule, exchange_id)
        except Exception:
            log.warning("rejection not counted", rule=rule, exc_info=True)

    def _caught_up(self, name: str, as_of_position: int | None) -> Generation:
        """The live generation of ``name`` once it has applied every write acknowledged
        before this call (or up to ``as_of_position``); ``Unavailable`` if it cannot
        catch up within the bound."""
        target = self.app.head_position()
        if as_of_position is not None:
            target = min(target, as_of_position)
        if not self.projections.wait_for(name, target, self.consistency_timeout_s):
            raise Unavailable(
                f"the {name} projection is behind the log (position {target} not yet "
                "applied); retry shortly"
            )
        return self._live(name)

    def _fenced_rows(
        self,
        name: str,
        query: Callable[[Tables], tuple[str, list[Any]]],
        as_of_position: int | None,
    ) -> tuple[list[Row], int]:
        """The rows of ``query`` in the live generation of ``name`` once it has applied
        every write acknowledged before this call (or up to ``as_of_position``), and the
        position they reflect; ``Unavailable`` if it cannot catch up within the bound.

        One statement reads the head of the log, the generation's position and the rows,
        so they come from one snapshot: when the position has reached the head, the rows
        are the answer, in one round trip. Otherwise it waits for the projection and
        reads again; the head of the first read is the fence, since every write
        acknowledged before the call was in the log by then."""
        assert self.head_sql is not None
        deadline = time.monotonic() + self.consistency_timeout_s
        target: int | None = None
        while True:
            live = self._live(name)
            sql, params = query(live.tables)
            result = self.projections.db.query(
                "SELECT f.head, f.position, r.* FROM (SELECT "  # noqa: S608 (the store's and projection's tables)
                f"COALESCE(({self.head_sql}), 0) AS head, (SELECT position FROM "
                "projection_generations WHERE name = ? AND generation = ?) AS position) f "
                f"LEFT JOIN ({sql}) r ON 1 = 1",
                [name, live.generation, *params],
            )
            head, position = int(result[0][0]), result[0][1]
            if target is None:
                target = head if as_of_position is None else min(head, as_of_position)
            if position is not None and position >= target:
                # Without matching rows the join yields one row of NULLs.
                return [row[2:] for row in result if row[2] is not None], int(position)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.projections.wait_for(name, target, remaining):
                raise Unavailable(
                    f"the {name} projection is behind the log (position {target} not yet "
                    "applied); retry shortly"
                )

    def check_access(
        self,
        grantee_id: str,
        listing_id: str,
        delivery_mode: str,
        scenario: str,
        at: datetime | None,
        as_of_time: datetime | None,
        as_of_position: int | None,
        actor: Actor,
    ) -> tuple[AccessDecision, int]:
        """May the grantee use the listing this way, for this scenario, at ``at``? The
        answer reflects every write acknowledged before the call. A venue-scoped caller
        asking about another venue's listing (or one that does not exist) gets
        ``NotFound``."""
        parse_uuid(grantee_id, "grantee_id")
        parse_uuid(listing_id, "listing_id")
        mode = parse_enum(DeliveryMode, delivery_mode, "delivery_mode").name
        validate_scenario(scenario)
        moment = time_text(at or self.app.clock.now())
        as_of = time_text(as_of_time) if as_of_time else None
        if self.head_sql is None:
            return self._check_access_in_steps(
                grantee_id, listing_id, mode, scenario, moment, as_of, as_of_position, actor
            )
        rows, position = self._fenced_rows(
            "access",
            lambda t: grant_rows_query(t, grantee_id, listing_id, as_of_position, as_of),
            as_of_position,
        )
        if actor.venues is not None:
            exchange_id = exchange_of(rows)
            if exchange_id is None:
                # No grant names the listing's exchange: the listing itself does.
                self.app.get(Listing, listing_id, actor, "listing_id")
            elif exchange_id not in actor.venues:
                raise NotFound("listing", listing_id, "listing_id")
        decision = decide(rows, mode, scenario, moment)
        return decision, as_of_position if as_of_position is not None else position

    def _check_access_in_steps(
        self,
        grantee_id: str,
        listing_id: str,
        mode: str,
        scenario: str,
        moment: str,
        as_of_time: str | None,
        as_of_position: int | None,
        actor: Actor,
    ) -> tuple[AccessDecision, int]:
        """``check_access`` for a log kept apart from the projections: the head, the
        listing and the grants each read on their own."""
        if actor.venues is not None:
            self.app.get(Listing, listing_id, actor, "listing_id")
        live = self._caught_up("access", as_of_position)
        with self.projections.db.transaction() as tx:
            decision = check_access(
                tx,
                live.tables,
                grantee_id,
                listing_id,
                mode,
                scenario,
                moment,
                as_of_position,
                as_of_time,
            )
        applied = self.projections.applied(live)
        return decision, as_of_position if as_of_position is not None else applied

    def ownership(
        self,
        listing_id: str,
        as_of_time: datetime | None,
        as_of_position: int | None,
        actor: Actor,
    ) -> tuple[list[Holding], int]:
        """Each right of the listing with its holders, now or as of a past point."""
        self.app.get(Listing, listing_id, actor, "listing_id")
        live = self._caught_up("ownership", as_of_position)
        with self.projections.db.transaction() as tx:
            holdings = ownership_at(
                tx,
                live.tables,
                listing_id,
                as_of_position,
                time_text(as_of_time) if as_of_time else None,
            )
        applied = self.projections.applied(live)
        return holdings, as_of_position if as_of_position is not None else applied

    def statuses(self) -> list[Status]:
        return self.projections.status()

    def status(self, name: str) -> Status:
        """The generation being rebuilt, if any, else the live one."""
        self._known(name)
        statuses = [s for s in self.projections.status() if s.name == name]
        chosen = [s for s in statuses if s.state == "REBUILDING"] or statuses
        if not chosen:
            raise NotFound("projection", name, "name")
        return chosen[-1]

    def rebuild(self, name: str) -> Status:
        """Starts a rebuild beside the live generation; reads keep being served."""
        self._known(name)
        generation = self.projections.rebuild(name)
        for status in self.projections.status():
            if status.name == name and status.generation == generation.generation:
                return status
        raise NotFound("projection", name, "name")

    def _known(self, name: str) -> None:
        if name not in self.projections.projections:
            raise NotFound("projection", name, "name")
