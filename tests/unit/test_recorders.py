"""Ids and versions go to PostgreSQL as array literals."""

from __future__ import annotations

from uuid import UUID, uuid4

from ledger.application.recorders import array_literal


def test_an_array_literal_lists_canonical_ids_and_integers() -> None:
    ids = [uuid4(), uuid4()]
    assert array_literal(ids) == "{" + f"{ids[0]},{ids[1]}" + "}"
    assert array_literal([1, -2, 30]) == "{1,-2,30}"
    assert array_literal([]) == "{}"
    parsed = [UUID(text) for text in array_literal(ids).strip("{}").split(",")]
    assert parsed == ids
