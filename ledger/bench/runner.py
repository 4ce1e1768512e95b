"""``ledger bench SCENARIO --backend sqlite|postgres``: each scenario measures the project
and its baseline in the same run and prints one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from rich.console import Console
from rich.table import Table

QUICK_EVENTS = 100_000
FULL_EVENTS = 1_000_000
# Quick mode's data set where a scenario needs another than QUICK_EVENTS. A rebuild is
# measured on the million events its target is set for: a worker process's start (half
# a second) would be a quarter of a 100,000-event rebuild, and is nothing of a real one.
QUICK_EVENTS_OF: Mapping[str, int] = {"rebuild": FULL_EVENTS}
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
# How long one load run lasts at most, by mode; small data sets get shorter runs.
QUICK_WINDOW_S = 8.0
FULL_WINDOW_S = 30.0


@dataclass(frozen=True)
class Options:
    """How a scenario runs: the store's backend, the data set's size and seed, whether a
    terminal shows progress, and whether this is the quick mode."""

    backend: str
    events: int
    seed: int = 0
    progress: bool = False
    quick: bool = True
    postgres_url: str = DEFAULT_POSTGRES
    # Whether ``events`` was asked for (else it is the mode's, see ``for_scenario``).
    events_given: bool = False

    def for_scenario(self, name: str) -> Options:
        """The options scenario ``name`` runs with: quick mode's data set for it."""
        if self.quick and not self.events_given and name in QUICK_EVENTS_OF:
            return replace(self, events=QUICK_EVENTS_OF[name])
        return self

    @property
    def window_s(self) -> float:
        """The time bound of one load run: at most the mode's window, and about a
        second per 10,000 events of the data set below that."""
        cap = QUICK_WINDOW_S if self.quick else FULL_WINDOW_S
        return min(cap, max(1.0, self.events / 10_000))

    @property
    def catch_up_timeout_s(self) -> float:
        """How long a server may take to bring its projections to the head."""
        return max(300.0, self.events / 200)


@dataclass(frozen=True)
class Result:
    scenario: str
    backend: str
    events: int
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str
    met: bool
    details: dict[str, Any]

    def line(self) -> str:
        data = asdict(self)
        data["value"] = round(self.value, 1)
        data["baseline_value"] = round(self.baseline_value, 1)
        data["ratio"] = round(self.ratio, 3)
        return json.dumps(data, ensure_ascii=False)


Scenario = Callable[[Options], Result]

NAMES = ("append", "ingest", "check", "rebuild", "replay", "verify", "memory")


def scenarios() -> dict[str, Scenario]:
    from ledger.bench import memory, reads, scenarios, writes

    return {
        "append": writes.append,
        "ingest": writes.ingest,
        "check": reads.check,
        "rebuild": scenarios.rebuild,
        "replay": reads.replay,
        "verify": scenarios.verify,
        "memory": memory.memory,
    }


def failed(name: str, options: Options, error: BaseException) -> Result:
    """The line of a scenario that could not run: nothing measured, target not met."""
    return Result(
        name,
        options.backend,
        options.events,
        0.0,
        "",
        "not measured",
        0.0,
        0.0,
        "",
        False,
        {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc(limit=3)},
    )


def summary(results: list[Result]) -> Table:
    table = Table(title="ledger bench")
    for column in ("scenario", "backend", "events", "value", "baseline", "ratio", "target", "met"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.scenario,
            r.backend,
            f"{r.events:,}",
            f"{r.value:,.0f} {r.unit}",
            f"{r.baseline_value:,.0f} ({r.baseline})",
            f"{r.ratio:.2f}",
            r.target,
            "[green]yes" if r.met else "[red]no",
        )
    return table


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure a scenario against its baseline",
        description="Runs a benchmark scenario; prints one JSON object per result.",
    )
    parser.add_argument(
        "scenario", nargs="+", choices=[*NAMES, "all"], help="one or more scenarios, or all"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--events", type=int, default=0, help="events in the data set")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events (else {FULL_EVENTS:,}; a rebuild always "
        f"{QUICK_EVENTS_OF['rebuild']:,}) and {QUICK_WINDOW_S:.0f} s load runs",
    )
    parser.add_argument("--seed", type=int, default=0, help="the data set's seed")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="server for --backend postgres; each scenario uses a schema of its own",
    )
    parser.set_defaults(run=_run)


def run(names: list[str], options: Options) -> list[Result]:
    """Runs the scenarios in order, printing each one's JSON line as it ends; a scenario
    that fails prints a line saying so and the others still run."""
    every = scenarios()
    chosen = list(NAMES) if "all" in names else list(dict.fromkeys(names))
    results = []
    for name in chosen:
        started = time.perf_counter()
        chosen_options = options.for_scenario(name)
        try:
            result = every[name](chosen_options)
        except Exception as error:
            result = failed(name, chosen_options, error)
        result.details["wall_s"] = round(time.perf_counter() - started, 1)
        print(result.line(), flush=True)
        results.append(result)
    return results


def _run(args: argparse.Namespace) -> int:
    options = Options(
        backend="postgresql" if args.backend == "postgres" else "sqlite",
        events=args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS),
        seed=args.seed,
        progress=sys.stdout.isatty(),
        quick=args.quick,
        postgres_url=args.postgres_url,
        events_given=bool(args.events),
    )
    results = run(args.scenario, options)
    if options.progress:
        Console().print(summary(results))
    return 1 if any("error" in r.details for r in results) else 0
