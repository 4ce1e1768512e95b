"""Closed-loop client load: N threads, each on a channel (and connection) of its own,
calling as fast as answers come back, bounded in calls and in time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

# A channel of its own per client: without a local subchannel pool, channels to one
# address with equal options would share one connection.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
)
JOIN_GRACE_S = 60.0

# Given a client's channel and its index, returns the call it makes; the call takes its
# sequence number within the client and returns how many items it did (or raises
# grpc.RpcError).
CallFactory = Callable[[grpc.Channel, int], Callable[[int], int]]


@dataclass
class LoadResult:
    clients: int
    calls: int = 0
    items: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, int(fraction * len(ordered)))
        return ordered[index] * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "calls": self.calls,
            "qps": round(self.qps, 1),
            "p50_ms": round(self.percentile_ms(0.50), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 2),
        }


def run_load(
    address: str | Sequence[str],
    clients: int,
    factory: CallFactory,
    max_calls: int,
    max_seconds: float,
    warmup_calls: int = 0,
    on_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Runs ``clients`` threads until ``max_calls`` calls in all or ``max_seconds``
    have passed; each thread first makes ``warmup_calls`` calls that are not counted.
    ``on_start`` runs once every client is warmed up, just before the timed calls.
    Given several addresses, the clients take them in turn."""
    addresses = [address] if isinstance(address, str) else list(address)
    result = LoadResult(clients)
    lock = threading.Lock()
    issued = 0
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    stop_at = [0.0]

    def take() -> int | None:
        nonlocal issued
        with lock:
            if issued >= max_calls:
                return None
            issued += 1
            return issued

    def client(index: int) -> None:
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        calls = items = 0
        target = addresses[index % len(addresses)]
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            call = factory(channel, index)
            sequence = 0
            for _ in range(warmup_calls):
                with contextlib.suppress(grpc.RpcError):
                    call(sequence)
                sequence += 1
            try:
                ready.wait(JOIN_GRACE_S)
            except threading.BrokenBarrierError:
                return
            go.wait(JOIN_GRACE_S)
            while time.perf_counter() < stop_at[0] and take() is not None:
                started = time.perf_counter()
                try:
                    items += call(sequence)
                except grpc.RpcError as error:
                    errors[error.code().name] += 1
                else:
                    calls += 1
                    latencies.append(time.perf_counter() - started)
                sequence += 1
        with lock:
            result.calls += calls
            result.items += items
            result.errors.update(errors)
            result.latencies_s.extend(latencies)

    threads = [
        threading.Thread(target=client, args=(i,), name=f"bench-client-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(JOIN_GRACE_S)
    if on_start is not None:
        on_start()
    started = time.perf_counter()
    stop_at[0] = started + max_seconds
    go.set()
    for thread in threads:
        thread.join(max_seconds + JOIN_GRACE_S)
    result.seconds = time.perf_counter() - started
    return result
