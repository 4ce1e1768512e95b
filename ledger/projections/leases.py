"""Which process runs which projection.

On PostgreSQL a session-level advisory lock per projection makes exactly one worker
active; the others stand by and take over when its session ends (the process died or
lost its connection). On SQLite every runner may step: the engine's compare-and-set on
the tracking position keeps each event applied once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Protocol


class Leases(Protocol):
    def held(self, name: str) -> bool:
        """Whether this process may run ``name`` now (acquiring the lease if free)."""
        ...

    def release(self) -> None: ...


class AlwaysHeld:
    def held(self, name: str) -> bool:
        return True

    def release(self) -> None:
        return None


def lock_key(schema: str, name: str) -> int:
    """A stable signed 64-bit advisory lock key for one projection of one store."""
    digest = hashlib.sha256(f"ledger:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLeases:
    """Advisory locks held on one dedicated connection (released if it dies)."""

    def __init__(self, conninfo: str, schema: str, check_every_s: float = 1.0) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.check_every_s = check_every_s
        self._conn: Any = None
        self._held: set[str] = set()
        self._checked = 0.0
        self._lock = threading.Lock()

    def held(self, name: str) -> bool:
        import psycopg

        with self._lock:
            try:
                conn = self._connection()
                now = time.monotonic()
                if self._held and now - self._checked > self.check_every_s:
                    conn.execute("SELECT 1")
                    self._checked = now
                if name in self._held:
                    return True
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s)", (lock_key(self.schema, name),)
                ).fetchone()
                if row and row[0]:
                    self._held.add(name)
                    return True
                return False
            except psycopg.Error:
                self._reset()
                return False

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._held.clear()
            self._conn = psycopg.connect(self.conninfo, autocommit=True)
        return self._conn

    def _reset(self) -> None:
        self._held.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def release(self) -> None:
        with self._lock:
            self._reset()
