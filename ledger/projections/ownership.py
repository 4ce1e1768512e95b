"""Ownership: who holds which rights to each listing, at the head and as of any past moment.

One row per holding: a holder's right from the event that opened it (``since_position``)
until the event that closed it (``until_position``, NULL while current). The provider's
original rights and transferred rights are exclusive; licensed rights are not, and carry
their term. A licence ends with ``LicenceEnded`` or, if the listing does not track it (no
``OPERATE`` in it), with the cancellation of its trade. Closed rows are never deleted, so
a past state is a filter, not a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ledger.application.events import CanonicalEvent
from ledger.projections.db import Tx, WriteTx
from ledger.projections.engine import Tables

HOLDINGS = "holdings"

# Row layout, in column order (the INSERT below relies on it).
COLUMNS = (
    "listing_id",
    "right_name",
    "holder_id",
    "since_position",
    "until_position",
    "via_trade_id",
    "exclusive",
    "term_start",
    "term_end",
    "since_time",
    "until_time",
)
_RIGHT, _UNTIL_POSITION, _UNTIL_TIME = 1, 4, 10
OPERATE = "OPERATE"


@dataclass(frozen=True)
class Holding:
    """One holder of one right of a listing, and the interval it held it. A transfer
    reversed by a cancellation gives the rights back via the cancelled trade."""

    right: str
    holder_id: str
    since_position: int
    until_position: int | None
    via_trade_id: str | None
    exclusive: bool
    term_start: str | None
    term_end: str | None
    since_time: str
    until_time: str | None


class _Batch:
    """The changes of one batch: rows opened in it stay in memory (and are closed there)
    until the batch is written, so one batch costs one bulk write per statement."""

    def __init__(self) -> None:
        self.opened: list[list[Any]] = []
        # Rows opened in this batch that are still open, by the key that closes them.
        self.exclusive: dict[tuple[str, str, str], list[Any]] = {}
        self.licences: dict[str, list[list[Any]]] = {}
        # Rows opened by earlier batches, closed by an UPDATE.
        self.close_exclusive: list[tuple[Any, ...]] = []
        self.end_licence: list[tuple[Any, ...]] = []
        self.cancel_licence: list[tuple[Any, ...]] = []

    def open(self, row: list[Any]) -> None:
        self.opened.append(row)

    def submitted(self, e: CanonicalEvent) -> None:
        p = e["payload"]
        for right in p["rights"]:
            row = _row(e, right, p["provider_id"], None, 1, None, None)
            self.open(row)
            self.exclusive[(e["aggregate_id"], right, p["provider_id"])] = row

    def transferred(self, e: CanonicalEvent) -> None:
        p = e["payload"]
        listing_id, position, at = e["aggregate_id"], e["position"], e["recorded_at"]
        for right in p["rights"]:
            current = self.exclusive.pop((listing_id, right, p["from_id"]), None)
            if current is not None:
                _end([current], e)
            else:
                self.close_exclusive.append((listing_id, right, p["from_id"], position, at))
            row = _row(e, right, p["to_id"], p["trade_id"], 1, None, None)
            self.open(row)
            self.exclusive[(listing_id, right, p["to_id"])] = row

    def licensed(self, e: CanonicalEvent) -> None:
        p = e["payload"]
        rows = [
            _row(e, right, p["licensee_id"], p["trade_id"], 0, p["term_start"], p["term_end"])
            for right in p["rights"]
        ]
        for row in rows:
            self.open(row)
        self.licences[p["trade_id"]] = rows

    def licence_ended(self, e: CanonicalEvent) -> None:
        trade_id = e["payload"]["trade_id"]
        rows = self.licences.pop(trade_id, None)
        if rows is None:
            self.end_licence.append((trade_id, e["position"], e["recorded_at"]))
        else:
            _end(rows, e)

    def trade_cancelled(self, e: CanonicalEvent) -> None:
        # The listing tracks only licences that include OPERATE (the right to sell on) and
        # ends those with LicenceEnded in the same write; a cancellation ends the others.
        trade_id = e["aggregate_id"]
        rows = self.licences.get(trade_id)
        if rows is None:
            self.cancel_licence.append((e["position"], e["recorded_at"], trade_id, trade_id))
        elif all(row[_RIGHT] != OPERATE for row in rows):
            del self.licences[trade_id]
            _end(rows, e)

    def write(self, tx: WriteTx, t: Tables) -> None:
        table = t(HOLDINGS)
        # The UPDATEs only match rows of earlier batches, the INSERTs only add new ones:
        # the two sets are disjoint, so their order does not matter. Each UPDATE only
        # closes open rows, so of two for one key the second would change nothing.
        ending = ("until_position", "until_time")
        tx.update_rows(
            table,
            ("listing_id", "right_name", "holder_id"),
            ending,
            _first_per_key(self.close_exclusive, 3),
            where="exclusive = 1 AND until_position IS NULL",
        )
        tx.update_rows(
            table,
            ("via_trade_id",),
            ending,
            _first_per_key(self.end_licence, 1),
            where="exclusive = 0 AND until_position IS NULL",
        )
        tx.executemany(
            f"UPDATE {table} SET until_position = ?, until_time = ? "
            "WHERE via_trade_id = ? AND exclusive = 0 AND until_position IS NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {table} o WHERE o.via_trade_id = ? "
            f"AND o.exclusive = 0 AND o.right_name = '{OPERATE}')",
            self.cancel_licence,
        )
        tx.insert_rows(table, COLUMNS, self.opened)


def _first_per_key(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """The first row of each key (its first ``width`` values), in order."""
    first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        first.setdefault(row[:width], row)
    return list(first.values())


def _end(rows: list[list[Any]], e: CanonicalEvent) -> None:
    for row in rows:
        row[_UNTIL_POSITION], row[_UNTIL_TIME] = e["position"], e["recorded_at"]


def _row(
    e: CanonicalEvent,
    right: str,
    holder_id: str,
    via_trade_id: str | None,
    exclusive: int,
    term_start: str | None,
    term_end: str | None,
) -> list[Any]:
    return [
        e["aggregate_id"],
        right,
        holder_id,
        e["position"],
        None,
        via_trade_id,
        exclusive,
        term_start,
        term_end,
        e["recorded_at"],
        None,
    ]


_HANDLERS = {
    "ListingSubmitted": _Batch.submitted,
    "RightsTransferred": _Batch.transferred,
    "RightsLicensed": _Batch.licensed,
    "LicenceEnded": _Batch.licence_ended,
    "TradeCancelled": _Batch.trade_cancelled,
}


class Ownership:
    """Per listing, each right and its holders over time."""

    name: ClassVar[str] = "ownership"
    version: ClassVar[int] = 1
    writes_after_reads: ClassVar[bool] = True
    event_types: ClassVar[frozenset[str]] = frozenset(_HANDLERS)

    def tables(self) -> Sequence[str]:
        return (HOLDINGS,)

    def create(self, tx: Tx, t: Tables) -> None:
        table = t(HOLDINGS)
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "listing_id TEXT NOT NULL, right_name TEXT NOT NULL, holder_id TEXT NOT NULL, "
            "since_position BIGINT NOT NULL, until_position BIGINT, via_trade_id TEXT, "
            "exclusive INTEGER NOT NULL, term_start TEXT, term_end TEXT, "
            "since_time TEXT NOT NULL, until_time TEXT, "
            "PRIMARY KEY (listing_id, right_name, since_position))"
        )
        # Licences are ended by their trade id alone (a cancelled trade names no listing).
        tx.execute(f"CREATE INDEX IF NOT EXISTS {table}_trade ON {table} (via_trade_id)")

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        batch = _Batch()
        for event in events:
            handler = _HANDLERS.get(event["type"])
            if handler is not None:
                handler(batch, event)
        batch.write(tx, t)


def ownership_at(
    tx: Tx,
    t: Tables,
    listing_id: str,
    as_of_position: int | None = None,
    as_of_time: str | None = None,
    *,
    include_ended: bool = False,
) -> list[Holding]:
    """Returns the holdings of a listing, ordered by right then by when they began.

    With neither bound, the current holdings. ``as_of_position``: the state after the
    event at that position. ``as_of_time`` (canonical UTC text): the state after every
    event recorded at or before it, without licences whose term had ended by then. Both
    may be given. A position bound keeps a licence until an event ends it; its
    ``term_end`` says whether it still ran at the caller's moment.

    ``include_ended`` adds the holdings that had ended by then. An end after the bound
    is not known at the bound, so it reads as NULL. It reads what the generation has
    folded: wait for a position first (``wait_for``).
    """
    clauses = ["listing_id = ?"]
    params: list[Any] = [listing_id]
    if as_of_position is not None:
        clauses.append("since_position <= ?")
        params.append(as_of_position)
        if not include_ended:
            clauses.append("(until_position IS NULL OR until_position > ?)")
            params.append(as_of_position)
    if as_of_time is not None:
        clauses.append("since_time <= ?")
        params.append(as_of_time)
        if not include_ended:
            clauses.append(
                "(until_time IS NULL OR until_time > ?) AND (term_end IS NULL OR term_end > ?)"
            )
            params += [as_of_time, as_of_time]
    if as_of_position is None and as_of_time is None and not include_ended:
        clauses.append("until_position IS NULL")
    rows = tx.fetchall(
        f"SELECT right_name, holder_id, since_position, until_position, via_trade_id, "
        f"exclusive, term_start, term_end, since_time, until_time FROM {t(HOLDINGS)} "
        f"WHERE {' AND '.join(clauses)} ORDER BY right_name, since_position, holder_id",
        params,
    )
    holdings = []
    for r in rows:
        ended = r[3] is not None
        if ended and as_of_position is not None and int(r[3]) > as_of_position:
            ended = False
        if ended and as_of_time is not None and r[9] > as_of_time:
            ended = False
        holdings.append(
            Holding(
                right=r[0],
                holder_id=r[1],
                since_position=int(r[2]),
                until_position=int(r[3]) if ended else None,
                via_trade_id=r[4],
                exclusive=bool(r[5]),
                term_start=r[6],
                term_end=r[7],
                since_time=r[8],
                until_time=r[9] if ended else None,
            )
        )
    return holdings


def by_right(holdings: Sequence[Holding]) -> dict[str, list[Holding]]:
    """Groups holdings per right, keeping their order."""
    grouped: dict[str, list[Holding]] = {}
    for holding in holdings:
        grouped.setdefault(holding.right, []).append(holding)
    return grouped
