"""``ledger bench SCENARIO --backend sqlite|postgres``: each scenario measures the project
and its baseline in the same run and prints one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

QUICK_EVENTS = 100_000
FULL_EVENTS = 1_000_000


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


Scenario = Callable[[str, int, int, bool], Result]


def missing(scenario: str, target: str) -> Scenario:
    """A scenario whose feature is not built yet: it runs and reports met: false."""

    def run(backend: str, events: int, seed: int, progress: bool) -> Result:
        return Result(
            scenario,
            backend,
            events,
            0.0,
            "events/s",
            "not measured",
            0.0,
            0.0,
            target,
            False,
            {"reason": "the feature this scenario measures is missing"},
        )

    return run


def scenarios() -> dict[str, Scenario]:
    from ledger.bench import scenarios as s

    return {
        "append": missing("append", ">= 1.0x raw Application.save() events/s"),
        "ingest": missing("ingest", ">= 10,000 events/s and >= 0.25x raw batched insert"),
        "check": missing("check", ">= 0.5x empty-call QPS; p99 <= 2x empty p99; p99 < 5 ms at 4"),
        "rebuild": s.rebuild,
        "replay": missing("replay", ">= 100,000 events/s streamed"),
        "verify": s.verify,
        "memory": missing("memory", "peak RSS < 300 MB, flat in N"),
    }


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
    parser.add_argument("scenario", choices=[*scenarios(), "all"])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--events", type=int, default=0, help="events in the data set")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    backend = "postgresql" if args.backend == "postgres" else "sqlite"
    chosen = scenarios() if args.scenario == "all" else {args.scenario: scenarios()[args.scenario]}
    terminal = sys.stdout.isatty()
    results = []
    for scenario in chosen.values():
        started = time.perf_counter()
        result = scenario(backend, events, args.seed, terminal)
        result.details["wall_s"] = round(time.perf_counter() - started, 1)
        print(result.line(), flush=True)
        results.append(result)
    if terminal:
        Console().print(summary(results))
    return 0
