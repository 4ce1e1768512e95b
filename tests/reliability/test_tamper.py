"""Tampering with the stored events, the export or a checkpoint is detected, at the exact
first affected position, in every trial.

Each trial starts from a fresh copy of a small store (its events hashed by the chain
projection and covered by signed checkpoints), tampers with the events table directly,
as someone with write access to the database would, and runs ``ledger audit verify
--database``. The expected position is worked out independently: the first position
whose canonical event (by ``canonical_event``, the reference decoder) differs from the
original log, or is no longer there, or is new.

An edit that leaves the canonical event unchanged (a byte of the storage-only
``originator_topic``, or of the envelope's type tags, which decoding ignores) alters no
audited fact; such draws are redrawn and counted.
"""

from __future__ import annotations

import contextlib
import io
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from eventsourcing.persistence import Notification
from psycopg.sql import SQL, Identifier

from ledger.application import commands as c
from ledger.application.events import SKIPPED_TOPICS, CanonicalEvent, canonical_event
from ledger.application.identity import ensure_ledger_id
from ledger.audit.canonical import canonical_bytes
from ledger.audit.checkpoint import Ed25519Signer
from ledger.audit.checkpoints import Checkpointer, CheckpointStore
from ledger.audit.export import export_from_store
from ledger.audit.replay import ReplayQuery
from ledger.audit.stored import audit_reader
from ledger.bootstrap import build_application, build_projections
from ledger.cli import main
from ledger.clock import FakeClock
from ledger.settings import Settings
from tests.market import new_market, rid

TRIALS = 30
SEED = 20261124
KINDS = ("edit", "delete", "insert", "swap")

Row = tuple[int, str, int, str, bytes]


class Table(Protocol):
    """The events table of one store, as someone with database access sees it."""

    url: str

    def rows(self) -> list[Row]: ...
    def set_state(self, position: int, state: bytes) -> None: ...
    def delete(self, position: int) -> None: ...
    def insert(self, row: Row) -> None: ...
    def set_signature(self, position: int, signature: str) -> None: ...


class SqliteTable:
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self._path = path

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self._path)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def rows(self) -> list[Row]:
        with self._connection() as db:
            return db.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events ORDER BY rowid"
            ).fetchall()

    def set_state(self, position: int, state: bytes) -> None:
        with self._connection() as db:
            db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state, position))

    def delete(self, position: int) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM stored_events WHERE rowid = ?", (position,))

    def insert(self, row: Row) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO stored_events (rowid, originator_id, originator_version, topic, "
                "state) VALUES (?, ?, ?, ?, ?)",
                row,
            )

    def set_signature(self, position: int, signature: str) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE audit_checkpoints SET signature = ? WHERE position = ?",
                (signature, position),
            )


