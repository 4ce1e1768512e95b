"""Offline verification of exports: every kind of tampering is found at the exact line."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest

from ledger.audit import verify
from ledger.audit.bench import run_verify_benchmark, synthetic_events
from ledger.audit.canonical import canonical_bytes
from ledger.audit.chain import GENESIS, ChainBuilder, export_line, export_lines, next_hash
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint
from ledger.audit.verify import (
    FailureKind,
    VerifyResult,
    verify_chain,
    verify_export,
    verify_files,
)

EVENTS = 200
TRIALS = 50
SIGNED_AT = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Export:
    lines: list[bytes]
    signer: Ed25519Signer
    checkpoint: dict[str, Any]

    @property
    def public_key(self) -> str:
        return self.signer.public_key_hex


def make_export(events: Sequence[dict[str, Any]], signer: Ed25519Signer) -> Export:
    builder = ChainBuilder()
    lines = list(export_lines(events, builder))
    assert builder.position is not None
    checkpoint = sign_checkpoint(
        signer, "ledger-1", builder.position, builder.head.hex(), SIGNED_AT
    )
    return Export(lines, signer, checkpoint)


@pytest.fixture(autouse=True, params=["one process", "chunks in processes"])
def processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: as one pass, and with the export in chunks of a few
    lines, checked by two processes and joined (``verify_export`` does so for large
    exports). The results must be the same."""
    if request.param == "chunks in processes":
        monkeypatch.setattr(verify, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(verify, "CHUNK_BYTES", 2500)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return str(request.param)


@pytest.fixture(scope="module")
def export() -> Export:
    built = make_export(list(synthetic_events(EVENTS, seed=7)), Ed25519Signer.generate())
    # The fixture must exercise both the ASCII and the non-ASCII fast paths.
    assert any(not line.isascii() for line in built.lines)
    return built


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "export.jsonl"


def verify_lines(path: Path, lines: Sequence[bytes], export: Export) -> VerifyResult:
    path.write_bytes(b"".join(lines))
    return verify_export(path, export.checkpoint, export.public_key)


def first_difference(tampered: Sequence[bytes], original: Sequence[bytes]) -> int:
    """The 0-based index of the first line that differs (or is missing, or extra)."""
    for index, (left, right) in enumerate(zip(tampered, original, strict=False)):
        if left != right:
            return index
    return min(len(tampered), len(original))


def position_of(line: bytes) -> int:
    position: int = orjson.loads(line)["position"]
    return position


# Untampered exports.


def test_intact_export_verifies_against_its_signed_checkpoint(path: Path, export: Export) -> None:
    result = verify_lines(path, export.lines, export)

    assert result.ok, result.describe()
    assert result.count == EVENTS
    assert result.last_position == EVENTS
    assert result.chain_hash == export.checkpoint["chain_hash"]
    assert result.checkpoint_position == EVENTS
    assert result.signature_checked
    assert result.describe().startswith(f"OK: {EVENTS} events verified")


def test_export_without_checkpoint_is_only_self_consistent(path: Path, export: Export) -> None:
    path.write_bytes(b"".join(export.lines))
    result = verify_export(path, None, None)
    assert result.ok
    assert result.checkpoint_position is None
    assert "only self-consistent" in result.describe()


def test_events_after_the_checkpoint_are_verified_but_called_unsigned(
    path: Path, export: Export
) -> None:
    early = sign_checkpoint(
        export.signer, "ledger-1", 100, orjson.loads(export.lines[99])["chain_hash"], SIGNED_AT
    )
    path.write_bytes(b"".join(export.lines))
    result = verify_export(path, early, export.public_key)
    assert result.ok
    assert result.checkpoint_position == 100
    assert result.count == EVENTS
    assert "after position 100 are not yet signed" in result.describe()


def test_any_json_formatting_of_the_same_events_verifies(path: Path, export: Export) -> None:
    rng = random.Random(3)
    reformatted = []
    for line in export.lines:
        items = list(orjson.loads(line).items())
        rng.shuffle(items)
        reformatted.append(json.dumps(dict(items), ensure_ascii=True, indent=None).encode() + b"\n")
    result = verify_lines(path, reformatted, export)
    assert result.ok, result.describe()


def test_floats_in_a_payload_are_canonicalised_as_rfc8785_does(path: Path) -> None:
    events = list(synthetic_events(3, seed=1))
    events[1]["payload"] = {"ratio": 0.1, "huge": 1e21, "tiny": 1e-7, "whole": 2.0}
    built = make_export(events, Ed25519Signer.generate())
    assert b'"huge":1e+21' in built.lines[1]
    assert b'"whole":2}' in built.lines[1]
    assert verify_lines(path, built.lines, built).ok


def test_without_the_fast_path_the_results_are_the_same(path: Path, export: Export) -> None:
    tampered = list(export.lines)
    tampered[30], tampered[31] = tampered[31], tampered[30]
    fast = [verify_lines(path, lines, export) for lines in (export.lines, tampered)]
    with mock.patch("ledger.audit.canonical._orjson_agrees", return_value=False):
        slow = [verify_lines(path, lines, export) for lines in (export.lines, tampered)]
    assert slow == fast
    assert fast[0].ok
    assert not fast[1].ok


def test_empty_export_verifies_only_without_a_checkpoint(path: Path, export: Export) -> None:
    path.write_bytes(b"")
    assert verify_export(path).ok
    result = verify_export(path, export.checkpoint, export.public_key)
    assert result.failure is not None
    assert result.failure.kind is FailureKind.TRUNCATED


# The tamper suite: every trial is found at the first line that differs.


def test_payload_byte_edits_are_found_at_the_edited_line(path: Path, export: Export) -> None:
    rng = random.Random(1101)
    kinds = []
    for _ in range(TRIALS):
        index = rng.randrange(EVENTS)
        line = export.lines[index]
        start = line.index(b'"payload":') + len(b'"payload":')
        end = line.index(b',"position":', start)
        offset = rng.randrange(start, end)
        byte = rng.choice([b for b in range(0x21, 0x7F) if b != line[offset]])
        tampered = list(export.lines)
        tampered[index] = line[:offset] + bytes([byte]) + line[offset + 1 :]

        failure = verify_lines(path, tampered, export).failure

        assert failure is not None
        assert failure.line == index + 1, failure
        assert failure.kind in (FailureKind.CHANGED, FailureKind.MALFORMED), failure
        assert failure.position in (index + 1, None)
        kinds.append(failure.kind)
    assert kinds.count(FailureKind.CHANGED) >= TRIALS // 4


def test_byte_edits_anywhere_in_a_line_are_found_at_that_line(path: Path, export: Export) -> None:
    rng = random.Random(1102)
    for _ in range(TRIALS):
        index = rng.randrange(EVENTS)
        line = export.lines[index]
        offset = rng.randrange(len(line) - 1)
        byte = rng.choice([b for b in range(0x21, 0x7F) if b != line[offset]])
        tampered = list(export.lines)
        tampered[index] = line[:offset] + bytes([byte]) + line[offset + 1 :]

        failure = verify_lines(path, tampered, export).failure

        assert failure is not None
        assert failure.line == index + 1, failure


def test_deleted_lines_are_found_at_the_line_after_the_gap(path: Path, export: Export) -> None:
    rng = random.Random(1103)
    for _ in range(TRIALS):
        index = rng.randrange(EVENTS)
        run = min(rng.choice([1, 1, 1, 2, 3]), EVENTS - index)
        tampered = export.lines[:index] + export.lines[index + run :]

        result = verify_lines(path, tampered, export)

        assert result.failure is not None
        if index + run == EVENTS:
            # Nothing follows the gap: only the checkpoint shows that events are missing.
            assert result.failure.kind is FailureKind.TRUNCATED, result.failure
            assert result.count == index
        else:
            assert result.failure.kind is FailureKind.DELETED, result.failure
            assert result.failure.line == index + 1
            assert result.failure.position == index + run + 1
            assert f"between positions {index} and {index + run + 1}" in result.failure.message or (
                index == 0 and f"before position {run + 1}" in result.failure.message
            )


def test_duplicated_lines_are_found_where_the_copy_starts(path: Path, export: Export) -> None:
    rng = random.Random(1104)
    for _ in range(TRIALS):
        source = rng.randrange(EVENTS)
        index = rng.choice([source + 1, rng.randrange(EVENTS + 1)])
        tampered = [*export.lines[:index], export.lines[source], *export.lines[index:]]

        failure = verify_lines(path, tampered, export).failure

        assert failure is not None
        assert failure.kind is FailureKind.INSERTED, failure
        assert failure.line == first_difference(tampered, export.lines) + 1


def test_foreign_lines_are_found_where_they_were_inserted(path: Path, export: Export) -> None:
    rng = random.Random(1105)
    strangers = make_export(list(synthetic_events(TRIALS, seed=99)), Ed25519Signer.generate())
    for trial in range(TRIALS):
        index = rng.randrange(EVENTS)
        foreign = orjson.loads(strangers.lines[trial])
        foreign["position"] = rng.randrange(1, EVENTS + 1)
        tampered = [
            *export.lines[:index],
            export_line(foreign, foreign.pop("chain_hash")),
            *export.lines[index:],
        ]

        failure = verify_lines(path, tampered, export).failure

        assert failure is not None
        assert failure.kind is FailureKind.INSERTED, failure
        assert failure.line == index + 1


def test_line_appended_after_the_last_is_found(path: Path, export: Export) -> None:
    tampered = [*export.lines, export.lines[10]]
    failure = verify_lines(path, tampered, export).failure
    assert failure is not None
    assert failure.kind is FailureKind.INSERTED
    assert failure.line == EVENTS + 1


def test_swapped_adjacent_lines_are_found_at_the_first_of_them(path: Path, export: Export) -> None:
    rng = random.Random(1106)
    for _ in range(TRIALS):
        index = rng.randrange(EVENTS - 1)
        tampered = list(export.lines)
        tampered[index], tampered[index + 1] = tampered[index + 1], tampered[index]

        failure = verify_lines(path, tampered, export).failure

        assert failure is not None
        assert failure.kind is FailureKind.REORDERED, failure
        assert failure.line == index + 1
        assert failure.position == index + 2
        assert "swapped" in failure.message


def test_changed_content_on_the_last_line_is_reported_with_its_ambiguity(
    path: Path, export: Export
) -> None:
    tampered = list(export.lines)
    tampered[-1] = tampered[-1].replace(b'"role":"exchange"', b'"role":"exchangf"')
    failure = verify_lines(path, tampered, export).failure
    assert failure is not None
    assert failure.kind is FailureKind.CHANGED
    assert failure.line == EVENTS
    assert "it is the last line, so the export cannot tell which" in failure.message


def test_changed_chain_hash_value_is_told_apart_from_changed_content(
    path: Path, export: Export
) -> None:
    tampered = list(export.lines)
    event = orjson.loads(tampered[50])
    event["chain_hash"] = "0" * 64
    tampered[50] = export_line(event, event.pop("chain_hash"))
    failure = verify_lines(path, tampered, export).failure
    assert failure is not None
    assert failure.kind is FailureKind.CHANGED
    assert failure.line == 51
    assert "the chain_hash of the event at position 51" in failure.message


def spaced_export(step: int, count: int = 20) -> Export:
    events = list(synthetic_events(count, seed=5))
    for number, event in enumerate(events):
        event["position"] = step * (number + 1)
    return make_export(events, Ed25519Signer.generate())


def test_with_usual_gaps_a_change_is_reported_as_changed_or_deleted(path: Path) -> None:
    built = spaced_export(10)
    tampered = list(built.lines)
    tampered[5] = tampered[5].replace(b'"role":"exchange"', b'"role":"exchangf"')

    failure = verify_lines(path, tampered, built).failure

    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (FailureKind.CHANGED, 6, 60)
    assert "unless an event between positions 50 and 60 was deleted" in failure.message
    assert "cannot tell which" in failure.message


def test_with_usual_gaps_a_wider_gap_is_reported_as_deleted_or_changed(path: Path) -> None:
    built = spaced_export(10)
    tampered = built.lines[:5] + built.lines[6:]

    failure = verify_lines(path, tampered, built).failure

    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (FailureKind.DELETED, 6, 70)
    assert "between positions 50 and 70 was deleted (a gap of 20, wider than any" in (
        failure.message
    )
    assert "or this event's content was changed" in failure.message


def gapped_export(rng: random.Random, seed: int, gaps: list[int]) -> Export:
    """An export of EVENTS events whose positions step by gaps drawn from ``gaps``."""
    events = list(synthetic_events(EVENTS, seed=seed))
    position = 0
    for event in events:
        position += rng.choice(gaps)
        event["position"] = position
    return make_export(events, Ed25519Signer.generate())


def tamper(lines: list[bytes], rng: random.Random, kind: int) -> list[bytes]:
    """A copy of ``lines`` with one line changed (kind 0), deleted (1), inserted again
    (2), swapped with the next (3) or replaced by one that is not JSON (4)."""
    index = rng.randrange(EVENTS - 1)
    tampered = list(lines)
    match kind:
        case 0:
            tampered[index] = tampered[index].replace(b'"type":"', b'"type":"X')
        case 1:
            del tampered[index]
        case 2:
            tampered.insert(index, lines[rng.randrange(EVENTS)])
        case 3:
            tampered[index], tampered[index + 1] = tampered[index + 1], tampered[index]
        case _:
            tampered[index] = b"{not json\n"
    return tampered


def test_with_irregular_gaps_every_tamper_is_found_at_the_exact_line(path: Path) -> None:
    # Markers and rolled-back writes leave gaps of their own in a real log.
    rng = random.Random(1107)
    built = gapped_export(rng, 8, [1, 1, 2, 2, 3, 7])
    for trial in range(4 * TRIALS):
        tampered = tamper(built.lines, rng, trial % 4)

        failure = verify_lines(path, tampered, built).failure

        assert failure is not None
        assert failure.line == first_difference(tampered, built.lines) + 1, failure


def test_chunks_checked_in_processes_give_the_result_of_one_pass(
    path: Path, processes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if processes != "one process":
        pytest.skip("compares both ways itself")
    rng = random.Random(1109)
    # Wide gaps now and then, so that the widest gap before a fault is often one between
    # two chunks.
    built = gapped_export(rng, 9, [1, 1, 2, 3, 5, 9, 20, 40])
    checkpoint_at = rng.randrange(EVENTS)
    line = orjson.loads(built.lines[checkpoint_at])
    early = sign_checkpoint(
        built.signer, "ledger-1", line["position"], line["chain_hash"], SIGNED_AT
    )
    for trial in range(2 * TRIALS):
        tampered = tamper(built.lines, rng, trial % 5)
        path.write_bytes(b"".join(tampered))
        for checkpoint in (built.checkpoint, early, None):
            one = verify_export(path, checkpoint, built.public_key)
            with monkeypatch.context() as chunked:
                chunked.setattr(verify, "CHUNK_BYTES", rng.choice([700, 2500, 6000]))
                several = verify_export(path, checkpoint, built.public_key, processes=2)
            assert several == one


def test_positions_out_of_order_under_a_consistent_chain_are_reordered(path: Path) -> None:
    events = list(synthetic_events(5, seed=2))
    events[3]["position"] = 3
    lines, prev = [], GENESIS
    for event in events:
        prev = next_hash(prev, canonical_bytes(event))
        lines.append(export_line(event, prev.hex()))
    path.write_bytes(b"".join(lines))

    failure = verify_export(path).failure

    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (FailureKind.REORDERED, 4, 3)


# Checkpoints.


def test_checkpoint_over_another_hash_is_a_mismatch(path: Path, export: Export) -> None:
    wrong = sign_checkpoint(export.signer, "ledger-1", 100, "ab" * 32, SIGNED_AT)
    path.write_bytes(b"".join(export.lines))
    failure = verify_export(path, wrong, export.public_key).failure
    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (
        FailureKind.CHECKPOINT_MISMATCH,
        100,
        100,
    )


def test_rewritten_chain_is_caught_by_the_checkpoint(path: Path, export: Export) -> None:
    events = [orjson.loads(line) for line in export.lines]
    for event in events:
        del event["chain_hash"]
    events[49]["payload"]["exchange_id"] = "00000000-0000-4000-8000-000000000000"
    rewritten = list(export_lines(events))

    failure = verify_lines(path, rewritten, export).failure

    assert failure is not None
    assert (failure.kind, failure.position) == (FailureKind.CHECKPOINT_MISMATCH, EVENTS)
    assert "rewritten" in failure.message


def test_checkpoint_position_missing_from_the_export_is_a_mismatch(path: Path) -> None:
    events = list(synthetic_events(10, seed=4))
    for number, event in enumerate(events):
        event["position"] = 2 * (number + 1)
    built = make_export(events, Ed25519Signer.generate())
    odd = sign_checkpoint(built.signer, "ledger-1", 7, "ab" * 32, SIGNED_AT)
    path.write_bytes(b"".join(built.lines))

    failure = verify_export(path, odd, built.public_key).failure

    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (
        FailureKind.CHECKPOINT_MISMATCH,
        4,
        8,
    )


def test_truncated_export_is_caught_by_the_checkpoint(path: Path, export: Export) -> None:
    result = verify_lines(path, export.lines[:150], export)
    assert result.failure is not None
    assert result.failure.kind is FailureKind.TRUNCATED
    assert result.count == 150
    assert result.last_position == 150
    assert "before the checkpoint's position 200" in result.failure.message


def test_altered_checkpoint_fails_its_signature(path: Path, export: Export) -> None:
    forged = {**export.checkpoint, "chain_hash": "ab" * 32}
    path.write_bytes(b"".join(export.lines))
    failure = verify_export(path, forged, export.public_key).failure
    assert failure is not None
    assert failure.kind is FailureKind.BAD_SIGNATURE


def test_checkpoint_checked_with_another_key_fails(path: Path, export: Export) -> None:
    path.write_bytes(b"".join(export.lines))
    other = Ed25519Signer.generate().public_key_hex
    failure = verify_export(path, export.checkpoint, other).failure
    assert failure is not None
    assert failure.kind is FailureKind.BAD_SIGNATURE


def test_checkpoint_without_a_key_is_used_but_marked_unsigned(path: Path, export: Export) -> None:
    path.write_bytes(b"".join(export.lines))
    result = verify_export(path, export.checkpoint, None)
    assert result.ok
    assert not result.signature_checked
    assert "signature NOT checked" in result.describe()


# Malformed input.


def replace_line(export: Export, index: int, line: bytes) -> list[bytes]:
    lines = list(export.lines)
    lines[index] = line
    return lines


def test_line_that_is_not_json_is_malformed(path: Path, export: Export) -> None:
    failure = verify_lines(path, replace_line(export, 9, b"{not json\n"), export).failure
    assert failure is not None
    assert (failure.kind, failure.line, failure.position) == (FailureKind.MALFORMED, 10, None)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e.pop("role"), "missing role"),
        (lambda e: e.update(position=True), "position must be an integer"),
        (lambda e: e.update(version="3"), "version must be an integer"),
        (lambda e: e.pop("chain_hash"), "chain_hash is missing"),
        (lambda e: e.update(chain_hash=e["chain_hash"].upper()), "lowercase hex"),
    ],
)
def test_line_of_the_wrong_shape_is_malformed(
    path: Path, export: Export, change: Any, reason: str
) -> None:
    event = orjson.loads(export.lines[9])
    change(event)
    failure = verify_lines(
        path, replace_line(export, 9, orjson.dumps(event) + b"\n"), export
    ).failure
    assert failure is not None
    assert (failure.kind, failure.line) == (FailureKind.MALFORMED, 10)
    assert reason in failure.message


