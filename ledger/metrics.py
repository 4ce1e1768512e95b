"""Prometheus metrics of one ledger process, in a registry of its own.

A private ``CollectorRegistry`` (rather than the library's global one) lets tests and
in-process e2e servers build several ``Metrics`` side by side without "duplicated
timeseries" errors.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server as _start_http_server

# From half a millisecond (a CheckAccess served from memory) to five seconds (a slow
# write under contention); anything slower lands in +Inf and is an incident anyway.
RPC_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

DEFAULT_METRICS_HOST = "127.0.0.1"


@dataclass
class MetricsServer:
    """A running metrics HTTP endpoint; ``stop`` shuts it down and frees the port."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def address(self) -> str:
        """Returns the bound "host:port" (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self) -> None:
        """Stops serving and waits for the serving thread to end."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Metrics:
    """The counters, histograms and gauges the ledger exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_total = Counter(
            "ledger_rpc_total",
            "RPCs handled, by full method name and final status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self.rpc_duration_seconds = Histogram(
            "ledger_rpc_duration_seconds",
            "Time to handle an RPC, by full method name.",
            ("method",),
            buckets=RPC_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.rule_rejections_total = Counter(
            "ledger_rule_rejections_total",
            "Commands rejected by a compliance rule, by rule id.",
            ("rule",),
            registry=self.registry,
        )
        self.projection_lag_events = Gauge(
            "ledger_projection_lag_events",
            "Events in the log that a projection has not applied yet.",
            ("projection",),
            registry=self.registry,
        )
        self.projection_lag_seconds = Gauge(
            "ledger_projection_lag_seconds",
            "Age of the oldest event a projection has not applied yet.",
            ("projection",),
            registry=self.registry,
        )
        self.head_position = Gauge(
            "ledger_head_position",
            "Position of the newest event in the log.",
            registry=self.registry,
        )
        self._rpc_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe_rpc(self, method: str, code: str, duration_s: float) -> None:
        """Counts one finished RPC with its status code name and records its duration."""
        series = self._rpc_series.get((method, code))
        if series is None:
            # Looking a labelled series up costs more than the update; methods and codes
            # are few, so each pair's series are kept.
            series = self._rpc_series.setdefault(
                (method, code),
                (
                    self.rpc_total.labels(method=method, code=code),
                    self.rpc_duration_seconds.labels(method=method),
                ),
            )
        total, duration = series
        total.inc()
        duration.observe(duration_s)

    def count_rule_rejection(self, rule: str) -> None:
        """Counts one command rejected by ``rule`` (e.g. ``R05``)."""
        self.rule_rejections_total.labels(rule=rule).inc()

    def set_projection_lag(self, projection: str, events: int, seconds: float) -> None:
        """Records how far ``projection`` is behind the head of the log."""
        self.projection_lag_events.labels(projection=projection).set(events)
        self.projection_lag_seconds.labels(projection=projection).set(seconds)

    def set_head_position(self, position: int) -> None:
        """Records the position of the newest event in the log."""
        self.head_position.set(position)

    def render(self) -> bytes:
        """Returns the registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def start_http_server(self, address: str) -> MetricsServer:
        """Serves this registry over HTTP on "host:port" in a daemon thread.

        A bare port (":9100" or "9100") binds loopback, so metrics are not exposed
        beyond the machine unless an address says so. Port 0 picks a free port.
        """
        host, port = parse_address(address)
        server, thread = _start_http_server(port, addr=host, registry=self.registry)
        bound_port = server.server_address[1]
        return MetricsServer(host=host, port=int(bound_port), _server=server, _thread=thread)


def parse_address(address: str) -> tuple[str, int]:
    """Splits "host:port", "[v6]:port", ":port" or "port" into host and port."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(
            f"metrics address {address!r}: write an IPv6 host in brackets, e.g. [::1]:9100"
        )
    if not host:
        host = DEFAULT_METRICS_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"metrics address {address!r}: expected host:port, e.g. 127.0.0.1:9100"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics address {address!r}: port {port} is out of range")
    if ":" in host:
        ipaddress.IPv6Address(host)  # raises ValueError with the reason
    return host, port
