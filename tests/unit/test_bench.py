"""Smoke test of ``ledger bench``: every scenario runs on a tiny data set and prints one
valid JSON line with every field of a result. Nothing here asserts a speed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger import cli
from ledger.bench.runner import FULL_EVENTS, NAMES, QUICK_EVENTS, Options

pytestmark = pytest.mark.slow

KEYS = {
    "scenario",
    "backend",
    "events",
    "value",
    "unit",
    "baseline",
    "baseline_value",
    "ratio",
    "target",
    "met",
    "details",
}
TINY = ["--quick", "--events", "2000"]


def results(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    for result in parsed:
        assert result.keys() >= KEYS, result
        assert isinstance(result["met"], bool)
        assert isinstance(result["value"], int | float)
        assert isinstance(result["baseline_value"], int | float)
        assert "error" not in result["details"], result["details"]
    return parsed


@pytest.mark.postgres
def test_every_scenario_runs_on_postgresql(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        ["bench", "all", "--backend", "postgres", "--postgres-url", postgres_url, *TINY]
    )
    printed = results(capsys.readouterr().out)
    assert [r["scenario"] for r in printed] == list(NAMES)
    assert {r["backend"] for r in printed} == {"postgresql"}
    # --events sizes the rebuild too.
    rebuild = next(r for r in printed if r["scenario"] == "rebuild")
    assert rebuild["events"] < 3_000
    assert status == 0


def test_quick_mode_rebuilds_the_million_events_of_its_target() -> None:
    quick = Options(backend="postgresql", events=QUICK_EVENTS)
    assert quick.for_scenario("rebuild").events == FULL_EVENTS
    assert quick.for_scenario("check") == quick
    asked = Options(backend="postgresql", events=5_000, events_given=True)
    assert asked.for_scenario("rebuild") == asked
    full = Options(backend="postgresql", events=FULL_EVENTS, quick=False)
    assert full.for_scenario("rebuild") == full


def test_the_sqlite_scenarios_run(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["bench", "rebuild", "verify", "append", "--backend", "sqlite", *TINY])
    printed = results(capsys.readouterr().out)
    assert [r["scenario"] for r in printed] == ["rebuild", "verify", "append"]
    assert {r["backend"] for r in printed} == {"sqlite"}
    assert status == 0


def test_a_servers_descendants_are_the_processes_it_started_and_theirs() -> None:
    import os
    import subprocess
    import sys

    from ledger.bench.server import descendants

    grandchild = "import time; time.sleep(60)"
    child = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    started = int(process.stdout.readline())
    try:
        assert {process.pid, started} <= set(descendants(os.getpid()))
        assert descendants(process.pid) == [started]
    finally:
        os.kill(started, 9)
        process.kill()
        process.wait()
