"""The Python client's retries and error decoding, ``ledger demo`` against a live server,
and the README's walkthrough, replayed so that it cannot drift from the API."""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ledger import demo
from ledger.api.principals import write_dev_principals
from ledger.client import (
    LedgerCallError,
    LedgerClient,
    RetryPolicy,
    call_with_retry,
    is_retryable,
    new_request_id,
)
from ledger.domain.values import validate_uscc
from ledger.settings import Settings
from ledger.v1 import (
    access_pb2,
    audit_pb2,
    common_pb2,
    listing_pb2,
    participant_pb2,
    projection_pb2,
    trade_pb2,
)
from tests.e2e.conftest import (
    ROOT,
    LedgerProcess,
    ServerFiles,
    make_signing_key,
    rid,
    server_env,
    start_ledger,
)
from tests.market import uscc
from tests.tcp_proxy import TcpProxy

README = ROOT / "README.md"
DEMO_SEED = 11
Code = grpc.StatusCode


# --- retry policy, with fakes ---------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc raises it: a code, details and (no) trailers."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


@dataclass
class FakeClock:
    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(*failures: grpc.StatusCode) -> tuple[Callable[[float], str], list[float]]:
    """An attempt function failing with ``failures`` in turn, then answering "ok"; it
    records the deadline each attempt was given."""
    deadlines: list[float] = []
    queue = list(failures)

    def attempt(remaining_s: float) -> str:
        deadlines.append(remaining_s)
        if queue:
            raise FakeRpcError(queue.pop(0), "injected")
        return "ok"

    return attempt, deadlines


def retry(
    attempt: Callable[[float], str],
    clock: FakeClock,
    *,
    policy: RetryPolicy | None = None,
    timeout_s: float = 10.0,
    request: Message | None = None,
) -> str:
    return call_with_retry(
        attempt,
        method="Test",
        timeout_s=timeout_s,
        policy=policy or RetryPolicy(),
        retryable=lambda error: is_retryable(error, request),
        sleep=clock.sleep,
        clock=clock.time,
        rng=random.Random(1),
    )


def test_unavailable_is_retried_until_it_succeeds() -> None:
    clock = FakeClock()
    attempt, deadlines = flaky(Code.UNAVAILABLE, Code.UNAVAILABLE)
    assert retry(attempt, clock) == "ok"
    assert len(deadlines) == 3
    # Every attempt gets what is left of the one overall deadline.
    assert deadlines[0] == 10.0
    assert deadlines == sorted(deadlines, reverse=True)
    assert deadlines[2] == pytest.approx(10.0 - sum(clock.sleeps))


def test_attempts_are_bounded() -> None:
    clock = FakeClock()
    attempt, deadlines = flaky(*[Code.UNAVAILABLE] * 10)
    with pytest.raises(LedgerCallError) as caught:
        retry(attempt, clock, policy=RetryPolicy(max_attempts=5))
    assert caught.value.code is Code.UNAVAILABLE
    assert caught.value.attempts == 5
    assert len(deadlines) == 5
    assert len(clock.sleeps) == 4


def test_backoff_grows_exponentially_with_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(7)
    for attempt in range(1, 9):
        ceiling = min(1.0, 0.1 * 2 ** (attempt - 1))
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # Jitter: the waits spread over the interval rather than sit at its end.
        assert max(waits) - min(waits) > ceiling / 2


def test_no_retry_once_the_overall_deadline_would_pass() -> None:
    clock = FakeClock()
    attempt, deadlines = flaky(*[Code.UNAVAILABLE] * 10)
    policy = RetryPolicy(max_attempts=100, initial_backoff_s=1.0, max_backoff_s=1.0)
    with pytest.raises(LedgerCallError):
        retry(attempt, clock, policy=policy, timeout_s=3.0)
    assert clock.now < 3.0
    assert len(deadlines) < 100


