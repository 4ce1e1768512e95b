"""A circuit breaker in front of the event store.

When the database cannot be reached, every call would otherwise wait out the library's
connection retries before failing. The guard notices the outage (from a failed call or
from its own probe), fails calls at once with ``Unavailable`` while the store is down,
and lets them through again as soon as a probe succeeds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ledger.domain.errors import Unavailable

Probe = Callable[[], None]


class StoreGuard:
    def __init__(self, probe: Probe, interval_s: float = 0.5) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._down_since: datetime | None = None
        self._reason = ""
        self._prober: threading.Thread | None = None
        self._monitoring = False
        self._stopped = threading.Event()

    @property
    def available(self) -> bool:
        return self._down_since is None

    def check(self) -> None:
        """Raises ``Unavailable`` at once while the store is known to be down."""
        down_since = self._down_since
        if down_since is not None:
            raise Unavailable(
                f"the event store has been unreachable since {down_since.isoformat()} "
                f"({self._reason}); retry with the same request_id"
            )

    def trip(self, reason: str) -> None:
        """Marks the store down and probes it until it answers again."""
        with self._lock:
            if self._down_since is None:
                self._down_since = datetime.now(tz=UTC)
                self._reason = reason.splitlines()[0][:200] if reason else "unreachable"
            self._ensure_prober()

    def monitor(self) -> None:
        """Probes the store continuously, so an outage is noticed before a call waits on it."""
        with self._lock:
            self._monitoring = True
            self._ensure_prober()

    def stop(self) -> None:
        self._stopped.set()

    def _ensure_prober(self) -> None:
        if self._prober is None or not self._prober.is_alive():
            self._prober = threading.Thread(target=self._run, name="store-guard", daemon=True)
            self._prober.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._probe()
            except Exception as e:
                with self._lock:
                    if self._down_since is None:
                        self._down_since = datetime.now(tz=UTC)
                    self._reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                continue
            with self._lock:
                self._down_since = None
                if not self._monitoring:
                    self._prober = None
                    return
