"""Structured logging: JSON lines off a terminal, a readable console on one.

Both structlog loggers and the standard library's (grpc, eventsourcing, psycopg) go
through one handler, so every line has the same shape, carries the context bound with
``structlog.contextvars`` (``request_id`` among it), and passes through the same
redaction of secrets.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
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


@functools.lru_cache(maxsize=4096)
def is_sensitive(key: str) -> bool:
    """Tells whether a value logged under ``key`` must be redacted."""
    normalised = key.lower().replace("-", "_")
    return normalised in SENSITIVE_KEYS or normalised.endswith(SENSITIVE_SUFFIXES)


# Values that hold nothing to look into: most of what a line carries.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _redact(value: Any, depth: int = 0) -> Any:
    if type(value) in _PLAIN or depth >= _MAX_DEPTH:
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
    plain = _PLAIN
    for key, value in event_dict.items():
        if is_sensitive(key):
            event_dict[key] = REDACTED
        elif type(value) not in plain and key != "event":
            event_dict[key] = _redact(value)
    return event_dict


# The context of the request a thread serves (method, request_id): one variable set once
# per RPC, cheaper than binding each key with ``structlog.contextvars``, which stays
# available for anything else a line should carry.
_REQUEST_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "ledger_request", default=MappingProxyType({})
)


def bind_request_context(values: Mapping[str, Any]) -> Token[Mapping[str, Any]]:
    """Makes ``values`` part of every line this thread logs until
    :func:`unbind_request_context` is given the returned token."""
    return _REQUEST_CONTEXT.set(values)


def unbind_request_context(token: Token[Mapping[str, Any]]) -> None:
    """Ends what :func:`bind_request_context` began."""
    _REQUEST_CONTEXT.reset(token)


def current_context() -> dict[str, Any]:
    """The context every line logged now carries: the request's, and anything bound
    with ``structlog.contextvars``."""
    return {**_REQUEST_CONTEXT.get(), **structlog.contextvars.get_contextvars()}


def add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 UTC time of the line: when its record was made (a line written in the
    background is stamped with the time it was logged, not written), else now."""
    record = event_dict.get("_record")
    moment = datetime.fromtimestamp(record.created, UTC) if record else datetime.now(UTC)
    event_dict["timestamp"] = moment.isoformat().replace("+00:00", "Z")
    return event_dict