def test_line_with_a_duplicate_key_is_malformed(path: Path, export: Export) -> None:
    # Parsers that keep the first value would show a forged role; the last value verifies.
    line = export.lines[9]
    forged = line.replace(b'"role":"exchange"', b'"role":"admin","role":"exchange"')
    failure = verify_lines(path, replace_line(export, 9, forged), export).failure
    assert failure is not None
    assert (failure.kind, failure.line) == (FailureKind.MALFORMED, 10)
    assert "duplicate key 'role'" in failure.message


def test_unreadable_export_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    failure = verify_export(tmp_path).failure
    assert failure is not None
    assert failure.kind is FailureKind.MALFORMED
    assert "cannot read" in failure.message


# The reusable chain check and the file-level entry point.


def pairs(lines: Sequence[bytes]) -> Iterator[tuple[dict[str, Any], str]]:
    for line in lines:
        event = orjson.loads(line)
        yield event, event.pop("chain_hash")


def test_verify_chain_agrees_with_verify_export(path: Path, export: Export) -> None:
    assert verify_chain(pairs(export.lines), export.checkpoint, export.public_key).ok

    tampered = list(export.lines)
    tampered[120], tampered[121] = tampered[121], tampered[120]
    from_file = verify_lines(path, tampered, export)
    from_pairs = verify_chain(pairs(tampered), export.checkpoint, export.public_key)
    assert from_pairs == from_file


