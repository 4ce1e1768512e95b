"""Ed25519-signed checkpoints of the audit hash chain, and the key files behind them.

A checkpoint file is a JSON object with exactly six keys: ``ledger_id`` (string),
``position`` (integer), ``chain_hash`` (lowercase hex of the chain hash at that
position), ``signed_at`` (``2026-11-24T08:00:00.123456Z``), ``key_id`` and
``signature``. The signature (lowercase hex of 64 bytes) is Ed25519 over
``JCS({ledger_id, position, chain_hash, signed_at})``. The key id is the first 16 hex
digits of SHA-256 over the raw 32-byte public key: it names the key, it proves nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.audit.canonical import MAX_SAFE_INTEGER, canonical_bytes, format_time, parse_time

CHECKPOINT_KEYS: Final = frozenset(
    {"ledger_id", "position", "chain_hash", "signed_at", "key_id", "signature"}
)
"""The keys of a checkpoint file object, exactly."""

SIGNED_KEYS: Final = ("ledger_id", "position", "chain_hash", "signed_at")
"""The checkpoint keys covered by the signature."""

KEY_ID_LENGTH: Final = 16

_CHAIN_HASH: Final = re.compile(r"[0-9a-f]{64}")
_KEY_ID: Final = re.compile(r"[0-9a-f]{16}")
_SIGNATURE: Final = re.compile(r"[0-9a-f]{128}")
_PUBLIC_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")


class CheckpointError(ValueError):
    """A checkpoint cannot be trusted."""


class MalformedCheckpoint(CheckpointError):
    """A checkpoint object lacks a key, has an extra one, or holds a value of the wrong form."""


class BadSignature(CheckpointError):
    """A checkpoint's signature does not verify with the given public key, or the
    checkpoint names a different key."""


class InvalidPublicKey(ValueError):
    """A public key is not 32 bytes of Ed25519 in hex (or a PEM public key file)."""


class KeyFileError(ValueError):
    """A signing key file cannot be read as an unencrypted Ed25519 PKCS#8 PEM key."""


class Signer(Protocol):
    """Signs checkpoint messages with a private key that never leaves it."""

    @property
    def public_key_hex(self) -> str:
        """The raw 32-byte public key as lowercase hex."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Returns the 64-byte signature of ``message``."""
        ...


class Ed25519Signer:
    """A ``Signer`` holding an Ed25519 private key in memory."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key_hex = public_key_hex(private_key)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """Returns a signer with a new key that lives only in memory (tests, benchmarks)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        """Returns a signer for the key in ``path``, generating the file if it is missing."""
        return cls(load_or_generate_private_key(path))

    @property
    def public_key_hex(self) -> str:
        """The raw 32-byte public key as lowercase hex."""
        return self._public_key_hex

    def sign(self, message: bytes) -> bytes:
        """Returns the 64-byte Ed25519 signature of ``message``."""
        return self._private_key.sign(message)


