"""A ReplayEvents client in a process of its own, so that its memory can be measured:
``python -m ledger.bench.replay_client ADDRESS`` reads the auditor's bearer token from
stdin, streams the whole log and prints one JSON object (events, messages, seconds)."""

from __future__ import annotations

import json
import sys
import time

import grpc

from ledger.bench.load import CHANNEL_OPTIONS
from ledger.v1 import audit_pb2, audit_pb2_grpc

TIMEOUT_S = 3600.0


def replay(address: str, token: str, events_per_message: int = 0) -> dict[str, float]:
    """Streams every event of the log; returns the count and how long it took."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        request = audit_pb2.ReplayEventsRequest(max_events_per_message=events_per_message)
        metadata = (("authorization", f"Bearer {token}"),)
        events = messages = last = 0
        started = time.perf_counter()
        for response in stub.ReplayEvents(request, metadata=metadata, timeout=TIMEOUT_S):
            messages += 1
            events += len(response.events)
            if response.events:
                last = response.events[-1].position
        seconds = time.perf_counter() - started
    return {"events": events, "messages": messages, "seconds": seconds, "last_position": last}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m ledger.bench.replay_client ADDRESS [EVENTS_PER_MESSAGE]")
        return 2
    token = sys.stdin.readline().strip()
    per_message = int(argv[2]) if len(argv) == 3 else 0
    print(json.dumps(replay(argv[1], token, per_message)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
