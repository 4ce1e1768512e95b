"""``ledger audit export|checkpoint|public-key|verify|report``: the auditor's tools.

``export``, ``checkpoint``, ``public-key`` and ``report`` ask a running server (``--address``,
else ``LEDGER_GRPC_ADDRESS``) with an auditor's token (``--token``, else ``LEDGER_TOKEN``,
else the dev auditor token under ``var/``); ``export --database-url`` reads the store
instead. ``verify --events`` needs only files; ``verify --database`` reads the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from ledger.audit.canonical import canonical_bytes
from ledger.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2


class AuditUsageError(Exception):
    """The command cannot run as asked; the message says what to change."""


def add_parser(commands: Any, settings_from: Callable[[argparse.Namespace], Settings]) -> None:
    """Adds ``ledger audit`` and its subcommands to the top-level parser."""
    parser = commands.add_parser(
        "audit",
        help="export, verify and report on the log for auditors",
        description="Tools for auditors: exports, signed checkpoints, offline verification.",
    )
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--address", help="host:port of the server (LEDGER_GRPC_ADDRESS)")
    server.add_argument("--token", help="an auditor's bearer token (else LEDGER_TOKEN)")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--database-url", help="sqlite:///path.db or postgresql://… to read")
    sub = parser.add_subparsers(dest="action", required=True)

    export = sub.add_parser(
        "export",
        parents=[server, store],
        help="write the log as JSON lines (canonical event + chain_hash)",
        description="Writes one canonical event per line with its chain_hash, through the "
        "server's ReplayEvents, or from the store with --database-url.",
    )
    export.add_argument("--out", type=Path, required=True, help="file to write ('-': stdout)")
    export.add_argument("--from", dest="from_position", type=int, default=0, metavar="N")
    export.add_argument("--to", dest="to_position", type=int, default=0, metavar="N")
    export.add_argument("--aggregate", action="append", default=[], metavar="ID")
    export.add_argument("--type", dest="event_types", action="append", default=[], metavar="T")
    export.add_argument("--since", type=_time, help="recorded at or after (RFC 3339)")
    export.add_argument("--until", type=_time, help="recorded before (RFC 3339)")

    checkpoint = sub.add_parser(
        "checkpoint",
        parents=[server],
        help="write the latest signed checkpoint as a checkpoint file",
    )
    checkpoint.add_argument("--out", type=Path, required=True)
    checkpoint.add_argument("--at", type=int, help="the latest at or before this position")

    public_key = sub.add_parser(
        "public-key", parents=[server], help="write the ledger's public key (hex) to a file"
    )
    public_key.add_argument("--out", type=Path, required=True)

    verify = sub.add_parser(
        "verify",
        parents=[store],
        help="verify an export offline, or the store against its kept chain",
        description="With --events: an export against a checkpoint file and a public key, "
        "offline. With --database: the stored events against the kept chain and the "
        "stored checkpoints.",
    )
    verify.add_argument("--events", type=Path, help="an export (JSON lines)")
    verify.add_argument("--checkpoint", type=Path, help="a checkpoint file")
    verify.add_argument("--public-key", type=Path, help="the ledger's public key file")
    verify.add_argument("--database", action="store_true", help="verify the store itself")

    report = sub.add_parser(
        "report", parents=[server], help="the compliance report (a table, or JSON when piped)"
    )
    report.add_argument("--exchange", default="", help="only this exchange's venue")
    report.add_argument("--as-of", help="an RFC 3339 time, or a log position")
    report.add_argument("--json", action="store_true", help="print JSON")

    def dispatch(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        try:
            return _ACTIONS[args.action](args, settings)
        except AuditUsageError as error:
            print(f"ledger audit {args.action}: {error}", file=sys.stderr)
            return EXIT_USAGE
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            details = error.details() if hasattr(error, "details") else str(error)
            print(f"ledger audit {args.action}: {code}: {details}", file=sys.stderr)
            return EXIT_FAILED

    parser.set_defaults(run=dispatch)


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or +08:00")
    return moment


# --- server access --------------------------------------------------------------------


def auditor_token(explicit: str | None, settings: Settings) -> str:
    """--token, else LEDGER_TOKEN, else the dev auditor token (``var/dev-tokens.json``)."""
    if explicit:
        return explicit
    if os.environ.get("LEDGER_TOKEN"):
        return os.environ["LEDGER_TOKEN"]
    from ledger.api.principals import DEV_TOKENS_FILE

    path = settings.var_dir / DEV_TOKENS_FILE
    try:
        token = json.loads(path.read_text(encoding="utf-8"))["auditor"]
    except (OSError, ValueError, KeyError, TypeError):
        raise AuditUsageError(
            f"no token: pass --token or set LEDGER_TOKEN (no dev tokens in {path})"
        ) from None
    return str(token)


@contextmanager
def _server(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[Any, Any]]:
    """A channel to the server and the auditor's metadata."""
    metadata = (("authorization", f"Bearer {auditor_token(args.token, settings)}"),)
    with grpc.insecure_channel(settings.grpc_address) as channel:
        yield channel, metadata


