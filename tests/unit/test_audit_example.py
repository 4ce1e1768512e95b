"""``docs/auditing.md`` is a contract: its worked example shows the values the ledger
computes, and the verifier and signature checks printed on it work as printed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.application.events import EventLog
from ledger.audit.canonical import canonical_bytes
from ledger.audit.chain import export_lines
from ledger.audit.checkpoint import Ed25519Signer, sign_checkpoint
from ledger.audit.example import build
from ledger.audit.verify import verify_export
from tests.market import Market

PAGE = Path(__file__).resolve().parents[2] / "docs" / "auditing.md"


def code_block(name: str) -> str:
    """The fenced block of the page whose first line names ``name``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        if block.startswith(f"# {name}"):
            return str(block)
    raise AssertionError(f"no code block {name} on {PAGE}")


def test_the_worked_example_shows_the_values_the_ledger_computes() -> None:
    page = PAGE.read_text(encoding="utf-8")
    example = build()
    for step in example.steps:
        assert step.canonical.decode() in page
        assert step.chain_hash.hex() in page
    first = example.steps[0]
    assert f"{len(first.canonical)} bytes of UTF-8" in page
    assert example.steps[1].previous == first.chain_hash
    for line in example.export.decode().splitlines():
        assert line in page
    assert example.checkpoint.decode().strip() in page
    assert example.signed.decode() in page
    assert example.public_key in page


@pytest.fixture
def example_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    example = build()
    export, checkpoint, key = (tmp_path / n for n in ("export.jsonl", "cp.json", "key"))
    export.write_bytes(example.export)
    checkpoint.write_bytes(example.checkpoint)
    key.write_text(example.public_key + "\n")
    return export, checkpoint, key


def run_block(name: str, tmp_path: Path, *args: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(code_block(name), encoding="utf-8")
    command = [sys.executable] if name.endswith(".py") else ["sh"]
    return subprocess.run(
        [*command, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_the_printed_verifier_accepts_the_example_and_names_a_changed_line(
    example_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    export, checkpoint, _ = example_files
    done = run_block("verify.py", tmp_path, export, checkpoint)
    assert done.stdout.strip() == "OK: 2 events, last position 4", done.stderr
    export.write_bytes(export.read_bytes().replace(b"CERT-2026-0001", b"CERT-2026-0002"))
    done = run_block("verify.py", tmp_path, export, checkpoint)
    assert done.stdout.startswith("FAILED at line 2, position 4")


def test_the_printed_verifier_agrees_with_the_ledger_on_a_market(
    market: Market, tmp_path: Path
) -> None:
    market.granted()
    events, _ = EventLog(market.app.recorder).read(0, 10_000)
    lines = list(export_lines(events))
    export, checkpoint = tmp_path / "export.jsonl", tmp_path / "cp.json"
    export.write_bytes(b"".join(lines))
    last_hash = lines[-1].split(b'"chain_hash":"')[1][:64].decode()
    signer = Ed25519Signer.generate()
    signed = sign_checkpoint(
        signer, "ledger", events[-1]["position"], last_hash, market.clock.now()
    )
    checkpoint.write_bytes(canonical_bytes(signed))
    done = run_block("verify.py", tmp_path, export, checkpoint)
    assert (
        done.stdout.strip() == f"OK: {len(events)} events, last position {events[-1]['position']}"
    )
    assert verify_export(export, signed, signer.public_key_hex).ok
    # The same first fault as the ledger's own verifier, line by line.
    for index in (0, len(lines) // 2, len(lines) - 1):
        tampered = lines.copy()
        tampered[index] = tampered[index].replace(b'"version":', b'"version":1', 1)
        export.write_bytes(b"".join(tampered))
        ours = verify_export(export, signed, signer.public_key_hex)
        assert ours.failure is not None
        done = run_block("verify.py", tmp_path, export, checkpoint)
        assert done.stdout.startswith(f"FAILED at line {ours.failure.line}, position ")


def test_the_printed_signature_check_accepts_the_example_and_refuses_a_forgery(
    example_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, checkpoint, key = example_files
    done = run_block("verify_signature.py", tmp_path, checkpoint, key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: the checkpoint at position 4")
    checkpoint.write_bytes(checkpoint.read_bytes().replace(b'"position":4', b'"position":3'))
    done = run_block("verify_signature.py", tmp_path, checkpoint, key)
    assert done.returncode != 0
    assert "InvalidSignature" in done.stderr


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("openssl", "xxd", "jq")),
    reason="needs openssl, xxd and jq",
)
def test_the_printed_openssl_check_accepts_the_example_and_refuses_a_forgery(
    example_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, checkpoint, key = example_files
    done = run_block("verify-signature.sh", tmp_path, checkpoint, key)
    assert done.returncode == 0, done.stderr
    assert "Signature Verified Successfully" in done.stdout
    checkpoint.write_bytes(checkpoint.read_bytes().replace(b"T09:00", b"T09:01"))
    done = run_block("verify-signature.sh", tmp_path, checkpoint, key)
    assert done.returncode != 0
