"""The audit hash chain over canonical events."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
import rfc8785

from ledger.audit.chain import (
    GENESIS,
    ChainBuilder,
    ChainOrderError,
    export_line,
    export_lines,
    next_hash,
)

FIRST: dict[str, Any] = {
    "position": 1,
    "aggregate_id": "7d2c4b1e-0f3a-4e5b-9c6d-1a2b3c4d5e6f",
    "aggregate_type": "Participant",
    "version": 1,
    "type": "ParticipantRegistered",
    "recorded_at": "2026-11-24T08:00:00.000001Z",
    "effective_at": "2026-11-24T08:00:00.000000Z",
    "actor": "registry-01",
    "role": "registry",
    "request_id": "11111111-2222-4333-8444-555555555555",
    "payload": {"name": "Hafen Daten GmbH", "roles": ["DEALER", "EXCHANGE"]},
}
SECOND: dict[str, Any] = {
    **FIRST,
    "position": 2,
    "version": 2,
    "type": "CertificationIssued",
    "recorded_at": "2026-11-24T08:00:01.000000Z",
    "payload": {"covers": ["GENERAL"], "fee": {"currency": "CNY", "amount_minor": 1250000}},
}

# The JCS form of FIRST, written out by hand: keys sorted, no whitespace.
FIRST_JCS = (
    b'{"actor":"registry-01","aggregate_id":"7d2c4b1e-0f3a-4e5b-9c6d-1a2b3c4d5e6f",'
    b'"aggregate_type":"Participant","effective_at":"2026-11-24T08:00:00.000000Z",'
    b'"payload":{"name":"Hafen Daten GmbH","roles":["DEALER","EXCHANGE"]},"position":1,'
    b'"recorded_at":"2026-11-24T08:00:00.000001Z",'
    b'"request_id":"11111111-2222-4333-8444-555555555555","role":"registry",'
    b'"type":"ParticipantRegistered","version":1}'
)


def test_chain_of_two_events_matches_a_computation_by_hand() -> None:
    assert rfc8785.dumps(FIRST) == FIRST_JCS
    first = hashlib.sha256(bytes(32) + FIRST_JCS).digest()
    second = hashlib.sha256(first + rfc8785.dumps(SECOND)).digest()

    folded = list(ChainBuilder().fold([FIRST, SECOND]))

    assert folded == [(1, first.hex()), (2, second.hex())]


def test_next_hash_is_sha256_of_the_previous_raw_hash_and_the_canonical_bytes() -> None:
    assert GENESIS == b"\x00" * 32
    assert next_hash(GENESIS, b"{}") == hashlib.sha256(b"\x00" * 32 + b"{}").digest()


def test_builder_resumed_from_a_stored_head_continues_the_same_chain() -> None:
    whole = ChainBuilder()
    whole.append(FIRST)
    expected = whole.append(SECOND)

    first_only = ChainBuilder()
    first_only.append(FIRST)
    resumed = ChainBuilder(first_only.head, first_only.position)

    assert resumed.append(SECOND) == expected
    assert resumed.position == 2


def test_builder_rejects_events_out_of_log_order() -> None:
    builder = ChainBuilder()
    builder.append(SECOND)
    with pytest.raises(ChainOrderError, match="does not follow position 2"):
        builder.append(FIRST)
    with pytest.raises(ChainOrderError):
        builder.append({**SECOND, "position": 2})
    assert builder.position == 2


def test_builder_rejects_a_head_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ChainBuilder(b"\x00" * 31)


def test_export_line_is_the_jcs_form_of_the_event_with_its_chain_hash() -> None:
    chain_hash = ChainBuilder().append(FIRST)
    line = export_line(FIRST, chain_hash)

    assert line.endswith(b"\n")
    assert line[:-1] == rfc8785.dumps({**FIRST, "chain_hash": chain_hash})
    assert orjson.loads(line) == {**FIRST, "chain_hash": chain_hash}


def test_export_lines_fold_the_events_in_order() -> None:
    lines = list(export_lines([FIRST, SECOND]))
    hashes = [orjson.loads(line)["chain_hash"] for line in lines]
    assert hashes == [chain_hash for _, chain_hash in ChainBuilder().fold([FIRST, SECOND])]
