"""The worked example of ``docs/auditing.md``: the first events of a small ledger, their
canonical bytes and chain hashes, an export and a signed checkpoint, all computed.

Everything is fixed (clock, request ids, names, and a demonstration signing key), so the
values are the same on every run; ``python -m ledger.audit.example`` prints them, and
a test checks that the page still shows exactly these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.application import commands as c
from ledger.application.app import Actor
from ledger.application.events import CanonicalEvent, EventLog
from ledger.audit.canonical import canonical_bytes
from ledger.audit.chain import GENESIS, export_line
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint, signed_message
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.settings import Settings

START = datetime(2026, 11, 24, 8, 0, 0, 123456, tzinfo=UTC)
REGISTRY = Actor("registry-01", "registry")
REQUEST_IDS = ("0b5e3c1a-6f2d-4e8b-9a7c-1d2e3f4a5b6c", "5d9f2a7e-3b1c-4d6e-8f0a-2b3c4d5e6f7a")
LEDGER_ID = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
# A demonstration key (its private half is this public seed): never a ledger's real key.
DEMO_SEED = bytes(range(32))


@dataclass(frozen=True)
class Step:
    """One event of the example and its place in the chain."""

    event: CanonicalEvent
    canonical: bytes
    previous: bytes
    chain_hash: bytes


@dataclass(frozen=True)
class Example:
    steps: list[Step]
    export: bytes
    checkpoint: bytes
    signed: bytes
    public_key: str


def build() -> Example:
    """Writes the example ledger in memory and computes everything the page shows."""
    clock = FakeClock(START)
    app = build_application(Settings(database_url="memory:"), clock)
    exchange = app.execute(
        c.RegisterParticipant(
            request_id=REQUEST_IDS[0],
            name="上海数据交易所",
            roles=("EXCHANGE",),
            uscc="91310000MA1FL4CT3U",
        ),
        REGISTRY,
    )
    clock.advance(timedelta(seconds=2, microseconds=500))
    app.execute(
        c.IssueCertification(
            request_id=REQUEST_IDS[1],
            participant_id=str(exchange.resource.id),
            level="CORE",
            categories=("MEDICAL", "FINANCIAL"),
            max_classification="IMPORTANT",
            valid_from=None,
            valid_until=START + timedelta(days=365),
            reference="CERT-2026-0001",
        ),
        REGISTRY,
    )
    events, _ = EventLog(app.recorder).read(0, 100)
    steps, previous, lines = [], GENESIS, []
    for event in events[:2]:
        canonical = canonical_bytes(event)
        chain_hash = sha256(previous + canonical).digest()
        steps.append(Step(event, canonical, previous, chain_hash))
        lines.append(export_line(event, chain_hash.hex()))
        previous = chain_hash
    signer = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(DEMO_SEED))
    last = steps[-1]
    checkpoint = sign_checkpoint(
        signer, LEDGER_ID, last.event["position"], last.chain_hash.hex(), START + timedelta(hours=1)
    )
    signed = signed_message(
        LEDGER_ID, last.event["position"], last.chain_hash.hex(), checkpoint["signed_at"]
    )
    return Example(
        steps,
        b"".join(lines),
        canonical_bytes(checkpoint) + b"\n",
        signed,
        signer.public_key_hex,
    )


def main() -> int:
    example = build()
    for number, step in enumerate(example.steps, 1):
        print(f"event {number} (position {step.event['position']})")
        print("JCS:", step.canonical.decode())
        print("previous:", step.previous.hex())
        print("chain_hash:", step.chain_hash.hex())
    print("export:")
    print(example.export.decode(), end="")
    print("checkpoint:", example.checkpoint.decode(), end="")
    print("signed:", example.signed.decode())
    print("public key:", example.public_key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
