"""Offline verification of the audit hash chain: an export file, or any sequence of
canonical events with their claimed chain hashes, against a signed checkpoint.

Verification streams (constant memory) and stops at the first line whose recomputed
chain hash or position disagrees: that line is always the one reported. It then reads
at most two more lines to name what most likely happened there:

- ``inserted``: the next line chains directly from the line before, so this line does
  not belong (an added, duplicated or moved-up line).
- ``reordered``: as inserted, but this line chains from the next one (an adjacent
  swap); or the hashes chain while the positions do not increase.
- ``changed``: the next line chains from this line's recomputed hash (its
  ``chain_hash`` value was altered), or from its claimed hash while the gap before it
  is no wider than the gaps seen so far (its content was altered).
- ``deleted``: the next line chains from this line's claimed hash and the gap before it
  is wider than every gap seen so far.

A changed event and a deleted predecessor leave the same traces: the chain cannot tell
them apart, only the positions hint at it, and only contiguous positions rule a
deletion out. So both messages name the other explanation whenever positions leave room
for a missing event. On the last line (or before a malformed one) nothing follows to
compare with, and the message says so. ``malformed``, ``truncated`` (the input ends
before the checkpoint's position), ``bad_signature`` and ``checkpoint_mismatch`` come
from the input's form and from the checkpoint.

Positions are positive integers, as the event store's notification ids are.

A large export is checked by several processes, a chunk of lines each: every line
against the ``chain_hash`` its predecessor claims, which is the recomputed hash as long
as every line before it verified. The chunks are then joined in order, each at its first
line; at the first chunk with a fault the verification goes on line by line from that
chunk's start, in the state the chunks before it left, so that the result (the fault,
its line and the lines it looks at to classify it) is the one a single pass gives.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha256
from pathlib import Path
from typing import IO, Any, Final

import orjson

from ledger.audit.canonical import (
    CANONICAL_OPTIONS,
    EVENT_KEY_TYPES,
    CanonicalizationError,
    canonical_bytes,
    event_shape_error,
    fast_path_enabled,
    is_float_free,
    parsed_is_plain,
)
from ledger.audit.chain import GENESIS
from ledger.audit.checkpoint import (
    BadSignature,
    InvalidPublicKey,
    MalformedCheckpoint,
    check_checkpoint,
    read_checkpoint,
    read_public_key,
    verify_checkpoint,
)

_SORTED_KEYS: Final = tuple(key for key, _ in EVENT_KEY_TYPES)
_SORTED_TYPES: Final = tuple(kind for _, kind in EVENT_KEY_TYPES)
_CHAIN_HASH: Final = re.compile(r"[0-9a-f]{64}")

# A line holding the JCS form of its event plus the chain hash member
# ``,"chain_hash":"<64 hex>"`` (80 bytes) is exactly this much longer than that JCS form,
# with or without its newline. JCS is the shortest JSON text of a value without floats,
# so a line of this length cannot hide a duplicate key.
_CANONICAL_LINE_OVERHEAD: Final = (80, 81)

# Compares higher than any position: no checkpoint left to look for.
_AFTER_ALL: Final = 2**63

# (line number, position, JCS bytes of the event, claimed chain hash)
_Entry = tuple[int, int, bytes, str]

PARALLEL_MIN_BYTES: Final = 32 << 20
"""Exports at least this large are checked by several processes (one per core)."""
CHUNK_BYTES: Final = 8 << 20
"""The lines a process checks at a time: about this many bytes."""


class FailureKind(StrEnum):
    """What kind of fault a verification found."""

    CHANGED = "changed"
    INSERTED = "inserted"
    DELETED = "deleted"
    REORDERED = "reordered"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    BAD_SIGNATURE = "bad_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"


@dataclass(frozen=True)
class Failure:
    """The first fault found: its kind, a message, and where it is.

    ``line`` is the 1-based line of the export (the 1-based item for ``verify_chain``);
    ``position`` is the position that line claims. Either is None where there is none.
    """

    kind: FailureKind
    message: str
    line: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of a verification: how far the chain verified, and the first fault."""

    count: int
    """Events whose chain hash verified, in order from the start."""
    last_position: int | None
    """The position of the last verified event."""
    chain_hash: str | None
    """The chain hash (lowercase hex) of the last verified event."""
    checkpoint_position: int | None
    """The position of the checkpoint the chain matched, if one was given and reached."""
    signature_checked: bool
    """Whether the checkpoint's signature was verified with a public key."""
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """Whether the whole input verified (and the checkpoint, if given, matched)."""
        return self.failure is None

    def describe(self) -> str:
        """Returns a one-paragraph account for people."""
        if self.failure is not None:
            where = [
                f"line {self.failure.line}" if self.failure.line is not None else "",
                f"position {self.failure.position}" if self.failure.position is not None else "",
            ]
            located = ", ".join(filter(None, where))
            return (
                f"FAILED ({self.failure.kind})" + (f" at {located}" if located else "") + ": "
                f"{self.failure.message}"
            )
        text = f"OK: {self.count} events verified"
        if self.last_position is not None:
            text += f", chain hash at position {self.last_position} is {self.chain_hash}"
        if self.checkpoint_position is None:
            return text + "; no checkpoint given, so the chain is only self-consistent"
        signed = "signature verified" if self.signature_checked else "signature NOT checked"
        text += f"; matches the checkpoint at position {self.checkpoint_position} ({signed})"
        if self.last_position is not None and self.last_position > self.checkpoint_position:
            text += f"; events after position {self.checkpoint_position} are not yet signed"
        return text


