"""Signed checkpoints of the kept chain, stored beside the projections.

The table is not a projection generation: a checkpoint is a statement the server signed
at a moment, which a rebuild could not reproduce, so it survives rebuilds. The
checkpointer signs the chain head of the live ``chain`` generation every N events or T
seconds, whichever comes first, when the head has moved since the last checkpoint.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from ledger.application.app import MarketLedger
from ledger.application.identity import ensure_ledger_id
from ledger.audit.checkpoint import Ed25519Signer, Signer, load_private_key, sign_checkpoint
from ledger.audit.replay import kept_chain
from ledger.clock import Clock
from ledger.projections.chain import chain_head
from ledger.projections.db import Database, Row, Tx
from ledger.settings import Settings

TABLE: Final = "audit_checkpoints"
DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "position BIGINT PRIMARY KEY, ledger_id TEXT NOT NULL, chain_hash TEXT NOT NULL, "
    "signed_at TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL)"
)
_COLUMNS: Final = "position, ledger_id, chain_hash, signed_at, key_id, signature"
# How often the checkpointer looks at the chain head.
POLL_S: Final = 0.25

log = structlog.get_logger(__name__)

Checkpoint = dict[str, Any]
"""A checkpoint file object: ledger_id, position, chain_hash, signed_at, key_id, signature."""


class CheckpointStore:
    """The signed checkpoints of one store, by position."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False

    def setup(self) -> None:
        """Creates the table if it is missing (idempotent)."""
        if self._ready:
            return
        try:
            with self._db.transaction() as tx:
                tx.execute(DDL)
        except Exception:
            # Two processes creating the table at once on PostgreSQL: one of them fails
            # on the catalogue's unique index; the table is there either way.
            with self._db.transaction() as tx:
                tx.execute(DDL)
        self._ready = True

    def add(self, checkpoint: Mapping[str, Any]) -> bool:
        """Stores a checkpoint; False if one is already stored at its position."""
        self.setup()
        with self._db.transaction() as tx:
            changed = tx.execute(
                f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "  # noqa: S608 (a fixed table name)
                "ON CONFLICT (position) DO NOTHING",
                tuple(checkpoint[key] for key in _COLUMNS.split(", ")),
            )
        return changed == 1

    def latest(self, at_or_before: int | None = None) -> Checkpoint | None:
        """The latest checkpoint, or the latest at or before a position; None if none."""
        self.setup()
        with self._db.transaction() as tx:
            return latest_checkpoint(tx, at_or_before)

    def all(self) -> list[Checkpoint]:
        """Every checkpoint, by position."""
        self.setup()
        with self._db.transaction() as tx:
            rows = tx.fetchall(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY position")  # noqa: S608 (a fixed table name)
        return [_checkpoint(row) for row in rows]


def latest_checkpoint(tx: Tx, at_or_before: int | None = None) -> Checkpoint | None:
    """Reads the latest checkpoint (at or before a position) in a transaction."""
    if at_or_before is None:
        row = tx.fetchone(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY position DESC LIMIT 1")  # noqa: S608 (a fixed table name)
    else:
        row = tx.fetchone(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE position <= ? "  # noqa: S608 (a fixed table name)
            "ORDER BY position DESC LIMIT 1",
            (at_or_before,),
        )
    return None if row is None else _checkpoint(row)


def _checkpoint(row: Row) -> Checkpoint:
    position, ledger_id, chain_hash, signed_at, key_id, signature = row
    return {
        "ledger_id": ledger_id,
        "position": int(position),
        "chain_hash": chain_hash,
        "signed_at": signed_at,
        "key_id": key_id,
        "signature": signature,
    }


class Checkpointer:
    """Signs the kept chain head every ``every_events`` events or ``every_seconds``
    seconds, when it has moved; runs on a thread of its own between ``start`` and
    ``stop``, and signs once more on ``stop``."""

    def __init__(
        self,
        store: CheckpointStore,
        db: Database,
        signer: Signer,
        ledger_id: Callable[[], str],
        clock: Clock,
        every_events: int,
        every_seconds: float,
        poll_s: float = POLL_S,
    ) -> None:
        self._store = store
        self._db = db
        self._signer = signer
        self._ledger_id = ledger_id
        self._clock = clock
        self._every_events = max(1, every_events)
        self._every_seconds = every_seconds
        self._poll_s = min(poll_s, every_seconds) if every_seconds > 0 else poll_s
        self._last_signed = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoints", daemon=True)

    def run_once(self, *, force: bool = False) -> Checkpoint | None:
        """Signs and stores a checkpoint if the head moved and one is due (or ``force``);
        returns it, or None."""
        self._store.setup()
        with self._db.transaction() as tx:
            chain = kept_chain(tx)
            if chain is None:
                return None
            position, chain_hash = chain_head(tx, chain[0])
            last = latest_checkpoint(tx)
            since = last["position"] if last is not None else 0
            if position <= since:
                return None
            due = force or time.monotonic() - self._last_signed >= self._every_seconds
            if not due:
                due = _links_after(tx, chain[0].prefix + "links", since, self._every_events)
        if not due:
            return None
        checkpoint = sign_checkpoint(
            self._signer, self._ledger_id(), position, chain_hash, self._clock.now()
        )
        self._last_signed = time.monotonic()
        if not self._store.add(checkpoint):
            return None  # another server signed this position first
        log.info("checkpoint signed", position=position, key_id=checkpoint["key_id"])
        return checkpoint

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the thread, then signs the head once more if it moved."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self._attempt(force=True)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            self._attempt(force=False)

    def _attempt(self, *, force: bool) -> None:
        try:
            self.run_once(force=force)
        except Exception:
            # The store may be down; the next round tries again.
            log.warning("checkpoint not signed", exc_info=True)


def _links_after(tx: Tx, links: str, position: int, count: int) -> bool:
    """Whether at least ``count`` events were hashed after ``position``."""
    row = tx.fetchone(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {links} WHERE position > ? LIMIT ?) AS recent",  # noqa: S608 (the projection's own table)
        (position, count),
    )
    return row is not None and int(row[0]) >= count


def build_checkpointer(settings: Settings, app: MarketLedger, db: Database) -> Checkpointer | None:
    """Returns the checkpointer of ``ledger serve``: the settings' signing key and
    cadence, the store's ledger id; None without a signing key file."""
    if settings.signing_key_file is None:
        return None
    signer = Ed25519Signer(load_private_key(settings.signing_key_file))
    return Checkpointer(
        CheckpointStore(db),
        db,
        signer,
        functools.cache(functools.partial(ensure_ledger_id, app)),
        app.clock,
        settings.checkpoint_every_events,
        settings.checkpoint_every_seconds,
    )
