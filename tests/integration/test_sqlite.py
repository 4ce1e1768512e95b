"""The application contract on the SQLite event store (a file per test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.errors import Unavailable
from ledger.settings import Settings
from tests.integration.contract import ApplicationContract


class TestSQLiteApplication(ApplicationContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/ledger.db"


def test_an_unreadable_sqlite_file_is_unavailable_not_a_crash(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "ledger.db"
    app = build_application(Settings(database_url=f"sqlite:///{path}"), clock)
    path.unlink()
    path.mkdir()  # the file is gone and a directory stands in its way
    app.close()
    with pytest.raises(Unavailable):
        build_application(Settings(database_url=f"sqlite:///{path}"), clock)