class _LedgerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure_logging`` installs (a marker so it can replace it)."""

    def handle_all(self, records: Sequence[logging.LogRecord | _Line]) -> None:
        """Writes the records (and lines of ``log_line``) this handler's filters pass,
        in one write of the stream."""
        lines: list[str] = []
        for item in records:
            try:
                if isinstance(item, _Line) and not self.filters:
                    text = self._format_line(item)
                else:
                    record = item.record() if isinstance(item, _Line) else item
                    if not self.filter(record):
                        continue
                    text = self.format(record)
                lines.append(text + self.terminator)
            except Exception:
                self.handleError(item.record() if isinstance(item, _Line) else item)
        if not lines:
            return
        with self.lock or contextlib.nullcontext():
            try:
                self.stream.write("".join(lines))
                self.flush()
            except Exception:
                last = records[-1]
                self.handleError(last.record() if isinstance(last, _Line) else last)

    def _format_line(self, line: _Line) -> str:
        """``format(line.record())``, without making a ``LogRecord`` (and the copy the
        formatter makes of it) where nothing needs one: the formatter's processors run
        on the line itself, which has what they read of a record."""
        formatter = self.formatter
        if not isinstance(formatter, structlog.stdlib.ProcessorFormatter):
            return self.format(line.record())
        method = logging.getLevelName(line.level).lower()
        event: Any = {"event": line.event, "_record": line, "_from_structlog": False}
        for processor in (*(formatter.foreign_pre_chain or ()), *formatter.processors):
            event = processor(formatter.logger, method, event)
        return str(event)


# Lines waiting for the background writer; past this many, new lines are dropped (and
# counted) rather than making a caller wait for the output.
BACKGROUND_QUEUE_LINES = 10_000


@dataclass(frozen=True, slots=True)
class _Line:
    """A line handed over by :func:`log_line`. Its attributes are named as a record's
    (``name`` is the logger's), so the formatter's processors can read it as one."""

    name: str
    level: int
    event: str
    ledger_context: Mapping[str, Any]
    created: float

    def record(self) -> logging.LogRecord:
        record = logging.LogRecord(self.name, self.level, "", 0, self.event, None, None)
        record.created = self.created
        record.msecs = (self.created - int(self.created)) * 1000
        record.ledger_context = self.ledger_context
        return record


class _Flushed(threading.Event):
    """Put in the queue by ``flush``: set once the writer reaches it."""


_Queued = logging.LogRecord | _Line | _Flushed | None

# After writing what it found queued, the writer waits this long before looking again,
# so that under load it wakes once per many lines rather than once per line (each wake
# takes the interpreter lock from the threads serving RPCs).
WRITER_PAUSE_S = 0.02


class _Writer:
    """Formats and writes the queued lines on a thread of its own, in batches; ``None``
    in the queue ends it."""

    def __init__(self, lines: queue.Queue[_Queued], handler: _LedgerHandler):
        self.lines = lines
        self._handler = handler
        self._thread = threading.Thread(target=self._run, name="ledger-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.lines.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BACKGROUND_QUEUE_LINES:
                    batch.append(self.lines.get_nowait())
            records: list[logging.LogRecord | _Line] = []
            for item in batch:
                if item is None or isinstance(item, _Flushed):
                    self._handler.handle_all(records)
                    records = []
                    if item is None:
                        return
                    item.set()
                else:
                    records.append(item)
            self._handler.handle_all(records)
            time.sleep(WRITER_PAUSE_S)

    def flush(self) -> None:
        """Returns once every line queued before the call is written."""
        flushed = _Flushed()
        self.lines.put(flushed)
        while not flushed.wait(0.1):
            if not self._thread.is_alive():
                return

    def stop(self) -> None:
        """Writes what is queued, then ends the writer."""
        # The queue may be full: this waits for the writer to take a line (it always does).
        self.lines.put(None)
        self._thread.join()


class _Background(logging.handlers.QueueHandler):
    """Hands records to a writer thread, so a caller (an RPC thread) never waits for the
    formatting or for a slow output. A record keeps the request context of the thread
    that logged it; when the queue is full the record is dropped and counted, and the
    writer reports the count with its next line."""

    def __init__(self, handler: _LedgerHandler) -> None:
        lines: queue.Queue[_Queued] = queue.Queue(BACKGROUND_QUEUE_LINES)
        super().__init__(lines)
        self.dropped = 0
        self._lock = threading.Lock()
        self.listener = _Writer(lines, handler)
        self._running = True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatting happens in the writer thread; the context is this thread's.
        record.ledger_context = current_context()
        return record

    def enqueue(self, record: logging.LogRecord | _Line) -> None:
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
                self.listener.flush()

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
        context = current_context()
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
        add_timestamp,
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


def log_line(logger: str, event: str, **fields: Any) -> None:
    """Logs an info line with the current context and ``fields``, as
    ``structlog.get_logger(logger).info(event, **fields)`` would. With a background
    writer, the caller only hands the line over: the structlog and logging machinery
    runs on the writer thread (for a line per RPC, that machinery cost more than many
    RPCs themselves)."""
    if logging.getLogger(logger).isEnabledFor(logging.INFO):
        for handler in logging.root.handlers:
            if isinstance(handler, _Background):
                context = {**current_context(), **fields}
                handler.enqueue(_Line(logger, logging.INFO, event, context, time.time()))
                return
    structlog.get_logger(logger).info(event, **fields)


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