class PostgresTable:
    def __init__(self, server_url: str, schema: str, db: psycopg.Connection[Any]) -> None:
        self.url = f"{server_url}?schema={schema}"
        self._schema = schema
        self._db = db

    def _run(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        query = SQL(statement).format(events=Identifier(self._schema, "marketledger_events"))
        cursor = self._db.execute(query, params)
        return cursor.fetchall() if cursor.description else []

    def rows(self) -> list[Row]:
        found = self._run(
            "SELECT notification_id, replace(originator_id::text, '-', ''), "
            "originator_version, topic, state FROM {events} ORDER BY notification_id"
        )
        return [(p, o, v, t, bytes(s)) for p, o, v, t, s in found]

    def set_state(self, position: int, state: bytes) -> None:
        self._run("UPDATE {events} SET state = %s WHERE notification_id = %s", (state, position))

    def delete(self, position: int) -> None:
        self._run("DELETE FROM {events} WHERE notification_id = %s", (position,))

    def insert(self, row: Row) -> None:
        position, originator_id, version, topic, state = row
        self._run(
            "INSERT INTO {events} (notification_id, originator_id, originator_version, topic, "
            "state) VALUES (%s, %s, %s, %s, %s)",
            (position, uuid.UUID(originator_id), version, topic, state),
        )

    def set_signature(self, position: int, signature: str) -> None:
        statement = SQL("UPDATE {} SET signature = %s WHERE position = %s").format(
            Identifier(self._schema, "audit_checkpoints")
        )
        self._db.execute(statement, (signature, position))


@dataclass(frozen=True)
class Template:
    """A small store, hashed and checkpointed, to copy for each trial."""

    make_copy: Callable[[], Table]
    public_key: Path
    checkpoints: list[dict[str, Any]]


def build_template(settings: Settings, public_key: Path) -> list[dict[str, Any]]:
    """Writes a small market, hashes it, and signs checkpoints along it."""
    clock = FakeClock()
    app = build_application(settings, clock)
    market = new_market(app, clock)
    manager = build_projections(settings, app)
    signer = Ed25519Signer.generate()
    public_key.write_text(signer.public_key_hex + "\n")
    store = CheckpointStore(manager.db)
    ledger_id = ensure_ledger_id(app)
    checkpointer = Checkpointer(store, manager.db, signer, lambda: ledger_id, clock, 12, 3600)
    for _ in range(3):
        _, trade_id, grant_id = market.granted()
        market.run(
            c.RecordAccessUse(
                request_id=rid(),
                grant_id=grant_id,
                delivery_mode="API",
                scenario="credit-risk-scoring",
                units=4,
            )
        )
        market.run(c.SettleTrade(request_id=rid(), trade_id=trade_id, settlement_ref="PAY-7"))
        manager.catch_up()
        checkpointer.run_once()
    checkpointer.run_once(force=True)
    checkpoints = store.all()
    manager.db.close()
    app.close()
    return checkpoints


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    directory = tmp_path_factory.mktemp("tamper-sqlite")
    original = directory / "template.db"
    checkpoints = build_template(
        Settings(database_url=f"sqlite:///{original}"), directory / "public.key"
    )
    copies = iter(range(10_000))

    def make_copy() -> Table:
        path = directory / f"trial-{next(copies)}.db"
        with (
            contextlib.closing(sqlite3.connect(original)) as source,
            contextlib.closing(sqlite3.connect(path)) as target,
        ):
            source.backup(target)
        return SqliteTable(path)

    return Template(make_copy, directory / "public.key", checkpoints)


@pytest.fixture(scope="module")
def postgres_template(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    directory = tmp_path_factory.mktemp("tamper-postgres")
    prefix = f"tamper_{uuid.uuid4().hex[:8]}"
    original = f"{prefix}_template"
    checkpoints = build_template(
        Settings(database_url=f"{postgres_url}?schema={original}"), directory / "public.key"
    )
    db = psycopg.connect(postgres_url, autocommit=True)
    tables = [
        name
        for (name,) in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (original,)
        ).fetchall()
    ]
    copies = iter(range(10_000))
    schemas = [original]

    def make_copy() -> Table:
        schema = f"{prefix}_{next(copies)}"
        schemas.append(schema)
        with db.transaction():
            db.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
            for table in tables:
                copy, source = Identifier(schema, table), Identifier(original, table)
                db.execute(SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(copy, source))
                db.execute(SQL("INSERT INTO {} SELECT * FROM {}").format(copy, source))
        return PostgresTable(postgres_url, schema, db)

    try:
        yield Template(make_copy, directory / "public.key", checkpoints)
    finally:
        for schema in schemas:
            db.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
        db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def template(request: pytest.FixtureRequest) -> Template:
    name = "sqlite_template" if request.param == "sqlite" else "postgres_template"
    chosen: Template = request.getfixturevalue(name)
    return chosen


# --- the reference: what changed, independently of the code under test ------------------


def canonical_log(rows: list[Row]) -> dict[int, CanonicalEvent | None]:
    """Each business position's canonical event (None where it has none any more)."""
    log: dict[int, CanonicalEvent | None] = {}
    for position, originator_id, version, topic, state in rows:
        if topic in SKIPPED_TOPICS:
            continue
        try:
            notification = Notification(
                id=position,
                originator_id=uuid.UUID(originator_id),
                originator_version=version,
                topic=topic,
                state=state,
            )
            log[position] = canonical_event(notification)
        except (ValueError, KeyError, TypeError, AttributeError):
            log[position] = None
    return log


def first_difference(before: Mapping[int, Any], after: Mapping[int, Any]) -> tuple[int, str]:
    """The first position where two logs differ, and how."""
    for position in sorted(set(before) | set(after)):
        if position not in after:
            return position, "deleted"
        if position not in before:
            return position, "inserted"
        if after[position] is None:
            return position, "undecodable"
        if before[position] != after[position]:
            return position, "changed"
    raise AssertionError("the logs do not differ")


def verify_database(table: Table, public_key: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(
            [
                *("audit", "verify", "--database", "--database-url", table.url),
                *("--public-key", str(public_key)),
            ]
        )
    return code, out.getvalue()


# --- the tampering ---------------------------------------------------------------------


def business(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row[3] not in SKIPPED_TOPICS]


def edit(table: Table, rows: list[Row], rng: random.Random, redraws: list[int]) -> None:
    """Replaces one byte of one stored event's state with another printable byte."""
    original = canonical_log(rows)
    while True:
        position, originator_id, version, topic, state = rng.choice(business(rows))
        index = rng.randrange(len(state))
        byte = rng.choice([b for b in range(0x20, 0x7F) if b != state[index]])
        edited = state[:index] + bytes([byte]) + state[index + 1 :]
        changed = canonical_log([(position, originator_id, version, topic, edited)])
        if changed[position] != original[position]:
            table.set_state(position, edited)
            return
        redraws.append(position)


def delete(table: Table, rows: list[Row], rng: random.Random, redraws: list[int]) -> None:
    table.delete(rng.choice(business(rows))[0])


def insert(table: Table, rows: list[Row], rng: random.Random, redraws: list[int]) -> None:
    """Puts a forged business event at a position no business event holds: where a
    marker was (a fresh store has no free positions below its head)."""
    markers = [row for row in rows if row[3] in SKIPPED_TOPICS and row[0] > 1]
    position = rng.choice(markers)[0]
    _, _, _, topic, state = rng.choice(business(rows))
    table.delete(position)
    table.insert((position, uuid.uuid4().hex, 1, topic, state))


def swap(table: Table, rows: list[Row], rng: random.Random, redraws: list[int]) -> None:
    """Exchanges the states of two stored events whose canonical events would change."""
    original = canonical_log(rows)
    while True:
        first, second = sorted(rng.sample(business(rows), 2))
        swapped = [(*first[:4], second[4]), (*second[:4], first[4])]
        after = canonical_log(swapped)
        if any(after[row[0]] != original[row[0]] for row in swapped):
            table.set_state(first[0], second[4])
            table.set_state(second[0], first[4])
            return
        redraws.append(first[0])


TAMPER = {"edit": edit, "delete": delete, "insert": insert, "swap": swap}


@pytest.mark.parametrize("kind", KINDS)
def test_tampering_with_stored_events_is_found_at_the_first_affected_position(
    template: Template, kind: str
) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    redraws: list[int] = []
    reported_kinds: set[str] = set()
    clean = template.make_copy()
    assert verify_database(clean, template.public_key)[0] == 0
    for trial in range(TRIALS):
        table = template.make_copy()
        before = table.rows()
        TAMPER[kind](table, before, rng, redraws)
        position, how = first_difference(canonical_log(before), canonical_log(table.rows()))
        code, output = verify_database(table, template.public_key)
        assert code == 1, f"trial {trial}: {kind} at {position} not detected:\n{output}"
        assert f"FAILED at position {position} ({how})" in output, f"trial {trial}: {output}"
        reported_kinds.add(how)
    expected = {
        "edit": {"changed", "undecodable"},
        "delete": {"deleted"},
        "insert": {"inserted"},
        "swap": {"changed", "undecodable"},
    }[kind]
    assert reported_kinds <= expected
    # Edits that alter no audited fact are redrawn; they must stay the exception.
    assert len(redraws) < TRIALS, redraws


def test_a_forged_checkpoint_signature_in_the_store_is_found(template: Template) -> None:
    table = template.make_copy()
    checkpoint = template.checkpoints[len(template.checkpoints) // 2]
    signature = checkpoint["signature"]
    forged = ("0" if signature[0] != "0" else "1") + signature[1:]
    table.set_signature(checkpoint["position"], forged)
    code, output = verify_database(table, template.public_key)
    assert code == 1
    assert f"FAILED checkpoint at position {checkpoint['position']}" in output
    assert "FAILED at position" not in output, "the events themselves are intact"


# --- the export and the checkpoint file ------------------------------------------------


def verify_files(events: Path, checkpoint: Path, public_key: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(
            [
                *("audit", "verify", "--events", str(events)),
                *("--checkpoint", str(checkpoint), "--public-key", str(public_key)),
            ]
        )
    return code, out.getvalue()


@pytest.fixture
def export(sqlite_template: Template, tmp_path: Path) -> tuple[Path, Path]:
    """An export of the template store and its latest checkpoint file."""
    table = sqlite_template.make_copy()
    settings = Settings(database_url=table.url)
    app = build_application(settings)
    manager = build_projections(settings, app)
    events = tmp_path / "export.jsonl"
    with events.open("wb") as out:
        export_from_store(audit_reader(app.recorder, manager.db), ReplayQuery(), out)
    manager.db.close()
    app.close()
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_bytes(canonical_bytes(sqlite_template.checkpoints[-1]) + b"\n")
    return events, checkpoint


def test_an_untouched_export_verifies(sqlite_template: Template, export: tuple[Path, Path]) -> None:
    code, output = verify_files(*export, sqlite_template.public_key)
    assert code == 0, output
    assert output.startswith("OK: ")


def test_one_changed_byte_of_a_payload_in_the_export_is_found_at_its_position(
    sqlite_template: Template, export: tuple[Path, Path], tmp_path: Path
) -> None:
    events, checkpoint = export
    lines = events.read_bytes().splitlines(keepends=True)
    rng = random.Random(f"{SEED}-export")
    for trial in range(TRIALS):
        number = rng.randrange(len(lines))
        line = lines[number]
        start = line.index(b'"payload":') + len(b'"payload":')
        end = line.index(b',"position":')
        index = rng.randrange(start, end)
        byte = rng.choice([b for b in range(0x20, 0x7F) if b != line[index]])
        tampered = tmp_path / f"tampered-{trial}.jsonl"
        edited = line[:index] + bytes([byte]) + line[index + 1 :]
        tampered.write_bytes(b"".join([*lines[:number], edited, *lines[number + 1 :]]))
        code, output = verify_files(tampered, checkpoint, sqlite_template.public_key)
        position = int(line.split(b',"position":')[1].split(b",")[0])
        assert code == 1, f"trial {trial}: not detected"
        assert f"line {number + 1}, position {position}" in output or (
            f"line {number + 1}" in output and "malformed" in output
        ), f"trial {trial}: {output}"


def test_a_forged_checkpoint_file_is_refused(
    sqlite_template: Template, export: tuple[Path, Path], tmp_path: Path
) -> None:
    events, checkpoint = export
    original = checkpoint.read_bytes()
    forged_signature = tmp_path / "forged-signature.json"
    signature = sqlite_template.checkpoints[-1]["signature"]
    forged_signature.write_bytes(original.replace(signature.encode(), signature[::-1].encode()))
    code, output = verify_files(events, forged_signature, sqlite_template.public_key)
    assert code == 1
    assert "bad_signature" in output

    other_key = tmp_path / "other.key"
    other_key.write_text(Ed25519Signer.generate().public_key_hex)
    code, output = verify_files(events, checkpoint, other_key)
    assert code == 1
    assert "bad_signature" in output