@contextmanager
def _output(path: Path) -> Iterator[Any]:
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("wb", buffering=1 << 20) as file:
        yield file
    # Only a complete file takes the name: a failed export leaves no truncated one.
    temporary.replace(path)


# --- actions --------------------------------------------------------------------------


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.audit.export import export_from_server, export_from_store
    from ledger.audit.replay import ReplayQuery
    from ledger.domain.errors import InvalidArgument

    try:
        query = ReplayQuery.create(
            from_position=args.from_position,
            to_position=args.to_position or None,
            aggregate_ids=args.aggregate,
            event_types=args.event_types,
            since=args.since,
            until=args.until,
        )
    except InvalidArgument as error:
        raise AuditUsageError(str(error)) from None
    unhashed = 0
    if args.database_url:
        with _store(settings) as (reader, app, _checkpoints), _output(args.out) as out:
            summary = export_from_store(reader, query, out)
            unhashed = app.head_position() - summary.kept_position
    else:
        with _server(args, settings) as (channel, metadata), _output(args.out) as out:
            summary = export_from_server(channel, metadata, query, out)
    last = "" if summary.last_position is None else f", last position {summary.last_position}"
    print(f"exported {summary.events} events{last} to {args.out}", file=sys.stderr)
    if unhashed > 0:
        print(
            f"note: the kept chain covers the log up to position {summary.kept_position}; "
            "later events are exported once the chain projection has hashed them",
            file=sys.stderr,
        )
    return 0


def _checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.api import convert
    from ledger.v1 import audit_pb2, audit_pb2_grpc

    request = audit_pb2.GetCheckpointRequest()
    if args.at is not None:
        request.at_position = args.at
    with _server(args, settings) as (channel, metadata):
        response = audit_pb2_grpc.AuditServiceStub(channel).GetCheckpoint(
            request, metadata=metadata, timeout=30
        )
    checkpoint = convert.checkpoint_from_pb(response.checkpoint)
    with _output(args.out) as out:
        out.write(canonical_bytes(checkpoint) + b"\n")
    print(
        f"checkpoint at position {checkpoint['position']} (key {checkpoint['key_id']}) "
        f"written to {args.out}",
        file=sys.stderr,
    )
    return 0


