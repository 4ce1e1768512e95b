"""A real ``ledger serve`` process for benchmarks: loopback only, a free port, its own
principals and signing key, always stopped (and killed if need be) on the way out."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ledger.api.principals import Role, write_dev_principals
from ledger.audit.checkpoint import generate_private_key_file
from ledger.settings import Settings
from ledger.v1 import projection_pb2, projection_pb2_grpc

LISTENING = re.compile(r"^ledger serve: listening on (\S+)$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.25
RSS_POLL_S = 0.02

Metadata = tuple[tuple[str, str], ...]


class ServerFailed(RuntimeError):
    """The server did not start, or its projections failed; the message holds its log."""


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ServerFailed(f"process {pid} reports no VmHWM")


def descendants(pid: int) -> list[int]:
    """The processes that ``pid`` started, and that those started, running now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; the fields follow the last ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        started = children.get(pending.pop(), [])
        found += started
        pending += started
    return found


def child_env(var_dir: Path) -> dict[str, str]:
    """Our environment minus the ``LEDGER_*`` settings, which would leak into a child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_VAR_DIR"] = str(var_dir)
    env["LEDGER_LOG_FORMAT"] = "json"
    return env


@dataclass
class BenchServer:
    """A running server, the address it listens on and a token per role."""

    process: subprocess.Popen[str]
    address: str
    tokens: Mapping[Role, str]
    log_file: Path

    def metadata(self, role: Role) -> Metadata:
        return (("authorization", f"Bearer {self.tokens[role]}"),)

    def peak_rss_mb(self) -> float:
        """The server's peak RSS with its worker processes': the sum of each running
        process's own peak (an upper bound of what they held at any one time)."""
        return sum(self.peak_rss_by_process_mb())

    def peak_rss_by_process_mb(self) -> list[float]:
        """The peak RSS of the server, then of each process it started that runs now
        (its replay workers), in MiB."""
        peaks = [peak_rss_mb(self.process.pid)]
        for pid in descendants(self.process.pid):
            # One that ended meanwhile holds nothing any longer.
            with contextlib.suppress(OSError, ServerFailed):
                peaks.append(peak_rss_mb(pid))
        return peaks

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        _stop(self.process)

    def wait_for_projections(self, timeout_s: float, progress: bool = False) -> float:
        """Polls ``ListProjections`` until every projection is LIVE with no lag (with a
        progress bar on a terminal); returns the seconds it took. Raises
        ``ServerFailed`` if one fails or time runs out."""
        started = time.monotonic()
        deadline = started + timeout_s
        with (
            grpc.insecure_channel(self.address) as channel,
            Progress(
                TextColumn("[bold]server catching up"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                disable=not progress,
                transient=True,
            ) as bar,
        ):
            task = bar.add_task("catch up", total=None)
            stub = projection_pb2_grpc.ProjectionServiceStub(channel)
            while True:
                response = stub.ListProjections(
                    projection_pb2.ListProjectionsRequest(),
                    metadata=self.metadata(Role.OPERATOR),
                    timeout=30,
                )
                statuses = list(response.projections)
                failed = [s for s in statuses if s.state == projection_pb2.PROJECTION_STATE_FAILED]
                if failed:
                    raise ServerFailed(f"projection {failed[0].name} failed: {failed[0].error}")
                if statuses:
                    slowest = min(statuses, key=lambda s: s.position)
                    bar.update(task, completed=slowest.position, total=slowest.head_position)
                if statuses and all(
                    s.lag_events == 0 and s.state == projection_pb2.PROJECTION_STATE_LIVE
                    for s in statuses
                ):
                    return time.monotonic() - started
                if time.monotonic() > deadline:
                    behind = {s.name: s.lag_events for s in statuses}
                    raise ServerFailed(f"projections not caught up in {timeout_s:.0f} s: {behind}")
                time.sleep(POLL_S)


@contextmanager
def replicas(settings: Settings, exchange_id: str, count: int) -> Iterator[list[BenchServer]]:
    """``count`` servers on one PostgreSQL database and one projection worker beside
    them: the scale-out deployment."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                serving(settings, exchange_id, projection_worker=i == 0, run_projections=False)
            )
            for i in range(count)
        ]


@contextmanager
def deployment(
    settings: Settings, exchange_id: str, backend: str, count: int
) -> Iterator[list[BenchServer]]:
    """On PostgreSQL, the scale-out deployment of ``count`` server replicas and a
    projection worker (a Python server's interpreter lock keeps it to one core, and the
    replicas share the others); on SQLite, one server."""
    if backend == "postgresql":
        with replicas(settings, exchange_id, count) as servers:
            yield servers
    else:
        with serving(settings, exchange_id) as server:
            yield [server]


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM and a graceful exit, or SIGKILL when it does not come."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@contextmanager
def serving(
    settings: Settings,
    exchange_id: str | None = None,
    projection_worker: bool = False,
    run_projections: bool = True,
) -> Iterator[BenchServer]:
    """Starts ``ledger serve`` on ``settings.database_url`` at 127.0.0.1 on a free port and
    waits until it is SERVING; the exchange principal stands for ``exchange_id``.

    With ``projection_worker`` the projections follow the log in a ``ledger projections
    run`` process of their own, as in the scale-out deployment, not in the server; with
    neither that nor ``run_projections``, another process is to run them."""
    with tempfile.TemporaryDirectory(prefix="ledger-bench-server-") as directory:
        work = Path(directory)
        credentials = write_dev_principals(
            work, participant_ids={"exchange": exchange_id} if exchange_id else None
        )
        key = work / "signing-key.pem"
        generate_private_key_file(key)
        log_file = work / "server.log"
        command = [
            sys.executable,
            "-m",
            "ledger",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--database-url",
            settings.database_url,
            "--principals-file",
            str(credentials.principals_file),
            "--signing-key-file",
            str(key),
        ]
        env = child_env(work)
        worker: subprocess.Popen[str] | None = None
        if projection_worker or not run_projections:
            env["LEDGER_RUN_PROJECTIONS"] = "false"
        if projection_worker:
            with (work / "projections.log").open("w") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "ledger", "projections", "run"],
                    env={**env, "LEDGER_DATABASE_URL": settings.database_url},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                )
        with log_file.open("w") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        server: BenchServer | None = None
        try:
            address = _listening_address(process, time.monotonic() + START_TIMEOUT_S, log_file)
            server = BenchServer(process, address, credentials.tokens, log_file)
            _wait_until_serving(server, time.monotonic() + START_TIMEOUT_S)
            yield server
        finally:
            if server is not None:
                server.stop()
            elif process.poll() is None:
                process.kill()
                process.wait()
            if worker is not None:
                _stop(worker)


def _listening_address(process: subprocess.Popen[str], deadline: float, log_file: Path) -> str:
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        # Keeps reading so that the server never blocks on a full pipe.
        for line in stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=drain, name="bench-server-stdout", daemon=True).start()
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        match = LISTENING.match(line)
        if match:
            return match.group(1)
    raise ServerFailed(f"the server did not report its address; its log:\n{log_file.read_text()}")


def _wait_until_serving(server: BenchServer, deadline: float) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.05)
    raise ServerFailed(f"the server did not become SERVING in time; its log:\n{server.log_tail()}")


@dataclass(frozen=True)
class Finished:
    """A child process that ran to its end: exit code, output and peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


def run_measured(
    command: list[str], env: Mapping[str, str], timeout_s: float, stdin: str = ""
) -> Finished:
    """Runs a child to its end, reading its VmHWM every few milliseconds (VmHWM only
    grows, so the last reading misses at most the child's final instants); a child that
    outlives ``timeout_s`` is killed. (``wait4``'s ``ru_maxrss`` will not do: at exec it
    takes over the RSS of the forking process, which here is far larger.)"""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    readers = [
        threading.Thread(target=lambda s=stream, into=sink: into.append(s.read()), daemon=True)
        for stream, sink in ((process.stdout, out), (process.stderr, err))
    ]
    for reader in readers:
        reader.start()
    try:
        process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass
    peak = 0.0
    deadline = started + timeout_s
    try:
        while process.poll() is None:
            # Gone between poll() and the read when it is exiting.
            with contextlib.suppress(OSError, ServerFailed):
                peak = max(peak, peak_rss_mb(process.pid))
            if time.monotonic() > deadline:
                break
            time.sleep(RSS_POLL_S)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    for reader in readers:
        reader.join(10)
    return Finished(
        process.returncode, "".join(out), "".join(err), peak, time.monotonic() - started
    )
