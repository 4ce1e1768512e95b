"""Wakes a projection engine as soon as another process's write to the log commits.

The store's inserts send a PostgreSQL ``NOTIFY`` on the events table's channel (the
event-sourcing library's recorder does, and so does ours). A listener holds one
connection that listens on that channel and turns each notification into a wake-up of
the engine, which otherwise polls the log: a worker in a process of its own, or a server
whose log other servers write, learns of a write at once instead of at its next poll,
and polls far less often while nothing is written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from psycopg.sql import SQL, Identifier

# How long a listener waits for notifications before it looks whether it is stopped.
_WAIT_S = 0.5


class LogListener:
    """Calls ``wake`` for each write committed to the log, from a thread of its own.

    ``listening`` is true while its connection listens; while the database is
    down it reconnects every ``retry_s`` (the engine polls meanwhile), and wakes the engine
    once it listens again, for what was written while it did not."""

    def __init__(
        self, conninfo: str, channel: str, wake: Callable[[], None], retry_s: float = 0.5
    ) -> None:
        self._conninfo = conninfo
        self._listen = SQL("LISTEN {}").format(Identifier(channel))
        self._wake = wake
        self._retry_s = retry_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = False

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="log-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(self._listen)
                    self.listening = True
                    self._wake()
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=_WAIT_S):
                            self._wake()
            except psycopg.Error:
                pass
            finally:
                self.listening = False
            self._stopped.wait(self._retry_s)
