"""Parsing of wire-level command fields into domain values, naming the field on error."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import TypeVar
from uuid import UUID

from ledger.domain.errors import InvalidArgument
from ledger.domain.values import NamedEnum

E = TypeVar("E", bound=NamedEnum)

MAX_TEXT = 4096
MAX_NAME = 512


_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def parse_uuid(value: str, field: str) -> UUID:
    if isinstance(value, str):
        found = canonical_uuid(value)
        if found is not None:
            return found
    if not value:
        raise InvalidArgument.of(field, "is required")
    try:
        parsed = UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument.of(field, f"{value[:64]!r} is not a UUID") from None
    if str(parsed) != value.lower():
        raise InvalidArgument.of(field, "use the canonical hyphenated UUID form")
    return parsed


@lru_cache(maxsize=16_384)
def canonical_uuid(value: str) -> UUID | None:
    """The UUID of a canonical hyphenated UUID text (either case), else None. The ids
    of a batch repeat (its listing, parties and the trades its sales create), and a
    UUID is built in Python: recent ones are kept."""
    if _CANONICAL_UUID.fullmatch(value):
        return UUID(value)
    return None


def parse_request_id(value: str) -> str:
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value.lower()
    return str(parse_uuid(value, "request_id"))


def parse_etag(value: str, field: str = "etag") -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidArgument.of(field, "an etag is the resource version from a previous read")
    return int(value)


def parse_enum(enum: type[E], value: str, field: str) -> E:
    if not value:
        raise InvalidArgument.of(field, "is required")
    return enum.parse(value, field)


def parse_enum_set(
    enum: type[E], values: Iterable[str], field: str, *, allow_empty: bool = False
) -> frozenset[E]:
    return enum.parse_set(list(values), field, allow_empty=allow_empty)


def parse_text(value: str, field: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    if required and not value.strip():
        raise InvalidArgument.of(field, "is required")
    if len(value) > limit:
        raise InvalidArgument.of(field, f"at most {limit} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise InvalidArgument.of(field, "contains control characters")
    return value


def require_aware(value: datetime | None, field: str) -> datetime | None:
    """Returns the timestamp in UTC (events store UTC only), or rejects a naive one."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument.of(field, "a timestamp needs a time zone")
    return value.astimezone(UTC)
