"""Structured logging: JSON lines off a terminal, a readable console on one.

Both structlog loggers and the standard library's (grpc, eventsourcing, psycopg) go
through one handler, so every line has the same shape, carries the context bound with
``structlog.contextvars`` (``request_id`` among it), and passes through the same
redaction of secrets.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

FORMATS = ("auto", "json", "console")
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

REDACTED = "[redacted]"

# Keys whose values must never reach a log: credentials, and event payloads, which
# can hold personal information of data subjects.
SENSITIVE_KEYS = frozenset(
    {
        "token",
        "authorization",
        "password",
        "payload",
        "secret",
        "private_key",
        "signing_key",
        "cookie",
    }
)
SENSITIVE_SUFFIXES = ("_token", "_password", "_secret")

# Deep enough for any context we log; guards against self-referencing structures.
_MAX_DEPTH = 8


def is_sensitive(key: str) -> bool:
    """Tells whether a value logged under ``key`` must be redacted."""
    normalised = key.lower().replace("-", "_")
    return normalised in SENSITIVE_KEYS or normalised.endswith(SENSITIVE_SUFFIXES)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_sensitive(k) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        # gRPC metadata is a sequence of (key, value) pairs, ("authorization", ...)
        # among them.
        if is_sensitive(value[0]):
            return (value[0], REDACTED)
        return (value[0], _redact(value[1], depth + 1))
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replaces the values of sensitive keys, at any depth, with ``[redacted]``."""
    for key, value in event_dict.items():
        if is_sensitive(key):
            event_dict[key] = REDACTED
        elif key != "event":
            event_dict[key] = _redact(value)
    return event_dict


class _LedgerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs; a marker so it can replace it."""


# Lines waiting for the background writer; past this many, new lines are dropped (and
# counted) rather than making a caller wait for the output.
BACKGROUND_QUEUE_LINES = 10_000


class _Writer(logging.handlers.QueueListener):
    def __init__(self, lines: queue.Queue[logging.LogRecord | None], handler: logging.Handler):
        super().__init__(lines, handler)
        self.lines = lines

    def enqueue_sentinel(self) -> None:
        # The queue may be full: wait for the writer to take a line (it always does).
        # None is the listener's end-of-queue mark.
        self.lines.put(None)


class _Background(logging.handlers.QueueHandler):
    """Hands records to a writer thread, so a caller (an RPC thread) never waits for the
    formatting or for a slow output. A record keeps the request context of the thread
    that logged it; when the queue is full the record is dropped and counted, and the
    writer reports the count with its next line."""

    def __init__(self, handler: logging.Handler) -> None:
        lines: queue.Queue[logging.LogRecord | None] = queue.Queue(BACKGROUND_QUEUE_LINES)
        super().__init__(lines)
        self.dropped = 0
        self._lock = threading.Lock()
        self.listener = _Writer(lines, handler)
        self.listener.start()
        self._running = True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatting happens in the writer thread; the context is this thread's.
        record.ledger_context = structlog.contextvars.get_contextvars()
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.dropped:
            with self._lock:
                dropped, self.dropped = self.dropped, 0
            warning = logging.LogRecord(
                "ledger.logging", logging.WARNING, __file__, 0, "log lines dropped", None, None
            )
            warning.ledger_context = {"dropped_lines": dropped}
            try:
                self.queue.put_nowait(warning)
            except queue.Full:
                with self._lock:
                    self.dropped += dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def flush(self) -> None:
        """Writes what is queued; the writer then goes on."""
        with self._lock:
            if self._running:
                self.listener.stop()
                self.listener.start()

    def close(self) -> None:
        with self._lock:
            if self._running:
                self.listener.stop()  # writes what is queued
                self._running = False
        super().close()


def merge_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Adds the request context: the one a record carries from the thread that logged it
    (written in the background), else the current thread's."""
    record = event_dict.get("_record")
    context = getattr(record, "ledger_context", None)
    if context is None:
        return structlog.contextvars.merge_contextvars(logger, method, event_dict)
    for key, value in context.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(
    fmt: str = "auto", level: str = "info", stream: TextIO | None = None, background: bool = False
) -> None:
    """Configures structlog and the standard library to write to ``stream`` (stderr).

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a terminal, else JSON);
    ``level`` is a level name such as ``info``. With ``background`` a writer thread
    formats and writes the lines (a server's RPC threads then never wait for the
    output); ``flush_logging`` writes what is queued. Calling it again replaces the
    set-up.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        level_no = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}") from None
    out = sys.stderr if stream is None else stream
    on_terminal = _isatty(out)
    json_lines = fmt == "json" or (fmt == "auto" and not on_terminal)

    shared: list[Processor] = [
        merge_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json_lines:
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        final.append(
            structlog.dev.ConsoleRenderer(
                colors=on_terminal,
                # Rich shows local variables by default, and a local may be a token.
                exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
            )
        )

    handler = _LedgerHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    )
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _LedgerHandler | _Background)]:
        root.removeHandler(existing)
        existing.close()
    root.addHandler(_Background(handler) if background else handler)
    root.setLevel(level_no)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so that a later configure_logging (tests do this) reaches loggers
        # that modules created at import time.
        cache_logger_on_first_use=False,
    )


def flush_logging() -> None:
    """Writes every queued line (a background writer keeps running)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Background):
            handler.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
