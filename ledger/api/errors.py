"""The one mapping from the ledger's errors to rich gRPC statuses.

Every error a caller sees is a ``google.rpc.Status`` sent with ``grpcio-status``:
its code, a message, and details a client can act on (``BadRequest`` field
violations, ``ErrorInfo`` with a stable reason, ``ResourceInfo``, ``RetryInfo``).
Anything unexpected becomes INTERNAL with an error id; the traceback stays in the log.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from ledger.api.convert import wire_field
from ledger.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    InvalidState,
    LedgerError,
    NotFound,
    PermissionDenied,
    RuleViolation,
    Unavailable,
)

DOMAIN = "ledger.v1"
RETRY_DELAY = duration_pb2.Duration(seconds=1)

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error of the API layer itself (not of the domain), with its status code."""

    code: ClassVar[grpc.StatusCode]


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(ApiError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ApiError):
    code = grpc.StatusCode.UNIMPLEMENTED


_CODES: tuple[tuple[type[LedgerError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (RuleViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidState, grpc.StatusCode.FAILED_PRECONDITION),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException, request: Message | None = None) -> status_pb2.Status:
    """Returns the rich status a caller sees for ``exc``.

    ``request`` lets field names be reported as the request spells them. An error that
    is neither a ledger nor an API error is logged with its traceback and reported as
    INTERNAL with only an error id to quote.
    """
    if isinstance(exc, ApiError):
        return _status(exc.code, str(exc))
    if isinstance(exc, LedgerError):
        return _ledger_status(exc, request)
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error", error_id=error_id, exc_info=exc)
    return _status(
        grpc.StatusCode.INTERNAL,
        f"internal error; quote error id {error_id} when reporting it",
    )


def to_grpc_status(exc: BaseException, request: Message | None = None) -> grpc.Status:
    """Returns ``status_for(exc)`` in the form ``context.abort_with_status`` takes."""
    return rpc_status.to_status(status_for(exc, request))


def code_of(exc: BaseException) -> grpc.StatusCode:
    """Returns the status code ``exc`` maps to (INTERNAL for unexpected errors)."""
    if isinstance(exc, ApiError):
        return exc.code
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _ledger_status(exc: LedgerError, request: Message | None) -> status_pb2.Status:
    code = code_of(exc)
    if isinstance(exc, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=wire_field(request, v.field), description=v.description
            )
            for v in exc.violations
        ]
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return _status(code, message, error_details_pb2.BadRequest(field_violations=violations))
    if isinstance(exc, RuleViolation):
        metadata = {"rule": exc.rule}
        if exc.field:
            metadata["field"] = wire_field(request, exc.field)
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata)
        return _status(code, f"{exc.reason}: {exc.message}", info)
    if isinstance(exc, InvalidState):
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN)
        return _status(code, f"{exc.reason}: {exc.message}", info)
    if isinstance(exc, NotFound):
        resource = error_details_pb2.ResourceInfo(
            resource_type=exc.resource,
            resource_name=exc.resource_id,
            description=f"named by {wire_field(request, exc.field)}" if exc.field else "",
        )
        return _status(code, str(exc), resource)
    if isinstance(exc, Unavailable):
        # The cause names hosts and drivers: log it, tell the caller only to retry.
        log.warning("event store unavailable", error=str(exc))
        return _status(
            code,
            "the event store is unavailable; retry with the same request_id",
            error_details_pb2.RetryInfo(retry_delay=RETRY_DELAY),
        )
    return _status(code, str(exc))


def _status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)
