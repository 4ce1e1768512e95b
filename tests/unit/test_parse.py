"""Ids are parsed from their canonical text, and recent ones are remembered."""

from __future__ import annotations

from uuid import uuid4

import pytest

from ledger.application.parse import canonical_uuid, parse_uuid
from ledger.domain.errors import InvalidArgument


def test_a_canonical_id_parses_in_either_case_and_is_remembered() -> None:
    value = uuid4()
    assert parse_uuid(str(value), "listing_id") == value
    assert parse_uuid(str(value).upper(), "listing_id") == value
    assert canonical_uuid(str(value)) is canonical_uuid(str(value))


@pytest.mark.parametrize("text", ["", "not-a-uuid", "{" + "0" * 32 + "}", "0" * 32])
def test_other_texts_are_not_canonical_ids(text: str) -> None:
    assert canonical_uuid(text) is None
    with pytest.raises(InvalidArgument) as caught:
        parse_uuid(text, "listing_id")
    assert caught.value.violations[0].field == "listing_id"
