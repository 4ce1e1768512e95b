"""The ``replay`` benchmark: ``ReplayEvents`` of a whole store to a client in another
process, next to a raw scan+decode of the same store, measured in one run.

``python -m ledger.audit.replay_bench --events 100000 [--backend sqlite|postgres]``
loads a market (``ledger.bench``) and prints one JSON object; ``measure_replay`` runs it
on any store whose log is written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from ledger.application.events import EventLog
from ledger.settings import Settings

TARGET_EVENTS_PER_S = 100_000
SCAN_BATCH = 10_000


def scan_decode(recorder: Any) -> tuple[int, float]:
    """The baseline: every stored row fetched and its JSON decoded, nothing more."""
    started = time.perf_counter()
    position, rows = 0, 0
    while True:
        notifications = recorder.select_notifications(position + 1, SCAN_BATCH)
        if not notifications:
            break
        for notification in notifications:
            orjson.loads(notification.state)
        rows += len(notifications)
        position = notifications[-1].id
    return rows, time.perf_counter() - started


def canonical_scan(recorder: Any) -> tuple[int, float]:
    """``EventLog.read`` over the whole log: the projections' decoding, for reference."""
    log = EventLog(recorder)
    started = time.perf_counter()
    position, count = 0, 0
    while True:
        events, last = log.read(position, SCAN_BATCH)
        if last == position:
            break
        count += len(events)
        position = last
    return count, time.perf_counter() - started


def measure_replay(settings: Settings, events_per_message: int = 1000) -> dict[str, Any]:
    """Hashes the store's log (chain projection only), then streams all of it through a
    server in this process to a client process; returns the rates."""
    from ledger.api.principals import PrincipalStore, Role, write_dev_principals
    from ledger.api.server import LedgerServer
    from ledger.api.servicers import ServerIdentity
    from ledger.application.identity import ensure_ledger_id
    from ledger.bootstrap import backend_name, build_application, build_projections
    from ledger.metrics import Metrics
    from ledger.projections.chain import AuditChain
    from ledger.projections.engine import ProjectionManager

    app = build_application(settings)
    ensure_ledger_id(app)  # the server writes it on start; hash it with the rest
    every = build_projections(settings, app)
    manager = ProjectionManager(every.db, EventLog(app.recorder), [AuditChain()])
    manager.setup()
    started = time.perf_counter()
    manager.catch_up(timeout_s=3600)
    chain_s = time.perf_counter() - started
    rows, scan_s = scan_decode(app.recorder)
    canonical, canonical_s = canonical_scan(app.recorder)
    with tempfile.TemporaryDirectory(prefix="ledger-replay-bench-") as directory:
        credentials = write_dev_principals(Path(directory))
        server = LedgerServer(
            app,
            PrincipalStore.load(credentials.principals_file),
            Metrics(),
            ServerIdentity(backend_name(settings), "00" * 32, "0" * 16, "bench"),
            "127.0.0.1:0",
            manager,
            run_projections=False,
        )
        server.start()
        try:
            client = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ledger.audit.replay_bench",
                    "--client",
                    server.address,
                    credentials.token_for(Role.AUDITOR),
                    str(events_per_message),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=3600,
            )
        finally:
            server.stop(1.0)
            app.close()
    if client.returncode != 0:
        raise RuntimeError(f"the replay client failed: {client.stderr}")
    received = json.loads(client.stdout)
    rate = received["events"] / received["seconds"]
    scan_rate = rows / scan_s
    return {
        "scenario": "replay",
        "backend": backend_name(settings),
        "events": received["events"],
        "stored_rows": rows,
        "replay_s": round(received["seconds"], 3),
        "replay_events_per_s": round(rate),
        "scan_decode_rows_per_s": round(scan_rate),
        "ratio_to_scan_decode": round(rate / scan_rate, 3),
        "event_log_read_events_per_s": round(canonical / canonical_s),
        "chain_projection_events_per_s": round(canonical / chain_s) if chain_s else None,
        "events_per_message": events_per_message,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": rate >= TARGET_EVENTS_PER_S and received["events"] == canonical,
    }


def _client(address: str, token: str, events_per_message: int) -> None:
    """Streams the whole log and prints how many events came in how many seconds."""
    import grpc

    from ledger.v1 import audit_pb2, audit_pb2_grpc

    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        request = audit_pb2.ReplayEventsRequest(max_events_per_message=events_per_message)
        metadata = (("authorization", f"Bearer {token}"),)
        count = 0
        started = time.perf_counter()
        for response in stub.ReplayEvents(request, metadata=metadata):
            count += len(response.events)
        seconds = time.perf_counter() - started
    print(json.dumps({"events": count, "seconds": seconds}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events-per-message", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client", nargs=3, metavar=("ADDRESS", "TOKEN", "PER_MESSAGE"))
    args = parser.parse_args(argv)
    if args.client:
        address, token, per_message = args.client
        _client(address, token, int(per_message))
        return 0
    from ledger.bench.stores import load, temporary_store

    with temporary_store(args.backend) as settings:
        load(settings, args.events, args.seed, show_progress=False).close()
        print(json.dumps(measure_replay(settings, args.events_per_message)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
