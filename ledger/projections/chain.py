"""The audit hash chain, kept: each business event's chain hash, computed once in log order.

Replay and export read the kept hashes instead of recomputing the history; ``audit verify
--database`` recomputes them from the stored events and compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ledger.application.events import CanonicalEvent
from ledger.audit.canonical import json_canonical_bytes
from ledger.audit.chain import GENESIS, ChainBuilder
from ledger.projections.db import Tx, WriteTx
from ledger.projections.engine import Tables


class AuditChain:
    name: ClassVar[str] = "chain"
    version: ClassVar[int] = 1
    writes_after_reads: ClassVar[bool] = True

    def tables(self) -> Sequence[str]:
        return ("links",)

    def create(self, tx: Tx, t: Tables) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {t('links')} "
            "(position BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL)"
        )

    def apply(self, tx: WriteTx, t: Tables, events: Sequence[CanonicalEvent]) -> None:
        if not events:
            return
        last = tx.fetchone(
            f"SELECT position, chain_hash FROM {t('links')} ORDER BY position DESC LIMIT 1"
        )
        head, position = (GENESIS, None) if last is None else (bytes.fromhex(last[1]), int(last[0]))
        # The events are the log decoder's, of JSON types only.
        builder = ChainBuilder(head, position, json_canonical_bytes)
        tx.insert_rows(t("links"), ("position", "chain_hash"), list(builder.fold(events)))


def chain_hashes(tx: Tx, t: Tables, first: int, last: int) -> dict[int, str]:
    """The kept chain hashes of the positions in [first, last]."""
    rows = tx.fetchall(
        f"SELECT position, chain_hash FROM {t('links')} WHERE position BETWEEN ? AND ?",
        (first, last),
    )
    return {int(p): h for p, h in rows}


def chain_head(tx: Tx, t: Tables, at_or_before: int | None = None) -> tuple[int, str]:
    """The last kept (position, chain hash), optionally at or before a position;
    (0, GENESIS) before the first event."""
    if at_or_before is None:
        row = tx.fetchone(
            f"SELECT position, chain_hash FROM {t('links')} ORDER BY position DESC LIMIT 1"
        )
    else:
        row = tx.fetchone(
            f"SELECT position, chain_hash FROM {t('links')} WHERE position <= ? "
            "ORDER BY position DESC LIMIT 1",
            (at_or_before,),
        )
    return (int(row[0]), row[1]) if row else (0, GENESIS.hex())
