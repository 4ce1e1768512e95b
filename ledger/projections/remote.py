"""``ledger projections … --address``: the same commands through a running server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from rich.console import Console

from ledger.projections.commands import show_rebuild, status_table
from ledger.projections.engine import Status
from ledger.v1 import projection_pb2, projection_pb2_grpc

DEV_TOKENS = Path("var/dev-tokens.json")


def operator_token(explicit: str | None) -> str:
    """--token, else LEDGER_TOKEN, else the dev operator token."""
    if explicit:
        return explicit
    if os.environ.get("LEDGER_TOKEN"):
        return os.environ["LEDGER_TOKEN"]
    if DEV_TOKENS.exists():
        token: str = json.loads(DEV_TOKENS.read_text())["operator"]
        return token
    raise SystemExit("no token: pass --token or set LEDGER_TOKEN")


def _status(pb: projection_pb2.ProjectionStatus) -> Status:
    state = projection_pb2.ProjectionState.Name(pb.state).removeprefix("PROJECTION_STATE_")
    return Status(
        name=pb.name,
        version=pb.version,
        generation=0,
        state=state,
        position=pb.position,
        head=pb.head_position,
        lag_events=pb.lag_events,
        lag_seconds=pb.lag_seconds,
        error=pb.error,
        error_position=0,
        progress=pb.progress,
        events_per_second=pb.events_per_second,
        eta_seconds=pb.eta_seconds,
    )


def run_remote(args: argparse.Namespace) -> int:
    """Runs the command through the server; a refused call is reported, not a traceback."""
    try:
        return _run_remote(args)
    except grpc.RpcError as error:
        print(
            f"ledger projections: {error.code().name}: {error.details()}",
            file=sys.stderr,
        )
        return 1


def _run_remote(args: argparse.Namespace) -> int:
    metadata = (("authorization", f"Bearer {operator_token(args.token)}"),)
    with grpc.insecure_channel(args.address) as channel:
        stub = projection_pb2_grpc.ProjectionServiceStub(channel)
        if args.action == "status":
            statuses = [
                _status(p)
                for p in stub.ListProjections(
                    projection_pb2.ListProjectionsRequest(), metadata=metadata, timeout=30
                ).projections
            ]
            if getattr(args, "json", False) or not sys.stdout.isatty():
                for s in statuses:
                    print(json.dumps(s.__dict__))
            else:
                Console().print(status_table(statuses))
            return 0
        if args.action == "rebuild":
            import uuid

            stub.RebuildProjection(
                projection_pb2.RebuildProjectionRequest(
                    request_id=str(uuid.uuid4()), name=args.name
                ),
                metadata=metadata,
                timeout=30,
            )
            console = Console(stderr=True)
            updates = stub.WatchProjection(
                projection_pb2.WatchProjectionRequest(name=args.name),
                metadata=metadata,
                timeout=args.timeout,
            )
            if not show_rebuild(console, args.name, (_status(u.status) for u in updates)):
                return 1
            console.print(f"{args.name}: the rebuilt version is live")
            return 0
        print("ledger projections run works on the database, not through a server", file=sys.stderr)
        return 2
