"""Every error kind maps to one gRPC code with the details a client can act on."""

from __future__ import annotations

from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from structlog.testing import capture_logs

from ledger.api.errors import (
    DeadlineExceeded,
    Unauthenticated,
    Unimplemented,
    status_for,
    to_grpc_status,
)
from ledger.domain.errors import (
    AlreadyExists,
    Conflict,
    FieldViolation,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    RuleViolation,
    Unavailable,
)
from ledger.v1 import listing_pb2, participant_pb2

D = TypeVar("D", bound=Message)


def detail(status: status_pb2.Status, kind: type[D]) -> D:
    """Returns the one detail of ``kind`` the status carries."""
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, f"expected one {kind.__name__} in {status.details}"
    message = kind()
    found[0].Unpack(message)
    return message


def code(status: status_pb2.Status) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == status.code)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidArgument.of("title", "is required"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuleViolation("R05", "LISTING_NOT_LISTED", "x"), grpc.StatusCode.FAILED_PRECONDITION),
        (InvalidState("TRADE_SETTLED", "x"), grpc.StatusCode.FAILED_PRECONDITION),
        (NotFound("listing", "l-1"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("request_id reused"), grpc.StatusCode.ALREADY_EXISTS),
        (Conflict("stale etag"), grpc.StatusCode.ABORTED),
        (PermissionDenied("not your venue"), grpc.StatusCode.PERMISSION_DENIED),
        (Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Unimplemented("later"), grpc.StatusCode.UNIMPLEMENTED),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_kind_has_its_code(error: Exception, expected: grpc.StatusCode) -> None:
    assert code(status_for(error)) is expected
    assert to_grpc_status(error).code is expected


def test_invalid_argument_lists_field_violations_named_as_in_the_request() -> None:
    error = InvalidArgument(
        FieldViolation("pi_level", "is required"), FieldViolation("title", "is required")
    )
    status = status_for(error, listing_pb2.SubmitListingRequest())
    violations = detail(status, error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [
        ("personal_information_level", "is required"),
        ("title", "is required"),
    ]
    assert "personal_information_level" in status.message


def test_rule_violation_carries_error_info_with_rule_and_field() -> None:
    error = RuleViolation("R05", "LISTING_NOT_LISTED", "the listing is SUBMITTED", "listing_id")
    status = status_for(error)
    info = detail(status, error_details_pb2.ErrorInfo)
    assert info.reason == "R05_LISTING_NOT_LISTED"
    assert info.domain == "ledger.v1"
    assert dict(info.metadata) == {"rule": "R05", "field": "listing_id"}
    assert status.message.startswith("R05_LISTING_NOT_LISTED")


def test_rule_violation_without_field_has_only_the_rule() -> None:
    info = detail(
        status_for(RuleViolation("R09", "EXCHANGE_IS_PARTY", "x")), error_details_pb2.ErrorInfo
    )
    assert dict(info.metadata) == {"rule": "R09"}


def test_invalid_state_carries_its_reason() -> None:
    info = detail(
        status_for(InvalidState("LISTING_DELISTED", "closed")), error_details_pb2.ErrorInfo
    )
    assert (info.reason, info.domain) == ("LISTING_DELISTED", "ledger.v1")


def test_not_found_names_the_resource() -> None:
    status = status_for(
        NotFound("participant", "p-1", "party.uscc"), participant_pb2.RegisterParticipantRequest()
    )
    info = detail(status, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("participant", "p-1")
    assert "party_identifier.uscc" in info.description


def test_unavailable_asks_for_a_retry_without_naming_the_database() -> None:
    status = status_for(Unavailable("connection to db.internal:5432 refused"))
    assert detail(status, error_details_pb2.RetryInfo).retry_delay.seconds == 1
    assert "db.internal" not in status.message


def test_an_unexpected_error_is_internal_and_logged_but_not_sent() -> None:
    with capture_logs() as logs:
        status = status_for(ZeroDivisionError("secret internals"))
    assert "secret internals" not in status.message
    assert not status.details
    (entry,) = logs
    assert entry["error_id"] in status.message
    assert isinstance(entry["exc_info"], ZeroDivisionError)


def test_the_grpc_status_carries_the_rich_status() -> None:
    error = RuleViolation("R05", "LISTING_NOT_LISTED", "x")
    grpc_status = to_grpc_status(error)
    ((key, value),) = grpc_status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert status_pb2.Status.FromString(value) == status_for(error)
    assert rpc_status.to_status(status_for(error)).details == grpc_status.details