@dataclass(frozen=True)
class _Anchor:
    position: int
    chain_hash: str
    key_id: str


class _MalformedLine(Exception):
    """Raised by an entry source for an input line that is not a canonical event line."""

    def __init__(self, line: int, position: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.position = position
        self.reason = reason


def verify_export(
    events_path: str | os.PathLike[str],
    checkpoint: Mapping[str, Any] | None = None,
    public_key_hex: str | None = None,
    *,
    processes: int | None = None,
) -> VerifyResult:
    """Verifies an export (JSON lines: a canonical event plus its ``chain_hash``) from the
    genesis hash, and against ``checkpoint`` signed by ``public_key_hex`` if given.

    Never raises for bad input: every fault, including an unreadable file, is a result.
    An export of ``PARALLEL_MIN_BYTES`` or more is checked by ``processes`` processes
    (default: one per core), with the same result.
    """
    try:
        with open(events_path, "rb", buffering=1 << 20) as file:
            size = os.fstat(file.fileno()).st_size
            workers = _processes(processes, size)
            if workers > 1:
                path = os.fspath(events_path)
                return _run_parallel(path, file, checkpoint, public_key_hex, workers)
            return _run(_export_entries(file), checkpoint, public_key_hex, GENESIS, 0)
    except OSError as error:
        failure = Failure(FailureKind.MALFORMED, f"cannot read {os.fspath(events_path)}: {error}")
        return VerifyResult(0, None, None, None, False, failure)


def verify_files(
    events_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str] | None = None,
    public_key_path: str | os.PathLike[str] | None = None,
) -> VerifyResult:
    """Verifies an export against a checkpoint file and a public key file (64 hex digits
    or PEM), as ``ledger audit verify`` does; unreadable files are failures too."""
    checkpoint = None
    public_key = None
    try:
        if checkpoint_path is not None:
            checkpoint = read_checkpoint(Path(checkpoint_path))
        if public_key_path is not None:
            public_key = read_public_key(Path(public_key_path))
    except (OSError, UnicodeDecodeError, MalformedCheckpoint) as error:
        failure = Failure(FailureKind.MALFORMED, f"cannot use the checkpoint or key file: {error}")
        return VerifyResult(0, None, None, None, False, failure)
    except InvalidPublicKey as error:
        failure = Failure(FailureKind.BAD_SIGNATURE, f"{os.fspath(public_key_path or '')}: {error}")
        return VerifyResult(0, None, None, None, False, failure)
    return verify_export(events_path, checkpoint, public_key)


