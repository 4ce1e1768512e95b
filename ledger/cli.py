"""The ``ledger`` command: ``ledger serve`` runs the gRPC API.

Settings come from ``LEDGER_*`` environment variables; flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import structlog

from ledger import collector
from ledger.api.principals import (
    PrincipalsFileError,
    PrincipalStore,
    write_dev_principals,
)
from ledger.api.server import AddressInUse, LedgerServer
from ledger.api.servicers import ServerIdentity
from ledger.audit import commands as audit_commands
from ledger.audit.checkpoints import build_checkpointer
from ledger.bench import runner as bench_runner
from ledger.bootstrap import (
    backend_name,
    build_application,
    build_projections,
    build_replay_workers,
)
from ledger.domain.errors import LedgerError
from ledger.logging import configure_logging
from ledger.metrics import Metrics
from ledger.projections import commands as projection_commands
from ledger.settings import Settings

DEV_SIGNING_KEY_FILE = "dev-signing-key.pem"
SHUTDOWN_GRACE_S = 10.0

log = structlog.get_logger("ledger.cli")


class UsageError(Exception):
    """The command cannot run as configured; the message says what to change."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``ledger`` command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except UsageError as exc:
        print(f"ledger {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger", description="Event-sourced trading ledger for regulated data markets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the ledger.v1 gRPC API",
        description="Serves the ledger.v1 gRPC API. Flags override LEDGER_* variables.",
    )
    serve.add_argument("--address", help="host:port to listen on (LEDGER_GRPC_ADDRESS)")
    serve.add_argument("--database-url", help="sqlite:///path.db or postgresql://…")
    serve.add_argument("--principals-file", type=Path, help="TOML file of bearer-token principals")
    serve.add_argument("--signing-key-file", type=Path, help="Ed25519 PKCS#8 PEM checkpoint key")
    serve.add_argument("--metrics-address", help="host:port of the Prometheus endpoint")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="local development: write dev principals and a signing key under var/",
    )
    serve.set_defaults(run=_serve)
    _add_demo_command(commands)
    projection_commands.add_parser(commands, settings_from)
    audit_commands.add_parser(commands, settings_from)
    bench_runner.add_parser(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Reads the environment's settings and applies the flags given on the command line."""
    flags = {
        field: getattr(args, flag, None)
        for field, flag in (
            ("grpc_address", "address"),
            ("database_url", "database_url"),
            ("principals_file", "principals_file"),
            ("signing_key_file", "signing_key_file"),
            ("metrics_address", "metrics_address"),
        )
    }
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return dataclasses.replace(settings, **{k: v for k, v in flags.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_format, settings.log_level, background=True)
    dev_tokens: Path | None = None
    if args.dev:
        credentials = write_dev_principals(settings.var_dir)
        dev_tokens = credentials.tokens_file
        settings = dataclasses.replace(
            settings,
            principals_file=settings.principals_file or credentials.principals_file,
            signing_key_file=settings.signing_key_file or settings.var_dir / DEV_SIGNING_KEY_FILE,
        )
    principals = _principals(settings)
    public_key, key_id = _signing_key(settings, generate=args.dev)
    return _run_server(settings, principals, public_key, key_id, dev_tokens)


def _principals(settings: Settings) -> PrincipalStore:
    if settings.principals_file is None:
        raise UsageError(
            "no principals: set --principals-file or LEDGER_PRINCIPALS_FILE "
            "(or use --dev for local development)"
        )
    try:
        return PrincipalStore.load(settings.principals_file)
    except PrincipalsFileError as exc:
        raise UsageError(str(exc)) from None


def _signing_key(settings: Settings, *, generate: bool) -> tuple[str, str]:
    """Returns the signing key's raw public key as hex and its key id; ``generate``
    creates the key file if it is missing."""
    from ledger.audit import checkpoint

    path = settings.signing_key_file
    if path is None:
        raise UsageError(
            "no signing key: set --signing-key-file or LEDGER_SIGNING_KEY_FILE "
            "(or use --dev for local development)"
        )
    try:
        if generate:
            key = checkpoint.load_or_generate_private_key(path)
        else:
            key = checkpoint.load_private_key(path)
    except FileNotFoundError:
        raise UsageError(f"signing key file {path} does not exist") from None
    except (checkpoint.KeyFileError, OSError) as exc:
        raise UsageError(str(exc)) from None
    public_key = checkpoint.public_key_hex(key)
    return public_key, checkpoint.key_id(public_key)


def _version() -> str:
    try:
        return importlib.metadata.version("ledger")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _run_server(
    settings: Settings,
    principals: PrincipalStore,
    public_key: str,
    key_id: str,
    dev_tokens: Path | None,
) -> int:
    try:
        app = build_application(settings)
    except LedgerError as exc:
        raise UsageError(f"cannot open the event store: {exc}") from None
    metrics = Metrics()
    identity = ServerIdentity(
        backend=backend_name(settings),
        public_key=public_key,
        key_id=key_id,
        version=_version(),
    )
    try:
        projections = build_projections(settings, app)
    except LedgerError as exc:
        raise UsageError(f"cannot set up the projections: {exc}") from None
    try:
        replay_workers = build_replay_workers(settings, app, projections.db)
        server = LedgerServer(
            app,
            principals,
            metrics,
            identity,
            settings.grpc_address,
            projections,
            run_projections=settings.run_projections,
            checkpointer=build_checkpointer(settings, app, projections.db),
            replay_pool=replay_workers,
            read_workers=settings.read_workers,
        )
    except (AddressInUse, ValueError) as exc:
        raise UsageError(str(exc)) from None
    metrics_server = None
    if settings.metrics_address:
        metrics_server = metrics.start_http_server(settings.metrics_address)
        log.info("metrics endpoint", address=metrics_server.address)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if replay_workers is not None:
        replay_workers.start()
    collector.settle_after_start()
    server.start()
    print(f"ledger serve: listening on {server.address}", flush=True)
    if dev_tokens is not None:
        _print_dev_hints(server.address, dev_tokens)
    log.info("serving", address=server.address, backend=identity.backend, key_id=identity.key_id)
    while not stop.wait(1.0):
        pass
    server.stop(SHUTDOWN_GRACE_S)
    if replay_workers is not None:
        replay_workers.close()
    if metrics_server is not None:
        metrics_server.stop()
    app.close()
    log.info("stopped")
    return 0


def _print_dev_hints(address: str, tokens_file: Path) -> None:
    tokens = shlex.quote(str(tokens_file))
    print(f"ledger serve: dev tokens, one per role, are in {tokens_file}")
    print(
        "ledger serve: try: grpcurl -plaintext "
        f'-H "authorization: Bearer $(jq -r .auditor {tokens})" '
        f"{address} ledger.v1.AuditService/GetLedgerInfo",
        flush=True,
    )


def _add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="load a realistic market through the gRPC API",
        description="Loads exchanges, dealers, holders, listings, sales, grants and "
        "revocations into a running ledger through its gRPC API. The same --seed "
        "re-sends the same requests, so a re-run writes nothing.",
    )
    demo.add_argument("--address", help="host:port of the ledger (LEDGER_GRPC_ADDRESS)")
    demo.add_argument(
        "--tokens", type=Path, help="dev tokens file (default: LEDGER_VAR_DIR/dev-tokens.json)"
    )
    demo.add_argument("--seed", type=int, default=None, help="derives every request (default 2026)")
    demo.add_argument("--scale", type=int, default=1, help="buyer cohorts of six (default 1)")
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ledger.api.principals import DEV_TOKENS_FILE
    from ledger.demo import DEFAULT_SEED, DemoError, run_demo

    settings = Settings.from_env()
    try:
        run_demo(
            args.address or settings.grpc_address,
            args.tokens or settings.var_dir / DEV_TOKENS_FILE,
            DEFAULT_SEED if args.seed is None else args.seed,
            args.scale,
        )
    except DemoError as exc:
        print(f"ledger demo: {exc}", file=sys.stderr)
        return 1
    return 0