def test_verify_chain_continues_from_a_trusted_point(export: Export) -> None:
    head = orjson.loads(export.lines[99])["chain_hash"]
    result = verify_chain(
        pairs(export.lines[100:]),
        export.checkpoint,
        export.public_key,
        start_hash=bytes.fromhex(head),
        start_position=100,
    )
    assert result.ok, result.describe()
    assert result.count == 100

    at_start = sign_checkpoint(export.signer, "ledger-1", 100, head, SIGNED_AT)
    result = verify_chain(
        pairs(export.lines[100:]),
        at_start,
        export.public_key,
        start_hash=bytes.fromhex(head),
        start_position=100,
    )
    assert result.ok
    assert result.checkpoint_position == 100


def test_verify_files_reads_the_checkpoint_and_key_files(tmp_path: Path, export: Export) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(export.lines))
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_bytes(orjson.dumps(export.checkpoint))
    key = tmp_path / "public.key"
    key.write_text(export.public_key + "\n")

    assert verify_files(events, checkpoint, key).ok

    failure = verify_files(events, checkpoint, tmp_path / "missing.key").failure
    assert failure is not None
    assert failure.kind is FailureKind.MALFORMED


def test_failure_description_names_kind_line_and_position(path: Path, export: Export) -> None:
    result = verify_lines(path, export.lines[:60] + export.lines[61:], export)
    assert result.describe().startswith("FAILED (deleted) at line 61, position 62: ")


def test_benchmark_runs_and_reports_both_rates(tmp_path: Path) -> None:
    report = run_verify_benchmark(300, tmp_path)
    assert report["events"] == 300
    assert report["verify_events_per_s"] > 0
    assert report["sha256_events_per_s"] > 0
    assert list(tmp_path.iterdir()) == []