def verify_chain(
    events: Iterable[tuple[Mapping[str, Any], str]],
    checkpoint: Mapping[str, Any] | None = None,
    public_key_hex: str | None = None,
    *,
    start_hash: bytes = GENESIS,
    start_position: int = 0,
) -> VerifyResult:
    """Verifies canonical events with their claimed chain hashes (lowercase hex), in log
    order, as ``verify_export`` does for a file.

    ``start_hash`` and ``start_position`` continue from a trusted earlier point (e.g. a
    verified checkpoint) instead of the genesis (32 zero bytes before position 0).
    """
    return _run(_chain_entries(events), checkpoint, public_key_hex, start_hash, start_position)


def _run(
    entries: Iterator[_Entry],
    checkpoint: Mapping[str, Any] | None,
    public_key_hex: str | None,
    start_hash: bytes,
    start_position: int,
) -> VerifyResult:
    """Authenticates the checkpoint, then folds the entries from the start."""
    begun = _begin(checkpoint, public_key_hex, start_hash, start_position)
    if isinstance(begun, VerifyResult):
        return begun
    return _verify(entries, *begun)


def _begin(
    checkpoint: Mapping[str, Any] | None,
    public_key_hex: str | None,
    start_hash: bytes,
    start_position: int,
) -> tuple[_Anchor | None, bool, _Progress] | VerifyResult:
    """Authenticates the checkpoint: the anchor still to reach (if any), whether the
    signature was checked and the progress at the start; or the result if it fails."""
    anchor, signature_checked, failure = _authenticate(checkpoint, public_key_hex)
    confirmed = None
    if anchor is not None and anchor.position <= start_position:
        if anchor.position == start_position and anchor.chain_hash == start_hash.hex():
            anchor, confirmed = None, start_position
        else:
            failure = _anchor_before_start(anchor, start_position)
    if failure is not None:
        return VerifyResult(0, None, None, None, signature_checked, failure)
    progress = _Progress(start_hash, start_position, start_position, confirmed=confirmed)
    return anchor, signature_checked, progress


def _anchor_before_start(anchor: _Anchor, start_position: int) -> Failure:
    message = (
        f"the checkpoint at position {anchor.position} does not match the hash the "
        "verification starts from"
        if anchor.position == start_position
        else f"the checkpoint at position {anchor.position} lies before the start "
        f"(position {start_position}), so it cannot be checked here"
    )
    return Failure(FailureKind.CHECKPOINT_MISMATCH, message, None, anchor.position)


def _authenticate(
    checkpoint: Mapping[str, Any] | None, public_key_hex: str | None
) -> tuple[_Anchor | None, bool, Failure | None]:
    """Returns the checkpoint's position and hash, whether its signature was verified,
    and the failure if it cannot be used."""
    if checkpoint is None:
        return None, False, None
    try:
        if public_key_hex is None:
            check_checkpoint(checkpoint)
        else:
            verify_checkpoint(checkpoint, public_key_hex)
    except MalformedCheckpoint as error:
        return None, False, Failure(FailureKind.MALFORMED, f"checkpoint: {error}")
    except (BadSignature, InvalidPublicKey) as error:
        return None, False, Failure(FailureKind.BAD_SIGNATURE, str(error))
    anchor = _Anchor(checkpoint["position"], checkpoint["chain_hash"], checkpoint["key_id"])
    return anchor, public_key_hex is not None, None


