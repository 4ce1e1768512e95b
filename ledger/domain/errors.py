"""The error kinds of the ledger.

Each kind maps to exactly one gRPC status code (see ``ledger.api.errors``), so every
layer above the domain only has to translate, never to guess.
"""

from __future__ import annotations

from dataclasses import dataclass


class LedgerError(Exception):
    """Base class of every error the ledger reports to a caller."""


@dataclass(frozen=True)
class FieldViolation:
    """One malformed field of a request: its path and what is wrong with it."""

    field: str
    description: str


class InvalidArgument(LedgerError):
    """The request is malformed; nothing was written (INVALID_ARGUMENT)."""

    def __init__(self, *violations: FieldViolation) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations: tuple[FieldViolation, ...] = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(field, description))


class RuleViolation(LedgerError):
    """An enforced compliance rule rejects the command (FAILED_PRECONDITION).

    ``reason`` is the stable rule id with its short name, e.g. ``R05_LISTING_NOT_LISTED``.
    """

    def __init__(self, rule: str, name: str, message: str, field: str | None = None) -> None:
        self.rule = rule
        self.name = name
        self.field = field
        self.message = message
        super().__init__(f"{self.reason}: {message}")

    @property
    def reason(self) -> str:
        return f"{self.rule}_{self.name}"


class NotFound(LedgerError):
    """A referenced resource does not exist (NOT_FOUND)."""

    def __init__(self, resource: str, resource_id: object, field: str | None = None) -> None:
        self.resource = resource
        self.resource_id = str(resource_id)
        self.field = field
        super().__init__(f"{resource} {resource_id} not found")


class AlreadyExists(LedgerError):
    """A request_id was reused for a different request, or a unique key is taken
    (ALREADY_EXISTS)."""


class Conflict(LedgerError):
    """A stale etag or a lost race with a concurrent write; retry against the new state
    (ABORTED)."""


class InvalidState(LedgerError):
    """The resource's lifecycle or a precondition outside the rule catalogue forbids the
    command (FAILED_PRECONDITION with ``reason``, e.g. ``TRADE_NOT_EXECUTED``)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class PermissionDenied(LedgerError):
    """The caller's role or scope does not reach this resource (PERMISSION_DENIED)."""


class Unavailable(LedgerError):
    """The database cannot be reached right now; the command was not applied and is safe
    to retry with the same request_id (UNAVAILABLE)."""
