"""Reads served from the projections, through a real server: lists, projection status,
compliance reports with rejection counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest

from ledger.api.principals import Role
from ledger.v1 import access_pb2, audit_pb2, common_pb2, listing_pb2, projection_pb2
from tests.e2e.conftest import Credentials, Parties, Stubs, rid
from tests.e2e.test_server import assess_and_approve, granted, sale_request, submit

T = TypeVar("T")


def eventually(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10) -> T:
    """Reads until ``done`` holds (projections follow the log asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_listings_are_listed_with_filters_and_stable_pages(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    auditor = credentials.of(Role.AUDITOR)
    listed = [
        assess_and_approve(stubs, credentials, submit(stubs, credentials, parties)).listing
        for _ in range(3)
    ]
    wanted = {listing.id for listing in listed}

    def read_all() -> list[str]:
        ids, token = [], ""
        while True:
            page = stubs.listings.ListListings(
                listing_pb2.ListListingsRequest(
                    page_size=2,
                    page_token=token,
                    exchange_id=parties.exchange,
                    state=listing_pb2.LISTING_STATE_LISTED,
                ),
                metadata=auditor,
            )
            ids += [x.id for x in page.listings]
            assert len(page.listings) <= 2
            if not page.next_page_token:
                return ids
            token = page.next_page_token

    ids = eventually(read_all, lambda ids: wanted <= set(ids))
    assert wanted <= set(ids)
    assert len(ids) == len(set(ids)), "pages never repeat a listing"


def test_a_bad_page_token_is_invalid(stubs: Stubs, credentials: Credentials) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stubs.listings.ListListings(
            listing_pb2.ListListingsRequest(page_token="nonsense"),
            metadata=credentials.of(Role.AUDITOR),
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_projections_are_listed_for_operators(stubs: Stubs, credentials: Credentials) -> None:
    statuses = stubs.projections.ListProjections(
        projection_pb2.ListProjectionsRequest(), metadata=credentials.of(Role.OPERATOR)
    ).projections
    assert {"catalogue", "ownership", "access", "compliance", "chain"} <= {s.name for s in statuses}
    for status in statuses:
        assert status.state != projection_pb2.PROJECTION_STATE_FAILED, status.error


def test_rule_rejections_are_counted_in_the_compliance_report(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    auditor = credentials.of(Role.AUDITOR)

    def r05_count() -> int:
        report = stubs.audit.GetComplianceReport(
            audit_pb2.GetComplianceReportRequest(exchange_id=parties.exchange), metadata=auditor
        )
        return {r.rule: r.count for r in report.rejections}.get("R05", 0)

    before = r05_count()
    unlisted = submit(stubs, credentials, parties)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.trades.RecordSale(
            sale_request(unlisted.id, parties), metadata=credentials.of(Role.EXCHANGE)
        )
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert r05_count() == before + 1


def check(
    stubs: Stubs, credentials: Credentials, grant: access_pb2.Grant, **kw: object
) -> access_pb2.CheckAccessResponse:
    return stubs.access.CheckAccess(
        access_pb2.CheckAccessRequest(
            grantee_id=grant.grantee_id,
            listing_id=grant.listing_id,
            delivery_mode=grant.delivery_mode,
            scenario=grant.scenario,
            **kw,  # type: ignore[arg-type]
        ),
        metadata=credentials.of(Role.EXCHANGE),
    )


def test_check_access_denies_right_after_a_revocation_was_acknowledged(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    grant = granted(stubs, credentials, parties)
    allowed = check(stubs, credentials, grant)
    assert allowed.allowed
    assert allowed.grant_id == grant.id

    revoked = stubs.access.RevokeAccess(
        access_pb2.RevokeAccessRequest(
            request_id=rid(), grant_id=grant.id, reason=common_pb2.REVOCATION_REASON_MISUSE_DETECTED
        ),
        metadata=credentials.of(Role.EXCHANGE),
    )
    # No waiting: the answer reflects every write acknowledged before the call.
    denied = check(stubs, credentials, grant)
    assert not denied.allowed
    assert denied.reason == "R16_GRANT_REVOKED"
    assert denied.as_of_position >= revoked.position

    before = check(stubs, credentials, grant, as_of_position=allowed.as_of_position)
    assert before.allowed


def test_ownership_shows_the_provider_and_the_licensee(
    stubs: Stubs, credentials: Credentials, parties: Parties
) -> None:
    grant = granted(stubs, credentials, parties)
    ownership = stubs.audit.GetOwnership(
        audit_pb2.GetOwnershipRequest(listing_id=grant.listing_id),
        metadata=credentials.of(Role.AUDITOR),
    )
    holders = {
        (common_pb2.Right.Name(r.right), h.holder_id, h.exclusive)
        for r in ownership.rights
        for h in r.holders
    }
    assert ("RIGHT_HOLD", parties.provider, True) in holders
    assert ("RIGHT_PROCESS_USE", parties.buyer, False) in holders
