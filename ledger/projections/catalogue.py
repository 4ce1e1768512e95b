"""The catalogue: participants, listings, trades and grants, filterable and paged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ledger.application.events import CanonicalEvent
from ledger.projections.db import Tx, WriteTx
from ledger.projections.engine import Tables

# Which table and state each lifecycle event sets (the created events insert rows).
STATE_CHANGES: dict[str, tuple[str, str]] = {
    "ParticipantSuspended": ("participants", "SUSPENDED"),
    "ParticipantReinstated": ("participants", "ACTIVE"),
    "ParticipantDeregistered": ("participants", "DEREGISTERED"),
    "ListingApproved": ("listings", "LISTED"),
    "ListingRejected": ("listings", "REJECTED"),
    "ListingSuspended": ("listings", "SUSPENDED"),
    "ListingReinstated": ("listings", "LISTED"),
    "ListingDelisted": ("listings", "DELISTED"),
    "TradeSettled": ("trades", "SETTLED"),
    "TradeCancelled": ("trades", "CANCELLED"),
    "AccessSuspended": ("grants", "SUSPENDED"),
    "AccessReinstated": ("grants", "ACTIVE"),
    "AccessRevoked": ("grants", "REVOKED"),
}

# Filterable columns of each table; every table also has id, state and position.
COLUMNS: dict[str, tuple[str, ...]] = {
    "participants": ("name", "roles"),
    "listings": (
        "exchange_id",
        "provider_id",
        "category",
        "classification",
        "title",
        "scenarios",
    ),
    "trades": ("listing_id", "exchange_id", "seller_id", "buyer_id", "conveyance"),
    "grants": ("trade_id", "listing_id", "exchange_id", "grantee_id", "delivery_mode"),
}


def _participant(e: CanonicalEvent) -> tuple[Any, ...]:
    p = e["payload"]
    return (p["name"], ",".join(p["roles"]), "ACTIVE")


def _listing(e: CanonicalEvent) -> tuple[Any, ...]:
    p = e["payload"]
    return (
        p["exchange_id"],
        p["provider_id"],
        p["category"],
        p["classification"],
        p["title"],
        "\n".join(p["scenarios"]),
        "SUBMITTED",
    )


def _trade(e: CanonicalEvent) -> tuple[Any, ...]:
    p = e["payload"]
    return (
        p["listing_id"],
        p["exchange_id"],
        p["seller_id"],
        p["buyer_id"],
        p["conveyance"],
        "EXECUTED",
    )


def _grant(e: CanonicalEvent) -> tuple[Any, ...]:
    p = e["payload"]
    return (
        p["trade_id"],
        p["listing_id"],
        p["exchange_id"],
        p["grantee_id"],
        p["delivery_mode"],
        "ACTIVE",
    )


CREATIONS: dict[str, tuple[str, Callable[[CanonicalEvent], tuple[Any, ...]]]] = {
    "ParticipantRegistered": ("participants", _participant),
    "ListingSubmitted": ("listings", _listing),
    "SaleRecorded": ("trades", _trade),
    "AccessGranted": ("grants", _grant),
}


class Catalogue:
    name: ClassVar[str] = "catalogue"
    version: ClassVar[int] = 1
    writes_after_reads: ClassVar[bool] = True
    event_types: ClassVar[frozenset[str]] = frozenset(
        {*CREATIONS, *STATE_CHANGES, "ListingReclassified"}
    )

    def tables(self) -> Sequence[str]:
        return tuple(COLUMNS)

    def create(self, tx: Tx, t: Tables) -> None:
        for table, columns in COLUMNS.items():
            cols = ", ".join(f"{c} TEXT NOT NULL" for c in columns)
            tx.execute(
                f"CREATE TABLE IF NOT EXISTS {t(table)} (id TEXT PRIMARY KEY, {cols}, "
                "state TEXT NOT NULL, position BIGINT NOT NULL)"
            )
            tx.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {t(table)}_pos ON {t(table)} (position)")

    def indexes(self, t: Tables) -> list[str]:
        """The filters of the list queries (the fold reads rows by id alone)."""
        return [
            f"CREATE INDEX IF NOT EXISTS {t(table)}_{column} ON {t(table)} ({column}, position)"
            for table, columns in COLUMNS.items()
            for column in columns
            if column.endswith("_id") or column in ("category", "classification")
        ]

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        # Rows created in this batch are changed in memory before they are inserted; rows
        # of earlier batches take the last value each event of the batch gave them.
        created: dict[str, list[list[Any]]] = {table: [] for table in COLUMNS}
        rows: dict[tuple[str, str], list[Any]] = {}
        changed: dict[tuple[str, str], dict[str, str]] = {}
        for event in events:
            kind = event["type"]
            aggregate_id = event["aggregate_id"]
            creation = CREATIONS.get(kind)
            if creation is not None:
                table, values = creation
                row = [aggregate_id, *values(event), event["position"]]
                created[table].append(row)
                rows.setdefault((table, aggregate_id), row)
                continue
            if kind in STATE_CHANGES:
                table, state = STATE_CHANGES[kind]
                column, value = "state", state
            elif kind == "ListingReclassified":
                table, column = "listings", "classification"
                value = event["payload"]["classification"]
            else:
                continue
            existing = rows.get((table, aggregate_id))
            if existing is not None:
                existing[_COLUMN_INDEX[table][column]] = value
            else:
                changed.setdefault((table, column), {})[aggregate_id] = value
        for table, columns in COLUMNS.items():
            tx.insert_rows(t(table), ("id", *columns, "state", "position"), created[table])
        for (table, column), by_id in changed.items():
            # A change before its row was created in this batch found no row to change.
            earlier = [(i, v) for i, v in by_id.items() if (table, i) not in rows]
            tx.update_rows(t(table), ("id",), (column,), earlier)


# Where each column sits in a row of its table (id first, then the columns, state, position).
_COLUMN_INDEX: dict[str, dict[str, int]] = {
    table: {c: i for i, c in enumerate(("id", *columns, "state", "position"))}
    for table, columns in COLUMNS.items()
}


def list_ids(
    tx: Tx,
    t: Tables,
    table: str,
    filters: dict[str, str],
    after_position: int,
    limit: int,
    venues: frozenset[str] | None = None,
) -> tuple[list[str], int | None]:
    """Returns a page of ids in creation order and the position to continue after.

    ``filters`` maps a column (or ``state``) to the value it must equal; ``roles`` and
    ``scenarios`` match one member. ``venues`` limits rows to those exchanges. Paging by
    creation position is stable under new writes.
    """
    allowed = {*COLUMNS[table], "state"}
    clauses: list[str] = ["position > ?"]
    params: list[object] = [after_position]
    for column, value in sorted(filters.items()):
        if column not in allowed:
            raise ValueError(f"{table} cannot be filtered by {column}")
        if column == "roles":
            clauses.append("(',' || roles || ',') LIKE ?")
            params.append(f"%,{value},%")
        elif column == "scenarios":
            escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(? || scenarios || ?) LIKE ? ESCAPE '\\'")
            params.extend(("\n", "\n", f"%\n{escaped}\n%"))
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    if venues is not None:
        if "exchange_id" not in COLUMNS[table]:
            raise ValueError(f"{table} has no venue")
        clauses.append(f"exchange_id IN ({','.join('?' * len(venues)) or 'NULL'})")
        params.extend(sorted(venues))
    rows = tx.fetchall(
        f"SELECT id, position FROM {t(table)} WHERE {' AND '.join(clauses)} "
        "ORDER BY position LIMIT ?",
        (*params, limit + 1),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return [r[0] for r in rows], (int(rows[-1][1]) if more else None)