def _export_entries(file: IO[bytes], first_line: int = 1) -> Iterator[_Entry]:
    """Yields the entries of export lines (numbered from ``first_line``); raises
    ``_MalformedLine`` at the first bad line."""
    loads = orjson.loads
    dumps = orjson.dumps
    options = CANONICAL_OPTIONS
    sorted_keys = _SORTED_KEYS
    sorted_types = _SORTED_TYPES
    overhead = _CANONICAL_LINE_OVERHEAD
    fast = fast_path_enabled()
    for number, line in enumerate(file, first_line):
        try:
            event = loads(line)
        except orjson.JSONDecodeError as error:
            raise _MalformedLine(number, None, f"not JSON: {error}") from None
        if type(event) is not dict:
            raise _MalformedLine(number, None, "not a JSON object")
        claimed = event.pop("chain_hash", None)
        # Exports are written in key order, so comparing the key sequence and then the
        # type sequence settles the shape at once; any other order gets the full check.
        if (
            tuple(event) != sorted_keys
            or tuple(map(type, event.values())) != sorted_types
            or type(claimed) is not str
        ):
            _check_shape(number, event, claimed)
        # The shape check leaves floats possible only in the payload, and an ASCII line
        # has no keys whose UTF-16 and code point orders differ.
        canonical = None
        if fast:
            try:
                payload = event["payload"]
                if is_float_free(payload) if line.isascii() else parsed_is_plain(payload):
                    canonical = dumps(event, option=options)
            except (orjson.JSONEncodeError, RecursionError):
                pass
        if canonical is None or len(line) - len(canonical) not in overhead:
            canonical = _checked_slowly(number, line, event, canonical)
        yield number, event["position"], canonical, claimed


def _chain_entries(events: Iterable[tuple[Mapping[str, Any], str]]) -> Iterator[_Entry]:
    """Yields the entries of (event, chain hash) pairs; raises ``_MalformedLine`` at the
    first bad pair."""
    for number, (event, claimed) in enumerate(events, 1):
        _check_shape(number, event, claimed)
        try:
            canonical = canonical_bytes(event)
        except CanonicalizationError as error:
            raise _MalformedLine(number, event["position"], f"no JCS form: {error}") from None
        yield number, event["position"], canonical, claimed


def _check_shape(number: int, event: Mapping[str, Any], claimed: object) -> None:
    position = event.get("position") if isinstance(event, Mapping) else None
    known = position if type(position) is int else None
    problem = event_shape_error(event)
    if problem is not None:
        raise _MalformedLine(number, known, problem)
    if not isinstance(claimed, str):
        raise _MalformedLine(number, known, "chain_hash is missing or not a string")


def _checked_slowly(number: int, line: bytes, event: dict[str, Any], fast: bytes | None) -> bytes:
    """Returns the JCS bytes of a line the fast path could not vouch for, after making
    sure the line has no duplicate keys (which parsers resolve differently)."""
    canonical = fast
    if canonical is None:
        try:
            canonical = canonical_bytes(event)
        except CanonicalizationError as error:
            raise _MalformedLine(number, event["position"], f"no JCS form: {error}") from None
    duplicate = _duplicate_key(line)
    if duplicate is not None:
        raise _MalformedLine(number, event["position"], f"duplicate key {duplicate!r}")
    return canonical


