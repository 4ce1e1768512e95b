"""The ``verify`` benchmark: offline verification of a synthetic export against SHA-256
over the same bytes, measured in one run.

``python -m ledger.audit.bench --events 200000`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import rfc8785

from ledger.audit.canonical import format_time
from ledger.audit.chain import GENESIS, ChainBuilder, export_lines, next_hash
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint
from ledger.audit.verify import verify_export

TARGET_EVENTS_PER_S = 200_000

_EPOCH = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
_TITLES = ("上海港集装箱吞吐量日报", "Daily container throughput, Port of Shanghai", "城市交通流量")


def synthetic_events(
    count: int, seed: int = 0, first_position: int = 1
) -> Iterator[dict[str, Any]]:
    """Yields ``count`` canonical events shaped like a market's log (about 600 bytes each),
    with contiguous positions; the same seed gives the same events."""
    rng = random.Random(seed)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    exchanges = [uid() for _ in range(8)]
    participants = [uid() for _ in range(200)]
    listings = [uid() for _ in range(100)]
    for offset in range(count):
        position = first_position + offset
        recorded = _EPOCH + timedelta(milliseconds=37 * offset, microseconds=rng.randrange(1000))
        effective = recorded - timedelta(seconds=rng.randrange(120))
        exchange = rng.choice(exchanges)
        draw = rng.random()
        if draw < 0.4:
            aggregate_type, kind = "Grant", "AccessUsed"
            payload: dict[str, Any] = {
                "grant_id": uid(),
                "exchange_id": exchange,
                "mode": rng.choice(["API", "DOWNLOAD", "SANDBOX"]),
                "scenario": rng.choice(["RESEARCH", "CREDIT_SCORING", "LOGISTICS"]),
                "used_at": format_time(effective),
                "units": rng.randrange(1, 10_000),
                "delivery_ref": f"dlv-{rng.getrandbits(48):012x}",
            }
        elif draw < 0.6:
            aggregate_type, kind = "Trade", "SaleRecorded"
            payload = {
                "listing_id": rng.choice(listings),
                "exchange_id": exchange,
                "seller_id": rng.choice(participants),
                "buyer_id": rng.choice(participants),
                "kind": rng.choice(["TRANSFER", "LICENSE"]),
                "rights": sorted(rng.sample(["ACCESS", "RESALE", "DERIVE", "SUBLICENSE"], 2)),
                "price": {"currency": "CNY", "amount_minor": rng.randrange(1, 10**9)},
            }
        elif draw < 0.8:
            aggregate_type, kind = "Grant", "AccessGranted"
            payload = {
                "listing_id": rng.choice(listings),
                "grantee_id": rng.choice(participants),
                "exchange_id": exchange,
                "modes": sorted(rng.sample(["API", "DOWNLOAD", "SANDBOX"], 2)),
                "valid_from": format_time(effective),
                "valid_until": format_time(effective + timedelta(days=365)),
                "usage_limit": rng.randrange(100, 100_000),
            }
        elif draw < 0.9:
            aggregate_type, kind = "Trade", "TradeSettled"
            payload = {
                "settled_at": format_time(effective),
                "settlement_ref": f"stl-{rng.getrandbits(64):016x}",
                "amount": {"currency": "CNY", "amount_minor": rng.randrange(1, 10**9)},
                "note": "",
            }
        elif draw < 0.95:
            aggregate_type, kind = "Listing", "ListingSubmitted"
            payload = {
                "exchange_id": exchange,
                "owner_id": rng.choice(participants),
                "title": rng.choice(_TITLES),
                "category": rng.choice(["GENERAL", "IMPORTANT"]),
                "tags": sorted(rng.sample(["transport", "port", "daily", "city", "trade"], 3)),
                "terms": {"territory": "CN", "duration_days": 365, "exclusive": False},
            }
        else:
            aggregate_type, kind = "Participant", "CertificationIssued"
            payload = {
                "certification_id": uid(),
                "covers": ["GENERAL", "IMPORTANT"],
                "issuer": "registry-cn-01",
                "valid_until": format_time(effective + timedelta(days=730)),
                "reference": None,
            }
        aggregate_id = uid()
        yield {
            "position": position,
            "aggregate_id": aggregate_id,
            "aggregate_type": aggregate_type,
            "version": rng.randrange(1, 40),
            "type": kind,
            "recorded_at": format_time(recorded),
            "effective_at": format_time(effective),
            "actor": f"exchange-{exchanges.index(exchange):02d}",
            "role": "exchange",
            "request_id": uid(),
            "payload": payload,
        }


def write_synthetic_export(path: Path, count: int, seed: int = 0) -> tuple[int, str]:
    """Writes an export of ``count`` synthetic events; returns the last position and hash."""
    builder = ChainBuilder()
    with path.open("wb", buffering=1 << 20) as file:
        file.writelines(export_lines(synthetic_events(count, seed), builder))
    return builder.position or 0, builder.head.hex()


def run_verify_benchmark(events: int = 200_000, directory: Path | None = None) -> dict[str, Any]:
    """Builds an export of ``events`` synthetic events in a temporary file and returns the
    events/s of ``verify_export`` (with a signed checkpoint at the end), of SHA-256 over
    the same bytes, and of the pure-Python ``rfc8785`` path on a sample."""
    signer = Ed25519Signer.generate()
    with tempfile.TemporaryDirectory(dir=directory) as temporary:
        path = Path(temporary) / "export.jsonl"
        position, head = write_synthetic_export(path, events)
        size = path.stat().st_size
        checkpoint = sign_checkpoint(signer, "bench", position, head, datetime.now(UTC))

        started = time.perf_counter()
        digest = sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        sha256_s = time.perf_counter() - started

        started = time.perf_counter()
        result = verify_export(path, checkpoint, signer.public_key_hex)
        verify_s = time.perf_counter() - started
        if not result.ok or result.count != events:
            raise RuntimeError(f"the benchmark export did not verify: {result.describe()}")

        sample = min(events, 20_000)
        with path.open("rb") as file:
            lines = [orjson.loads(line) for line in islice(file, sample)]
        started = time.perf_counter()
        prev = GENESIS
        for event in lines:
            event.pop("chain_hash")
            prev = next_hash(prev, rfc8785.dumps(event))
        reference_s = time.perf_counter() - started

    verify_rate = events / verify_s
    sha256_rate = events / sha256_s
    return {
        "scenario": "verify",
        "events": events,
        "bytes": size,
        "mean_event_bytes": round(size / events, 1),
        "verify_s": round(verify_s, 3),
        "verify_events_per_s": round(verify_rate),
        "sha256_s": round(sha256_s, 3),
        "sha256_events_per_s": round(sha256_rate),
        "ratio_to_sha256": round(verify_rate / sha256_rate, 4),
        "rfc8785_events_per_s": round(sample / reference_s),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": verify_rate >= TARGET_EVENTS_PER_S,
    }


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark from the command line and prints its JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary export")
    arguments = parser.parse_args(argv)
    print(orjson.dumps(run_verify_benchmark(arguments.events, arguments.dir)).decode())


if __name__ == "__main__":
    main()
