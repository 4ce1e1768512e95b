"""Generates the Python code of the ``ledger.v1`` protos into ``ledger/v1/``.

``--check`` generates into a temporary directory instead and exits 1, listing the
stale files, when the committed code differs from what the protos produce.

Only ``protos/ledger/v1`` is compiled: the vendored ``google/rpc/status.proto`` is
there for imports, its Python code comes from ``googleapis-common-protos``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("ledger") / "v1"
INIT_TEXT = '"""Generated code of the ledger.v1 protos; regenerate with `make protos`."""\n'
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[str]:
    """Returns the protos to compile, relative to the proto root, in a stable order."""
    return sorted(
        p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / PACKAGE).glob("*.proto")
    )


def plugin(name: str) -> str:
    """Returns the path of a protoc plugin installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            sys.exit(f"{name} not found; install the dev extras: pip install -e '.[dev]'")
        return found
    return str(path)


def generate(out_dir: Path) -> None:
    """Compiles every proto of the package into ``out_dir / ledger / v1``."""
    files = proto_files()
    if not files:
        sys.exit(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    well_known = resources.files("grpc_tools") / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    (out_dir / PACKAGE).mkdir(parents=True, exist_ok=True)
    # The mypy plugins report every file they write; show protoc's output only on failure.
    result = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit(f"protoc failed with exit code {result.returncode}")
    (out_dir / PACKAGE / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")


def generated_files(directory: Path) -> dict[str, bytes]:
    """Returns the generated files in ``directory`` by name, with their contents."""
    if not directory.is_dir():
        return {}
    return {
        path.name: path.read_bytes()
        for path in directory.iterdir()
        if path.is_file() and (path.name == "__init__.py" or path.name.endswith(GENERATED_SUFFIXES))
    }


def stale_files(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Names the files that are missing, different or no longer generated."""
    return sorted(
        name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="fail if the committed generated code is not what the protos produce",
    )
    args = parser.parse_args(argv)
    target = ROOT / PACKAGE
    with tempfile.TemporaryDirectory(prefix="ledger-protos-") as tmp:
        generate(Path(tmp))
        expected = generated_files(Path(tmp) / PACKAGE)
        stale = stale_files(expected, generated_files(target))
        if args.check:
            if stale:
                print(f"Generated code in {PACKAGE} is stale; run `make protos`:", file=sys.stderr)
                for name in stale:
                    print(f"  {PACKAGE / name}", file=sys.stderr)
                return 1
            print(f"{PACKAGE} is up to date ({len(expected)} files)")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for name in stale:
            if name in expected:
                (target / name).write_bytes(expected[name])
            else:
                (target / name).unlink()
        print(f"generated {len(expected)} files into {PACKAGE} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
