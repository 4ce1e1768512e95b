"""Compliance: findings of the detected rules R17-R19, and enforced-rule rejections.

R18 is decided when a use is folded: everything it depends on is already in the log. R17
and R19 turn on the passage of time, so the fold keeps their facts (time lines of grants,
certifications and classifications; trades and when they closed) and a report decides
them for the moment it is asked about. As of a past point, facts recorded after it are
ignored, so a report can be reproduced exactly as it would have read then.

Enforced rules write nothing to the log when they reject, so their counts live in
``rule_rejections``, a table outside the projection's generations that rebuilds keep.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from ledger.application.events import CanonicalEvent
from ledger.domain.rules import RULE_SET_VERSION
from ledger.domain.values import Classification
from ledger.projections.db import Tx, WriteTx
from ledger.projections.engine import Tables

# Bumped when the table layout changes; the rule-set version covers changed rules.
SCHEMA_REVISION = 1
DEFAULT_SETTLEMENT_WINDOW_DAYS = 7

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
EARLIEST = datetime.min.replace(tzinfo=UTC)
# Sorts after every real time: the end of an interval that has not ended.
END = "9999-12-31T23:59:59.999999Z"
# Stands for "no as-of position": above any position a BIGINT column can hold in practice.
NO_POSITION_LIMIT = 2**62

ACTIVE = "ACTIVE"
VALID = "VALID"
IMPORTANT = Classification.IMPORTANT.name
# R08 is satisfied by a certification whose maximum classification is at least IMPORTANT.
COVERS_IMPORTANT = tuple(c.name for c in Classification if c.rank >= Classification.IMPORTANT.rank)

# State each lifecycle event gives its subject's time line: (state, payload key of the
# subject, or None when the subject is the event's aggregate).
TIMELINE_EVENTS: dict[str, tuple[str, str | None]] = {
    "CertificationSuspended": ("SUSPENDED", "certification_id"),
    "CertificationReinstated": (VALID, "certification_id"),
    "CertificationRevoked": ("REVOKED", "certification_id"),
    "AccessSuspended": ("SUSPENDED", None),
    "AccessReinstated": (ACTIVE, None),
    "AccessRevoked": ("REVOKED", None),
}

TABLES: dict[str, str] = {
    # One row per state change of a grant (ACTIVE/SUSPENDED/REVOKED), a certification
    # (VALID/SUSPENDED/REVOKED) or a listing (its classification), in log order.
    "timelines": "subject_id TEXT NOT NULL, position BIGINT NOT NULL, "
    "effective_at TEXT NOT NULL, recorded_at TEXT NOT NULL, state TEXT NOT NULL, "
    "PRIMARY KEY (subject_id, position)",
    "regulators": "participant_id TEXT PRIMARY KEY, position BIGINT NOT NULL",
    "certifications": "certification_id TEXT PRIMARY KEY, participant_id TEXT NOT NULL, "
    "max_classification TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT NOT NULL, "
    "position BIGINT NOT NULL",
    "grants": "id TEXT PRIMARY KEY, trade_id TEXT NOT NULL, listing_id TEXT NOT NULL, "
    "exchange_id TEXT NOT NULL, grantee_id TEXT NOT NULL, delivery_mode TEXT NOT NULL, "
    "scenario TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT, "
    "usage_limit BIGINT, units_used BIGINT NOT NULL, position BIGINT NOT NULL, "
    "recorded_at TEXT NOT NULL",
    # closed_after_us (microseconds from execution to settlement or cancellation) lets a
    # report select late trades in SQL for any settlement window.
    "trades": "id TEXT PRIMARY KEY, listing_id TEXT NOT NULL, exchange_id TEXT NOT NULL, "
    "seller_id TEXT NOT NULL, buyer_id TEXT NOT NULL, executed_at TEXT NOT NULL, "
    "position BIGINT NOT NULL, recorded_at TEXT NOT NULL, closed_state TEXT, "
    "closed_position BIGINT, closed_at TEXT, closed_recorded_at TEXT, closed_after_us BIGINT",
    # Findings decided at fold time (R18); evidence is comma-separated positions.
    "findings": "subject_id TEXT NOT NULL, first_seen_position BIGINT NOT NULL, "
    "reason TEXT NOT NULL, rule TEXT NOT NULL, subject_type TEXT NOT NULL, "
    "exchange_id TEXT NOT NULL, listing_id TEXT NOT NULL, participant_ids TEXT NOT NULL, "
    "evidence TEXT NOT NULL, first_seen_time TEXT NOT NULL, recorded_at TEXT NOT NULL, "
    "rule_set_version TEXT NOT NULL, PRIMARY KEY (subject_id, first_seen_position, reason)",
}

INDEXES: dict[str, tuple[str, ...]] = {
    "certifications": ("participant_id",),
    "grants": ("exchange_id, position", "grantee_id", "listing_id"),
    "trades": ("executed_at", "exchange_id, executed_at"),
    "findings": ("exchange_id, first_seen_position", "first_seen_position"),
}

REJECTIONS_DDL = """
CREATE TABLE IF NOT EXISTS rule_rejections (
    day TEXT NOT NULL,
    rule TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (day, rule, exchange_id)
)
"""


def projection_version(rule_set_version: str, schema_revision: int = SCHEMA_REVISION) -> int:
    """A positive 31-bit projection version that changes with the rule set or the tables,
    so a changed detected rule builds a new generation instead of migrating the old."""
    return zlib.crc32(f"{schema_revision}:{rule_set_version}".encode()) & 0x7FFFFFFF


# --- times ----------------------------------------------------------------------------


def time_text(at: datetime) -> str:
    """Formats an aware datetime as a canonical event time (``...T08:00:00.000000Z``)."""
    if at.tzinfo is None:
        raise ValueError("a naive datetime is ambiguous; pass one with a timezone")
    # isoformat pads the year to four digits (strftime's %Y does not before 1000, which
    # would not parse back), and is the cheaper of the two.
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time_text(text: str) -> datetime:
    """Parses a canonical event time; the inverse of :func:`time_text`."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"time {text!r} is not canonical; expected YYYY-MM-DDTHH:MM:SS.ffffffZ in UTC"
        ) from None


