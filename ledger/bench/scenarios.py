"""The benchmark scenarios of ``quality.md``, each with its baseline in the same run."""

from __future__ import annotations

import hashlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ledger.application.events import EventLog
from ledger.audit.chain import ChainBuilder, export_line
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint
from ledger.audit.verify import verify_export
from ledger.bench.runner import Options, Result
from ledger.bench.stores import load, temporary_store
from ledger.bootstrap import build_projections
from ledger.projections.engine import ProjectionManager
from ledger.projections.parallel import catch_up

SCAN_BATCH = 10_000


def _scan_decode(app_recorder: object, head: int) -> tuple[int, float]:
    """The baseline of reads: every stored event fetched and its JSON decoded, no more."""
    started = time.perf_counter()
    position, count = 0, 0
    select = app_recorder.select_notifications  # type: ignore[attr-defined]
    while position < head:
        notifications = select(position + 1, SCAN_BATCH)
        if not notifications:
            break
        for notification in notifications:
            orjson.loads(notification.state)
        count += len(notifications)
        position = notifications[-1].id
    return count, time.perf_counter() - started


def _catch_up_one(manager: ProjectionManager, name: str) -> float:
    started = time.perf_counter()
    while True:
        advanced = 0
        for gen in manager.generations(name):
            if gen.state not in ("FAILED", "RETIRED"):
                advanced += manager.step(gen)
        if not advanced:
            return time.perf_counter() - started


def rebuild(options: Options) -> Result:
    """Builds every projection from the whole log at once, as the engine catches up a
    new store (in a process per core, see ``ledger.projections.parallel``), next to a raw
    scan+decode of it; then rebuilds each one alone."""
    backend = options.backend
    with temporary_store(backend, options.postgres_url) as settings:
        app = load(settings, options.events, options.seed, options.progress)
        head = EventLog(app.recorder).head()
        scanned, scan_s = _scan_decode(app.recorder, head)
        manager = build_projections(settings, app)
        started = time.perf_counter()
        catch_up(settings, manager, timeout_s=options.catch_up_timeout_s)
        together_s = time.perf_counter() - started
        per_projection = {}
        for name in manager.projections:
            manager.rebuild(name)
            per_projection[name] = _catch_up_one(manager, name)
        failed = [s.name for s in manager.status() if s.state == "FAILED"]
        manager.db.close()
        app.close()
    rate = head / together_s
    baseline = scanned / scan_s
    ratio = rate / baseline
    return Result(
        "rebuild",
        backend,
        head,
        rate,
        "events/s",
        "raw scan+decode of the log",
        baseline,
        ratio,
        ">= 50,000 events/s and >= 0.3x baseline",
        rate >= 50_000 and ratio >= 0.3 and not failed,
        {
            "alone": {k: round(head / v) for k, v in per_projection.items()},
            "one_after_another": round(head / sum(per_projection.values())),
            "failed": failed,
        },
    )


def verify(options: Options) -> Result:
    """Verifies an export of the store offline, next to SHA-256 over the same bytes."""
    backend = options.backend
    with (
        temporary_store(backend, options.postgres_url) as settings,
        tempfile.TemporaryDirectory() as directory,
    ):
        app = load(settings, options.events, options.seed, options.progress)
        log = EventLog(app.recorder)
        path = Path(directory) / "export.jsonl"
        builder = ChainBuilder()
        count, position = 0, 0
        with path.open("wb", buffering=1 << 20) as out:
            while True:
                batch, last = log.read(position, SCAN_BATCH)
                if last == position:
                    break
                for event in batch:
                    out.write(export_line(event, builder.append(event)))
                count += len(batch)
                position = last
        app.close()
        signer = Ed25519Signer.generate()
        checkpoint = sign_checkpoint(
            signer, "bench", builder.position or 0, builder.head.hex(), datetime.now(tz=UTC)
        )
        started = time.perf_counter()
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        sha_s = time.perf_counter() - started
        started = time.perf_counter()
        result = verify_export(path, checkpoint, signer.public_key_hex)
        verify_s = time.perf_counter() - started
        size = path.stat().st_size
    rate = count / verify_s
    baseline = count / sha_s
    return Result(
        "verify",
        backend,
        count,
        rate,
        "events/s",
        "SHA-256 over the same bytes",
        baseline,
        rate / baseline,
        ">= 200,000 events/s",
        rate >= 200_000 and result.ok,
        {"verified": result.ok, "bytes": size},
    )