@pytest.mark.parametrize(
    "code",
    [
        Code.INVALID_ARGUMENT,
        Code.FAILED_PRECONDITION,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
        Code.RESOURCE_EXHAUSTED,
        Code.DEADLINE_EXCEEDED,
        Code.INTERNAL,
        Code.UNIMPLEMENTED,
    ],
)
def test_other_failures_are_never_retried(code: grpc.StatusCode) -> None:
    clock = FakeClock()
    attempt, deadlines = flaky(code)
    with pytest.raises(LedgerCallError) as caught:
        retry(attempt, clock)
    assert caught.value.code is code
    assert len(deadlines) == 1
    assert clock.sleeps == []


def test_aborted_is_retried_only_without_an_etag() -> None:
    # Without an etag, ABORTED means the command lost a race and may win the next one;
    # with a stale etag, the same request can only fail again.
    racing = listing_pb2.SuspendListingRequest(request_id=rid(), listing_id=rid())
    stale = listing_pb2.SuspendListingRequest(request_id=rid(), listing_id=rid(), etag="3")
    attempt, deadlines = flaky(Code.ABORTED)
    assert retry(attempt, FakeClock(), request=racing) == "ok"
    assert len(deadlines) == 2
    attempt, deadlines = flaky(Code.ABORTED)
    with pytest.raises(LedgerCallError):
        retry(attempt, FakeClock(), request=stale)
    assert len(deadlines) == 1


class RecordingChannel:
    """A channel whose every unary method fails UNAVAILABLE ``failures`` times, then
    answers with a default response; it records each attempt."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[tuple[str, Message, float, tuple[tuple[str, str], ...]]] = []

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., Any]:
        def call(request: Message, timeout: float, metadata: tuple[tuple[str, str], ...]) -> Any:
            self.attempts.append((method, request, timeout, metadata))
            if len(self.attempts) <= self.failures:
                raise FakeRpcError(Code.UNAVAILABLE, "connection refused")
            return response_deserializer(b"")

        return call

    def unary_stream(self, method: str, **_: Any) -> Callable[..., Any]:
        def call(*_args: Any, **_kwargs: Any) -> Any:
            raise AssertionError("the client makes no streaming calls")

        return call

    def close(self) -> None:
        pass


def test_the_client_resends_the_same_request_with_a_deadline_and_the_token() -> None:
    channel = RecordingChannel(failures=2)
    sleeps: list[float] = []
    client = LedgerClient(
        "fake:1",
        "secret",
        timeout_s=5.0,
        channel=channel,
        sleep=sleeps.append,
    )
    request = participant_pb2.RegisterParticipantRequest(request_id=new_request_id(), name="Acme")
    response = client.register_participant(request)
    assert isinstance(response, participant_pb2.RegisterParticipantResponse)
    methods = {method for method, *_ in channel.attempts}
    assert methods == {"/ledger.v1.ParticipantService/RegisterParticipant"}
    sent = [sent for _, sent, _, _ in channel.attempts]
    assert len(sent) == 3
    assert {m.request_id for m in sent} == {request.request_id}  # type: ignore[attr-defined]
    assert all(0 < timeout <= 5.0 for _, _, timeout, _ in channel.attempts)
    assert all(md == (("authorization", "Bearer secret"),) for *_, md in channel.attempts)
    assert len(sleeps) == 2


def test_request_ids_are_fresh_uuids() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)


# --- a live server --------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    server: LedgerProcess
    cwd: Path
    tokens_file: Path
    tokens: dict[str, str]

    def client(self, role: str, **options: Any) -> LedgerClient:
        return LedgerClient(self.server.address, self.tokens[role], **options)

    def head(self) -> int:
        with self.client("auditor") as auditor:
            return int(auditor.get_ledger_info().head_position)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server whose exchange and assessor principals are the demo's Shanghai Data
    Exchange and Huaxin Law Offices, with a ``var/dev-tokens.json`` as ``--dev`` writes."""
    cwd = tmp_path_factory.mktemp("client")
    credentials = write_dev_principals(
        cwd / "var",
        participant_ids={
            "exchange": demo.participant_id("exchange/shanghai", DEMO_SEED),
            "assessor": demo.participant_id("assessor/huaxin", DEMO_SEED),
        },
    )
    files = ServerFiles(
        database=cwd / "var" / "ledger.db",
        principals=credentials.principals_file,
        signing_key=make_signing_key(cwd / "var" / "signing-key.pem"),
    )
    server = start_ledger(files, cwd)
    tokens = {role.value: token for role, token in credentials.tokens.items()}
    try:
        yield Live(server, cwd, credentials.tokens_file, tokens)
    finally:
        server.stop()


