"""Settings of a ledger process, read once from ``LEDGER_*`` environment variables.

Command-line flags override them (``dataclasses.replace``); nothing else reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///var/ledger.db"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = "127.0.0.1:50051"
    principals_file: Path | None = None
    signing_key_file: Path | None = None
    metrics_address: str | None = None
    var_dir: Path = Path("var")
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    pool_size: int = 8
    connect_timeout_s: float = 2.0
    settlement_window_days: int = 7
    checkpoint_every_events: int = 1000
    checkpoint_every_seconds: float = 60.0
    # False when `ledger projections run` workers follow the log in processes of their own.
    run_projections: bool = True
    # Processes that read and encode ReplayEvents streams for `ledger serve` (0: its own).
    replay_workers: int = 2
    # Threads that serve the unary calls that change nothing (CheckAccess, Get*, List*...).
    read_workers: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads ``LEDGER_<FIELD>`` for each field; unset variables keep the default."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"LEDGER_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes", "y", "on")
            elif isinstance(default, int | float):
                try:
                    values[f.name] = type(default)(raw)
                except ValueError:
                    kind = "an integer" if isinstance(default, int) else "a number"
                    raise ValueError(
                        f"LEDGER_{f.name.upper()}: expected {kind}, not {raw!r}"
                    ) from None
            elif f.name.endswith(("_file", "_dir")):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
