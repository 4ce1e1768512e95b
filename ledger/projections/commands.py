"""``ledger projections status|rebuild|run``: operate the read models of a store.

The commands open the configured database directly (no server needed); ``rebuild`` and
``status`` can instead ask a running server with ``--address``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from ledger import collector
from ledger.bootstrap import build_application, build_projections
from ledger.projections.engine import LIVE, ProjectionManager, Status
from ledger.settings import Settings


def add_parser(commands: Any, settings_from: Callable[[argparse.Namespace], Settings]) -> None:
    """Adds ``ledger projections`` and its subcommands to the top-level parser."""
    parser = commands.add_parser(
        "projections",
        help="show, rebuild or run the projections (read models)",
        description="Operates the read models of the configured event store.",
    )
    parser.add_argument("--database-url", help="sqlite:///path.db or postgresql://…")
    parser.add_argument(
        "--address",
        help="ask this running server (ProjectionService) instead of the database",
    )
    parser.add_argument("--token", help="bearer token for --address (else LEDGER_TOKEN)")
    sub = parser.add_subparsers(dest="action", required=True)
    status = sub.add_parser("status", help="one line per projection")
    status.add_argument("--json", action="store_true", help="print JSON, one object per line")
    rebuild = sub.add_parser(
        "rebuild", help="rebuild NAME beside the live version; returns when it is live"
    )
    rebuild.add_argument("name")
    rebuild.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    retry = sub.add_parser(
        "retry", help="resume a FAILED projection from the event it failed on (after a fix)"
    )
    retry.add_argument("name")
    run = sub.add_parser(
        "run", help="follow the log and keep the projections current until stopped"
    )
    run.add_argument("--once", action="store_true", help="catch up once, then exit")
    run.add_argument(
        "--processes",
        type=int,
        default=None,
        help="with --once: fold the projections in this many processes (default: one per core)",
    )

    def dispatch(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        if args.address:
            from ledger.projections.remote import run_remote

            return run_remote(args)
        actions = {"status": _status, "rebuild": _rebuild, "retry": _retry, "run": _run}
        return actions[args.action](args, settings)

    parser.set_defaults(run=dispatch, address=None)


def _open(settings: Settings) -> tuple[Any, ProjectionManager]:
    app = build_application(settings)
    return app, build_projections(settings, app)


def status_table(statuses: list[Status]) -> Table:
    table = Table(title="projections")
    for column in (
        "name",
        "version",
        "state",
        "position",
        "head",
        "lag",
        "lag s",
        "progress",
        "events/s",
        "ETA s",
        "error",
    ):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            str(s.version),
            s.state,
            str(s.position),
            str(s.head),
            str(s.lag_events),
            f"{s.lag_seconds:.1f}",
            f"{s.progress:.0%}",
            f"{s.events_per_second:,.0f}",
            f"{s.eta_seconds:.0f}",
            (s.error + f" @ {s.error_position}") if s.error else "",
        )
    return table


def _status(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from dataclasses import asdict

    app, manager = _open(settings)
    try:
        statuses = manager.status()
    finally:
        app.close()
    if args.json or not sys.stdout.isatty():
        for s in statuses:
            print(json.dumps(asdict(s)))
    else:
        Console().print(status_table(statuses))
    return 1 if any(s.state == "FAILED" for s in statuses) else 0


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    app, manager = _open(settings)
    console = Console(stderr=True)
    try:
        generation = manager.rebuild(args.name)
        deadline = time.monotonic() + args.timeout
        statuses = _follow(manager, args.name, generation.generation)
        if not show_rebuild(console, args.name, statuses, deadline=deadline):
            return 1
        console.print(f"{args.name}: generation {generation.generation} is live")
        return 0
    finally:
        app.close()


def show_rebuild(
    console: Console,
    name: str,
    statuses: Iterable[Status],
    deadline: float | None = None,
) -> bool:
    """Shows a rebuild's progress until it is live (True), failed or past ``deadline``."""
    with progress_bar(console) as progress:
        task = progress.add_task(f"rebuild {name}", total=1, rate="-")
        for status in statuses:
            progress.update(
                task,
                completed=status.position,
                total=max(1, status.head),
                rate=f"{status.events_per_second:,.0f}",
            )
            if status.state == "FAILED":
                where = f" @ {status.error_position}" if status.error_position else ""
                console.print(f"[red]rebuild failed: {status.error}{where}")
                return False
            if status.state == LIVE:
                return True
            if deadline is not None and time.monotonic() > deadline:
                console.print("[red]rebuild did not finish in time; it goes on in the server")
                return False
    return False


def _follow(manager: ProjectionManager, name: str, generation: int) -> Iterator[Status]:
    """Steps the generation when this process holds its lease (else another worker does)
    and yields its status after each batch or pause."""
    while True:
        gen = manager.generation(name, generation)
        advanced = 0
        if gen.state not in ("FAILED",) and manager.leases.held(name):
            advanced = manager.step(gen)
        for status in manager.status():
            if status.name == name and status.generation == generation:
                yield status
                break
        else:
            yield _gone(manager, name)
        if not advanced:
            time.sleep(0.1)


def _gone(manager: ProjectionManager, name: str) -> Status:
    for status in manager.status():
        if status.name == name:
            return status
    raise RuntimeError(f"projection {name} has no generation")


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    app, manager = _open(settings)
    try:
        resumed = manager.retry(args.name)
    finally:
        app.close()
    for gen in resumed:
        print(f"{gen.name}: generation {gen.generation} resumes at position {gen.position + 1}")
    if not resumed:
        print(f"{args.name}: nothing had failed")
    return 0


# While the log is written, a worker leaves this long after a short batch to fold more
# events per batch (fewer transactions), at the cost of that much more lag.
WORKER_GATHER_S = 0.05


def _run(args: argparse.Namespace, settings: Settings) -> int:
    app, manager = _open(settings)
    try:
        if args.once:
            from ledger.projections.parallel import catch_up

            catch_up(settings, manager, args.processes, timeout_s=24 * 3600)
            return 0
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()
            manager.wake()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print("ledger projections: running", flush=True)
        collector.settle_after_start()
        manager.run_forever(stop, gather_s=WORKER_GATHER_S)
        return 0
    finally:
        manager.leases.release()
        app.close()
