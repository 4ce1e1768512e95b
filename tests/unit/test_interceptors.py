"""Which thread pool runs each RPC: reads on the server's read pool, the rest on its
main pool."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from ledger.api.interceptors import LedgerInterceptor
from ledger.api.principals import PrincipalStore
from ledger.metrics import Metrics


@dataclass(frozen=True)
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def unary(request: Any, context: Any) -> None:
    return None


def streaming(request: Any, context: Any) -> Iterator[None]:
    yield None


@pytest.fixture
def read_pool() -> Iterator[futures.ThreadPoolExecutor]:
    pool = futures.ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def pool_of(interceptor: LedgerInterceptor, method: str, handler: grpc.RpcMethodHandler) -> Any:
    wrapped = interceptor.intercept_service(lambda _details: handler, Details(method))
    assert wrapped is not None
    behaviour = wrapped.unary_unary or wrapped.unary_stream
    return getattr(behaviour, "experimental_thread_pool", None)


@pytest.mark.parametrize(
    "method",
    [
        "/ledger.v1.AccessService/CheckAccess",
        "/ledger.v1.ListingService/GetListing",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_unary_reads_run_on_the_read_pool(
    method: str, read_pool: futures.ThreadPoolExecutor
) -> None:
    interceptor = LedgerInterceptor(PrincipalStore({}), Metrics(), read_pool)
    assert pool_of(interceptor, method, grpc.unary_unary_rpc_method_handler(unary)) is read_pool


@pytest.mark.parametrize(
    "method",
    [
        "/ledger.v1.TradeService/RecordSale",
        "/ledger.v1.TradeService/IngestCommands",
        "/ledger.v1.ProjectionService/RebuildProjection",
        "/ledger.v1.Unknown/Method",
    ],
)
def test_writes_and_unknown_methods_run_on_the_main_pool(
    method: str, read_pool: futures.ThreadPoolExecutor
) -> None:
    interceptor = LedgerInterceptor(PrincipalStore({}), Metrics(), read_pool)
    assert pool_of(interceptor, method, grpc.unary_unary_rpc_method_handler(unary)) is None


def test_streamed_reads_run_on_the_main_pool(read_pool: futures.ThreadPoolExecutor) -> None:
    interceptor = LedgerInterceptor(PrincipalStore({}), Metrics(), read_pool)
    handler = grpc.unary_stream_rpc_method_handler(streaming)
    assert pool_of(interceptor, "/ledger.v1.AuditService/ReplayEvents", handler) is None