def _duplicate_key(line: bytes) -> str | None:
    duplicates: list[str] = []

    def collect(pairs: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                duplicates.append(key)
            seen.add(key)

    try:
        json.loads(line, object_pairs_hook=collect)
    except (ValueError, RecursionError):
        return "(unreadable)"
    return duplicates[0] if duplicates else None


@dataclass
class _Progress:
    """How far a verification has come."""

    chain_hash: bytes
    """The hash of the last verified event (or the hash the verification starts from)."""
    position: int
    """The last verified position (or the start position)."""
    start_position: int
    count: int = 0
    widest: int = 1
    """The widest gap between consecutive verified positions (at least 1)."""
    confirmed: int | None = None
    """The checkpoint's position, once the chain matched it there."""


def _verify(
    entries: Iterator[_Entry],
    anchor: _Anchor | None,
    signature_checked: bool,
    progress: _Progress,
) -> VerifyResult:
    """Folds the entries into the chain from ``progress`` and stops at the first fault."""
    prev = progress.chain_hash
    prev_position = progress.position
    start_position = progress.start_position
    confirmed = progress.confirmed
    watch = _AFTER_ALL if anchor is None or confirmed is not None else anchor.position
    widest = progress.widest
    count = progress.count

    def result(failure: Failure | None) -> VerifyResult:
        started = count > 0 or start_position > 0
        last = prev_position if started else None
        last_hash = prev.hex() if started else None
        return VerifyResult(count, last, last_hash, confirmed, signature_checked, failure)

    try:
        for entry in entries:
            _, position, canonical, claimed = entry
            digest = sha256(prev + canonical).digest()
            if position <= prev_position or digest.hex() != claimed:
                before = _Before(prev, prev_position, count > 0 or start_position > 0, widest)
                return result(_classify(before, entry, digest, entries))
            if position >= watch:
                if anchor is None or position > watch or claimed != anchor.chain_hash:
                    return result(_checkpoint_failure(anchor, entry))
                confirmed = position
                watch = _AFTER_ALL
            widest = max(widest, position - prev_position)
            prev = digest
            prev_position = position
            count += 1
    except _MalformedLine as bad:
        return result(Failure(FailureKind.MALFORMED, bad.reason, bad.line, bad.position))
    if anchor is not None and confirmed is None:
        last = f"the last event is at position {prev_position}" if count else "the input is empty"
        message = (
            f"the input ends before the checkpoint's position {anchor.position} ({last}): "
            "events up to the checkpoint are missing"
        )
        return result(Failure(FailureKind.TRUNCATED, message, count + 1, None))
    return result(None)


def _processes(asked: int | None, size: int) -> int:
    """How many processes check an export of ``size`` bytes."""
    if asked is None:
        if size < PARALLEL_MIN_BYTES:
            return 1
        asked = os.cpu_count() or 1
    return max(1, min(asked, -(-size // CHUNK_BYTES)))


def _run_parallel(
    path: str,
    file: IO[bytes],
    checkpoint: Mapping[str, Any] | None,
    public_key_hex: str | None,
    processes: int,
) -> VerifyResult:
    """``_run`` of the export file at ``path`` (open as ``file``), its chunks checked by
    ``processes`` processes."""
    begun = _begin(checkpoint, public_key_hex, GENESIS, 0)
    if isinstance(begun, VerifyResult):
        return begun
    anchor, signature_checked, progress = begun
    bounds = _chunk_bounds(file, CHUNK_BYTES)
    watch = None if anchor is None else anchor.position
    # Forked workers start at once, with this module loaded; they run nothing but
    # ``_check_chunk``.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(processes, mp_context=context)
    try:
        checks: list[Future[_Chunk | None]] = [
            pool.submit(_check_chunk, path, start, end, watch) for start, end in bounds
        ]
        for (start, _), check in zip(bounds, checks, strict=True):
            try:
                chunk = check.result()
            except Exception:  # a worker that died: the chunk is checked here instead
                chunk = None
            if chunk is None or not _join(progress, chunk, anchor):
                # On from this chunk's first line, as a single pass would go.
                pool.shutdown(wait=False, cancel_futures=True)
                file.seek(start)
                entries = _export_entries(file, progress.count + 1)
                return _verify(entries, anchor, signature_checked, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _verify(iter(()), anchor, signature_checked, progress)


def _chunk_bounds(file: IO[bytes], chunk_bytes: int) -> list[tuple[int, int]]:
    """Splits a file into ranges of about ``chunk_bytes`` that start at line starts."""
    size = os.fstat(file.fileno()).st_size
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < size:
        file.seek(min(start + chunk_bytes, size))
        file.readline()  # to the start of the next line
        end = min(file.tell(), size)
        bounds.append((start, end))
        start = end
    file.seek(0)
    return bounds


@dataclass(frozen=True)
class _Chunk:
    """A chunk of export lines each of which chains from the one before it (bar the
    first, which is for the chunk before to vouch for) in increasing positions."""

    lines: int
    first: tuple[int, bytes, str]
    """The first line's position, JCS bytes and claimed chain hash."""
    last: tuple[int, str]
    """The last line's position and claimed chain hash."""
    widest: int
    """The widest gap between consecutive positions in the chunk (at least 1)."""
    reached: tuple[int, str] | None
    """The first line at or after the watched position: its position and chain hash."""


def _check_chunk(path: str, start: int, end: int, watch: int | None) -> _Chunk | None:
    """Checks the lines in ``[start, end)`` of an export, each against the chain hash
    that the line before it claims; None if one does not chain (or is malformed, or
    the chunk is empty)."""
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    watched = _AFTER_ALL if watch is None else watch
    lines = 0
    first: tuple[int, bytes, str] | None = None
    reached: tuple[int, str] | None = None
    prev = b""
    prev_position = 0
    claimed = ""
    widest = 1
    try:
        for _, position, canonical, claimed in _export_entries(io.BytesIO(data)):
            if first is None:
                first = (position, canonical, claimed)
            elif position <= prev_position or sha256(prev + canonical).hexdigest() != claimed:
                return None
            else:
                widest = max(widest, position - prev_position)
            if position >= watched and reached is None:
                reached = (position, claimed)
            prev = bytes.fromhex(claimed)
            prev_position = position
            lines += 1
    except (_MalformedLine, ValueError):
        return None
    if first is None:
        return None
    return _Chunk(lines, first, (prev_position, claimed), widest, reached)


def _join(progress: _Progress, chunk: _Chunk, anchor: _Anchor | None) -> bool:
    """Joins a chunk to the verified lines before it; False (and ``progress`` as it
    was) if its first line does not chain from them or the checkpoint disagrees."""
    position, canonical, claimed = chunk.first
    if position <= progress.position:
        return False
    if sha256(progress.chain_hash + canonical).hexdigest() != claimed:
        return False
    confirmed = progress.confirmed
    if anchor is not None and confirmed is None and chunk.reached is not None:
        reached_position, reached_hash = chunk.reached
        if reached_position > anchor.position or reached_hash != anchor.chain_hash:
            return False
        confirmed = reached_position
    progress.widest = max(progress.widest, position - progress.position, chunk.widest)
    progress.chain_hash = bytes.fromhex(chunk.last[1])
    progress.position = chunk.last[0]
    progress.count += chunk.lines
    progress.confirmed = confirmed
    return True


def _checkpoint_failure(anchor: _Anchor | None, entry: _Entry) -> Failure:
    line, position, _, claimed = entry
    assert anchor is not None  # for mypy: only reached when a checkpoint is watched
    if position > anchor.position:
        message = (
            f"the checkpoint's position {anchor.position} is not in the input: it goes from "
            f"a lower position straight to {position}"
        )
        return Failure(FailureKind.CHECKPOINT_MISMATCH, message, line, position)
    message = (
        f"the recomputed chain hash at position {position} is {claimed}, but checkpoint "
        f"(key {anchor.key_id}) signed {anchor.chain_hash}: the input's chain is "
        "self-consistent, so events up to here were rewritten with recomputed hashes, or "
        "the checkpoint belongs to another ledger"
    )
    return Failure(FailureKind.CHECKPOINT_MISMATCH, message, line, position)


def _follows(prev: bytes, entry: _Entry) -> bool:
    """Whether ``entry``'s claimed hash is the chain hash of its event after ``prev``."""
    return sha256(prev + entry[2]).hexdigest() == entry[3]


def _lookahead(entries: Iterator[_Entry]) -> tuple[_Entry | None, str]:
    """Returns the next entry, or None and why there is none."""
    try:
        return next(entries), ""
    except StopIteration:
        return None, "it is the last line"
    except _MalformedLine:
        return None, "the line after it is malformed"


@dataclass(frozen=True)
class _Before:
    """What verification knows just before the first faulty entry."""

    chain_hash: bytes
    position: int
    """The last verified position, or 0 (or the start position) before any."""
    started: bool
    """Whether any event (or a start position) precedes the faulty entry."""
    widest: int
    """The widest gap between consecutive verified positions (at least 1)."""


def _classify(
    before: _Before, entry: _Entry, recomputed: bytes, entries: Iterator[_Entry]
) -> Failure:
    """Names the fault at the first entry whose hash or position disagrees, from the two
    entries after it at most."""
    line, position, _, claimed = entry
    here = f"the event at position {position} (line {line})"
    if not _CHAIN_HASH.fullmatch(claimed):
        return Failure(
            FailureKind.MALFORMED, "chain_hash must be 64 lowercase hex digits", line, position
        )
    if position < 1:
        return Failure(FailureKind.MALFORMED, "positions are positive integers", line, position)
    previous = f"position {before.position}" if before.started else "the start of the log"
    if recomputed.hex() == claimed:
        message = (
            f"{here} chains from the line before, but its position does not follow "
            f"{previous}: the events were hashed out of order"
        )
        return Failure(FailureKind.REORDERED, message, line, position)

    gap = position - before.position
    between = (
        f"between positions {before.position} and {position}"
        if before.started
        else f"before position {position}"
    )
    # A deleted event leaves room for itself. Logs have gaps of their own (positions of
    # rolled-back writes and of markers outside the business log), so a deletion is the
    # likelier story only where the gap is wider than every gap before it.
    room = gap > 1
    wider = gap > before.widest
    deletion = f"an event {between} was deleted"
    if wider:
        spacing = f"a gap of {gap}, wider than any before it"
    else:
        spacing = f"positions before it are up to {before.widest} apart"
    following, why_none = _lookahead(entries)

    if following is None:
        if position <= before.position:
            message = (
                f"{here} does not chain from the line before and its position does not "
                f"follow {previous}: a line was appended"
            )
            return Failure(FailureKind.INSERTED, message, line, position)
        causes = "its content or chain_hash was changed, or it was appended"
        if room:
            causes = f"{deletion} ({spacing}), or {causes}" if wider else f"{causes}, or {deletion}"
        message = (
            f"{here} does not chain from the line before: {causes}; "
            f"{why_none}, so the export cannot tell which"
        )
        kind = FailureKind.DELETED if wider else FailureKind.CHANGED
        return Failure(kind, message, line, position)

    if _follows(before.chain_hash, following):
        following_hash = bytes.fromhex(following[3])
        after, _ = _lookahead(entries)
        next_continues = after is not None and _follows(following_hash, after)
        if not next_continues and following[1] < position and _follows(following_hash, entry):
            message = (
                f"{here} and the event at position {following[1]} (line {following[0]}) are swapped"
            )
            return Failure(FailureKind.REORDERED, message, line, position)
        repeats = " (it repeats an earlier position)" if position <= before.position else ""
        message = (
            f"line {line} (position {position}) does not belong to the chain{repeats}: "
            "the next line chains directly from the line before it"
        )
        return Failure(FailureKind.INSERTED, message, line, position)

    if _follows(recomputed, following):
        message = (
            f"the chain_hash of {here} was changed: its content chains from the line "
            "before, and the next line chains from its recomputed hash"
        )
        return Failure(FailureKind.CHANGED, message, line, position)

    if _follows(bytes.fromhex(claimed), following):
        if wider:
            message = (
                f"the chain breaks at {here}, but the lines after it chain from it: "
                f"{deletion} ({spacing}), or this event's content was changed; the export "
                "alone cannot tell which"
            )
            return Failure(FailureKind.DELETED, message, line, position)
        if not room:
            reason = (
                f"its position does not follow {previous}"
                if position <= before.position
                else f"no event can be missing {between}"
            )
        else:
            reason = (
                f"unless {deletion} ({spacing}, so the gap alone does not show a deletion); "
                "the export alone cannot tell which"
            )
        message = (
            f"the content of {here} was changed: it does not match its chain_hash, the "
            f"lines after it chain from that hash, and {reason}"
        )
        return Failure(FailureKind.CHANGED, message, line, position)

    message = (
        f"{here} does not match its chain_hash, and the next line does not chain from it "
        "either: several lines around it were changed, inserted or deleted"
    )
    return Failure(FailureKind.CHANGED, message, line, position)
