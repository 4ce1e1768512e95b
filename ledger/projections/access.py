"""Access: what ``CheckAccess`` needs, with the history to answer it as of any past moment.

``grants`` holds each grant's fixed terms and its use counters at the head;
``grant_states`` its lifecycle as intervals (ACTIVE, SUSPENDED, REVOKED from one event
to the next, with the rule or reason behind a suspension or revocation); ``grant_uses``
one row per reported use, so the units used as of a past moment can be summed.
EXPIRED is not stored: it is derived from ``valid_until`` and the moment asked about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ledger.application.events import CanonicalEvent
from ledger.projections.db import Tx, WriteTx
from ledger.projections.engine import Tables

GRANTS = "grants"
STATES = "grant_states"
USES = "grant_uses"

GRANT_COLUMNS = (
    "grant_id",
    "grantee_id",
    "listing_id",
    "exchange_id",
    "trade_id",
    "delivery_mode",
    "scenario",
    "valid_from",
    "valid_until",
    "usage_limit",
    "uses",
    "units_used",
    "granted_position",
    "granted_time",
)
STATE_COLUMNS = (
    "grant_id",
    "state",
    "from_position",
    "until_position",
    "from_time",
    "until_time",
    "rule",
    "reason",
)
USE_COLUMNS = ("grant_id", "position", "recorded_time", "units")
_USES, _UNITS = 10, 11
_UNTIL_POSITION, _UNTIL_TIME = 3, 5
_EXCHANGE = 11  # in the rows of grant_rows_query

ACTIVE = "ACTIVE"
SUSPENDED = "SUSPENDED"
REVOKED = "REVOKED"

NO_GRANT = "NO_GRANT"
SCENARIO_NOT_GRANTED = "R06_SCENARIO_NOT_GRANTED"
DELIVERY_MODE_NOT_GRANTED = "R11_DELIVERY_MODE_NOT_GRANTED"
GRANT_REVOKED = "R16_GRANT_REVOKED"
GRANT_SUSPENDED = "GRANT_SUSPENDED"
OUTSIDE_VALIDITY = "R11_OUTSIDE_VALIDITY"
USAGE_LIMIT_REACHED = "R18_USAGE_LIMIT_REACHED"
# A suspension by a cascade names its rule; a manual one names none.
SUSPENSION_REASONS = {"R14": "R14_GRANTEE_SUSPENDED", "R15": "R15_LISTING_SUSPENDED"}


@dataclass(frozen=True)
class Decision:
    """The answer to ``CheckAccess``: the grant that allows the use, or why none does."""

    allowed: bool
    grant_id: str
    reason: str


class _Batch:
    """The changes of one batch. Rows created in it are changed in memory before they are
    inserted; rows of earlier batches by one bulk update per statement."""

    def __init__(self) -> None:
        self.grants: dict[str, list[Any]] = {}
        self.states: list[list[Any]] = []
        self.open_states: dict[str, list[Any]] = {}
        self.close_states: list[tuple[Any, ...]] = []
        self.uses: list[tuple[Any, ...]] = []
        self.counters: dict[str, list[int]] = {}

    def granted(self, e: CanonicalEvent) -> None:
        p = e["payload"]
        grant_id = e["aggregate_id"]
        self.grants[grant_id] = [
            grant_id,
            p["grantee_id"],
            p["listing_id"],
            p["exchange_id"],
            p["trade_id"],
            p["delivery_mode"],
            p["scenario"],
            p["valid_from"],
            p["valid_until"],
            p["usage_limit"],
            0,
            0,
            e["position"],
            e["recorded_at"],
        ]
        self._open(e, ACTIVE, "", "")

    def suspended(self, e: CanonicalEvent) -> None:
        self._enter(e, SUSPENDED, e["payload"].get("rule", ""), "")

    def reinstated(self, e: CanonicalEvent) -> None:
        self._enter(e, ACTIVE, "", "")

    def revoked(self, e: CanonicalEvent) -> None:
        p = e["payload"]
        self._enter(e, REVOKED, p.get("rule", ""), p["reason"])

    def used(self, e: CanonicalEvent) -> None:
        grant_id, units = e["aggregate_id"], int(e["payload"]["units"])
        self.uses.append((grant_id, e["position"], e["recorded_at"], units))
        row = self.grants.get(grant_id)
        if row is not None:
            row[_USES] += 1
            row[_UNITS] += units
        else:
            counter = self.counters.setdefault(grant_id, [0, 0])
            counter[0] += 1
            counter[1] += units

    def _enter(self, e: CanonicalEvent, state: str, rule: str, reason: str) -> None:
        """Ends the grant's current state interval and opens the next one."""
        grant_id, position, at = e["aggregate_id"], e["position"], e["recorded_at"]
        current = self.open_states.get(grant_id)
        if current is not None:
            current[_UNTIL_POSITION], current[_UNTIL_TIME] = position, at
        else:
            self.close_states.append((grant_id, position, at))
        self._open(e, state, rule, reason)

    def _open(self, e: CanonicalEvent, state: str, rule: str, reason: str) -> None:
        grant_id = e["aggregate_id"]
        row = [grant_id, state, e["position"], None, e["recorded_at"], None, rule, reason]
        self.states.append(row)
        self.open_states[grant_id] = row

    def write(self, tx: WriteTx, t: Tables) -> None:
        # The UPDATEs only match rows of earlier batches and the INSERTs only add rows of
        # this one, so the statements are independent of each other's order. A grant's
        # state is closed here once at most: its next state is opened in this batch.
        tx.update_rows(
            t(STATES),
            ("grant_id",),
            ("until_position", "until_time"),
            self.close_states,
            where="until_position IS NULL",
        )
        tx.update_rows(
            t(GRANTS),
            ("grant_id",),
            ("uses", "units_used"),
            [(grant_id, count, units) for grant_id, (count, units) in self.counters.items()],
            add=True,
        )
        tx.insert_rows(t(GRANTS), GRANT_COLUMNS, list(self.grants.values()))
        tx.insert_rows(t(STATES), STATE_COLUMNS, self.states)
        tx.insert_rows(t(USES), USE_COLUMNS, self.uses)


