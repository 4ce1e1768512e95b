"""Replay's reading and encoding in worker processes of the server's own.

Encoding stored rows for the wire holds the interpreter lock about 7 µs an event, so a
stream encoded in the server's process runs at one interpreter's pace, whatever the
cores. ``ReplayWorkers`` keeps a few worker processes instead: each reads a span of
positions from the store on a connection of its own, encodes it (``encode_span``) and
hands back the finished messages, which ``EventReplay`` sends in log order; the server's
process only moves bytes.

A worker is a fresh interpreter (``python -m ledger.audit.replay_workers``) that imports
the reader and the encoder and nothing else: never a fork of a process that runs gRPC's
threads. It takes its requests on standard input and answers on standard output, as
pickles (between two processes of the same server; nothing else writes to these pipes),
one span at a time. In the server a thread per worker feeds it spans from one queue that
every stream shares. A worker that dies fails the span it had with ``Unavailable`` and is
started again for the next one; when the server closes the pool, or dies, a worker reads
the end of its input and exits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, Final, cast

from ledger.audit.replay import ReplayQuery, Span, encode_span, read_span
from ledger.audit.stored import AuditReader, StoreAddress, UndecodableEvent, open_reader
from ledger.domain.errors import LedgerError, Unavailable

MAX_PROCESSES: Final = 32
# Spans a stream has submitted ahead per worker: one being encoded and one waiting, so
# that no worker waits for a stream's next span while the stream's client keeps up.
WINDOW_PER_PROCESS: Final = 2
STOP_TIMEOUT_S: Final = 5.0
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


@dataclass(frozen=True)
class _Task:
    query: ReplayQuery
    span: Span
    future: Future[list[bytes]]


class ReplayWorkers:
    """A pool of ``processes`` worker processes reading and encoding spans of the store
    at ``store`` (see the module). ``start`` starts them, ``close`` stops them; a stream
    submits at most ``window`` spans ahead."""

    def __init__(self, store: StoreAddress, processes: int) -> None:
        if not 1 <= processes <= MAX_PROCESSES:
            raise ValueError(
                f"replay workers: expected 1 to {MAX_PROCESSES} processes, not {processes}"
            )
        self._store = store
        self.processes = processes
        self.window = WINDOW_PER_PROCESS * processes
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._feeders: list[threading.Thread] = []
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Starts the worker processes (they are ready once they have imported the
        encoder, a fraction of a second later)."""
        with self._lock:
            if self._closed or self._feeders:
                return
            for number in range(self.processes):
                feeder = threading.Thread(
                    target=self._feed, name=f"replay-worker-{number}", daemon=True
                )
                feeder.start()
                self._feeders.append(feeder)

    def submit(self, query: ReplayQuery, span: Span) -> Future[list[bytes]]:
        """The messages of ``encode_span(read_span(reader, span), query)``, from a
        worker; the future raises what the worker raised (``Unavailable`` if it died)."""
        future: Future[list[bytes]] = Future()
        with self._lock:
            if self._closed:
                raise Unavailable("the server is stopping; retry")
            self._tasks.put(_Task(query, span, future))
        return future

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops the workers once they have finished their spans; spans not yet begun are
        cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._feeders:
                self._tasks.put(None)
        for feeder in self._feeders:
            feeder.join(timeout_s)
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task.future.cancel()

    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.poll() is None]

    def _feed(self) -> None:
        """Hands the tasks of the queue to one worker process, one at a time."""
        worker: _Worker | None = None
        try:
            # Started before the first stream needs it.
            worker = self._started()
            while (task := self._tasks.get()) is not None:
                if not task.future.set_running_or_notify_cancel():
                    continue
                try:
                    if worker is None or worker.process.poll() is not None:
                        # Not started, or it died since its last span.
                        self._stopped(worker)
                        worker = None
                        worker = self._started()
                    ok, outcome = worker.run((task.query, task.span))
                except (OSError, EOFError, pickle.UnpicklingError) as error:
                    self._stopped(worker, kill=True)
                    worker = None
                    task.future.set_exception(
                        Unavailable(f"a replay worker stopped ({error!r}); retry")
                    )
                    continue
                if ok:
                    task.future.set_result(cast(list[bytes], outcome))
                else:
                    task.future.set_exception(cast(BaseException, outcome))
        finally:
            self._stopped(worker)

    def _started(self) -> _Worker:
        worker = _Worker(self._store)
        with self._lock:
            self._workers.add(worker)
        return worker

    def _stopped(self, worker: _Worker | None, kill: bool = False) -> None:
        if worker is None:
            return
        with self._lock:
            self._workers.discard(worker)
        if kill:
            worker.kill()
        else:
            worker.stop(STOP_TIMEOUT_S)


class _Worker:
    """One worker process and its pipes, told at once which store to read."""

    command: Sequence[str] = (sys.executable, "-m", __name__)

    def __init__(self, store: StoreAddress) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._requests = cast(IO[bytes], self.process.stdin)
        self._replies = cast(IO[bytes], self.process.stdout)
        try:
            pickle.dump(store, self._requests, _PROTOCOL)
            self._requests.flush()
        except OSError:
            self.kill()
            raise

    def run(self, request: tuple[ReplayQuery, Span]) -> tuple[bool, object]:
        """Sends a request and returns the reply: (True, messages) or (False, error)."""
        pickle.dump(request, self._requests, _PROTOCOL)
        self._requests.flush()
        # The worker is a process of this server's, which it started itself.
        reply: tuple[bool, object] = pickle.load(self._replies)  # noqa: S301
        return reply

    def stop(self, timeout_s: float) -> None:
        """Closes its input (it exits at the end of it), and kills it if it lingers."""
        with contextlib.suppress(OSError):
            self._requests.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._replies.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                pipe.close()


def _portable(error: Exception) -> BaseException:
    """The error as the server is to raise it: a ledger error (a database that cannot be
    read is ``Unavailable``) or an undecodable event as it is, anything else as a
    ``RuntimeError`` that carries the worker's traceback (an internal error)."""
    if isinstance(error, LedgerError | UndecodableEvent):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(error, _PROTOCOL))  # noqa: S301 - its own bytes
            return error
    text = "".join(traceback.format_exception(error))
    return RuntimeError(f"replay worker: {type(error).__name__}: {error}\n{text}")


def _encode(reader: AuditReader, query: ReplayQuery, span: Span) -> list[bytes]:
    try:
        return encode_span(read_span(reader, span), query)
    except Unavailable:
        # A connection that the database dropped while the worker was idle is found dead
        # on its first use: it is opened again once (at once refused if the database is
        # down).
        return encode_span(read_span(reader, span), query)


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """A worker's loop: the store's address, then spans until the end of the input."""
    from ledger import collector

    # The input is the server's, which started this process.
    store: StoreAddress = pickle.load(requests)  # noqa: S301
    reader, close = open_reader(store)
    try:
        with collector.bulk():
            while True:
                try:
                    query, span = pickle.load(requests)  # noqa: S301
                except EOFError:
                    return
                reply: tuple[bool, Any]
                try:
                    reply = (True, _encode(reader, query, span))
                except Exception as error:  # handed to the server, which raises it
                    reply = (False, _portable(error))
                pickle.dump(reply, replies, _PROTOCOL)
                replies.flush()
                del reply
    finally:
        close()


def main() -> int:
    # The server decides when a worker stops (Ctrl-C in a terminal reaches every process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    # Replies go to a pipe of their own; whatever else writes to standard output (a
    # library's print) goes to standard error instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(requests, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
