"""The health monitor publishes the store's reachability and the projections' lag."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from ledger.api.server import HealthMonitor
from ledger.application.app import MarketLedger
from ledger.metrics import Metrics
from ledger.projections.engine import ProjectionManager


def test_projection_lag_is_published_as_metrics(memory_app: MarketLedger) -> None:
    from ledger.bootstrap import build_projections
    from ledger.settings import Settings

    projections: ProjectionManager = build_projections(Settings(database_url="memory:"), memory_app)
    metrics = Metrics()
    servicer = health.HealthServicer()
    HealthMonitor(memory_app, servicer, metrics, projections=projections).check()

    rendered = metrics.render().decode()
    for name in projections.projections:
        assert f'ledger_projection_lag_events{{projection="{name}"}} 0.0' in rendered
    request = health_pb2.HealthCheckRequest(service="")
    assert servicer.Check(request, None).status == health_pb2.HealthCheckResponse.SERVING
