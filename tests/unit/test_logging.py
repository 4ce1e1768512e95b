"""Logging: one JSON object per line, request context on every line, no secrets."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

import ledger.logging
from ledger.logging import REDACTED, configure_logging, flush_logging, is_sensitive

# A made-up bearer token that the logs must never show.
TOKEN = "tok-5a1b6c2d7e3f"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    lines = out.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_output_is_one_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    log = structlog.get_logger("ledger.test")

    log.info("rpc", method="/ledger.v1.TradeService/RecordSale", code="OK", duration_ms=1.5)
    log.warning("multi\nline\nmessage", note="a\nb")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")

    records = json_lines(out)
    assert len(records) == 3
    assert records[0]["event"] == "rpc"
    assert records[0]["method"] == "/ledger.v1.TradeService/RecordSale"
    assert records[0]["level"] == "info"
    assert records[0]["logger"] == "ledger.test"
    assert records[1]["event"] == "multi\nline\nmessage"
    assert "RuntimeError: boom" in records[2]["exception"]


def test_timestamps_are_iso_utc() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)

    structlog.get_logger().info("tick")

    stamp = json_lines(out)[0]["timestamp"]
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


def test_bound_request_context_reaches_every_line_including_library_logs() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)

    with structlog.contextvars.bound_contextvars(request_id="req-42", principal="sse"):
        structlog.get_logger().info("from structlog")
        logging.getLogger("eventsourcing").warning("from the stdlib %s", "logger")
    structlog.get_logger().info("after the request")

    first, second, third = json_lines(out)
    assert first["request_id"] == second["request_id"] == "req-42"
    assert second["event"] == "from the stdlib logger"
    assert second["logger"] == "eventsourcing"
    assert second["level"] == "warning"
    assert "request_id" not in third


def test_a_token_never_appears_in_json_output() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    log = structlog.get_logger()

    with structlog.contextvars.bound_contextvars(authorization=f"Bearer {TOKEN}"):
        log.info(
            "call",
            token=TOKEN,
            Authorization=f"Bearer {TOKEN}",
            password=TOKEN,
            access_token=TOKEN,
            metadata=[("authorization", f"Bearer {TOKEN}"), ("x-request-id", "r1")],
            request={"headers": {"authorization": TOKEN}, "items": [{"token": TOKEN}]},
        )
    logging.getLogger("grpc").info("stdlib call", extra={"token": TOKEN})

    assert TOKEN not in out.getvalue()
    record = json_lines(out)[0]
    assert record["token"] == REDACTED
    assert record["Authorization"] == REDACTED
    assert record["authorization"] == REDACTED
    assert record["metadata"] == [["authorization", REDACTED], ["x-request-id", "r1"]]
    assert record["request"] == {
        "headers": {"authorization": REDACTED},
        "items": [{"token": REDACTED}],
    }


def test_a_token_never_appears_on_the_console_even_in_a_traceback() -> None:
    out = FakeTerminal()
    configure_logging("auto", stream=out)

    def handler(token: str) -> None:
        raise ValueError("bad request")

    try:
        handler(TOKEN)
    except ValueError:
        structlog.get_logger().exception("handler failed", token=TOKEN)

    text = out.getvalue()
    assert "handler failed" in text
    assert "bad request" in text
    assert TOKEN not in text


def test_payloads_are_never_logged() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)

    structlog.get_logger().info("event", payload={"name": "Zhang San", "id_number": "110101"})

    assert "Zhang San" not in out.getvalue()
    assert json_lines(out)[0]["payload"] == REDACTED


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("token", True),
        ("Authorization", True),
        ("password", True),
        ("payload", True),
        ("refresh_token", True),
        ("x-api-secret", True),
        ("request_id", False),
        ("method", False),
        ("principal", False),
        ("tokens_file", False),
    ],
)
def test_sensitive_keys(key: str, sensitive: bool) -> None:
    assert is_sensitive(key) is sensitive


def test_auto_renders_for_a_terminal_and_json_otherwise() -> None:
    terminal = FakeTerminal()
    configure_logging("auto", stream=terminal)
    structlog.get_logger().info("hello", request_id="r1")
    line = terminal.getvalue().strip()
    assert "hello" in line
    assert "request_id" in line
    assert not line.startswith("{")

    pipe = io.StringIO()
    configure_logging("auto", stream=pipe)
    structlog.get_logger().info("hello")
    assert json_lines(pipe)[0]["event"] == "hello"


def test_the_level_filters_structlog_and_stdlib_lines() -> None:
    out = io.StringIO()
    configure_logging("json", level="warning", stream=out)

    structlog.get_logger().info("quiet")
    logging.getLogger("grpc").info("quiet too")
    structlog.get_logger().warning("loud")

    assert [r["event"] for r in json_lines(out)] == ["loud"]


def test_configuring_again_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("json", stream=second)

    structlog.get_logger().info("once")

    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


@pytest.mark.parametrize(
    ("fmt", "level", "message"),
    [("yaml", "info", "log format 'yaml'"), ("json", "verbose", "log level 'verbose'")],
)
def test_unknown_format_or_level_is_refused(fmt: str, level: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(fmt, level)


class BlockedOutput(io.StringIO):
    """An output that does not take a line until it is released (a full pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(10)
        return super().write(text)


def test_in_the_background_a_blocked_output_never_makes_the_caller_wait() -> None:
    out = BlockedOutput()
    configure_logging("json", stream=out, background=True)
    started = time.monotonic()
    for n in range(50):
        structlog.get_logger().info("line", n=n)
    elapsed = time.monotonic() - started
    out.released.set()
    flush_logging()
    assert [line["n"] for line in json_lines(out)] == list(range(50))
    assert elapsed < 5  # the output was blocked for 10 s: the calls did not wait for it


def test_in_the_background_every_line_keeps_the_context_of_the_thread_that_logged_it() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out, background=True)
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        structlog.get_logger().info("from structlog")
        logging.getLogger("some.library").warning("from the stdlib %s", "logger")
    logging.getLogger("some.library").warning("after the request")
    flush_logging()
    first, second, third = json_lines(out)
    assert first["request_id"] == second["request_id"] == "req-7"
    assert second["event"] == "from the stdlib logger"
    assert "request_id" not in third


