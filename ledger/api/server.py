"""The gRPC server of the ledger: servicers behind the interceptors, health, reflection,
message limits, and a graceful stop."""

from __future__ import annotations

import functools
import threading
from concurrent import futures

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger.api.interceptors import interceptors
from ledger.api.principals import PrincipalStore
from ledger.api.servicers import (
    AccessService,
    AuditService,
    ListingService,
    ParticipantService,
    ProjectionService,
    ServerIdentity,
    TradeService,
)
from ledger.application.app import MarketLedger
from ledger.application.identity import ensure_ledger_id
from ledger.application.queries import Queries
from ledger.audit.checkpoints import Checkpointer
from ledger.audit.replay import EncodingPool
from ledger.audit.wire import add_audit_service
from ledger.domain.errors import Unavailable
from ledger.metrics import Metrics
from ledger.projections.engine import ProjectionManager
from ledger.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    listing_pb2,
    listing_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    projection_pb2,
    projection_pb2_grpc,
    trade_pb2,
    trade_pb2_grpc,
)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HEALTH_CHECK_INTERVAL_S = 2.0
# Beyond this many RPCs in progress or queued, new ones fail RESOURCE_EXHAUSTED at
# once instead of waiting in an unbounded queue.
MAX_CONCURRENT_RPCS = 512
DEFAULT_WORKERS = 16
# Reads (unary calls that change nothing) run on a pool of their own. Under the
# interpreter lock, more threads than this only take turns at it: each extra runnable
# thread costs context switches, while a queued call waits for a thread that is already
# awake. Writes keep the larger pool, so that commands arriving together can share a
# transaction (group commit), as do the long-lived streams.
DEFAULT_READ_WORKERS = 4
MAX_READ_WORKERS = 64

LEDGER_SERVICES: tuple[str, ...] = (
    participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].full_name,
    listing_pb2.DESCRIPTOR.services_by_name["ListingService"].full_name,
    trade_pb2.DESCRIPTOR.services_by_name["TradeService"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    projection_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name,
)
REFLECTED_SERVICES = (*LEDGER_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = structlog.get_logger(__name__)


class AddressInUse(RuntimeError):
    """The server could not bind its address."""


class HealthMonitor:
    """Reports the ledger services SERVING while the event store answers, NOT_SERVING
    while it does not; checks every ``interval_s`` on a thread of its own."""

    def __init__(
        self,
        app: MarketLedger,
        servicer: health.HealthServicer,
        metrics: Metrics,
        interval_s: float = HEALTH_CHECK_INTERVAL_S,
        projections: ProjectionManager | None = None,
    ) -> None:
        self._app = app
        self._servicer = servicer
        self._metrics = metrics
        self._projections = projections
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-health", daemon=True)
        self._serving: bool | None = None

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + 5)

    def check(self) -> None:
        """Pings the store once and publishes the result."""
        try:
            position = self._app.head_position()
        except Unavailable as exc:
            self._publish(serving=False, reason=str(exc))
        except Exception as exc:
            self._publish(serving=False, reason=f"{type(exc).__name__}: {exc}")
        else:
            self._metrics.set_head_position(position)
            self._publish(serving=True)
            self._publish_lag()

    def _publish_lag(self) -> None:
        if self._projections is None:
            return
        try:
            statuses = self._projections.status()
        except Exception:
            log.warning("projection status unavailable for metrics", exc_info=True)
            return
        for status in statuses:
            if status.state != "REBUILDING":
                self._metrics.set_projection_lag(status.name, status.lag_events, status.lag_seconds)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.check()

    def _publish(self, *, serving: bool, reason: str = "") -> None:
        # Only changes are published: every set() is sent to each Watch stream.
        if serving == self._serving:
            return
        if serving:
            log.info("event store reachable; serving")
        else:
            log.warning("event store unreachable; not serving", reason=reason)
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for service in ("", *LEDGER_SERVICES):
            self._servicer.set(service, status)