def register_request(name: str = "Retry Co") -> participant_pb2.RegisterParticipantRequest:
    return participant_pb2.RegisterParticipantRequest(
        request_id=new_request_id(),
        name=name,
        roles=[common_pb2.PARTICIPANT_ROLE_BUYER],
        party_identifier=common_pb2.PartyIdentifier(uscc=uscc()),
    )


class LoseFirstResponse(grpc.UnaryUnaryClientInterceptor):
    """Lets the first call reach the server and then reports UNAVAILABLE instead of its
    response, as a connection dropped after the server acted would."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Message) -> Any:
        self.sent.append(request)
        outcome = continuation(details, request)
        if len(self.sent) == 1:
            outcome.result()  # the server has written it
            raise FakeRpcError(Code.UNAVAILABLE, "connection reset after the request was sent")
        return outcome


def test_a_retry_after_a_lost_response_returns_the_original_and_writes_once(live: Live) -> None:
    lossy = LoseFirstResponse()
    channel = grpc.intercept_channel(grpc.insecure_channel(live.server.address), lossy)
    request = register_request("Lost Ack Co")
    before = live.head()
    with LedgerClient(live.server.address, live.tokens["registry"], channel=channel) as client:
        response = client.register_participant(request)
    channel.close()
    assert [m.request_id for m in lossy.sent] == [request.request_id] * 2  # type: ignore[attr-defined]
    # One write, whose position the retry reports: the first attempt's write.
    after = live.head()
    assert response.position == after > before
    with live.client("registry") as client:
        again = client.register_participant(request)
    assert again == response
    assert live.head() == after


def test_a_call_through_a_cut_connection_succeeds_once_it_is_restored(live: Live) -> None:
    host, port = live.server.address.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    proxy.cut()

    def restore_then_wait(seconds: float) -> None:
        # The client's own backoff, with the connection restored while it waits.
        proxy.restore()
        waits.append(seconds)
        time.sleep(seconds)

    waits: list[float] = []
    try:
        with LedgerClient(
            f"127.0.0.1:{proxy.port}",
            live.tokens["registry"],
            sleep=restore_then_wait,
            retry=RetryPolicy(max_attempts=20, initial_backoff_s=0.05, max_backoff_s=0.2),
        ) as client:
            response = client.register_participant(register_request("Cut Co"))
    finally:
        proxy.close()
    assert response.participant.name == "Cut Co"
    assert len(waits) >= 1  # the first attempt met the cut connection


def test_an_unreachable_server_fails_unavailable_within_the_deadline() -> None:
    proxy = TcpProxy("127.0.0.1", 9)  # nothing is forwarded while cut
    proxy.cut()
    try:
        with (
            LedgerClient(
                f"127.0.0.1:{proxy.port}",
                "token",
                timeout_s=2.0,
                sleep=lambda _s: None,
                retry=RetryPolicy(max_attempts=3),
            ) as client,
            pytest.raises(LedgerCallError) as caught,
        ):
            client.get_ledger_info()
    finally:
        proxy.close()
    assert caught.value.code is Code.UNAVAILABLE
    assert caught.value.attempts == 3


def test_errors_carry_the_decoded_details(live: Live) -> None:
    with live.client("admin") as admin:
        with pytest.raises(LedgerCallError) as malformed:
            admin.register_participant(
                participant_pb2.RegisterParticipantRequest(request_id="not-a-uuid", name="X")
            )
        with pytest.raises(LedgerCallError) as missing:
            admin.get_listing(rid())
        with pytest.raises(LedgerCallError) as refused:
            admin.submit_listing(core_listing_request(live))
    assert malformed.value.code is Code.INVALID_ARGUMENT
    assert [v.field for v in malformed.value.field_violations] == ["request_id"]
    assert missing.value.code is Code.NOT_FOUND
    assert missing.value.resource_type == "listing"
    assert refused.value.code is Code.FAILED_PRECONDITION
    assert (refused.value.reason, refused.value.rule, refused.value.domain) == (
        "R01_CORE_DATA",
        "R01",
        "ledger.v1",
    )
    assert refused.value.attempts == 1


def core_listing_request(live: Live) -> listing_pb2.SubmitListingRequest:
    with live.client("registry") as registry:
        exchange = registry.register_participant(register_request("Core Venue")).participant.id
        provider = registry.register_participant(register_request("Core Holder")).participant.id
    return listing_pb2.SubmitListingRequest(
        request_id=new_request_id(),
        exchange_id=exchange,
        provider_id=provider,
        title="Dispatch topology",
        category=common_pb2.CATEGORY_INDUSTRIAL,
        classification=common_pb2.CLASSIFICATION_CORE,
        personal_information_level=common_pb2.PERSONAL_INFORMATION_LEVEL_NONE,
        rights=[common_pb2.RIGHT_OPERATE],
        delivery_modes=[common_pb2.DELIVERY_MODE_API],
        scenarios=["grid-planning"],
        list_price=common_pb2.Money(currency="CNY", amount_minor=1),
    )


# --- the demo -------------------------------------------------------------------------

EXPECTED_REFUSALS = (
    "R01_CORE_DATA",
    "R03_ASSESSMENT_FAILED",
    "R04_OWNERSHIP_DISPUTED",
    "R05_LISTING_NOT_LISTED",
    "R06_SCENARIO_NOT_ALLOWED",
    "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
    "R09_EXCHANGE_IS_PARTY",
    "R10_RIGHTS_NOT_HELD",
    "R12_CROSS_BORDER_BASIS_REQUIRED",
    "R13_SEPARATE_CONSENT_REQUIRED",
    "R14_GRANTEE_NOT_ACTIVE",
    "R16_REVOKED_IS_FINAL",
)


def run_demo_command(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", "demo", *args],
        cwd=ROOT,
        env=server_env(live.cwd),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_demo_loads_a_market_and_a_rerun_writes_nothing(live: Live) -> None:
    args = ["--address", live.server.address, "--tokens", str(live.tokens_file)]
    args += ["--seed", str(DEMO_SEED)]
    first = run_demo_command(live, *args)
    assert first.returncode == 0, first.stderr
    for reason in EXPECTED_REFUSALS:
        assert f"refused as expected: {reason}" in first.stdout
    written = re.search(r"head position (\d+) → (\d+): (\d+) events written", first.stdout)
    assert written is not None, first.stdout
    assert int(written.group(3)) >= 300
    # The demo's Shanghai venue is the exchange principal's, so its acts use that token.
    assert re.search(r"signed by: .*assessor [1-9].*exchange [1-9]", first.stdout), first.stdout
    head = live.head()
    assert head == int(written.group(2))

    second = run_demo_command(live, *args)
    assert second.returncode == 0, second.stderr
    assert f"head position {head} → {head}: 0 events written" in second.stdout
    for reason in EXPECTED_REFUSALS:
        assert f"refused as expected: {reason}" in second.stdout
    assert live.head() == head

    with live.client("auditor") as auditor:
        exchange = auditor.get_participant(demo.participant_id("exchange/shanghai", DEMO_SEED))
    assert exchange.name == "Shanghai Data Exchange"


def test_the_demo_says_what_to_do_without_a_server(live: Live, tmp_path: Path) -> None:
    proxy = TcpProxy("127.0.0.1", 9)
    proxy.cut()
    try:
        with pytest.raises(demo.DemoError, match="make run"):
            demo.run_demo(f"127.0.0.1:{proxy.port}", live.tokens_file, 1, 1, connect_timeout_s=0.2)
    finally:
        proxy.close()
    missing = run_demo_command(live, "--tokens", str(tmp_path / "absent.json"))
    assert missing.returncode == 1
    assert "no tokens file" in missing.stderr


def test_demo_usccs_are_valid_and_distinct() -> None:
    seeded = demo.Seeded(DEMO_SEED, 1)
    parties = [*demo.EXCHANGES, *demo.OTHER_PARTIES, *demo.buyers(3)]
    codes = [seeded.uscc(p.key, p.prefix, p.division) for p in parties if not p.foreign_country]
    assert all(validate_uscc(code) == code for code in codes)
    assert len(set(codes)) == len(codes)
    assert demo.Seeded(DEMO_SEED + 1, 1).uscc("x", "91", "310000") != seeded.uscc(
        "x", "91", "310000"
    )


# --- the README -----------------------------------------------------------------------

SETUP_BLOCK = [
    "# ledger",
    "",
    "```",
    "make run    # creates .venv, installs, serves the gRPC API on 127.0.0.1:50051 "
    "(SQLite, dev principals)",
    "make test   # creates .venv, installs, runs the whole suite (SQLite and PostgreSQL)",
    "```",
]
README_ADDRESS = "127.0.0.1:50051"
LEDGER_SERVICES = {
    f"ledger.v1.{name}"
    for module in (participant_pb2, listing_pb2, trade_pb2, access_pb2, audit_pb2, projection_pb2)
    for name in module.DESCRIPTOR.services_by_name
}


def walkthrough() -> str:
    match = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match is not None, "the README has no ```sh walkthrough block"
    return match.group(1)


def test_the_readme_starts_with_the_set_up_commands() -> None:
    assert README.read_text(encoding="utf-8").splitlines()[: len(SETUP_BLOCK)] == SETUP_BLOCK


def test_the_readme_documents_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    for setting in dataclasses.fields(Settings):
        assert f"`LEDGER_{setting.name.upper()}`" in text, setting.name


@dataclass
class Walkthrough:
    """Runs the README's shell walkthrough through the generated stubs: the same JSON
    bodies, tokens and captured ids, without grpcurl."""

    live: Live
    channel: grpc.Channel
    role: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    CAPTURE = re.compile(r"^(\w+)=\$\(call (\w+)/(\w+) <<EOF \| jq -r ([.\w]+)$")
    CALL = re.compile(r"^call (\w+)/(\w+) <<EOF(?: \|\| echo .*)?$")
    TOKEN = re.compile(r"^TOKEN=\$\(jq -r \.(\w+) var/dev-tokens\.json\)$")
    DIRECT = re.compile(
        r'^grpcurl -plaintext -H "authorization: Bearer \$\(jq -r \.(\w+) var/dev-tokens\.json\)"'
        rf" {re.escape(README_ADDRESS)} ledger\.v1\.(\w+)/(\w+)$"
    )
    EXPECT = re.compile(r"^# refused: (\w+)$")

    def run(self, script: str) -> None:
        lines = iter(script.splitlines())
        expected_refusal = ""
        for line in lines:
            if match := self.EXPECT.match(line):
                expected_refusal = match.group(1)
            elif not line.strip() or line.startswith(("#", "echo ", ")")):
                continue
            elif line == f"grpcurl -plaintext {README_ADDRESS} list":
                services = set(ProtoReflectionDescriptorDatabase(self.channel).get_services())
                assert services >= LEDGER_SERVICES
            elif line.startswith("call() {"):
                assert f"-d @ {README_ADDRESS}" in line
            elif match := self.TOKEN.match(line):
                self.role = match.group(1)
            elif match := self.DIRECT.match(line):
                role, service, method = match.groups()
                self.call(service, method, "{}", role)
            elif match := self.CAPTURE.match(line):
                name, service, method, path = match.groups()
                response = self.call(service, method, self.body(lines), self.role)
                self.variables[name] = self.extract(response, path)
            elif match := self.CALL.match(line):
                service, method = match.groups()
                body = self.body(lines)
                if expected_refusal:
                    self.expect_refusal(service, method, body, expected_refusal)
                    expected_refusal = ""
                else:
                    self.call(service, method, body, self.role)
            else:
                pytest.fail(f"the README walkthrough has a line this test cannot run: {line!r}")

    def body(self, lines: Iterator[str]) -> str:
        text: list[str] = []
        for line in lines:
            if line == "EOF":
                return re.sub(r"\$(\w+)", lambda m: self.variables[m.group(1)], "\n".join(text))
            text.append(line)
        pytest.fail("a heredoc in the README walkthrough does not end with EOF")

    def call(self, service: str, method: str, body: str, role: str) -> dict[str, Any]:
        descriptor = self._method(service, method)
        request = json_format.Parse(body, message_factory.GetMessageClass(descriptor.input_type)())
        output = message_factory.GetMessageClass(descriptor.output_type)
        rpc = self.channel.unary_unary(
            f"/ledger.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )
        metadata = (("authorization", f"Bearer {self.live.tokens[role]}"),)
        response = rpc(request, metadata=metadata, timeout=10)
        result: dict[str, Any] = json_format.MessageToDict(
            response, preserving_proto_field_name=True
        )
        return result

    def expect_refusal(self, service: str, method: str, body: str, reason: str) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(service, method, body, self.role)
        error = LedgerCallError.from_rpc_error(caught.value, method)
        assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, reason)
        self.refused.append(reason)

    @staticmethod
    def extract(response: dict[str, Any], path: str) -> str:
        value: Any = response
        for key in path.strip(".").split("."):
            value = value[key]
        assert isinstance(value, str)
        assert value
        return value

    @staticmethod
    def _method(service: str, method: str) -> Any:
        for module in (participant_pb2, listing_pb2, trade_pb2, access_pb2, audit_pb2):
            if service in module.DESCRIPTOR.services_by_name:
                return module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        raise AssertionError(f"the README calls an unknown service {service}")


def test_the_readme_walkthrough_runs_and_is_idempotent(live: Live) -> None:
    script = walkthrough()
    with grpc.insecure_channel(live.server.address) as channel:
        first = Walkthrough(live, channel)
        first.run(script)
        head = live.head()
        second = Walkthrough(live, channel)
        second.run(script)
    assert set(first.variables) == {
        "EXCHANGE",
        "BUYER",
        "PROVIDER",
        "ASSESSOR",
        "LISTING",
        "TRADE",
        "GRANT",
    }
    assert second.variables == first.variables
    assert first.refused == ["R09_EXCHANGE_IS_PARTY"]
    assert live.head() == head


@pytest.mark.skipif(
    shutil.which("grpcurl") is None or shutil.which("jq") is None,
    reason="grpcurl or jq is not on PATH; the walkthrough ran through the stubs instead",
)
def test_the_readme_walkthrough_runs_verbatim_with_grpcurl(live: Live) -> None:
    script = walkthrough().replace(README_ADDRESS, live.server.address)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=live.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "R09_EXCHANGE_IS_PARTY" in result.stderr
    assert "refused, as it should be" in result.stdout
    assert '"state": "GRANT_STATE_ACTIVE"' in result.stdout
