"""Bad input: hypothesis builds requests for every method of the six ledger.v1 services
from their descriptors and sends them, one at a time, to one real server.

Field values are random or oversized strings, malformed and unknown UUIDs, real ids of
another venue, unknown enum numbers, timestamps out of range, negative and extreme
numbers, missing fields, and random bytes parsed as the message (or sent as they are,
for the server to parse). Most calls are the admin's, some the exchange's (so venue
scope is exercised), a few carry no or a forged token. No call may end INTERNAL or
UNKNOWN; a rejected call writes nothing (the head of the log does not move); and the
server is still up and SERVING at the end.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.api.principals import Role
from ledger.api.server import LEDGER_SERVICES
from ledger.projections.registry import all_projections
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
from tests.market import uscc
from tests.reliability.support import (
    BUG_CODES,
    SCALE,
    SCENARIO,
    SERVING,
    Identity,
    MarketWriter,
    Metadata,
    ServeProcess,
    Stubs,
    connect,
    health,
    make_identity,
    report,
    rid,
)

_FILES = (participant_pb2, listing_pb2, trade_pb2, access_pb2, audit_pb2, projection_pb2)
METHODS: tuple[MethodDescriptor, ...] = tuple(
    method
    for module in _FILES
    for service in module.DESCRIPTOR.services_by_name.values()
    if service.full_name in LEDGER_SERVICES
    for method in service.methods
)
BY_NAME = {f"{m.containing_service.name}.{m.name}": m for m in METHODS}
EXAMPLES = 800 * SCALE
RAW_EXAMPLES = 100 * SCALE
# Wall-clock guard over the whole module: once spent, examples are drawn but not sent.
BUDGET_S = 120.0 * SCALE
CALL_TIMEOUT_S = 30.0
# Streams (ReplayEvents with follow, WatchProjection) never end by themselves.
STREAM_TIMEOUT_S = 2.0
STREAM_MESSAGES = 3

TIMESTAMP = Timestamp.DESCRIPTOR.full_name
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # years 1 and 9999
# Fixed once: strategies must not change between the runs hypothesis makes of a case.
NOW = int(time.time())
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
BAD_IDS = (
    "",
    " ",
    "not-a-uuid",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "{12345678-1234-5678-1234-567812345678}",
    "12345678123456781234567812345678",
    "12345678-1234-5678-1234-56781234567",
    "12345678-1234-5678-1234-5678123456789",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "../../etc/passwd",
    "'; DROP TABLE stored_events; --",
    "\x00",
    "🦀" * 9,
)
WORDS = (SCENARIO, "CN", "US", "CNY", "USD", "cny", "latest", "0", "-1", "9" * 30, "HOLD")
CALLERS = ("admin",) * 6 + ("exchange",) * 3 + ("anonymous", "forged")


@dataclass
class Tally:
    sent: int = 0
    skipped_for_time: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    methods: set[str] = field(default_factory=set)
    bugs: list[str] = field(default_factory=list)
    writes_on_rejection: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > BUDGET_S


class Target:
    """The server under fuzzing, the ids worth aiming at, and the callers' metadata.

    Not a dataclass: hypothesis prints a failing case's arguments field by field."""

    def __init__(
        self,
        server: ServeProcess,
        stubs: Stubs,
        identity: Identity,
        kinds: dict[str, tuple[str, ...]],
    ) -> None:
        self.server = server
        self.stubs = stubs
        self.identity = identity
        # Real ids by kind ("participant", "exchange", "listing", ...), of both venues.
        self.kinds = kinds
        self.tally = Tally()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted({i for ids in self.kinds.values() for i in ids}))

    def metadata(self, caller: str) -> Metadata:
        if caller == "admin":
            return self.identity.admin
        if caller == "exchange":
            return self.identity.metadata(Role.EXCHANGE)
        if caller == "forged":
            return (("authorization", "Bearer forged-token"),)
        return ()

    def __repr__(self) -> str:
        return f"Target(server at {self.server.address})"

    def head(self) -> int:
        info = self.stubs.audit.GetLedgerInfo(
            audit_pb2.GetLedgerInfoRequest(), metadata=self.identity.admin, timeout=10
        )
        return int(info.head_position)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One server on SQLite with two venues: the exchange principal's own (A) and
    another (B), each with a listing, a sale and a grant."""
    work = tmp_path_factory.mktemp("bad-input")
    identity = make_identity(work / "identity")
    server = ServeProcess(f"sqlite:///{work / 'ledger.db'}", identity, work)
    try:
        server.start()
        with connect(server.address) as stubs:
            writer = MarketWriter(stubs, identity.admin)
            market = writer.market(identity, buyers=2, listings=1, grants=1)
            venue_b = writer.register("Venue B", common_pb2.PARTICIPANT_ROLE_EXCHANGE)
            certification = writer.certify(venue_b)
            other = dataclasses.replace(market, exchange=venue_b)
            listing_b = writer.listed(other)
            trade_b = writer.licence(listing_b, market.provider, market.buyers[1])
            grant_b = writer.grant(trade_b)
            kinds = {
                "participant": (
                    market.exchange,
                    market.assessor,
                    market.provider,
                    *market.buyers,
                    venue_b,
                ),
                "exchange": (market.exchange, venue_b),
                "provider": (market.provider,),
                "assessor": (market.assessor,),
                "buyer": tuple(market.buyers),
                "listing": (*market.listings, listing_b),
                "trade": (*market.trades, trade_b),
                "grant": (*market.grants, grant_b),
                "certification": (certification,),
            }
            yield Target(server, stubs, identity, kinds)
    finally:
        server.close()


# --- strategies from descriptors ------------------------------------------------------


Pick = Callable[[FieldDescriptor, int], st.SearchStrategy[Any]]


def hostile_strings(target: Target) -> st.SearchStrategy[str]:
    text = st.characters(codec="utf-8")
    oversized = st.builds(
        lambda ch, n: ch * n, text, st.sampled_from([257, 5_000, 70_000, 400_000])
    )
    return st.one_of(
        st.sampled_from(target.ids),  # real, but of the wrong kind or venue
        st.uuids().map(str),  # well-formed, of nothing
        st.sampled_from(BAD_IDS),
        st.sampled_from((*WORDS, *projection_names(), uscc())),
        st.text(text, max_size=40),
        oversized,
    )


def projection_names() -> tuple[str, ...]:
    return tuple(p.name for p in all_projections(Settings()))


def hostile_integers(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[kind]
    edges = [v for v in (low, high, -1, 0, 1, 2**31 - 1, 2**53 + 1, 10**15) if low <= v <= high]
    return st.one_of(st.integers(max(low, -5), min(high, 1_100)), st.sampled_from(edges))


def hostile_timestamps() -> st.SearchStrategy[Timestamp]:
    seconds = st.one_of(
        st.integers(NOW - 400 * 86_400, NOW + 400 * 86_400),  # past and future
        st.sampled_from(
            [MIN_SECONDS - 1, MIN_SECONDS, MAX_SECONDS, MAX_SECONDS + 1, 0, -1, 2**63 - 1]
        ),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(
        st.just(0), st.integers(0, 999_999_999), st.sampled_from([-1, 10**9, 2**31 - 1])
    )
    return st.builds(Timestamp, seconds=seconds, nanos=nanos)


def hostile_enums(f: FieldDescriptor) -> st.SearchStrategy[int]:
    assert f.enum_type is not None
    known = sorted(f.enum_type.values_by_number)
    unknown = st.integers(-(2**31), 2**31 - 1).filter(lambda n: n not in known)
    return st.one_of(st.sampled_from(known), st.integers(-3, 40), unknown)


def hostile(target: Target) -> Pick:
    """Any value of the field's type: malformed, out of range, oversized or of nothing."""

    def pick(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        single: st.SearchStrategy[Any]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type is not None
            if f.message_type.full_name == TIMESTAMP:
                single = hostile_timestamps()
            else:
                single = messages(f.message_type, pick, depth + 1)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            single = hostile_enums(f)
        elif f.type == FieldDescriptor.TYPE_STRING:
            single = hostile_strings(target)
        elif f.type == FieldDescriptor.TYPE_BYTES:
            single = st.binary(max_size=64)
        elif f.type == FieldDescriptor.TYPE_BOOL:
            single = st.booleans()
        elif f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            single = st.floats(width=32 if f.type == FieldDescriptor.TYPE_FLOAT else 64)
        else:
            single = hostile_integers(f.type)
        return st.lists(single, max_size=4) if f.is_repeated else single

    return pick


# Plausible values by field name: ids of the right kind, valid codes, sensible numbers.
ID_KINDS = {
    "listing_id": "listing",
    "trade_id": "trade",
    "grant_id": "grant",
    "certification_id": "certification",
    "exchange_id": "exchange",
    "provider_id": "provider",
    "seller_id": "provider",
    "assessor_id": "assessor",
    "buyer_id": "buyer",
    "grantee_id": "buyer",
    "participant_id": "participant",
    "claimant_id": "participant",
    "aggregate_ids": "participant",
}
WORDS_BY_NAME = {
    "scenario": (SCENARIO,),
    "scenarios": (SCENARIO, "clinical-research"),
    "currency": ("CNY",),
    "country": ("US", "DE"),
    "destination_country": ("CN", "US"),
    "event_types": ("SaleRecorded", "AccessGranted", "ParticipantRegistered"),
    "etag": ("", "1", "2", "3"),
    "listing_etag": ("", "1", "2", "3"),
    "page_token": ("",),
}
NUMBERS_BY_NAME = {
    "amount_minor": (1, 1_000_000),
    "units": (1, 3),
    "usage_limit": (1, 100),
    "page_size": (1, 50),
    "max_events_per_message": (1, 10),
}
FUTURE_TIMES = {"valid_until", "term_end", "until"}


def plausible(target: Target) -> Pick:
    """A value the field could well have in a valid request."""
    names = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20)

    def pick(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        single: st.SearchStrategy[Any]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type is not None
            if f.message_type.full_name == TIMESTAMP:
                days = (1, 200) if f.name in FUTURE_TIMES else (-200, -0.01)
                single = st.floats(*days).map(lambda d: Timestamp(seconds=int(NOW + d * 86_400)))
            else:
                single = messages(f.message_type, pick, depth + 1, complete=True)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            single = st.sampled_from([n for n in f.enum_type.values_by_number if n])
        elif f.type == FieldDescriptor.TYPE_STRING:
            if f.name == "request_id":
                # Mostly fresh; hypothesis's own UUIDs repeat, which exercises reuse.
                single = st.one_of(st.builds(rid), st.builds(rid), st.uuids().map(str))
            elif f.name in ID_KINDS:
                single = st.sampled_from(target.kinds[ID_KINDS[f.name]])
            elif f.name in WORDS_BY_NAME:
                single = st.sampled_from(WORDS_BY_NAME[f.name])
            elif f.name == "uscc":
                single = st.builds(uscc)
            elif f.name == "name" and "Projection" in f.full_name:
                single = st.sampled_from(projection_names())
            else:
                single = names
        elif f.type == FieldDescriptor.TYPE_BOOL:
            single = st.booleans()
        elif f.type in INT_RANGES:
            single = st.integers(*NUMBERS_BY_NAME.get(f.name, (0, 40)))
        else:
            return hostile(target)(f, depth)
        return st.lists(single, min_size=1, max_size=3) if f.is_repeated else single

    return pick


def _put(message: Message, f: FieldDescriptor, value: Any) -> None:
    if f.is_repeated:
        target = getattr(message, f.name)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, f.name).CopyFrom(value)
    else:
        setattr(message, f.name, value)