def test_in_the_background_a_full_queue_drops_lines_and_says_how_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger.logging, "BACKGROUND_QUEUE_LINES", 5)
    out = BlockedOutput()
    configure_logging("json", stream=out, background=True)
    for n in range(40):
        structlog.get_logger().info("line", n=n)
    out.released.set()
    flush_logging()
    structlog.get_logger().info("after")
    flush_logging()
    lines = json_lines(out)
    written = [line for line in lines if line["event"] == "line"]
    dropped = [line for line in lines if line["event"] == "log lines dropped"]
    assert len(written) < 40
    assert dropped
    assert len(written) + sum(d["dropped_lines"] for d in dropped) == 40
    assert lines[-1]["event"] == "after"


def test_log_line_in_the_background_is_the_line_structlog_would_write() -> None:
    out = BlockedOutput()
    configure_logging("json", stream=out, background=True)
    structlog.get_logger().info("first")  # the writer takes it and waits on the output
    token = ledger.logging.bind_request_context({"method": "/m", "request_id": "req-9"})
    try:
        logged_at = datetime.now(UTC)
        ledger.logging.log_line("ledger.rpc", "rpc", code="OK", token=TOKEN, duration_ms=0.5)
    finally:
        ledger.logging.unbind_request_context(token)
    time.sleep(0.05)
    released_at = datetime.now(UTC)
    out.released.set()
    flush_logging()
    _first, line = json_lines(out)
    assert TOKEN not in out.getvalue()
    # Stamped when logged, although formatted only after the output was released.
    assert logged_at <= datetime.fromisoformat(line.pop("timestamp")) < released_at
    assert line == {
        "event": "rpc",
        "level": "info",
        "logger": "ledger.rpc",
        "method": "/m",
        "request_id": "req-9",
        "code": "OK",
        "token": REDACTED,
        "duration_ms": 0.5,
    }


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_line_of_log_line_is_written_as_its_record_would_be(fmt: str) -> None:
    configure_logging(fmt, stream=io.StringIO())
    handler = next(h for h in logging.root.handlers if isinstance(h, ledger.logging._LedgerHandler))
    context = {"method": "/m", "token": TOKEN, "code": "OK", "peer": {"password": TOKEN}}
    line = ledger.logging._Line("ledger.rpc", logging.INFO, "rpc", context, time.time() - 5)
    text = handler._format_line(line)
    # Byte for byte the record's line: same keys in the same order, same time.
    assert text == handler.format(line.record())
    assert TOKEN not in text
    if fmt == "json":
        assert list(json.loads(text)) == [
            *["event", "method", "token", "code", "peer"],
            *["level", "logger", "timestamp"],
        ]


def test_log_line_without_a_background_writer_logs_through_structlog() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    with structlog.contextvars.bound_contextvars(request_id="req-3"):
        ledger.logging.log_line("ledger.rpc", "rpc", code="NOT_FOUND")
    (line,) = json_lines(out)
    assert (line["event"], line["logger"], line["code"], line["request_id"]) == (
        "rpc",
        "ledger.rpc",
        "NOT_FOUND",
        "req-3",
    )


def test_in_the_background_a_line_that_cannot_be_formatted_loses_no_other_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)  # the bad line is reported quietly
    out = BlockedOutput()
    configure_logging("json", stream=out, background=True)
    structlog.get_logger().info("before")
    logging.getLogger("some.library").warning("%d items", "not a number")
    structlog.get_logger().info("after")
    out.released.set()
    flush_logging()
    assert [line["event"] for line in json_lines(out)] == ["before", "after"]