class LedgerServer:
    """A started-on-demand gRPC server of one ledger application."""

    def __init__(
        self,
        app: MarketLedger,
        principals: PrincipalStore,
        metrics: Metrics,
        identity: ServerIdentity,
        address: str,
        projections: ProjectionManager,
        max_workers: int = DEFAULT_WORKERS,
        run_projections: bool = True,
        checkpointer: Checkpointer | None = None,
        replay_pool: EncodingPool | None = None,
        read_workers: int = DEFAULT_READ_WORKERS,
    ) -> None:
        if not 1 <= read_workers <= MAX_READ_WORKERS:
            raise ValueError(
                f"LEDGER_READ_WORKERS: expected 1 to {MAX_READ_WORKERS}, not {read_workers}"
            )
        self.app = app
        self._checkpointer = checkpointer
        self.projections = projections
        self._run_projections = run_projections
        self._projections_stop = threading.Event()
        self._projections_thread = threading.Thread(
            target=projections.run_forever,
            args=(self._projections_stop,),
            name="ledger-projections",
            daemon=True,
        )
        queries = Queries(app, projections)
        self._read_executor = futures.ThreadPoolExecutor(
            max_workers=read_workers, thread_name_prefix="ledger-read"
        )
        self._executor = futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="ledger-rpc"
        )
        self._server = grpc.server(
            self._executor,
            interceptors=interceptors(principals, metrics, self._read_executor),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # Without this a second server could share the port unnoticed.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        # Cached once read: the id never changes for a store.
        ledger_id = functools.cache(functools.partial(ensure_ledger_id, app))
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
            ParticipantService(app, queries), self._server
        )
        listing_pb2_grpc.add_ListingServiceServicer_to_server(
            ListingService(app, queries), self._server
        )
        trade_pb2_grpc.add_TradeServiceServicer_to_server(TradeService(app, queries), self._server)
        access_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessService(app, queries), self._server
        )
        add_audit_service(
            AuditService(app, queries, identity, ledger_id, replay_pool), self._server
        )
        projection_pb2_grpc.add_ProjectionServiceServicer_to_server(
            ProjectionService(queries), self._server
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(REFLECTED_SERVICES, self._server)
        self._monitor = HealthMonitor(app, self.health, metrics, projections=projections)
        self._ledger_id = ledger_id
        self.host, self.port = _bind(self._server, address)

    @property
    def address(self) -> str:
        """The bound "host:port", with the real port when port 0 was asked for."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Writes the ledger id if the store has none, then serves."""
        try:
            self._ledger_id()
        except Unavailable as exc:
            log.warning("ledger id not read yet; the event store is unavailable", reason=str(exc))
        # Probe continuously, so that an outage fails calls at once instead of each
        # call waiting out the driver's timeouts.
        self.app.guard.monitor()
        self._monitor.start()
        if self._run_projections:
            self._projections_thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()
        self._server.start()

    def stop(self, grace_s: float) -> None:
        """Reports NOT_SERVING, refuses new RPCs and lets in-flight ones finish."""
        self.health.enter_graceful_shutdown()
        self._monitor.stop()
        self._server.stop(grace_s).wait()
        # Projections stop at a batch boundary: a batch commits whole or not at all.
        self._projections_stop.set()
        self.projections.wake()
        if self._projections_thread.is_alive():
            self._projections_thread.join(timeout=grace_s + 5)
        # After the projections: the last checkpoint covers what they hashed.
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._executor.shutdown(wait=False)
        self._read_executor.shutdown(wait=False)
        self.app.guard.stop()


def _bind(server: grpc.Server, address: str) -> tuple[str, int]:
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise ValueError(f"gRPC address {address!r}: expected host:port, e.g. 127.0.0.1:50051")
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise AddressInUse(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise AddressInUse(f"cannot listen on {address}: is the port in use?")
    return host, int(port)
