"""``ledger serve`` refuses settings it cannot use, and says which and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, server_env


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LEDGER_REPLAY_WORKERS", "two", "LEDGER_REPLAY_WORKERS: expected an integer, not 'two'"),
        (
            "LEDGER_REPLAY_WORKERS",
            "-1",
            "LEDGER_REPLAY_WORKERS: expected 0 (none: the server encodes replays itself)",
        ),
        ("LEDGER_REPLAY_WORKERS", "33", "to 32, not 33"),
        ("LEDGER_READ_WORKERS", "0", "LEDGER_READ_WORKERS: expected 1 to 64, not 0"),
        ("LEDGER_READ_WORKERS", "many", "LEDGER_READ_WORKERS: expected an integer, not 'many'"),
    ],
)
def test_serve_refuses_a_worker_count_it_cannot_use(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = {
        **server_env(tmp_path),
        "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        variable: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "serve", "--dev", "--address", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
