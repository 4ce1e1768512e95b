"""One contract for the application, run against every event store backend.

Subclasses provide the ``database_url`` fixture; the class has no ``Test`` prefix, so
pytest collects only the subclasses.
"""

from __future__ import annotations

from uuid import UUID

import eventsourcing.utils
import pytest
from eventsourcing.utils import resolve_topic

from ledger.application import commands as c
from ledger.application.app import Decision, MarketLedger
from ledger.application.markers import entity_id
from ledger.bootstrap import build_application
from ledger.clock import FakeClock
from ledger.domain.base import Act
from ledger.domain.errors import AlreadyExists, Conflict, RuleViolation
from ledger.domain.grant import AccessGrant
from ledger.domain.listing import Listing
from ledger.domain.participant import Participant
from ledger.domain.values import GrantState, ListingState, Right
from ledger.settings import Settings
from tests.market import Market, new_market, rid, uscc


class ApplicationContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    def open(self, database_url: str, clock: FakeClock) -> MarketLedger:
        return build_application(Settings(database_url=database_url), clock)

    @pytest.fixture
    def market(self, database_url: str, clock: FakeClock) -> Market:
        return new_market(self.open(database_url, clock), clock)

    def test_a_market_runs_end_to_end_with_increasing_positions(self, market: Market) -> None:
        start = market.head
        listing_id = market.listed()
        trade_id = market.sell(listing_id)
        grant_out = market.run(market.grant_command(trade_id))
        assert grant_out.position > start
        grant = market.app.get(AccessGrant, str(grant_out.resource.id), market.actor)
        assert grant.status is GrantState.ACTIVE
        notifications = market.app.recorder.select_notifications(start + 1, 1000)
        positions = [n.id for n in notifications]
        assert positions == sorted(positions)
        assert positions[-1] == grant_out.position == market.head

    def test_every_stored_topic_is_a_stable_name_not_a_python_path(self, market: Market) -> None:
        market.granted()
        topics = {n.topic for n in market.app.recorder.select_notifications(1, 10_000)}
        assert topics, "the market wrote events"
        for topic in topics:
            assert topic.startswith("ledger/"), topic
            assert ":" not in topic, topic
            assert "ledger.domain" not in topic, topic
            assert getattr(resolve_topic(topic), "TOPIC", None) == topic

    def test_old_events_still_decode_after_their_class_is_renamed(
        self, market: Market, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        participant_id = UUID(market.ids["buyer"])
        stored = market.app.recorder.select_events(participant_id)[0]
        assert stored.topic == "ledger/ParticipantRegistered"

        # A later release renames the class and moves it to another module; its TOPIC
        # stays, so the stored events resolve to the new class.
        renamed = type("BuyerOnboarded", (Participant.Created,), {"__module__": "elsewhere"})
        monkeypatch.setitem(eventsourcing.utils._topic_cache, stored.topic, renamed)
        event = market.app.mapper.to_domain_event(stored)
        assert type(event) is renamed
        assert event.name == "buyer"  # type: ignore[attr-defined]

    def test_a_cascade_is_one_atomic_write(self, market: Market) -> None:
        listing_id, trade_id, _ = market.granted()
        second = market.grant(trade_id, delivery_mode="PRIVACY_COMPUTE")
        before = market.head
        out = market.run(c.SuspendListing(request_id=rid(), listing_id=listing_id, note="audit"))
        written = market.app.recorder.select_notifications(before + 1, 100)
        # The listing's event, both grants' suspensions and the request marker.
        assert len(written) == 4
        assert out.position == written[-1].id
        assert market.app.get(AccessGrant, second, market.actor).status is GrantState.SUSPENDED

    def test_idempotency_survives_a_restart(self, database_url: str, clock: FakeClock) -> None:
        market = new_market(self.open(database_url, clock), clock)
        listing_id = market.listed()
        command = market.sale_command(listing_id)
        first = market.run(command)
        head = market.head
        market.app.close()

        reopened = self.open(database_url, clock)
        again = reopened.execute(command, market.actor)
        assert again.replayed
        assert again.position == first.position
        assert again.resource.id == first.resource.id == entity_id("trade", command.request_id)
        assert again.resource.version == first.resource.version
        assert reopened.head_position() == head

        different = market.sale_command(listing_id, request_id=command.request_id, scenario="x")
        with pytest.raises(AlreadyExists):
            reopened.execute(different, market.actor)
        assert reopened.head_position() == head
        reopened.close()

    def test_a_stale_etag_is_a_conflict_and_writes_nothing(self, market: Market) -> None:
        listing_id = market.listed()
        listing = market.app.get(Listing, listing_id, market.actor)
        market.run(c.SuspendListing(request_id=rid(), listing_id=listing_id))
        head = market.head
        with pytest.raises(Conflict):
            market.run(
                c.ReinstateListing(
                    request_id=rid(), listing_id=listing_id, etag=str(listing.version)
                )
            )
        assert market.head == head
        current = market.app.get(Listing, listing_id, market.actor)
        market.run(
            c.ReinstateListing(request_id=rid(), listing_id=listing_id, etag=str(current.version))
        )
        assert market.app.get(Listing, listing_id, market.actor).state is ListingState.LISTED

    def test_r10_a_second_transfer_of_hold_is_refused(self, market: Market) -> None:
        listing_id = market.listed()
        transfer = {
            "conveyance": "TRANSFER",
            "rights": ("HOLD",),
            "term_start": None,
            "term_end": None,
        }
        market.sell(listing_id, **transfer)
        head = market.head
        with pytest.raises(RuleViolation) as refused:
            market.sell(listing_id, buyer_id=market.ids["buyer2"], **transfer)
        assert refused.value.reason == "R10_RIGHTS_NOT_HELD"
        assert market.head == head
        listing = market.app.get(Listing, listing_id, market.actor)
        assert listing.holdings[Right.HOLD] == market.ids["buyer"]

    def test_new_entity_ids_derive_from_the_request_id(self, market: Market) -> None:
        request_id = rid()
        out = market.run(
            c.RegisterParticipant(
                request_id=request_id, name="Derived", roles=("BUYER",), uscc=uscc()
            )
        )
        assert out.resource.id == entity_id("participant", request_id)
        assert isinstance(out.resource.id, UUID)

    def test_r07_a_sale_racing_a_suspension_of_its_seller_in_another_process_loses(
        self, database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        market = new_market(self.open(database_url, clock), clock)
        listing_id = market.listed()
        other = self.open(database_url, clock)  # another server on the same store
        suspend = c.SuspendParticipant(request_id=rid(), participant_id=market.ids["provider"])
        decide = market.app._record_sale
        raced: list[bool] = []

        def racing(command: c.RecordSale, act: Act) -> Decision:
            decision = decide(command, act)
            if not raced:
                raced.append(True)
                other.execute(suspend, market.actor)  # commits between decision and write
            return decision

        monkeypatch.setattr(market.app, "_record_sale", racing)
        with pytest.raises(RuleViolation) as refused:
            market.run(market.sale_command(listing_id))
        assert refused.value.reason == "R07_SELLER_NOT_ACTIVE"
        trades = [
            n
            for n in market.app.recorder.select_notifications(1, 10_000)
            if n.topic == "ledger/SaleRecorded"
        ]
        assert trades == []
        other.close()

    def test_a_process_sees_what_another_process_wrote_since_its_last_command(
        self, database_url: str, clock: FakeClock
    ) -> None:
        market = new_market(self.open(database_url, clock), clock)
        listing_id = market.listed()
        market.sell(listing_id)  # this process now holds the listing as it left it
        other = self.open(database_url, clock)  # another server on the same store
        other.execute(c.SuspendListing(request_id=rid(), listing_id=listing_id), market.actor)
        with pytest.raises(RuleViolation) as refused:
            market.run(market.sale_command(listing_id))
        assert refused.value.reason == "R05_LISTING_NOT_LISTED"
        results = market.app.execute_batch(
            [
                (c.ReinstateListing(request_id=rid(), listing_id=listing_id), market.actor),
                (market.sale_command(listing_id), market.actor),
            ]
        )
        assert not [r for r in results if isinstance(r, Exception)], results
        other.close()