_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)
_EPOCH = datetime(1970, 1, 1)


def _micros(text: str) -> int:
    """Microseconds since the epoch of a canonical event time."""
    try:
        # Several times faster than strptime, and the same on text of this exact form.
        moment = datetime.fromisoformat(text[:-1]) if _CANONICAL_TIME.fullmatch(text) else None
    except ValueError:
        moment = None
    if moment is None:
        moment = parse_time_text(text).replace(tzinfo=None)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- findings and reports -------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One breach of a detected rule, with the events that show it.

    A position is None where time alone moved the finding: it was first seen when a
    certification expired or a settlement window closed, or cleared when a validity ended.
    """

    rule: str
    reason: str
    subject_type: str
    subject_id: str
    exchange_id: str
    listing_id: str
    participant_ids: tuple[str, ...]
    evidence_positions: tuple[int, ...]
    first_seen_position: int | None
    first_seen_time: str
    cleared_position: int | None
    cleared_time: str | None
    rule_set_version: str

    @property
    def is_open(self) -> bool:
        return self.cleared_time is None


@dataclass(frozen=True)
class Report:
    """The compliance of an exchange (or of the whole market, ``exchange_id`` None) as of
    a time and, optionally, a log position."""

    exchange_id: str | None
    as_of_time: str
    as_of_position: int | None
    rule_set_version: str
    settlement_window_days: int
    findings: tuple[Finding, ...]
    rejections: dict[str, int]

    def findings_by_rule(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for finding in self.findings:
            counts[finding.rule] += 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class _AsOf:
    """The facts a report may see: recorded by ``time``, at or before ``position``."""

    time: str
    position: int
    exchange_id: str | None

    def known(self, alias: str) -> tuple[str, list[Any]]:
        """A condition that a row of ``alias`` (with position and recorded_at) is known."""
        return f"{alias}.position <= ? AND {alias}.recorded_at <= ?", [self.position, self.time]


# --- the projection -------------------------------------------------------------------


class Compliance:
    """Folds the facts the detected rules need and reports findings as of any moment."""

    name: ClassVar[str] = "compliance"
    writes_after_reads: ClassVar[bool] = True
    version: ClassVar[int] = projection_version(RULE_SET_VERSION)

    def __init__(self, settlement_window_days: int = DEFAULT_SETTLEMENT_WINDOW_DAYS) -> None:
        if settlement_window_days <= 0:
            raise ValueError("the settlement window is a positive number of days")
        self.settlement_window_days = settlement_window_days

    @property
    def event_types(self) -> frozenset[str]:
        return FOLDED_TYPES

    def tables(self) -> Sequence[str]:
        return tuple(TABLES)

    def create(self, tx: Tx, t: Tables) -> None:
        for table, columns in TABLES.items():
            tx.execute(f"CREATE TABLE IF NOT EXISTS {t(table)} ({columns})")
        ensure_rejections_table(tx)

    def indexes(self, t: Tables) -> list[str]:
        """The reports' filters (the fold reads rows by their keys alone)."""
        return [
            f"CREATE INDEX IF NOT EXISTS {t(table)}_{columns.replace(', ', '_')} "
            f"ON {t(table)} ({columns})"
            for table, indexes in INDEXES.items()
            for columns in indexes
        ]

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        _Batch(tx, t, events).fold(events)

    def report(
        self,
        tx: Tx,
        t: Tables,
        exchange_id: str | None,
        as_of_time: str,
        as_of_position: int | None = None,
    ) -> Report:
        return compliance_report(
            tx,
            t,
            exchange_id,
            as_of_time,
            as_of_position,
            settlement_window_days=self.settlement_window_days,
        )