def _is_real_oneof(f: FieldDescriptor) -> bool:
    """Proto3 ``optional`` fields sit in a oneof of their own, named ``_<field>``."""
    oneof = f.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == f"_{f.name}")


def messages(
    descriptor: Descriptor, pick: Pick, depth: int = 0, *, complete: bool = False
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with values from ``pick``: each field set or missing
    (only fields with presence when ``complete``), at most one field of each oneof."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    plain = [f for f in descriptor.fields if not _is_real_oneof(f)]
    choices = [
        st.one_of(st.none(), *[st.tuples(st.just(f), pick(f, depth)) for f in oneof.fields])
        for oneof in descriptor.oneofs
        if any(_is_real_oneof(f) for f in oneof.fields)
    ]
    fields = st.fixed_dictionaries(
        {
            f.name: pick(f, depth)
            if complete and not f.has_presence
            else st.one_of(st.none(), pick(f, depth))
            for f in plain
        }
    )

    def build(drawn: dict[str, Any], picked: list[tuple[FieldDescriptor, Any] | None]) -> Message:
        message = cls()
        for name, value in drawn.items():
            if value is not None:
                _put(message, descriptor.fields_by_name[name], value)
        for choice in picked:
            if choice is not None:
                _put(message, *choice)
        return message

    return st.builds(build, fields, st.tuples(*choices).map(list))


def mutated(
    descriptor: Descriptor, valid: st.SearchStrategy[Message], target: Target
) -> st.SearchStrategy[Message]:
    """A plausible message with one to three fields cleared or made hostile."""
    if not descriptor.fields:
        return valid
    bad = hostile(target)
    edits = st.lists(
        st.sampled_from(list(descriptor.fields)), min_size=1, max_size=3, unique=True
    ).flatmap(
        lambda fs: st.tuples(*[st.tuples(st.just(f), st.one_of(st.none(), bad(f, 0))) for f in fs])
    )

    def edit(message: Message, changes: tuple[tuple[FieldDescriptor, Any], ...]) -> Message:
        result = type(message)()
        result.CopyFrom(message)
        for f, value in changes:
            result.ClearField(f.name)
            if value is not None:
                _put(result, f, value)
        return result

    return st.builds(edit, valid, edits)


def parsed(cls: type[Message], data: bytes) -> Message:
    """``data`` parsed as ``cls`` (unknown fields kept); an empty message if it is not one."""
    try:
        return cls.FromString(data)
    except DecodeError:
        return cls()


def requests(method: MethodDescriptor, target: Target) -> st.SearchStrategy[Message]:
    """Requests of every kind: plausible ones (which reach the rules), plausible ones with
    a few hostile fields, entirely hostile ones, and mangled or random bytes parsed."""
    descriptor = method.input_type
    cls = message_factory.GetMessageClass(descriptor)
    valid = messages(descriptor, plausible(target), complete=True)
    anything = messages(descriptor, hostile(target))
    mangled = st.builds(
        lambda m, cut, junk: parsed(cls, m.SerializeToString()[:cut] + junk),
        valid,
        st.integers(0, 64),
        st.binary(max_size=32),
    )
    random_bytes = st.binary(max_size=128).map(lambda b: parsed(cls, b))
    broken = mutated(descriptor, valid, target)
    return st.one_of(valid, broken, broken, anything, mangled, random_bytes)


# --- sending --------------------------------------------------------------------------


def invoke(
    target: Target, method: MethodDescriptor, request: Message | bytes, caller: str
) -> tuple[grpc.StatusCode, Message | None]:
    """Sends one request; returns the status code and, for a unary call, the response."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    serialize: Callable[[Any], bytes] = (
        (lambda raw: raw) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
    )
    channel = target.stubs.channel
    metadata = target.metadata(caller)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path, request_serializer=serialize, response_deserializer=response_type.FromString
            )(request, metadata=metadata, timeout=STREAM_TIMEOUT_S)
            for number, _ in enumerate(stream, start=1):
                if number >= STREAM_MESSAGES:
                    stream.cancel()
                    break
            return grpc.StatusCode.OK, None
        response = channel.unary_unary(
            path, request_serializer=serialize, response_deserializer=response_type.FromString
        )(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        return error.code(), None
    return grpc.StatusCode.OK, response


def ingest_errors(response: Message | None) -> list[int] | None:
    """The status codes of an IngestCommands response's failed commands, or None if all
    of them failed (the call then wrote nothing)."""
    if not isinstance(response, trade_pb2.IngestCommandsResponse):
        return []
    codes = [int(r.error.code) for r in response.results if r.WhichOneof("kind") == "error"]
    return None if len(codes) == len(response.results) else codes


def fuzz_once(
    target: Target, method: MethodDescriptor, request: Message | bytes, caller: str
) -> None:
    tally = target.tally
    if tally.out_of_time:
        tally.skipped_for_time += 1
        return
    before = target.head()
    code, response = invoke(target, method, request, caller)
    tally.sent += 1
    tally.codes[code.name] += 1
    tally.methods.add(method.name)
    shown = request if isinstance(request, bytes) else str(request)[:300]
    failed = ingest_errors(response)
    bug_numbers = {c.value[0] for c in BUG_CODES}
    if code in BUG_CODES or any(c in bug_numbers for c in failed or ()):
        tally.bugs.append(f"{method.name} as {caller}: {code.name} {failed} for {shown!r}")
        pytest.fail(tally.bugs[-1])
    rejected = code is not grpc.StatusCode.OK or failed is None
    if rejected and target.head() != before:
        tally.writes_on_rejection.append(f"{method.name} as {caller}: {code.name}: {shown!r}")
        pytest.fail(f"a rejected call wrote: {tally.writes_on_rejection[-1]}")


FUZZ_SETTINGS = settings(
    max_examples=max(1, math.ceil(EXAMPLES / len(METHODS))),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def test_every_method_of_the_six_services_is_fuzzed() -> None:
    assert {m.containing_service.full_name for m in METHODS} == set(LEDGER_SERVICES)
    assert len(BY_NAME) == len(METHODS)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
@FUZZ_SETTINGS
@given(data=st.data())
def test_malformed_requests_are_refused_without_internal_errors_or_writes(
    target: Target, method: MethodDescriptor, data: st.DataObject
) -> None:
    request = data.draw(requests(method, target), label="request")
    caller = data.draw(st.sampled_from(CALLERS), label="caller")
    fuzz_once(target, method, request, caller)


@settings(FUZZ_SETTINGS, max_examples=RAW_EXAMPLES)
@given(data=st.data())
def test_bytes_that_are_no_request_at_all_are_refused_without_internal_errors(
    target: Target, data: st.DataObject
) -> None:
    method = BY_NAME[data.draw(st.sampled_from(sorted(BY_NAME)), label="method")]
    valid = data.draw(requests(method, target), label="request").SerializeToString()
    raw = data.draw(
        st.one_of(
            st.binary(min_size=1, max_size=128),
            st.builds(lambda cut, junk: valid[:cut] + junk, st.integers(0, 64), st.binary()),
        ),
        label="bytes",
    )
    fuzz_once(target, method, raw, "admin")


def test_the_server_is_up_and_serving_after_the_fuzzing(
    target: Target, pytestconfig: pytest.Config
) -> None:
    """Runs last: the fuzzing before it neither crashed nor wedged the server."""
    tally = target.tally
    assert target.server.alive(), target.server.log_tail()
    assert health(target.server.address) == SERVING
    report(
        pytestconfig,
        "bad_input",
        fuzzed_requests=tally.sent,
        methods=len(tally.methods),
        internal_errors=len(tally.bugs),
        writes_on_rejection=len(tally.writes_on_rejection),
        skipped_for_time=tally.skipped_for_time,
        codes=dict(tally.codes),
    )
