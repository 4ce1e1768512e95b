"""``ledger audit verify --database``: the stored events against the kept chain and the
signed checkpoints, from the genesis.

The chain is recomputed from the stored events in log order and compared, position by
position, with the hashes the ``chain`` projection kept when each event was first
written, and every stored checkpoint is checked: its signature, its ledger id, and its
hash against the recomputed (or, past the first fault, the kept) chain. The first
position where the store and the kept chain disagree is reported with what is wrong
there:

- ``changed``: the event's content no longer gives its kept hash (an edit, or a swap
  with another event: the first of the two is reported);
- ``deleted``: the kept chain hashed an event at a position where none is stored now;
- ``inserted``: an event is stored where the kept chain hashed none;
- ``undecodable``: the stored row has no canonical form at all.

Positions after the kept chain's head are not compared (the projection has not hashed
them yet); the result counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ledger.application.events import CanonicalEvent
from ledger.audit.chain import ChainBuilder
from ledger.audit.checkpoint import BadSignature, InvalidPublicKey, MalformedCheckpoint
from ledger.audit.checkpoint import verify_checkpoint as check_signature
from ledger.audit.replay import kept_chain
from ledger.audit.stored import AuditReader, UndecodableEvent
from ledger.projections.engine import Tables

BATCH: Final = 5000


class StoreFaultKind(StrEnum):
    CHANGED = "changed"
    DELETED = "deleted"
    INSERTED = "inserted"
    UNDECODABLE = "undecodable"
    CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class StoreFault:
    kind: StoreFaultKind
    position: int
    message: str


@dataclass(frozen=True)
class StoreVerifyResult:
    """What ``verify_store`` found: how far the chain verified, and the first faults."""

    events: int
    """Stored events whose recomputed hash equals the kept one, from the genesis."""
    last_position: int | None
    """The position of the last of them."""
    kept_position: int
    """The position the kept chain has hashed the log up to."""
    head: int
    """The last position of the store (markers included)."""
    checkpoints: int
    """Checkpoints that verified."""
    signatures_checked: bool
    fault: StoreFault | None = None
    """The first position where the stored events and the kept chain disagree."""
    checkpoint_fault: StoreFault | None = None
    """The first checkpoint that does not verify."""

    @property
    def ok(self) -> bool:
        return self.fault is None and self.checkpoint_fault is None

    def describe(self) -> str:
        """Returns an account for people, one fault per line."""
        lines = []
        fault = self.fault
        if fault is not None:
            lines.append(f"FAILED at position {fault.position} ({fault.kind}): {fault.message}")
        bad = self.checkpoint_fault
        if bad is not None:
            lines.append(f"FAILED checkpoint at position {bad.position}: {bad.message}")
        if not lines:
            last = "" if self.last_position is None else f", last position {self.last_position}"
            signed = "signatures verified" if self.signatures_checked else "signatures NOT checked"
            lines.append(
                f"OK: {self.events} events match the kept chain{last}; "
                f"{self.checkpoints} checkpoints verified ({signed})"
            )
        if self.head > self.kept_position:
            lines.append(
                f"note: positions {self.kept_position + 1} to {self.head} are not hashed yet "
                "(the chain projection is behind); they were not compared"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Undecodable:
    position: int
    reason: str


def verify_store(
    reader: AuditReader,
    head: int,
    checkpoints: Sequence[dict[str, Any]],
    ledger_id: str,
    public_key_hex: str | None,
) -> StoreVerifyResult:
    """Recomputes the chain of the stored events and compares it with the kept chain and
    with ``checkpoints`` (signed by ``public_key_hex``, if given)."""
    with reader.snapshot() as tx:
        chain = kept_chain(tx)
    if chain is None:
        return StoreVerifyResult(0, None, 0, head, 0, public_key_hex is not None)
    tables, covered = chain
    pending = sorted(checkpoints, key=lambda checkpoint: int(checkpoint["position"]))
    checkpoint_fault = _signatures(pending, ledger_id, public_key_hex)
    recomputed: dict[int, str] = {}
    watched = {int(checkpoint["position"]) for checkpoint in pending}

    builder = ChainBuilder()
    matched, last = 0, None
    fault: StoreFault | None = None
    stored = _stored(reader, covered)
    kept = _kept(reader, tables, covered)
    event: CanonicalEvent | _Undecodable | None = next(stored, None)
    link = next(kept, None)
    while event is not None or link is not None:
        if isinstance(event, _Undecodable):
            fault = StoreFault(StoreFaultKind.UNDECODABLE, event.position, event.reason)
            break
        if link is None or (event is not None and event["position"] < link[0]):
            assert event is not None  # for mypy: one of them is left
            fault = StoreFault(
                StoreFaultKind.INSERTED,
                event["position"],
                "an event is stored here, but the kept chain never hashed one at this position",
            )
            break
        if event is None or link[0] < event["position"]:
            fault = StoreFault(
                StoreFaultKind.DELETED,
                link[0],
                "the kept chain hashed an event at this position, but none is stored now",
            )
            break
        chain_hash = builder.append(event)
        if chain_hash != link[1]:
            fault = StoreFault(
                StoreFaultKind.CHANGED,
                link[0],
                f"the stored event hashes to {chain_hash}, but the kept chain holds "
                f"{link[1]}: its content was changed (or exchanged with another event's)",
            )
            break
        if link[0] in watched:
            recomputed[link[0]] = chain_hash
        matched, last = matched + 1, link[0]
        event, link = next(stored, None), next(kept, None)

    if checkpoint_fault is None:
        checkpoint_fault = _hashes(reader, tables, pending, recomputed, covered)
    verified = sum(
        1
        for checkpoint in pending
        if checkpoint_fault is None or int(checkpoint["position"]) < checkpoint_fault.position
    )
    return StoreVerifyResult(
        matched,
        last,
        covered,
        head,
        verified,
        public_key_hex is not None,
        fault,
        checkpoint_fault,
    )


def _stored(reader: AuditReader, stop: int) -> Iterator[CanonicalEvent | _Undecodable]:
    """The stored events up to ``stop``; an undecodable one ends them."""
    after = 0
    while after < stop:
        try:
            events, last = reader.read(after, BATCH, stop)
        except UndecodableEvent as error:
            # Hand out the events before it first: an earlier fault comes first.
            if error.position - 1 > after:
                events, _ = reader.read(after, BATCH, error.position - 1)
                yield from events
            yield _Undecodable(error.position, error.reason)
            return
        yield from events
        if last <= after:
            return
        after = last


def _kept(reader: AuditReader, tables: Tables, stop: int) -> Iterator[tuple[int, str]]:
    """The kept chain hashes up to ``stop``, in position order."""
    after = 0
    while True:
        with reader.snapshot() as tx:
            rows = tx.fetchall(
                f"SELECT position, chain_hash FROM {tables('links')} "  # noqa: S608 (the projection's own table)
                "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, stop, BATCH),
            )
        for position, chain_hash in rows:
            yield int(position), str(chain_hash)
        if len(rows) < BATCH:
            return
        after = int(rows[-1][0])


def _signatures(
    checkpoints: Sequence[dict[str, Any]], ledger_id: str, public_key_hex: str | None
) -> StoreFault | None:
    for checkpoint in checkpoints:
        position = int(checkpoint["position"])
        if checkpoint["ledger_id"] != ledger_id:
            return StoreFault(
                StoreFaultKind.CHECKPOINT,
                position,
                f"it names ledger {checkpoint['ledger_id']}, but this store is ledger {ledger_id}",
            )
        if public_key_hex is None:
            continue
        try:
            check_signature(checkpoint, public_key_hex)
        except (MalformedCheckpoint, BadSignature, InvalidPublicKey) as error:
            return StoreFault(StoreFaultKind.CHECKPOINT, position, str(error))
    return None


def _hashes(
    reader: AuditReader,
    tables: Tables,
    checkpoints: Sequence[dict[str, Any]],
    recomputed: dict[int, str],
    covered: int,
) -> StoreFault | None:
    """Compares each checkpoint's hash with the recomputed chain where it verified, and
    with the kept chain beyond (where the stored events no longer tell)."""
    for checkpoint in checkpoints:
        position = int(checkpoint["position"])
        signed = checkpoint["chain_hash"]
        if position in recomputed:
            if recomputed[position] != signed:
                return StoreFault(
                    StoreFaultKind.CHECKPOINT,
                    position,
                    f"it signed {signed}, but the stored events hash to {recomputed[position]} "
                    "there: events up to it were rewritten (and the kept chain with them)",
                )
            continue
        if position > covered:
            continue  # signed by a server whose chain is ahead of what this store has kept
        with reader.snapshot() as tx:
            row = tx.fetchone(
                f"SELECT chain_hash FROM {tables('links')} WHERE position = ?",  # noqa: S608 (the projection's own table)
                (position,),
            )
        if row is None:
            return StoreFault(
                StoreFaultKind.CHECKPOINT,
                position,
                "the kept chain has no event at this checkpoint's position",
            )
        if row[0] != signed:
            return StoreFault(
                StoreFaultKind.CHECKPOINT,
                position,
                f"it signed {signed}, but the kept chain holds {row[0]} there",
            )
    return None