def _public_key(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.v1 import audit_pb2, audit_pb2_grpc

    with _server(args, settings) as (channel, metadata):
        info = audit_pb2_grpc.AuditServiceStub(channel).GetLedgerInfo(
            audit_pb2.GetLedgerInfoRequest(), metadata=metadata, timeout=30
        )
    with _output(args.out) as out:
        out.write(info.public_key.encode("ascii") + b"\n")
    print(
        f"public key {info.key_id} of ledger {info.ledger_id} written to {args.out}",
        file=sys.stderr,
    )
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.database == (args.events is not None):
        raise AuditUsageError("give either --events FILE (an export) or --database")
    if args.database:
        return _verify_database(args, settings)
    from ledger.audit.verify import verify_files

    if args.checkpoint is None or args.public_key is None:
        raise AuditUsageError("--events needs --checkpoint FILE and --public-key FILE")
    result = verify_files(args.events, args.checkpoint, args.public_key)
    if not result.ok:
        print(result.describe())
        return EXIT_FAILED
    print(
        f"OK: {result.count} events, last position {result.last_position}, "
        f"checkpoint at {result.checkpoint_position} verified"
    )
    return 0


def _verify_database(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.application.identity import ensure_ledger_id
    from ledger.audit.checkpoint import InvalidPublicKey, public_key_hex, read_public_key
    from ledger.audit.database import verify_store

    public_key: str | None = None
    try:
        if args.public_key is not None:
            public_key = read_public_key(args.public_key)
        elif settings.signing_key_file is not None and settings.signing_key_file.exists():
            from ledger.audit.checkpoint import load_private_key

            public_key = public_key_hex(load_private_key(settings.signing_key_file))
    except (OSError, ValueError, InvalidPublicKey) as error:
        raise AuditUsageError(f"cannot read the public key: {error}") from None
    with _store(settings) as (reader, app, checkpoints):
        result = verify_store(
            reader, app.head_position(), checkpoints.all(), ensure_ledger_id(app), public_key
        )
    print(result.describe())
    if public_key is None:
        print(
            "note: checkpoint signatures were not checked; pass --public-key FILE",
            file=sys.stderr,
        )
    return 0 if result.ok else EXIT_FAILED


@contextmanager
def _store(settings: Settings) -> Iterator[tuple[Any, Any, Any]]:
    """The store's audit reader, application and checkpoints."""
    from ledger.audit.checkpoints import CheckpointStore
    from ledger.audit.stored import audit_reader
    from ledger.bootstrap import build_application, build_projections
    from ledger.domain.errors import LedgerError

    try:
        app = build_application(settings)
        manager = build_projections(settings, app)
    except LedgerError as error:
        raise AuditUsageError(f"cannot open the store: {error}") from None
    try:
        yield audit_reader(app.recorder, manager.db), app, CheckpointStore(manager.db)
    finally:
        manager.db.close()
        app.close()


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from google.protobuf.timestamp_pb2 import Timestamp

    from ledger.v1 import audit_pb2, audit_pb2_grpc

    request = audit_pb2.GetComplianceReportRequest(exchange_id=args.exchange)
    if args.as_of:
        if args.as_of.isdigit():
            request.as_of_position = int(args.as_of)
        else:
            try:
                moment = _time(args.as_of)
            except argparse.ArgumentTypeError as error:
                raise AuditUsageError(str(error)) from None
            stamp = Timestamp()
            stamp.FromDatetime(moment)
            request.as_of_time.CopyFrom(stamp)
    with _server(args, settings) as (channel, metadata):
        report = audit_pb2_grpc.AuditServiceStub(channel).GetComplianceReport(
            request, metadata=metadata, timeout=60
        )
    if args.json or not sys.stdout.isatty():
        print(json.dumps(json_format.MessageToDict(report), ensure_ascii=False))
        return 0
    console = Console()
    findings = Table(
        title=f"compliance findings as of position {report.as_of_position} "
        f"(rule set {report.rule_set_version})"
    )
    for column in ("rule", "subject", "first seen", "cleared", "evidence"):
        findings.add_column(column)
    for f in report.findings:
        cleared = f.cleared_time.ToJsonString() if f.HasField("cleared_time") else ""
        findings.add_row(
            f.rule,
            f"{f.subject_type} {f.subject_id}",
            f.first_seen_time.ToJsonString(),
            cleared,
            ", ".join(map(str, f.evidence_positions)),
        )
    console.print(findings)
    rejections = Table(title="enforced-rule rejections")
    rejections.add_column("rule")
    rejections.add_column("count", justify="right")
    for r in report.rejections:
        rejections.add_row(r.rule, str(r.count))
    console.print(rejections)
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "export": _export,
    "checkpoint": _checkpoint,
    "public-key": _public_key,
    "verify": _verify,
    "report": _report,
}
