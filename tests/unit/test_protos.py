"""The generated ``ledger.v1`` descriptors match the gRPC contract of the service spec."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from types import ModuleType

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

import ledger.v1

CONTRACT: dict[str, list[str]] = {
    "ParticipantService": [
        "RegisterParticipant",
        "IssueCertification",
        "SuspendCertification",
        "ReinstateCertification",
        "RevokeCertification",
        "SuspendParticipant",
        "ReinstateParticipant",
        "DeregisterParticipant",
        "GetParticipant",
        "ListParticipants",
    ],
    "ListingService": [
        "SubmitListing",
        "RecordAssessment",
        "ApproveListing",
        "RejectListing",
        "SuspendListing",
        "ReinstateListing",
        "DelistListing",
        "ReclassifyListing",
        "OpenOwnershipDispute",
        "ResolveOwnershipDispute",
        "GetListing",
        "ListListings",
    ],
    "TradeService": [
        "RecordSale",
        "SettleTrade",
        "CancelTrade",
        "GetTrade",
        "ListTrades",
        "IngestCommands",
    ],
    "AccessService": [
        "GrantAccess",
        "SuspendAccess",
        "ReinstateAccess",
        "RevokeAccess",
        "RecordAccessUse",
        "CheckAccess",
        "GetGrant",
        "ListGrants",
    ],
    "AuditService": [
        "ReplayEvents",
        "GetOwnership",
        "GetComplianceReport",
        "GetCheckpoint",
        "GetLedgerInfo",
    ],
    "ProjectionService": ["ListProjections", "RebuildProjection", "WatchProjection"],
}

SERVER_STREAMING = {"AuditService.ReplayEvents", "ProjectionService.WatchProjection"}

# Reads; every other method mutates. IngestCommands carries a request_id per command.
READ_PREFIXES = ("Get", "List", "Check", "Replay", "Watch")
BATCH_METHODS = {"TradeService.IngestCommands"}
# Mutations of the ledger itself (the others, like a rebuild, write no event).
NON_LEDGER_MUTATIONS = {"ProjectionService.RebuildProjection"}


def generated_modules() -> list[ModuleType]:
    names = sorted(
        info.name for info in pkgutil.iter_modules(ledger.v1.__path__) if info.name.endswith("_pb2")
    )
    return [importlib.import_module(f"ledger.v1.{name}") for name in names]


def services() -> dict[str, ServiceDescriptor]:
    found: dict[str, ServiceDescriptor] = {}
    for module in generated_modules():
        found.update(module.DESCRIPTOR.services_by_name)
    return found


def methods() -> Iterator[tuple[str, MethodDescriptor]]:
    for service_name, service in services().items():
        for method in service.methods:
            yield f"{service_name}.{method.name}", method


def mutations() -> list[tuple[str, MethodDescriptor]]:
    return [
        (name, method)
        for name, method in methods()
        if not method.name.startswith(READ_PREFIXES) and name not in BATCH_METHODS
    ]


def each_method(found: Iterable[tuple[str, MethodDescriptor]]) -> pytest.MarkDecorator:
    named = dict(found)
    return pytest.mark.parametrize("method", list(named.values()), ids=list(named))


def message_of(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, f"{field.full_name} is not a message field"
    return field.message_type


def messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from messages(nested)


def enums() -> Iterator[EnumDescriptor]:
    for module in generated_modules():
        yield from module.DESCRIPTOR.enum_types_by_name.values()
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for descriptor in messages(message):
                yield from descriptor.enum_types


def upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def test_the_six_services_have_exactly_the_contract_methods() -> None:
    found = {name: sorted(m.name for m in service.methods) for name, service in services().items()}

    assert found == {name: sorted(names) for name, names in CONTRACT.items()}


def test_services_are_in_package_ledger_v1() -> None:
    assert {service.full_name for service in services().values()} == {
        f"ledger.v1.{name}" for name in CONTRACT
    }


def test_only_replay_and_watch_stream_and_only_from_the_server() -> None:
    streaming = {name for name, method in methods() if method.server_streaming}
    client_streaming = {name for name, method in methods() if method.client_streaming}

    assert streaming == SERVER_STREAMING
    assert client_streaming == set()


@each_method(mutations())
def test_every_mutation_takes_a_request_id_as_field_1(method: MethodDescriptor) -> None:
    field = method.input_type.fields_by_name.get("request_id")

    assert field is not None, f"{method.full_name} has no request_id"
    assert field.number == 1
    assert field.type == FieldDescriptor.TYPE_STRING


@each_method((name, m) for name, m in mutations() if name not in NON_LEDGER_MUTATIONS)
def test_every_ledger_mutation_takes_an_effective_time_and_returns_its_position(
    method: MethodDescriptor,
) -> None:
    effective_at = method.input_type.fields_by_name.get("effective_at")
    position = method.output_type.fields_by_name.get("position")

    assert effective_at is not None, f"{method.full_name} has no effective_at"
    assert message_of(effective_at).full_name == "google.protobuf.Timestamp"
    assert position is not None, f"{method.full_name} returns no position"
    assert position.type == FieldDescriptor.TYPE_INT64


def test_every_command_of_an_ingest_batch_is_a_mutation_with_a_request_id() -> None:
    batch = services()["TradeService"].methods_by_name["IngestCommands"].input_type
    command = message_of(batch.fields_by_name["commands"])
    command_types = {message_of(field).name for field in command.fields}

    assert command_types == {
        "RecordSaleRequest",
        "GrantAccessRequest",
        "RecordAccessUseRequest",
        "SettleTradeRequest",
    }
    for field in command.fields:
        assert "request_id" in message_of(field).fields_by_name


@each_method(
    (name, m)
    for name, m in methods()
    if m.name.startswith("List") and name != "ProjectionService.ListProjections"
)
def test_catalogue_lists_are_paged(method: MethodDescriptor) -> None:
    request = method.input_type.fields_by_name
    response = method.output_type.fields_by_name

    assert request["page_size"].type == FieldDescriptor.TYPE_INT32
    assert request["page_token"].type == FieldDescriptor.TYPE_STRING
    assert response["next_page_token"].type == FieldDescriptor.TYPE_STRING


def test_every_enum_starts_with_an_unspecified_zero_and_prefixes_its_values() -> None:
    all_enums = list(enums())

    assert len(all_enums) >= 15
    for enum in all_enums:
        prefix = upper_snake(enum.name)
        assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED", enum.full_name
        assert all(value.name.startswith(f"{prefix}_") for value in enum.values), enum.full_name


def test_replayed_events_have_exactly_the_canonical_fields_and_the_chain_hash() -> None:
    response = services()["AuditService"].methods_by_name["ReplayEvents"].output_type
    event = message_of(response.fields_by_name["events"])

    assert [field.name for field in event.fields] == [
        "position",
        "aggregate_id",
        "aggregate_type",
        "version",
        "type",
        "recorded_at",
        "effective_at",
        "actor",
        "role",
        "request_id",
        "payload",
        "chain_hash",
    ]
    assert message_of(event.fields_by_name["payload"]).full_name == "google.protobuf.Struct"


def test_ledger_info_exposes_the_public_key() -> None:
    info = services()["AuditService"].methods_by_name["GetLedgerInfo"].output_type

    assert info.fields_by_name["public_key"].type == FieldDescriptor.TYPE_STRING
    assert "ledger_id" in info.fields_by_name