def key_id(public_key_hex: str) -> str:
    """Returns the first 16 lowercase hex digits of SHA-256 over the raw public key."""
    return sha256(_public_key_bytes(public_key_hex)).hexdigest()[:KEY_ID_LENGTH]


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Returns the raw 32-byte Ed25519 public key of ``key`` as lowercase hex."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Reads an unencrypted PKCS#8 PEM Ed25519 private key; raises ``KeyFileError``
    (or ``FileNotFoundError``)."""
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise KeyFileError(
            f"{path} is not an unencrypted PKCS#8 PEM private key: {error}"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; checkpoints need Ed25519")
    return key


def generate_private_key_file(path: Path) -> Ed25519PrivateKey:
    """Generates an Ed25519 key and writes it to ``path`` (PKCS#8 PEM, mode 600).

    Raises ``FileExistsError`` rather than replace an existing key.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 600; linking it into place publishes a complete
    # file atomically and fails if another process published a key first.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return key


def load_or_generate_private_key(path: Path) -> Ed25519PrivateKey:
    """Reads the key in ``path``, or generates it there (mode 600) if the file is missing."""
    try:
        return load_private_key(path)
    except FileNotFoundError:
        pass
    try:
        return generate_private_key_file(path)
    except FileExistsError:
        # Another process generated it between our read and our write: use theirs.
        return load_private_key(path)


def parse_public_key(text: str) -> str:
    """Returns the lowercase hex of a public key given as 64 hex digits or as a PEM
    ``PUBLIC KEY`` block; raises ``InvalidPublicKey``."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as error:
            raise InvalidPublicKey(f"not a PEM public key: {error}") from error
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidPublicKey(f"the PEM holds a {type(key).__name__}, not Ed25519")
        return public_key_hex(key)
    _public_key_bytes(stripped)
    return stripped.lower()


def read_public_key(path: Path) -> str:
    """Reads a public key file (64 hex digits, or PEM) and returns its lowercase hex."""
    return parse_public_key(path.read_text(encoding="utf-8"))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint file; raises ``MalformedCheckpoint`` if it is not a JSON object."""
    try:
        checkpoint = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise MalformedCheckpoint(f"{path} is not JSON: {error}") from error
    if not isinstance(checkpoint, dict):
        raise MalformedCheckpoint(f"{path} holds a JSON {type(checkpoint).__name__}, not an object")
    return checkpoint


def signed_message(ledger_id: str, position: int, chain_hash: str, signed_at: str) -> bytes:
    """Returns the bytes a checkpoint signature covers: the JCS form of the four values."""
    return canonical_bytes(
        {
            "ledger_id": ledger_id,
            "position": position,
            "chain_hash": chain_hash,
            "signed_at": signed_at,
        }
    )


def sign_checkpoint(
    signer: Signer,
    ledger_id: str,
    position: int,
    chain_hash_hex: str,
    signed_at: datetime,
) -> dict[str, Any]:
    """Returns the checkpoint file object for the chain hash at ``position``, signed by
    ``signer``."""
    checkpoint: dict[str, Any] = {
        "ledger_id": ledger_id,
        "position": position,
        "chain_hash": chain_hash_hex,
        "signed_at": format_time(signed_at),
    }
    _check_signed_fields(checkpoint)
    message = signed_message(**checkpoint)
    checkpoint["key_id"] = key_id(signer.public_key_hex)
    checkpoint["signature"] = signer.sign(message).hex()
    return checkpoint


def check_checkpoint(checkpoint: Mapping[str, Any]) -> None:
    """Checks the form of a checkpoint file object (its keys and the form of each value),
    not its signature; raises ``MalformedCheckpoint``."""
    if not isinstance(checkpoint, Mapping):
        raise MalformedCheckpoint(f"a checkpoint is a JSON object, not {type(checkpoint).__name__}")
    if checkpoint.keys() != CHECKPOINT_KEYS:
        missing = ", ".join(sorted(CHECKPOINT_KEYS - checkpoint.keys()))
        extra = ", ".join(sorted(map(str, checkpoint.keys() - CHECKPOINT_KEYS)))
        problems = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        raise MalformedCheckpoint("checkpoint keys: " + "; ".join(filter(None, problems)))
    _check_signed_fields(checkpoint)
    claimed_key_id = checkpoint["key_id"]
    if not isinstance(claimed_key_id, str) or not _KEY_ID.fullmatch(claimed_key_id):
        raise MalformedCheckpoint("key_id must be 16 lowercase hex digits")
    signature = checkpoint["signature"]
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise MalformedCheckpoint("signature must be 128 lowercase hex digits (64 bytes)")


def verify_checkpoint(checkpoint: Mapping[str, Any], public_key_hex: str) -> None:
    """Checks a checkpoint file object and its signature against a public key (64 hex
    digits); raises ``MalformedCheckpoint``, ``BadSignature`` or ``InvalidPublicKey``."""
    raw_public_key = _public_key_bytes(public_key_hex)
    check_checkpoint(checkpoint)
    expected_key_id = key_id(public_key_hex)
    if checkpoint["key_id"] != expected_key_id:
        raise BadSignature(
            f"the checkpoint names key {checkpoint['key_id']}, but the public key given is "
            f"{expected_key_id}; use the ledger's public key (GetLedgerInfo.public_key)"
        )
    message = signed_message(*(checkpoint[key] for key in SIGNED_KEYS))
    try:
        public_key = Ed25519PublicKey.from_public_bytes(raw_public_key)
        public_key.verify(bytes.fromhex(checkpoint["signature"]), message)
    except InvalidSignature as error:
        raise BadSignature(
            f"the signature of the checkpoint at position {checkpoint['position']} does not "
            f"verify with key {expected_key_id}: its signed fields or signature were altered"
        ) from error
    except ValueError as error:
        raise InvalidPublicKey(f"not an Ed25519 public key: {error}") from error


def _check_signed_fields(checkpoint: Mapping[str, Any]) -> None:
    ledger_id = checkpoint["ledger_id"]
    if not isinstance(ledger_id, str) or not ledger_id:
        raise MalformedCheckpoint("ledger_id must be a non-empty string")
    position = checkpoint["position"]
    if type(position) is not int or not 0 <= position <= MAX_SAFE_INTEGER:
        raise MalformedCheckpoint(
            f"position must be an integer from 0 to 2**53 - 1, not {position!r}"
        )
    chain_hash = checkpoint["chain_hash"]
    if not isinstance(chain_hash, str) or not _CHAIN_HASH.fullmatch(chain_hash):
        raise MalformedCheckpoint("chain_hash must be 64 lowercase hex digits")
    signed_at = checkpoint["signed_at"]
    if not isinstance(signed_at, str):
        raise MalformedCheckpoint("signed_at must be a string like 2026-11-24T08:00:00.123456Z")
    try:
        parse_time(signed_at)
    except ValueError as error:
        raise MalformedCheckpoint(f"signed_at: {error}") from error


def _public_key_bytes(public_key_hex: str) -> bytes:
    if not isinstance(public_key_hex, str) or not _PUBLIC_KEY.fullmatch(public_key_hex):
        raise InvalidPublicKey(
            "a public key is 64 hex digits (the raw 32-byte Ed25519 key, "
            "as in GetLedgerInfo.public_key)"
        )
    return bytes.fromhex(public_key_hex)
