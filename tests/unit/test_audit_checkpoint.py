"""Signed checkpoints and the key files behind them."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.audit.checkpoint import (
    CHECKPOINT_KEYS,
    BadSignature,
    Ed25519Signer,
    InvalidPublicKey,
    KeyFileError,
    MalformedCheckpoint,
    Signer,
    generate_private_key_file,
    key_id,
    load_or_generate_private_key,
    load_private_key,
    parse_public_key,
    public_key_hex,
    read_checkpoint,
    read_public_key,
    sign_checkpoint,
    signed_message,
    verify_checkpoint,
)

SIGNED_AT = datetime(2026, 11, 24, 8, 0, 0, 123456, tzinfo=UTC)
CHAIN_HASH = "ab" * 32
LEDGER_ID = "9f0c2d4e-1b3a-4c5d-8e7f-0a1b2c3d4e5f"


class FakeSigner:
    """A signer that records what it signed and returns a fixed signature."""

    def __init__(self) -> None:
        self.signed: list[bytes] = []

    @property
    def public_key_hex(self) -> str:
        return "11" * 32

    def sign(self, message: bytes) -> bytes:
        self.signed.append(message)
        return b"\x07" * 64


def fixed_signer() -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def signed(signer: Signer | None = None, position: int = 42) -> dict[str, Any]:
    return sign_checkpoint(signer or fixed_signer(), LEDGER_ID, position, CHAIN_HASH, SIGNED_AT)


def test_checkpoint_holds_the_signed_fields_the_key_id_and_the_signature() -> None:
    signer = fixed_signer()
    checkpoint = signed(signer)

    assert checkpoint.keys() == CHECKPOINT_KEYS
    assert checkpoint["signed_at"] == "2026-11-24T08:00:00.123456Z"
    assert checkpoint["key_id"] == key_id(signer.public_key_hex)
    assert len(checkpoint["signature"]) == 128
    verify_checkpoint(checkpoint, signer.public_key_hex)


def test_signature_covers_exactly_the_jcs_of_the_four_signed_fields() -> None:
    signer = fixed_signer()
    checkpoint = signed(signer)
    message = rfc8785.dumps(
        {
            "ledger_id": LEDGER_ID,
            "position": 42,
            "chain_hash": CHAIN_HASH,
            "signed_at": checkpoint["signed_at"],
        }
    )
    assert signed_message(LEDGER_ID, 42, CHAIN_HASH, checkpoint["signed_at"]) == message

    # An outsider with only the public key and the cryptography library agrees.
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer.public_key_hex))
    public_key.verify(bytes.fromhex(checkpoint["signature"]), message)


def test_checkpoint_can_be_signed_by_any_signer() -> None:
    fake = FakeSigner()
    checkpoint = signed(fake)
    assert checkpoint["signature"] == "07" * 64
    assert checkpoint["key_id"] == key_id("11" * 32)
    assert fake.signed == [signed_message(LEDGER_ID, 42, CHAIN_HASH, checkpoint["signed_at"])]


@pytest.mark.parametrize(
    ("field", "forged"),
    [
        ("chain_hash", "cd" * 32),
        ("position", 43),
        ("ledger_id", "another-ledger"),
        ("signed_at", "2026-11-24T08:00:00.123457Z"),
    ],
)
def test_forged_signed_field_is_detected(field: str, forged: object) -> None:
    signer = fixed_signer()
    checkpoint = {**signed(signer), field: forged}
    with pytest.raises(BadSignature, match="does not verify"):
        verify_checkpoint(checkpoint, signer.public_key_hex)


def test_forged_signature_is_detected() -> None:
    signer = fixed_signer()
    checkpoint = signed(signer)
    flipped = format(int(checkpoint["signature"][:2], 16) ^ 1, "02x")
    with pytest.raises(BadSignature):
        verify_checkpoint(
            {**checkpoint, "signature": flipped + checkpoint["signature"][2:]},
            signer.public_key_hex,
        )


def test_checkpoint_from_another_key_is_detected() -> None:
    other = Ed25519Signer.generate()
    checkpoint = signed(other)
    ours = fixed_signer().public_key_hex
    with pytest.raises(BadSignature, match="names key"):
        verify_checkpoint(checkpoint, ours)
    # Claiming our key id does not help: the signature still fails.
    with pytest.raises(BadSignature, match="does not verify"):
        verify_checkpoint({**checkpoint, "key_id": key_id(ours)}, ours)


@pytest.mark.parametrize(
    "change",
    [
        {"position": True},
        {"position": -1},
        {"position": "42"},
        {"chain_hash": "AB" * 32},
        {"chain_hash": "ab" * 31},
        {"signed_at": "2026-11-24T08:00:00Z"},
        {"ledger_id": ""},
        {"key_id": "XYZ"},
        {"signature": "00"},
        {"extra": 1},
    ],
)
def test_malformed_checkpoint_is_rejected(change: dict[str, Any]) -> None:
    signer = fixed_signer()
    with pytest.raises(MalformedCheckpoint):
        verify_checkpoint({**signed(signer), **change}, signer.public_key_hex)


def test_checkpoint_missing_a_key_is_rejected() -> None:
    signer = fixed_signer()
    checkpoint = signed(signer)
    del checkpoint["signed_at"]
    with pytest.raises(MalformedCheckpoint, match="missing signed_at"):
        verify_checkpoint(checkpoint, signer.public_key_hex)


@pytest.mark.parametrize("bad_key", ["", "00" * 31, "zz" * 32, " " + "00" * 32])
def test_invalid_public_key_is_rejected(bad_key: str) -> None:
    with pytest.raises(InvalidPublicKey):
        verify_checkpoint(signed(), bad_key)


def test_key_id_is_the_first_16_hex_digits_of_sha256_of_the_raw_public_key() -> None:
    raw = fixed_signer().public_key_hex
    assert key_id(raw) == hashlib.sha256(bytes.fromhex(raw)).hexdigest()[:16]
    assert key_id(raw.upper()) == key_id(raw)


def test_key_id_is_stable_across_key_file_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    generated = generate_private_key_file(path)
    first = key_id(public_key_hex(generated))
    assert key_id(public_key_hex(load_private_key(path))) == first
    assert key_id(Ed25519Signer.from_file(path).public_key_hex) == first


def test_generated_key_file_is_private_pkcs8_pem(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    generate_private_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in tmp_path.iterdir()] == ["signing.pem"]


def test_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    original = generate_private_key_file(path)
    with pytest.raises(FileExistsError):
        generate_private_key_file(path)
    assert public_key_hex(load_or_generate_private_key(path)) == public_key_hex(original)


def test_missing_key_file_is_generated_once(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first = load_or_generate_private_key(path)
    second = load_or_generate_private_key(path)
    assert public_key_hex(first) == public_key_hex(second)


def test_key_file_of_another_kind_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "not-a-key.pem"
    path.write_text("hello")
    with pytest.raises(KeyFileError):
        load_private_key(path)


def test_public_key_is_read_from_hex_or_pem(tmp_path: Path) -> None:
    signer = fixed_signer()
    hex_file = tmp_path / "public.hex"
    hex_file.write_text(signer.public_key_hex.upper() + "\n")
    pem_file = tmp_path / "public.pem"
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer.public_key_hex))
    pem_file.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    assert read_public_key(hex_file) == signer.public_key_hex
    assert read_public_key(pem_file) == signer.public_key_hex
    with pytest.raises(InvalidPublicKey):
        parse_public_key("-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----")


def test_checkpoint_file_is_read_as_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text('{"position": 1}')
    assert read_checkpoint(path) == {"position": 1}
    path.write_text("[1]")
    with pytest.raises(MalformedCheckpoint, match="not an object"):
        read_checkpoint(path)
    path.write_text("{")
    with pytest.raises(MalformedCheckpoint, match="not JSON"):
        read_checkpoint(path)


def test_naive_signing_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        sign_checkpoint(fixed_signer(), LEDGER_ID, 1, CHAIN_HASH, datetime(2026, 11, 24))


def test_signing_a_malformed_chain_hash_is_rejected() -> None:
    with pytest.raises(MalformedCheckpoint):
        sign_checkpoint(fixed_signer(), LEDGER_ID, 1, "not-a-hash", SIGNED_AT)
