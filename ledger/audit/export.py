"""Exports of the log: one export line per event (its canonical JSON plus its kept
``chain_hash``), read through a server's ``ReplayEvents`` or from the store itself.

Both ways write the same bytes: the replayed ``Struct`` payload turns integral doubles
back into integers (``convert.event_from_pb``), which JCS writes exactly as it writes the
stored integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

import grpc

from ledger.api import convert
from ledger.audit.chain import export_line
from ledger.audit.replay import MAX_EVENTS_PER_MESSAGE, EventReplay, ReplayQuery, kept_chain
from ledger.audit.stored import AuditReader
from ledger.v1 import audit_pb2, audit_pb2_grpc

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ExportSummary:
    events: int
    last_position: int | None
    """The last position exported, if any."""
    kept_position: int
    """The position the kept chain covered; events after it were not exported."""


def replay_request(query: ReplayQuery) -> audit_pb2.ReplayEventsRequest:
    """Returns the ``ReplayEvents`` request of a replay (not following)."""
    request = audit_pb2.ReplayEventsRequest(
        from_position=query.from_position,
        to_position=query.to_position or 0,
        aggregate_ids=sorted(query.aggregate_ids),
        event_types=sorted(query.event_types),
        max_events_per_message=MAX_EVENTS_PER_MESSAGE,
    )
    for field, text in (("since", query.since), ("until", query.until)):
        if text is not None:
            getattr(request, field).FromDatetime(datetime.fromisoformat(text))
    return request


def export_from_server(
    channel: grpc.Channel, metadata: Metadata, query: ReplayQuery, out: IO[bytes]
) -> ExportSummary:
    """Writes the export of a replay through ``ReplayEvents``."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    count, last = 0, None
    for response in stub.ReplayEvents(replay_request(query), metadata=metadata):
        lines = []
        for message in response.events:
            event, chain_hash = convert.event_from_pb(message)
            lines.append(export_line(event, chain_hash))
        out.writelines(lines)
        count += len(lines)
        if response.events:
            last = response.events[-1].position
    return ExportSummary(count, last, last or 0)


def export_from_store(reader: AuditReader, query: ReplayQuery, out: IO[bytes]) -> ExportSummary:
    """Writes the export of a replay read from the store, up to what the kept chain
    covers (a server would wait for the chain projection; this never writes)."""
    with reader.snapshot() as tx:
        chain = kept_chain(tx)
    covered = 0 if chain is None else chain[1]
    replay = EventReplay(reader, lambda: covered)
    count, last = 0, None
    for batch in replay.batches(query):
        out.writelines(export_line(event, chain_hash) for event, chain_hash in batch)
        count += len(batch)
        if batch:
            last = batch[-1][0]["position"]
    return ExportSummary(count, last, covered)