_HANDLERS = {
    "AccessGranted": _Batch.granted,
    "AccessSuspended": _Batch.suspended,
    "AccessReinstated": _Batch.reinstated,
    "AccessRevoked": _Batch.revoked,
    "AccessUsed": _Batch.used,
}


class Access:
    """Grants, their state intervals and their uses, for access checks now and as of."""

    name: ClassVar[str] = "access"
    version: ClassVar[int] = 1
    writes_after_reads: ClassVar[bool] = True
    event_types: ClassVar[frozenset[str]] = frozenset(_HANDLERS)

    def tables(self) -> Sequence[str]:
        return (GRANTS, STATES, USES)

    def indexes(self, t: Tables) -> list[str]:
        """The access checks' lookup (the fold finds grants by id alone)."""
        grants = t(GRANTS)
        return [f"CREATE INDEX IF NOT EXISTS {grants}_lookup ON {grants} (grantee_id, listing_id)"]

    def create(self, tx: Tx, t: Tables) -> None:
        grants, states, uses = t(GRANTS), t(STATES), t(USES)
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {grants} ("
            "grant_id TEXT PRIMARY KEY, grantee_id TEXT NOT NULL, listing_id TEXT NOT NULL, "
            "exchange_id TEXT NOT NULL, trade_id TEXT NOT NULL, delivery_mode TEXT NOT NULL, "
            "scenario TEXT NOT NULL, valid_from TEXT NOT NULL, valid_until TEXT, "
            "usage_limit BIGINT, uses BIGINT NOT NULL, units_used BIGINT NOT NULL, "
            "granted_position BIGINT NOT NULL, granted_time TEXT NOT NULL)"
        )
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {states} ("
            "grant_id TEXT NOT NULL, state TEXT NOT NULL, from_position BIGINT NOT NULL, "
            "until_position BIGINT, from_time TEXT NOT NULL, until_time TEXT, "
            "rule TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (grant_id, from_position))"
        )
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {uses} ("
            "grant_id TEXT NOT NULL, position BIGINT NOT NULL, recorded_time TEXT NOT NULL, "
            "units BIGINT NOT NULL, PRIMARY KEY (grant_id, position))"
        )

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        batch = _Batch()
        for event in events:
            handler = _HANDLERS.get(event["type"])
            if handler is not None:
                handler(batch, event)
        batch.write(tx, t)


def check_access(
    tx: Tx,
    t: Tables,
    grantee_id: str,
    listing_id: str,
    delivery_mode: str,
    scenario: str,
    at: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
) -> Decision:
    """Decides whether ``grantee_id`` may use ``listing_id`` this way for this scenario at
    ``at`` (canonical UTC text), from the ledger's state at the head, after the event at
    ``as_of_position``, or after every event recorded by ``as_of_time``, in one query.

    Denials name the first check that fails: ``NO_GRANT`` (no grant for this grantee and
    listing), ``R06_SCENARIO_NOT_GRANTED``, ``R11_DELIVERY_MODE_NOT_GRANTED``, then for
    the grants of that scenario and mode: ``R16_GRANT_REVOKED`` (whatever the cascade
    that revoked it, so one code means "never usable again"), ``R14_GRANTEE_SUSPENDED`` /
    ``R15_LISTING_SUSPENDED`` / ``GRANT_SUSPENDED`` by the suspension's rule,
    ``R11_OUTSIDE_VALIDITY``, ``R18_USAGE_LIMIT_REACHED`` (units used reach the limit).
    Of several such grants, the one that passes most checks decides (the newest on a tie).
    It reads what the generation has folded: wait for a position first (``wait_for``).
    """
    sql, params = grant_rows_query(t, grantee_id, listing_id, as_of_position, as_of_time)
    return decide(tx.fetchall(sql, params), delivery_mode, scenario, at)