# --- fold -----------------------------------------------------------------------------

TRADE_COLUMNS = (
    "id",
    "listing_id",
    "exchange_id",
    "seller_id",
    "buyer_id",
    "executed_at",
    "position",
    "recorded_at",
    "closed_state",
    "closed_position",
    "closed_at",
    "closed_recorded_at",
    "closed_after_us",
)
CLOSING_COLUMNS = TRADE_COLUMNS[8:]
_EXECUTED_AT, _CLOSED = 5, 8
GRANT_COLUMNS = (
    "id",
    "trade_id",
    "listing_id",
    "exchange_id",
    "grantee_id",
    "delivery_mode",
    "scenario",
    "valid_from",
    "valid_until",
    "usage_limit",
    "units_used",
    "position",
    "recorded_at",
)
# What a use is judged on, read from a grant row (in GRANT_COLUMNS order).
_LISTING, _EXCHANGE, _GRANTEE, _MODE, _SCENARIO = 2, 3, 4, 5, 6
_VALID_FROM, _VALID_UNTIL, _LIMIT, _UNITS, _POSITION = 7, 8, 9, 10, 11
# Ids per query that names them (below any database's limit on parameters).
LOOKUP_CHUNK = 500


class _Batch:
    """The changes of one batch, written at its end: rows created in it are changed in
    memory, rows of earlier batches that its events read or change are read at its start
    in a few queries, then changed by one bulk update per table."""

    def __init__(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        self.tx = tx
        self.t = t
        self.timelines: list[tuple[Any, ...]] = []
        self.regulators: list[tuple[Any, ...]] = []
        self.certifications: list[tuple[Any, ...]] = []
        self.findings: list[tuple[Any, ...]] = []
        self.new_trades: dict[str, list[Any]] = {}
        self.new_grants: dict[str, list[Any]] = {}
        self.trade_rows: list[list[Any]] = []
        self.grant_rows: list[list[Any]] = []
        created: dict[str, set[str]] = {"SaleRecorded": set(), "AccessGranted": set()}
        closed: set[str] = set()
        used: set[str] = set()
        for e in events:
            kind = e["type"]
            if kind in created:
                created[kind].add(e["aggregate_id"])
            elif kind in _CLOSINGS:
                closed.add(e["aggregate_id"])
            elif kind == "AccessUsed":
                used.add(e["aggregate_id"])
        # Rows of earlier batches (those of this one are not stored yet), as this batch
        # changes them.
        earlier_trades = closed - created["SaleRecorded"]
        earlier_grants = used - created["AccessGranted"]
        self.trades = {
            r[0]: list(r)
            for r in self._lookup("trades", ("id", "executed_at"), "id", earlier_trades)
        }
        self.grants = {
            r[0]: list(r) for r in self._lookup("grants", GRANT_COLUMNS, "id", earlier_grants)
        }
        self.changed_trades: set[str] = set()
        self.changed_grants: set[str] = set()
        # The time lines of the grants used in this batch, kept up to date as it goes.
        self.histories: dict[str, list[tuple[Any, ...]]] = {grant_id: [] for grant_id in used}
        for subject, *change in self._lookup(
            "timelines",
            ("subject_id", "position", "effective_at", "state"),
            "subject_id",
            earlier_grants,
        ):
            self.histories[subject].append(tuple(change))

    def _lookup(
        self, table: str, columns: Sequence[str], key: str, ids: set[str]
    ) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        wanted = sorted(ids)
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            part = wanted[start : start + LOOKUP_CHUNK]
            rows += self.tx.fetchall(
                f"SELECT {', '.join(columns)} FROM {self.t(table)} "
                f"WHERE {key} IN ({','.join('?' * len(part))})",
                part,
            )
        return rows

    def fold(self, events: Sequence[CanonicalEvent]) -> None:
        for event in events:
            handler = _HANDLERS.get(event["type"])
            if handler is not None:
                handler(self, event)
            elif event["type"] in TIMELINE_EVENTS:
                state, key = TIMELINE_EVENTS[event["type"]]
                subject = event["aggregate_id"] if key is None else event["payload"][key]
                self.timeline(subject, event, state)
        self.write()

    def write(self) -> None:
        tx, t = self.tx, self.t
        # The INSERTs only add rows of this batch, the UPDATEs only change earlier ones.
        tx.insert_rows(
            t("timelines"),
            ("subject_id", "position", "effective_at", "recorded_at", "state"),
            self.timelines,
        )
        tx.insert_rows(t("regulators"), ("participant_id", "position"), self.regulators)
        tx.insert_rows(
            t("certifications"),
            (
                "certification_id",
                "participant_id",
                "max_classification",
                "valid_from",
                "valid_until",
                "position",
            ),
            self.certifications,
        )
        tx.insert_rows(t("trades"), TRADE_COLUMNS, self.trade_rows)
        tx.insert_rows(t("grants"), GRANT_COLUMNS, self.grant_rows)
        tx.insert_rows(t("findings"), FINDING_COLUMNS, self.findings)
        tx.update_rows(
            t("trades"),
            ("id",),
            CLOSING_COLUMNS,
            [(i, *self.trades[i][2:]) for i in sorted(self.changed_trades)],
        )
        tx.update_rows(
            t("grants"),
            ("id",),
            ("units_used",),
            [(i, self.grants[i][_UNITS]) for i in sorted(self.changed_grants)],
        )

    def timeline(self, subject_id: str, event: CanonicalEvent, state: str) -> None:
        self.timelines.append(
            (subject_id, event["position"], event["effective_at"], event["recorded_at"], state)
        )
        history = self.histories.get(subject_id)
        if history is not None:
            history.append((event["position"], event["effective_at"], state))

    def participant_registered(self, event: CanonicalEvent) -> None:
        if "REGULATOR" in event["payload"]["roles"]:
            self.regulators.append((event["aggregate_id"], event["position"]))

    def certification_issued(self, event: CanonicalEvent) -> None:
        p = event["payload"]
        self.certifications.append(
            (
                p["certification_id"],
                event["aggregate_id"],
                p["max_classification"],
                p["valid_from"],
                p["valid_until"],
                event["position"],
            )
        )
        self.timeline(p["certification_id"], event, VALID)

    def classified(self, event: CanonicalEvent) -> None:
        self.timeline(event["aggregate_id"], event, event["payload"]["classification"])

    def sale_recorded(self, event: CanonicalEvent) -> None:
        p = event["payload"]
        row = [
            event["aggregate_id"],
            p["listing_id"],
            p["exchange_id"],
            p["seller_id"],
            p["buyer_id"],
            event["effective_at"],
            event["position"],
            event["recorded_at"],
            None,
            None,
            None,
            None,
            None,
        ]
        self.trade_rows.append(row)
        self.new_trades.setdefault(event["aggregate_id"], row)

    def trade_closed(self, event: CanonicalEvent) -> None:
        trade_id = event["aggregate_id"]
        # A row of this batch, or one of an earlier batch as read (id and executed_at),
        # followed by the closing columns.
        row = self.new_trades.get(trade_id)
        if row is not None:
            executed_at, closing_at = row[_EXECUTED_AT], _CLOSED
        else:
            row = self.trades.get(trade_id)
            if row is None:
                raise ValueError(f"{event['type']} of unknown trade {trade_id}")
            executed_at, closing_at = row[1], 2
            self.changed_trades.add(trade_id)
        row[closing_at:] = [
            "SETTLED" if event["type"] == "TradeSettled" else "CANCELLED",
            event["position"],
            event["effective_at"],
            event["recorded_at"],
            _micros(event["effective_at"]) - _micros(executed_at),
        ]

    def access_granted(self, event: CanonicalEvent) -> None:
        p = event["payload"]
        row = [
            event["aggregate_id"],
            p["trade_id"],
            p["listing_id"],
            p["exchange_id"],
            p["grantee_id"],
            p["delivery_mode"],
            p["scenario"],
            p["valid_from"],
            p["valid_until"],
            p["usage_limit"],
            0,
            event["position"],
            event["recorded_at"],
        ]
        self.grant_rows.append(row)
        self.new_grants.setdefault(event["aggregate_id"], row)
        self.timeline(event["aggregate_id"], event, ACTIVE)

    def access_used(self, event: CanonicalEvent) -> None:
        """R18: ``AccessUsed`` outside the grant's validity, mode or scenario, or beyond its
        usage limit. Judged on the grant's history as the log holds it when the use
        arrives."""
        grant_id = event["aggregate_id"]
        grant = self.new_grants.get(grant_id)
        if grant is None:
            grant = self.grants.get(grant_id)
            if grant is None:
                raise ValueError(f"AccessUsed of unknown grant {grant_id}")
            self.changed_grants.add(grant_id)
        p = event["payload"]
        used_at: str = p["used_at"]
        units_total = int(grant[_UNITS]) + int(p["units"])
        grant[_UNITS] = units_total
        valid_from, valid_until, usage_limit = (
            grant[_VALID_FROM],
            grant[_VALID_UNTIL],
            grant[_LIMIT],
        )
        reasons = []
        if used_at < valid_from or (valid_until is not None and used_at >= valid_until):
            reasons.append("OUTSIDE_VALIDITY")
        if _state_at(_clamped(self.histories[grant_id]), used_at) != ACTIVE:
            reasons.append("GRANT_NOT_ACTIVE")
        if p["delivery_mode"] != grant[_MODE]:
            reasons.append("DELIVERY_MODE_MISMATCH")
        if p["scenario"] != grant[_SCENARIO]:
            reasons.append("SCENARIO_MISMATCH")
        if usage_limit is not None and units_total > int(usage_limit):
            reasons.append("USAGE_LIMIT_EXCEEDED")
        evidence = f"{int(grant[_POSITION])},{event['position']}"
        self.findings += [
            (
                grant_id,
                event["position"],
                reason,
                "R18",
                "AccessGrant",
                grant[_EXCHANGE],
                grant[_LISTING],
                grant[_GRANTEE],
                evidence,
                used_at,
                event["recorded_at"],
                RULE_SET_VERSION,
            )
            for reason in reasons
        ]


FINDING_COLUMNS = (
    "subject_id",
    "first_seen_position",
    "reason",
    "rule",
    "subject_type",
    "exchange_id",
    "listing_id",
    "participant_ids",
    "evidence",
    "first_seen_time",
    "recorded_at",
    "rule_set_version",
)
_CLOSINGS = frozenset({"TradeSettled", "TradeCancelled"})
_HANDLERS: dict[str, Callable[[_Batch, CanonicalEvent], None]] = {
    "ParticipantRegistered": _Batch.participant_registered,
    "CertificationIssued": _Batch.certification_issued,
    "ListingSubmitted": _Batch.classified,
    "ListingReclassified": _Batch.classified,
    "SaleRecorded": _Batch.sale_recorded,
    "TradeSettled": _Batch.trade_closed,
    "TradeCancelled": _Batch.trade_closed,
    "AccessGranted": _Batch.access_granted,
    "AccessUsed": _Batch.access_used,
}
# The types of the events the fold reads (it ignores any other).
FOLDED_TYPES = frozenset({*_HANDLERS, *TIMELINE_EVENTS})


# --- time lines and intervals ---------------------------------------------------------

# A state change: (effective time, position, state).
Change = tuple[str, int, str]
# A half-open interval [start, end) of canonical times; END when it has not ended.
Interval = tuple[str, str]


def _clamped(rows: Sequence[Sequence[Any]]) -> list[Change]:
    """Orders (position, effective_at, state) rows by position; a backdated change counts
    from the previous change's time, so log order and time order agree."""
    changes: list[Change] = []
    for position, at, state in sorted(rows, key=lambda r: int(r[0])):
        time = max(at, changes[-1][0]) if changes else at
        changes.append((time, int(position), state))
    return changes


def _state_at(changes: Sequence[Change], at: str) -> str | None:
    state = None
    for time, _, value in changes:
        if time > at:
            break
        state = value
    return state


def _normalised(intervals: Sequence[Interval]) -> list[Interval]:
    """Sorts intervals, drops empty ones and merges those that overlap or touch."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _during(changes: Sequence[Change], wanted: Callable[[str], bool]) -> list[Interval]:
    """When a subject's state satisfied ``wanted``: each state holds until the next change."""
    intervals = []
    for i, (time, _, state) in enumerate(changes):
        if wanted(state):
            intervals.append((time, changes[i + 1][0] if i + 1 < len(changes) else END))
    return _normalised(intervals)


def _intersection(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    return _normalised([(max(s1, s2), min(e1, e2)) for s1, e1 in a for s2, e2 in b])


def _difference(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    result: list[Interval] = []
    holes = _normalised(b)
    for start, end in a:
        current = start
        for hole_start, hole_end in holes:
            if hole_end <= current or hole_start >= end:
                continue
            if hole_start > current:
                result.append((current, hole_start))
            current = max(current, hole_end)
        if current < end:
            result.append((current, end))
    return _normalised(result)


# --- report ---------------------------------------------------------------------------


def compliance_report(
    tx: Tx,
    t: Tables,
    exchange_id: str | None,
    as_of_time: str,
    as_of_position: int | None = None,
    *,
    settlement_window_days: int = DEFAULT_SETTLEMENT_WINDOW_DAYS,
) -> Report:
    """The findings of R17-R19 and the rejection counts, for one exchange (or the whole
    market) as of ``as_of_time`` (canonical UTC text) and optionally a log position.

    Facts recorded after the as-of point are ignored; time-dependent rules are judged at
    ``as_of_time``. Rejections are counted per day, up to and including its day.
    """
    parse_time_text(as_of_time)
    as_of = _AsOf(
        as_of_time,
        NO_POSITION_LIMIT if as_of_position is None else as_of_position,
        exchange_id,
    )
    findings = [
        *_r17_findings(tx, t, as_of),
        *_r18_findings(tx, t, as_of),
        *_r19_findings(tx, t, as_of, timedelta(days=settlement_window_days)),
    ]
    findings.sort(key=lambda f: (f.first_seen_time, f.rule, f.subject_id, f.reason))
    return Report(
        exchange_id=exchange_id,
        as_of_time=as_of_time,
        as_of_position=as_of_position,
        rule_set_version=RULE_SET_VERSION,
        settlement_window_days=settlement_window_days,
        findings=tuple(findings),
        rejections=rejections(tx, exchange_id, as_of_time[:10]),
    )


def _r17_candidates(t: Tables, as_of: _AsOf) -> tuple[str, list[Any]]:
    """Grants known as of the report on a listing that was IMPORTANT at some point, to a
    grantee that is not a regulator: those for which R08 may have required a certification."""
    known, params = as_of.known("g")
    sql = (
        f"FROM {t('grants')} g WHERE {known}"
        f" AND NOT EXISTS (SELECT 1 FROM {t('regulators')} r"
        " WHERE r.participant_id = g.grantee_id AND r.position <= ?)"
        f" AND EXISTS (SELECT 1 FROM {t('timelines')} c WHERE c.subject_id = g.listing_id"
        " AND c.state = ? AND c.position <= ? AND c.recorded_at <= ?)"
    )
    params += [as_of.position, IMPORTANT, as_of.position, as_of.time]
    if as_of.exchange_id is not None:
        sql += " AND g.exchange_id = ?"
        params.append(as_of.exchange_id)
    return sql, params


def _r17_findings(tx: Tx, t: Tables, as_of: _AsOf) -> list[Finding]:
    """R17: a grant still ACTIVE after its grantee's certification (where R08 required
    one) expired. A finding lasts while the grant is ACTIVE and within its validity, the
    listing IMPORTANT, and no certification covering IMPORTANT is valid."""
    candidates, params = _r17_candidates(t, as_of)
    grants = tx.fetchall(
        "SELECT g.id, g.listing_id, g.exchange_id, g.grantee_id, g.valid_from, g.valid_until, "
        f"g.position {candidates}",
        params,
    )
    if not grants:
        return []
    covering = ",".join("?" * len(COVERS_IMPORTANT))
    certs_of_grantees = (
        f"FROM {t('certifications')} c WHERE c.max_classification IN ({covering})"
        f" AND c.participant_id IN (SELECT g.grantee_id {candidates})"
    )
    certs_params = [*COVERS_IMPORTANT, *params]
    known, known_params = as_of.known("s")
    rows: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for subjects, subject_params in (
        (f"SELECT g.id {candidates}", params),
        (f"SELECT g.listing_id {candidates}", params),
        (f"SELECT c.certification_id {certs_of_grantees}", certs_params),
    ):
        for subject, *change in tx.fetchall(
            f"SELECT s.subject_id, s.position, s.effective_at, s.state FROM {t('timelines')} s "
            f"WHERE s.subject_id IN ({subjects}) AND {known}",
            [*subject_params, *known_params],
        ):
            rows[subject].append(change)
    changes = {subject: _clamped(r) for subject, r in rows.items()}
    # A certification with no known change was issued after the as-of point.
    certifications: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for cert_id, participant_id, valid_from, valid_until in tx.fetchall(
        f"SELECT c.certification_id, c.participant_id, c.valid_from, c.valid_until "
        f"{certs_of_grantees}",
        certs_params,
    ):
        if cert_id in changes:
            certifications[participant_id].append((cert_id, valid_from, valid_until))
    findings = []
    for grant_id, listing_id, exchange_id, grantee_id, valid_from, valid_until, position in grants:
        findings += _r17_for_grant(
            as_of,
            grant_id,
            listing_id,
            exchange_id,
            grantee_id,
            (valid_from, valid_until or END),
            int(position),
            changes,
            certifications[grantee_id],
        )
    return findings


def _r17_for_grant(
    as_of: _AsOf,
    grant_id: str,
    listing_id: str,
    exchange_id: str,
    grantee_id: str,
    validity: Interval,
    granted_position: int,
    changes: dict[str, list[Change]],
    certifications: Sequence[tuple[str, str, str]],
) -> list[Finding]:
    grant_changes = changes.get(grant_id, [])
    listing_changes = changes.get(listing_id, [])
    active = _intersection(_during(grant_changes, lambda s: s == ACTIVE), [validity])
    important = _during(listing_changes, lambda s: s == IMPORTANT)
    covered: list[Interval] = []
    for cert_id, valid_from, valid_until in certifications:
        valid = _during(changes[cert_id], lambda s: s == VALID)
        covered += _intersection(valid, [(valid_from, valid_until)])
    breaches = _difference(_intersection(active, important), covered)
    # A breach that begins or ends at a change was moved by that event; one that begins
    # or ends between changes was moved by time alone (an expiry, a validity starting).
    moved_by: dict[str, int] = {}
    for subject in (grant_id, listing_id, *(c[0] for c in certifications)):
        for time, position, _ in changes.get(subject, []):
            moved_by[time] = max(position, moved_by.get(time, 0))
    findings = []
    for start, end in breaches:
        if start > as_of.time:
            continue
        expired = [c for c in certifications if c[2] <= start]
        evidence = {granted_position}
        evidence.update(p for time, p, s in listing_changes if s == IMPORTANT and time <= start)
        if expired:
            lapsed = max(expired, key=lambda c: c[2])
            evidence.add(changes[lapsed[0]][0][1])
        if start in moved_by:
            evidence.add(moved_by[start])
        cleared = end <= as_of.time
        findings.append(
            Finding(
                rule="R17",
                reason="CERTIFICATION_EXPIRED" if expired else "NOT_CERTIFIED",
                subject_type="AccessGrant",
                subject_id=grant_id,
                exchange_id=exchange_id,
                listing_id=listing_id,
                participant_ids=(grantee_id,),
                evidence_positions=tuple(sorted(evidence)),
                first_seen_position=moved_by.get(start),
                first_seen_time=start,
                cleared_position=moved_by.get(end) if cleared else None,
                cleared_time=end if cleared else None,
                rule_set_version=RULE_SET_VERSION,
            )
        )
    return findings


def _r18_findings(tx: Tx, t: Tables, as_of: _AsOf) -> list[Finding]:
    sql = (
        "SELECT rule, reason, subject_type, subject_id, exchange_id, listing_id, "
        "participant_ids, evidence, first_seen_position, first_seen_time, rule_set_version "
        f"FROM {t('findings')} f WHERE f.first_seen_position <= ? AND f.recorded_at <= ?"
    )
    params: list[Any] = [as_of.position, as_of.time]
    if as_of.exchange_id is not None:
        sql += " AND f.exchange_id = ?"
        params.append(as_of.exchange_id)
    return [
        Finding(
            rule=rule,
            reason=reason,
            subject_type=subject_type,
            subject_id=subject_id,
            exchange_id=exchange_id,
            listing_id=listing_id,
            participant_ids=tuple(participants.split(",")),
            evidence_positions=tuple(int(p) for p in evidence.split(",")),
            first_seen_position=int(position),
            first_seen_time=first_seen_time,
            cleared_position=None,
            cleared_time=None,
            rule_set_version=version,
        )
        for (
            rule,
            reason,
            subject_type,
            subject_id,
            exchange_id,
            listing_id,
            participants,
            evidence,
            position,
            first_seen_time,
            version,
        ) in tx.fetchall(sql, params)
    ]


def _r19_findings(tx: Tx, t: Tables, as_of: _AsOf, window: timedelta) -> list[Finding]:
    """R19: a trade EXECUTED but not SETTLED within the settlement window. A trade
    cancelled within the window is no longer EXECUTED; one settled or cancelled later
    clears its finding then."""
    known, params = as_of.known("tr")
    window_us = window // timedelta(microseconds=1)
    sql = (
        "SELECT id, listing_id, exchange_id, seller_id, buyer_id, executed_at, position, "
        f"closed_position, closed_at, closed_recorded_at FROM {t('trades')} tr WHERE {known}"
        " AND executed_at <= ? AND (closed_position IS NULL OR closed_position > ?"
        " OR closed_recorded_at > ? OR closed_after_us > ?)"
    )
    # Clamped: as of a time within the window after year 1 the cutoff precedes any date.
    cutoff = time_text(max(parse_time_text(as_of.time), EARLIEST + window) - window)
    params += [cutoff, as_of.position, as_of.time, window_us]
    if as_of.exchange_id is not None:
        sql += " AND exchange_id = ?"
        params.append(as_of.exchange_id)
    findings = []
    for row in tx.fetchall(sql, params):
        trade_id, listing_id, exchange_id, seller_id, buyer_id, executed_at, position = row[:7]
        closed_position, closed_at, closed_recorded_at = row[7:]
        closed = (
            closed_position is not None
            and int(closed_position) <= as_of.position
            and closed_recorded_at <= as_of.time
        )
        evidence = (int(position), int(closed_position)) if closed else (int(position),)
        findings.append(
            Finding(
                rule="R19",
                reason="NOT_SETTLED_IN_WINDOW",
                subject_type="Trade",
                subject_id=trade_id,
                exchange_id=exchange_id,
                listing_id=listing_id,
                participant_ids=(seller_id, buyer_id),
                evidence_positions=evidence,
                first_seen_position=None,
                first_seen_time=time_text(parse_time_text(executed_at) + window),
                cleared_position=int(closed_position) if closed else None,
                cleared_time=closed_at if closed else None,
                rule_set_version=RULE_SET_VERSION,
            )
        )
    return findings


# --- rejections of enforced rules -----------------------------------------------------


def ensure_rejections_table(tx: Tx) -> None:
    """Creates the rejection counters (kept across projection rebuilds)."""
    tx.execute(REJECTIONS_DDL)


def record_rejection(tx: Tx, day: str, rule: str, exchange_id: str | None) -> None:
    """Counts one rejection of ``rule`` on ``day`` (``YYYY-MM-DD``, UTC) at an exchange
    (None for commands outside any venue, such as certifications)."""
    tx.execute(
        "INSERT INTO rule_rejections (day, rule, exchange_id, count) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (day, rule, exchange_id) "
        "DO UPDATE SET count = rule_rejections.count + 1",
        (day, rule, exchange_id or ""),
    )


def rejections(tx: Tx, exchange_id: str | None, up_to_day: str) -> dict[str, int]:
    """Rejections per rule id up to and including ``up_to_day``, at one exchange or
    (``exchange_id`` None) across the market."""
    sql = "SELECT rule, SUM(count) FROM rule_rejections WHERE day <= ?"
    params: list[Any] = [up_to_day]
    if exchange_id is not None:
        sql += " AND exchange_id = ?"
        params.append(exchange_id)
    rows = tx.fetchall(sql + " GROUP BY rule ORDER BY rule", params)
    return {rule: int(count) for rule, count in rows}