def grant_rows_query(
    t: Tables,
    grantee_id: str,
    listing_id: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
) -> tuple[str, list[Any]]:
    """The query (with ``?`` placeholders) and parameters of the rows :func:`decide` takes:
    the grants of one grantee and listing, each with its state at the head, after
    ``as_of_position`` or by ``as_of_time``. Each row ends with the grant's exchange,
    which is its listing's."""
    params: list[Any] = []
    units = "g.units_used"
    state = ["s.grant_id = g.grant_id"]
    if as_of_position is None and as_of_time is None:
        state.append("s.until_position IS NULL")
    else:
        used = ["u.grant_id = g.grant_id"]
        if as_of_position is not None:
            used.append("u.position <= ?")
            params.append(as_of_position)
        if as_of_time is not None:
            used.append("u.recorded_time <= ?")
            params.append(as_of_time)
        units = f"(SELECT COALESCE(SUM(u.units), 0) FROM {t(USES)} u WHERE {' AND '.join(used)})"
        if as_of_position is not None:
            state.append(
                "s.from_position <= ? AND (s.until_position IS NULL OR s.until_position > ?)"
            )
            params += [as_of_position, as_of_position]
        if as_of_time is not None:
            state.append("s.from_time <= ? AND (s.until_time IS NULL OR s.until_time > ?)")
            params += [as_of_time, as_of_time]
    sql = (
        "SELECT g.grant_id, g.scenario, g.delivery_mode, g.valid_from, g.valid_until, "
        f"g.usage_limit, {units} AS units, s.state, s.rule, g.granted_position, "
        "s.from_position, g.exchange_id "
        f"FROM {t(GRANTS)} g JOIN {t(STATES)} s ON {' AND '.join(state)} "
        "WHERE g.grantee_id = ? AND g.listing_id = ?"
    )
    return sql, [*params, grantee_id, listing_id]


def exchange_of(rows: Sequence[Sequence[Any]]) -> str | None:
    """The exchange of the listing that rows of :func:`grant_rows_query` are about, or
    None when there are none (a grant's exchange is fixed to its listing's at the grant)."""
    return str(rows[0][_EXCHANGE]) if rows else None


def decide(rows: Sequence[Sequence[Any]], delivery_mode: str, scenario: str, at: str) -> Decision:
    """Applies the checks of :func:`check_access` to rows of :func:`grant_rows_query`."""
    return _decide(_latest_state(rows), delivery_mode, scenario, at)


def _latest_state(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """One row per grant: by time, a clock that stepped back could let two intervals match."""
    latest: dict[str, Sequence[Any]] = {}
    for row in rows:
        seen = latest.get(row[0])
        if seen is None or row[10] > seen[10]:
            latest[row[0]] = row
    return list(latest.values())


def _decide(rows: Sequence[Sequence[Any]], delivery_mode: str, scenario: str, at: str) -> Decision:
    """Applies the checks to the grants of one grantee and listing, as read by
    :func:`check_access` (one row per grant)."""
    if not rows:
        return Decision(allowed=False, grant_id="", reason=NO_GRANT)
    for_scenario = [r for r in rows if r[1] == scenario]
    if not for_scenario:
        return Decision(allowed=False, grant_id="", reason=SCENARIO_NOT_GRANTED)
    matching = [r for r in for_scenario if r[2] == delivery_mode]
    if not matching:
        return Decision(allowed=False, grant_id="", reason=DELIVERY_MODE_NOT_GRANTED)
    best = max(matching, key=lambda r: (_verdict(r, at)[0], int(r[9])))
    reason = _verdict(best, at)[1]
    if not reason:
        return Decision(allowed=True, grant_id=best[0], reason="")
    return Decision(allowed=False, grant_id="", reason=reason)


def _verdict(row: Sequence[Any], at: str) -> tuple[int, str]:
    """How far one grant gets through the checks (higher is further) and why it stops."""
    valid_from, valid_until, usage_limit, units, state, rule = row[3:9]
    if state == REVOKED:
        return 0, GRANT_REVOKED
    if state == SUSPENDED:
        return 1, SUSPENSION_REASONS.get(rule, GRANT_SUSPENDED)
    if not (valid_from <= at and (valid_until is None or at < valid_until)):
        return 2, OUTSIDE_VALIDITY
    if usage_limit is not None and int(units) >= int(usage_limit):
        return 3, USAGE_LIMIT_REACHED
    return 4, ""
