"""``ledger demo``: loads a realistic data market into a running ledger through its gRPC API.

Everything is derived from ``--seed`` and ``--scale``: request_ids, USCCs, prices,
choices. Running the demo again with both the same against the same store therefore sends
the same requests, gets the original responses back and writes nothing. Another seed or
scale loads another, independent market beside it.

Tokens: the registry token registers and certifies participants, the auditor token
reads. A venue act (listing, sale, grant) is signed with the exchange token when that
token's venue (``participant_ids.exchange`` in the tokens file) is one of the demo's
exchanges, and with the admin token otherwise: the principals file names the exchange's
participant id before the participant exists, and ``ledger serve --dev`` names a fixed
id that no registration can produce, since ids derive from request_ids. The assessor
token is used the same way for its own assessments.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from ledger.application.markers import entity_id
from ledger.client import CHANNEL_OPTIONS, LedgerCallError, LedgerClient
from ledger.domain.values import USCC_ALPHABET, uscc_check_character
from ledger.v1 import access_pb2, common_pb2, listing_pb2, participant_pb2, trade_pb2

T = TypeVar("T")

DEFAULT_SEED = 2026
# Fixed instants, not "now": a request must be byte-for-byte the same on a re-run, or
# its request_id would be refused as reused for a different request.
TERM_START = datetime(2025, 1, 1, tzinfo=UTC)
TERM_END = datetime(2031, 12, 31, tzinfo=UTC)
GRANT_UNTIL = datetime(2031, 6, 30, tzinfo=UTC)
CERTIFIED_UNTIL = datetime(2035, 12, 31, tzinfo=UTC)

ALL_CATEGORIES = (
    common_pb2.CATEGORY_MEDICAL,
    common_pb2.CATEGORY_INDUSTRIAL,
    common_pb2.CATEGORY_LOGISTICS,
    common_pb2.CATEGORY_TRANSPORT,
    common_pb2.CATEGORY_FINANCIAL,
    common_pb2.CATEGORY_PUBLIC,
    common_pb2.CATEGORY_GEOSPATIAL,
    common_pb2.CATEGORY_OTHER,
)
ALL_RIGHTS = (common_pb2.RIGHT_HOLD, common_pb2.RIGHT_PROCESS_USE, common_pb2.RIGHT_OPERATE)


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


# --- deterministic identities ---------------------------------------------------------


class Seeded:
    """Request ids, USCCs and random choices derived from the seed, the scale and a key per
    act, so that each act is the same whatever ran before it."""

    def __init__(self, seed: int, scale: int) -> None:
        # The scale is part of the market's identity: a market's later acts (a delisting,
        # say) would refuse the earlier acts of a larger market on the same names.
        self.namespace = uuid.UUID(int=random.Random(f"{seed}/{scale}").getrandbits(128))

    def request_id(self, key: str) -> str:
        return str(uuid.uuid5(self.namespace, key))

    def rng(self, key: str) -> random.Random:
        return random.Random(f"{self.namespace}/{key}")

    def uscc(self, key: str, prefix: str, division: str) -> str:
        """A valid GB 32100-2015 code: registration prefix, division, 9 derived characters
        and the check character."""
        digest = hashlib.sha256(f"{self.namespace}/uscc/{key}".encode()).digest()
        body = prefix + division + "".join(USCC_ALPHABET[b % 31] for b in digest[:9])
        return body + uscc_check_character(body)


def participant_id(key: str, seed: int, scale: int = 1) -> str:
    """The id the demo's participant ``key`` (e.g. ``exchange/shanghai``) gets."""
    return str(entity_id("participant", Seeded(seed, scale).request_id(f"register/{key}")))


def timestamp(at: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(at)
    return result


# --- the market -----------------------------------------------------------------------

C = common_pb2

EXCHANGE, ASSESSOR, DEALER = (
    C.PARTICIPANT_ROLE_EXCHANGE,
    C.PARTICIPANT_ROLE_ASSESSOR,
    C.PARTICIPANT_ROLE_DATA_DEALER,
)
HOLDER, PUBLIC_OPERATOR = C.PARTICIPANT_ROLE_DATA_HOLDER, C.PARTICIPANT_ROLE_PUBLIC_DATA_OPERATOR
BUYER, REGULATOR = C.PARTICIPANT_ROLE_BUYER, C.PARTICIPANT_ROLE_REGULATOR
GENERAL, IMPORTANT = C.CLASSIFICATION_GENERAL, C.CLASSIFICATION_IMPORTANT
NO_PI = C.PERSONAL_INFORMATION_LEVEL_NONE
PERSONAL = C.PERSONAL_INFORMATION_LEVEL_PERSONAL
SENSITIVE = C.PERSONAL_INFORMATION_LEVEL_SENSITIVE
API, DOWNLOAD = C.DELIVERY_MODE_API, C.DELIVERY_MODE_DATASET_DOWNLOAD
PRIVACY, SANDBOX = C.DELIVERY_MODE_PRIVACY_COMPUTE, C.DELIVERY_MODE_SANDBOX

SHANGHAI, SHENZHEN, BEIJING = "310000", "440300", "110000"


@dataclass(frozen=True)
class Certified:
    level: common_pb2.CertificationLevel.ValueType
    categories: tuple[common_pb2.Category.ValueType, ...]
    max_classification: common_pb2.Classification.ValueType


@dataclass(frozen=True)
class Party:
    key: str
    name: str
    roles: tuple[common_pb2.ParticipantRole.ValueType, ...]
    division: str = SHANGHAI
    # GB 32100-2015 registration prefix: 91 company, 12 public institution, 31 law firm,
    # 11 government body.
    prefix: str = "91"
    certified: Certified | None = None
    foreign_country: str = ""


VENUE = Certified(C.CERTIFICATION_LEVEL_STRATEGIC, ALL_CATEGORIES, IMPORTANT)

EXCHANGES = (
    Party("exchange/shanghai", "Shanghai Data Exchange", (EXCHANGE,), SHANGHAI, certified=VENUE),
    Party("exchange/shenzhen", "Shenzhen Data Exchange", (EXCHANGE,), SHENZHEN, certified=VENUE),
    Party(
        "exchange/beijing",
        "Beijing International Big Data Exchange",
        (EXCHANGE,),
        BEIJING,
        certified=VENUE,
    ),
)

OTHER_PARTIES = (
    Party(
        "assessor/huaxin",
        "Huaxin Law Offices",
        (ASSESSOR,),
        prefix="31",
        certified=Certified(C.CERTIFICATION_LEVEL_CORE, ALL_CATEGORIES, IMPORTANT),
    ),
    Party(
        "assessor/pengcheng",
        "Pengcheng Compliance Law Firm",
        (ASSESSOR,),
        SHENZHEN,
        prefix="31",
        certified=Certified(C.CERTIFICATION_LEVEL_ECOSYSTEM, ALL_CATEGORIES, GENERAL),
    ),
    Party(
        "dealer/shuhe",
        "Shuhe Data Dealer (Shanghai) Co., Ltd.",
        (DEALER,),
        certified=Certified(
            C.CERTIFICATION_LEVEL_CORE, (C.CATEGORY_FINANCIAL, C.CATEGORY_MEDICAL), GENERAL
        ),
    ),
    Party(
        "dealer/qianhai",
        "Qianhai Data Services (Shenzhen) Co., Ltd.",
        (DEALER,),
        SHENZHEN,
        certified=Certified(
            C.CERTIFICATION_LEVEL_ECOSYSTEM, (C.CATEGORY_LOGISTICS, C.CATEGORY_TRANSPORT), GENERAL
        ),
    ),
    Party("holder/hospital", "Donghai Municipal Hospital", (HOLDER,), prefix="12"),
    Party("holder/port", "Nanhai Port Logistics Group", (HOLDER,), SHENZHEN),
    Party("holder/grid", "Huabei Grid Equipment Co., Ltd.", (HOLDER,), BEIJING),
    Party("holder/mobility", "Jingcheng Mobility Technology Co., Ltd.", (HOLDER,), BEIJING),
    Party("holder/invoices", "Pujiang Invoice Cloud Co., Ltd.", (HOLDER,)),
    Party("holder/survey", "Donghai Surveying and Mapping Institute", (HOLDER,), prefix="12"),
    Party("holder/meters", "Lingnan Smart Metering Co., Ltd.", (HOLDER,), SHENZHEN),
    Party(
        "holder/public",
        "Beijing Public Data Operations Co., Ltd.",
        (PUBLIC_OPERATOR, HOLDER),
        BEIJING,
    ),
    Party("regulator", "Municipal Data Administration", (REGULATOR,), prefix="11"),
    Party(
        "buyer/certified",
        "Huadian Industrial Analytics Co., Ltd.",
        # A certification covering IMPORTANT data goes to certifiable roles only.
        (BUYER, C.PARTICIPANT_ROLE_SERVICE_PLATFORM),
        BEIJING,
        certified=Certified(C.CERTIFICATION_LEVEL_ECOSYSTEM, (C.CATEGORY_INDUSTRIAL,), IMPORTANT),
    ),
    Party("buyer/singapore", "Lion City Analytics Pte. Ltd.", (BUYER,), foreign_country="SG"),
)

BUYER_NAMES = (
    "Anxin Property and Casualty Insurance",
    "Xinda Commercial Bank",
    "Yuanfang Logistics Planning",
    "Qiming Medical AI Research Institute",
    "Lianhe Credit Rating",
    "Tianqiong Autonomous Driving Lab",
)


def buyers(scale: int) -> list[Party]:
    """The ordinary buyers: one cohort of six per unit of scale."""
    result = []
    for cohort in range(1, scale + 1):
        for number, name in enumerate(BUYER_NAMES):
            suffix = "" if cohort == 1 else f" (cohort {cohort})"
            division = (SHANGHAI, SHENZHEN, BEIJING)[number % 3]
            result.append(Party(f"buyer/{cohort}/{number}", name + suffix, (BUYER,), division))
    return result


@dataclass(frozen=True)
class Product:
    key: str
    exchange: str
    provider: str
    title: str
    category: common_pb2.Category.ValueType
    classification: common_pb2.Classification.ValueType
    pi_level: common_pb2.PersonalInformationLevel.ValueType
    modes: tuple[common_pb2.DeliveryMode.ValueType, ...]
    scenarios: tuple[str, ...]
    price_minor: int
    assessor: str = "assessor/huaxin"
    compliance_ref: str = ""
    pi_impact_ref: str = ""
    consent_ref: str = ""
    security_ref: str = ""


MEDICAL = Product(
    "listing/medical",
    "exchange/shanghai",
    "holder/hospital",
    "De-identified diabetes outpatient cohort 2019-2024",
    C.CATEGORY_MEDICAL,
    GENERAL,
    SENSITIVE,
    (PRIVACY, SANDBOX),
    ("clinical-research", "insurance-product-design"),
    48_000_000,
    compliance_ref="SDE-CA-2025-0117",
    pi_impact_ref="PIA-2025-0042",
    consent_ref="CONSENT-SEP-2025-0042",
)
GRID = Product(
    "listing/grid",
    "exchange/beijing",
    "holder/grid",
    "Transformer substation telemetry, North China",
    C.CATEGORY_INDUSTRIAL,
    IMPORTANT,
    NO_PI,
    (API, PRIVACY),
    ("predictive-maintenance", "grid-planning"),
    120_000_000,
    security_ref="CAC-DSA-2025-0007",
)
PORT = Product(
    "listing/port",
    "exchange/shenzhen",
    "holder/port",
    "Container throughput by berth, hourly",
    C.CATEGORY_LOGISTICS,
    GENERAL,
    NO_PI,
    (DOWNLOAD, API),
    ("route-optimisation", "supply-chain-finance"),
    6_500_000,
)
TRIPS = Product(
    "listing/trips",
    "exchange/beijing",
    "holder/mobility",
    "Ride-hailing origin-destination aggregates",
    C.CATEGORY_TRANSPORT,
    GENERAL,
    PERSONAL,
    (API, SANDBOX),
    ("traffic-planning", "insurance-pricing"),
    15_000_000,
)
INVOICES = Product(
    "listing/invoices",
    "exchange/shanghai",
    "holder/invoices",
    "SME e-invoice credit signals",
    C.CATEGORY_FINANCIAL,
    GENERAL,
    PERSONAL,
    (API, PRIVACY),
    ("credit-risk-scoring",),
    22_000_000,
)
REGISTRY_DATA = Product(
    "listing/public",
    "exchange/beijing",
    "holder/public",
    "Enterprise registration changes (public data)",
    C.CATEGORY_PUBLIC,
    GENERAL,
    NO_PI,
    (DOWNLOAD, API),
    ("market-research", "credit-risk-scoring"),
    1_200_000,
)
LAND_USE = Product(
    "listing/land-use",
    "exchange/shanghai",
    "holder/survey",
    "Land-use tiles 0.5 m, Yangtze delta",
    C.CATEGORY_GEOSPATIAL,
    GENERAL,
    NO_PI,
    (DOWNLOAD,),
    ("urban-planning",),
    9_800_000,
)
METERS = Product(
    "listing/meters",
    "exchange/shenzhen",
    "holder/meters",
    "Smart-meter load curves, industrial parks",
    C.CATEGORY_INDUSTRIAL,
    GENERAL,
    NO_PI,
    (API,),
    ("energy-efficiency",),
    4_400_000,
)
SCRAPED = Product(
    "listing/scraped",
    "exchange/shenzhen",
    "dealer/qianhai",
    "Consumer profiles collected from public web pages",
    C.CATEGORY_OTHER,
    GENERAL,
    PERSONAL,
    (DOWNLOAD,),
    ("marketing",),
    3_000_000,
    assessor="assessor/pengcheng",
)
FOOTFALL = Product(
    "listing/footfall",
    "exchange/shenzhen",
    "holder/mobility",
    "Retail footfall heatmaps",
    C.CATEGORY_GEOSPATIAL,
    GENERAL,
    PERSONAL,
    (API,),
    ("site-selection",),
    2_500_000,
    assessor="assessor/pengcheng",
)
DISPUTED = Product(
    "listing/disputed",
    "exchange/beijing",
    "holder/public",
    "Historical land registry scans",
    C.CATEGORY_PUBLIC,
    GENERAL,
    NO_PI,
    (DOWNLOAD,),
    ("urban-planning",),
    5_000_000,
)

# Sold by licence to every buyer cohort; GRID (IMPORTANT) only to certified buyers.
LICENSED = (MEDICAL, PORT, TRIPS, INVOICES, REGISTRY_DATA, LAND_USE, METERS)
# Resold by a certified dealer holding a licence with OPERATE.
RESOLD_BY = {PORT.key: "dealer/qianhai", INVOICES.key: "dealer/shuhe"}


# --- talking to the ledger ------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """The dev tokens file written by ``ledger serve --dev``."""

    by_role: dict[str, str]
    exchange_participant_id: str
    assessor_participant_id: str

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DemoError(
                f"no tokens file at {path}: start the server with `make run` "
                "(`ledger serve --dev`), which writes it, or pass --tokens"
            ) from None
        except (OSError, ValueError) as exc:
            raise DemoError(f"cannot read the tokens file {path}: {exc}") from None
        if not isinstance(document, dict):
            raise DemoError(f"the tokens file {path} is not a JSON object")
        roles = {k: v for k, v in document.items() if isinstance(v, str)}
        for role in ("admin", "registry", "auditor"):
            if role not in roles:
                raise DemoError(f"the tokens file {path} has no {role!r} token")
        ids = document.get("participant_ids", {})
        return cls(roles, str(ids.get("exchange", "")), str(ids.get("assessor", "")))


@dataclass(frozen=True)
class Caller:
    """A client signed with one principal's token, named for the summary."""

    label: str
    client: LedgerClient


class HasPosition(Protocol):
    @property
    def position(self) -> int: ...


R = TypeVar("R", bound=HasPosition)


@dataclass
class Report:
    """What a demo run did."""

    head_before: int = 0
    head_after: int = 0
    written: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)
    signed_by: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)

    @property
    def events_written(self) -> int:
        return self.head_after - self.head_before


class Demo:
    """Runs the market script against a ledger, one API call per act."""

    def __init__(
        self, address: str, tokens: Tokens, seed: int, scale: int, console: Console
    ) -> None:
        self.seeded = Seeded(seed, scale)
        self.scale = scale
        self.console = console
        self.report = Report()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.address = address

        def caller(label: str, role: str) -> Caller:
            return Caller(label, LedgerClient(address, tokens.by_role[role], channel=self._channel))

        self.admin = caller("admin", "admin")
        self.registry = caller("registry", "registry")
        self.auditor = caller("auditor", "auditor")
        self._exchange = caller("exchange", "exchange") if "exchange" in tokens.by_role else None
        self._assessor = caller("assessor", "assessor") if "assessor" in tokens.by_role else None
        self._tokens = tokens
        self.ids: dict[str, str] = {}
        self.certifications: dict[str, str] = {}
        # Set as the script goes, for the refusals at its end.
        self.pending = self.disputed = self.revoked_grant = self.suspended_buyer = ""
        cohort = buyers(scale)
        # Left unpaid, so that it can be cancelled; the buyer that receives HOLD.
        self.unpaid = f"{REGISTRY_DATA.key}/{cohort[1].key}"
        self.hold_buyer = cohort[2].key

    def close(self) -> None:
        self._channel.close()

    # --- who signs what ---------------------------------------------------------------

    def venue(self, exchange_key: str) -> Caller:
        """The exchange's own principal where the token file names its venue, else admin."""
        if self._exchange and self._tokens.exchange_participant_id == self.ids[exchange_key]:
            return self._exchange
        return self.admin

    def assessor(self, assessor_key: str) -> Caller:
        if self._assessor and self._tokens.assessor_participant_id == self.ids[assessor_key]:
            return self._assessor
        return self.admin

    # --- acts -------------------------------------------------------------------------

    def act(self, kind: str, caller: Caller, call: Callable[[LedgerClient], R]) -> R:
        """Makes one mutating call and counts it as written or, if it returns a position
        from before this run, as replayed."""
        response = call(caller.client)
        if response.position > self.report.head_before:
            self.report.written[kind] += 1
        else:
            self.report.replayed[kind] += 1
        self.report.signed_by[caller.label] += 1
        return response

    def refused(
        self, reason: str, what: str, caller: Caller, call: Callable[[LedgerClient], Message]
    ) -> None:
        """Makes a call that a compliance rule must refuse with ``reason``."""
        try:
            call(caller.client)
        except LedgerCallError as exc:
            if exc.code is not grpc.StatusCode.FAILED_PRECONDITION or exc.reason != reason:
                raise DemoError(f"{what}: expected a refusal {reason}, got {exc}") from exc
            self.report.refusals.append(reason)
            self.console.print(
                f"  refused as expected: [bold]{reason}[/]  [dim]({what})[/]", soft_wrap=True
            )
            return
        raise DemoError(f"{what}: the ledger accepted it, but {reason} should have refused it")

    def rid(self, key: str) -> str:
        return self.seeded.request_id(key)

    # --- the script -------------------------------------------------------------------

    def run(self, connect_timeout_s: float = 5.0) -> Report:
        try:
            self.admin.client.wait_until_ready(connect_timeout_s)
        except TimeoutError:
            raise DemoError(
                f"no ledger server at {self.address}: start one with `make run`"
            ) from None
        self.report.head_before = self.auditor.client.get_ledger_info().head_position
        self.console.print(f"[bold]Loading a data market into {self.address}[/]")
        self.console.print("registering participants and certifications…")
        for party in (*EXCHANGES, *OTHER_PARTIES, *buyers(self.scale)):
            self.register(party)
        self.console.print(self._signing_note())
        self.console.print("listing products…")
        listings = {p.key: self.list_product(p) for p in (*LICENSED, GRID)}
        self.rejected_and_pending()
        self.console.print("trading and granting access…")
        grants = self.trade(listings)
        self.console.print("reporting uses…")
        self.report_uses(grants)
        self.console.print("suspensions, revocations and other lifecycle acts…")
        self.lifecycle(listings, grants)
        self.console.print("commands the rules must refuse:")
        self.refusals(listings, grants)
        self.report.head_after = self.auditor.client.get_ledger_info().head_position
        return self.report

    def _signing_note(self) -> str:
        venues = [p.name for p in EXCHANGES if self.venue(p.key) is not self.admin]
        if venues:
            return f"venue acts on {', '.join(venues)} are signed with its exchange token"
        return "venue acts use the admin token (the exchange token's venue is not the demo's)"

    def register(self, party: Party) -> None:
        if party.foreign_country:
            digits = self.seeded.rng(party.key).randrange(10**5)
            identifier = common_pb2.PartyIdentifier(
                foreign=common_pb2.PartyIdentifier.Foreign(
                    country=party.foreign_country, registry_number=f"2019{digits:05d}K"
                )
            )
        else:
            identifier = common_pb2.PartyIdentifier(
                uscc=self.seeded.uscc(party.key, party.prefix, party.division)
            )
        request = participant_pb2.RegisterParticipantRequest(
            request_id=self.rid(f"register/{party.key}"),
            party_identifier=identifier,
            name=party.name,
            roles=party.roles,
        )
        response = self.act(
            "RegisterParticipant", self.registry, lambda c: c.register_participant(request)
        )
        self.ids[party.key] = response.participant.id
        if party.certified is not None:
            self.certify(party.key, party.certified)

    def certify(self, key: str, certified: Certified) -> None:
        number = self.seeded.rng(f"certificate/{key}").randrange(10**6)
        request = participant_pb2.IssueCertificationRequest(
            request_id=self.rid(f"certify/{key}"),
            participant_id=self.ids[key],
            level=certified.level,
            categories=certified.categories,
            max_classification=certified.max_classification,
            valid_from=timestamp(TERM_START),
            valid_until=timestamp(CERTIFIED_UNTIL),
            reference=f"NDB-CERT-2025-{number:06d}",
        )
        response = self.act(
            "IssueCertification", self.registry, lambda c: c.issue_certification(request)
        )
        self.certifications[key] = response.certification.id

    def submit(self, product: Product) -> str:
        request = listing_pb2.SubmitListingRequest(
            request_id=self.rid(f"submit/{product.key}"),
            exchange_id=self.ids[product.exchange],
            provider_id=self.ids[product.provider],
            title=product.title,
            category=product.category,
            classification=product.classification,
            personal_information_level=product.pi_level,
            rights=ALL_RIGHTS,
            delivery_modes=product.modes,
            scenarios=product.scenarios,
            list_price=common_pb2.Money(currency="CNY", amount_minor=product.price_minor),
            compliance_assessment_ref=product.compliance_ref,
            pi_impact_assessment_ref=product.pi_impact_ref,
            consent_basis_ref=product.consent_ref,
            security_assessment_ref=product.security_ref,
        )
        response = self.act(
            "SubmitListing", self.venue(product.exchange), lambda c: c.submit_listing(request)
        )
        return response.listing.id

    def assess(self, product: Product, listing_id: str, *, passed: bool, notes: str = "") -> None:
        number = self.seeded.rng(f"assessment/{product.key}").randrange(10**4)
        request = listing_pb2.RecordAssessmentRequest(
            request_id=self.rid(f"assess/{product.key}"),
            listing_id=listing_id,
            assessor_id=self.ids[product.assessor],
            passed=passed,
            reference=f"LAW-2025-{number:04d}",
            notes=notes,
        )
        self.act(
            "RecordAssessment",
            self.assessor(product.assessor),
            lambda c: c.record_assessment(request),
        )

    def list_product(self, product: Product) -> str:
        listing_id = self.submit(product)
        self.assess(product, listing_id, passed=True)
        request = listing_pb2.ApproveListingRequest(
            request_id=self.rid(f"approve/{product.key}"), listing_id=listing_id
        )
        self.act(
            "ApproveListing", self.venue(product.exchange), lambda c: c.approve_listing(request)
        )
        return listing_id

    def rejected_and_pending(self) -> None:
        """A listing rejected after a failed assessment; one left awaiting re-assessment;
        one whose ownership is contested."""
        scraped = self.submit(SCRAPED)
        self.assess(SCRAPED, scraped, passed=False, notes="no lawful basis for the collection")
        request = listing_pb2.RejectListingRequest(
            request_id=self.rid("reject/scraped"),
            listing_id=scraped,
            reason_note="assessment failed: personal information collected without consent",
        )
        self.act("RejectListing", self.venue(SCRAPED.exchange), lambda c: c.reject_listing(request))

        self.pending = self.submit(FOOTFALL)
        self.assess(FOOTFALL, self.pending, passed=False, notes="re-identification risk")

        self.disputed = self.submit(DISPUTED)
        self.assess(DISPUTED, self.disputed, passed=True)
        dispute = listing_pb2.OpenOwnershipDisputeRequest(
            request_id=self.rid("dispute/disputed"),
            listing_id=self.disputed,
            claimant_id=self.ids["holder/survey"],
            reason_note="the institute claims it digitised the scans; case (2025) Jing 0105",
        )
        self.act(
            "OpenOwnershipDispute",
            self.venue(DISPUTED.exchange),
            lambda c: c.open_ownership_dispute(dispute),
        )

    # --- trades and grants ------------------------------------------------------------

    def sale(
        self,
        key: str,
        product: Product,
        listing_id: str,
        seller: str,
        buyer: str,
        *,
        rights: Sequence[common_pb2.Right.ValueType] = (common_pb2.RIGHT_PROCESS_USE,),
        conveyance: common_pb2.Conveyance.ValueType = common_pb2.CONVEYANCE_LICENCE,
        scenario: str | None = None,
    ) -> trade_pb2.Trade:
        rng = self.seeded.rng(f"sale/{key}")
        price = product.price_minor // 10 * rng.randint(6, 12) // 10
        licence = conveyance == common_pb2.CONVEYANCE_LICENCE
        request = trade_pb2.RecordSaleRequest(
            request_id=self.rid(f"sale/{key}"),
            listing_id=listing_id,
            seller_id=self.ids[seller],
            buyer_id=self.ids[buyer],
            rights=rights,
            conveyance=conveyance,
            scenario=scenario or rng.choice(product.scenarios),
            term_start=timestamp(TERM_START) if licence else None,
            term_end=timestamp(TERM_END) if licence else None,
            price=common_pb2.Money(currency="CNY", amount_minor=price),
        )
        return self.act(
            "RecordSale", self.venue(product.exchange), lambda c: c.record_sale(request)
        ).trade

    def settle(self, key: str, product: Product, trade: trade_pb2.Trade) -> None:
        number = self.seeded.rng(f"settle/{key}").randrange(10**8)
        request = trade_pb2.SettleTradeRequest(
            request_id=self.rid(f"settle/{key}"),
            trade_id=trade.id,
            settlement_ref=f"CNAPS-{number:08d}",
        )
        self.act("SettleTrade", self.venue(product.exchange), lambda c: c.settle_trade(request))

    def grant(
        self,
        key: str,
        product: Product,
        trade: trade_pb2.Trade,
        *,
        destination: str = "CN",
        basis: common_pb2.CrossBorderBasis | None = None,
    ) -> access_pb2.Grant:
        rng = self.seeded.rng(f"grant/{key}")
        licence = trade.conveyance == common_pb2.CONVEYANCE_LICENCE
        request = access_pb2.GrantAccessRequest(
            request_id=self.rid(f"grant/{key}"),
            trade_id=trade.id,
            delivery_mode=rng.choice(product.modes),
            scenario=trade.scenario,
            valid_until=timestamp(GRANT_UNTIL) if licence else None,
            destination_country=destination,
            cross_border_basis=basis,
            usage_limit=rng.choice((None, 1_000, 10_000)),
        )
        return self.act(
            "GrantAccess", self.venue(product.exchange), lambda c: c.grant_access(request)
        ).grant

    def trade(self, listings: dict[str, str]) -> dict[str, tuple[Product, access_pb2.Grant]]:
        """Licences to every buyer, some through a dealer; IMPORTANT data to certified
        buyers only; a transfer of HOLD; a cross-border grant."""
        grants: dict[str, tuple[Product, access_pb2.Grant]] = {}
        for product in (*LICENSED, GRID):
            dealer = RESOLD_BY.get(product.key)
            if dealer:
                self.sale(
                    f"{product.key}/dealer",
                    product,
                    listings[product.key],
                    product.provider,
                    dealer,
                    rights=(common_pb2.RIGHT_PROCESS_USE, common_pb2.RIGHT_OPERATE),
                    scenario=product.scenarios[0],
                )
        for product in LICENSED:
            for buyer in buyers(self.scale):
                key = f"{product.key}/{buyer.key}"
                rng = self.seeded.rng(f"deal/{key}")
                dealer = RESOLD_BY.get(product.key)
                seller = dealer if dealer and rng.random() < 0.5 else product.provider
                scenario = product.scenarios[0] if seller == dealer else None
                trade = self.sale(
                    key, product, listings[product.key], seller, buyer.key, scenario=scenario
                )
                if key != self.unpaid and rng.random() < 0.85:
                    self.settle(key, product, trade)
                grants[key] = (product, self.grant(key, product, trade))
        for certified in ("buyer/certified", "regulator"):
            key = f"{GRID.key}/{certified}"
            trade = self.sale(key, GRID, listings[GRID.key], GRID.provider, certified)
            self.settle(key, GRID, trade)
            grants[key] = (GRID, self.grant(key, GRID, trade))

        # Data leaving China: personal information under a filed standard contract.
        key = f"{TRIPS.key}/buyer/singapore"
        trade = self.sale(key, TRIPS, listings[TRIPS.key], TRIPS.provider, "buyer/singapore")
        self.settle(key, TRIPS, trade)
        basis = common_pb2.CrossBorderBasis(
            kind=common_pb2.CROSS_BORDER_BASIS_KIND_STANDARD_CONTRACT,
            reference="SC-FILING-2025-SH-0193",
        )
        grants[key] = (TRIPS, self.grant(key, TRIPS, trade, destination="SG", basis=basis))

        # The survey institute transfers HOLD (it keeps processing and operating rights).
        key = f"{LAND_USE.key}/hold"
        trade = self.sale(
            key,
            LAND_USE,
            listings[LAND_USE.key],
            LAND_USE.provider,
            self.hold_buyer,
            rights=(common_pb2.RIGHT_HOLD,),
            conveyance=common_pb2.CONVEYANCE_TRANSFER,
        )
        self.settle(key, LAND_USE, trade)
        return grants

    def report_uses(self, grants: dict[str, tuple[Product, access_pb2.Grant]]) -> None:
        """Deliveries reported by each venue in one batch."""
        by_venue: dict[str, list[trade_pb2.Command]] = {}
        for key, (product, grant) in grants.items():
            rng = self.seeded.rng(f"uses/{key}")
            for number in range(rng.randint(1, 3)):
                use = access_pb2.RecordAccessUseRequest(
                    request_id=self.rid(f"use/{key}/{number}"),
                    grant_id=grant.id,
                    delivery_mode=grant.delivery_mode,
                    scenario=grant.scenario,
                    units=rng.randint(1, 50),
                )
                by_venue.setdefault(product.exchange, []).append(
                    trade_pb2.Command(record_access_use=use)
                )
        for exchange, commands in by_venue.items():
            caller = self.venue(exchange)
            for batch in _chunks(commands, 500):
                request = trade_pb2.IngestCommandsRequest(commands=batch)
                results = caller.client.ingest_commands(request).results
                for result in results:
                    if result.WhichOneof("kind") == "error":
                        raise DemoError(f"a reported use failed: {result.error.message}")
                    written = result.record_access_use.position > self.report.head_before
                    (self.report.written if written else self.report.replayed)[
                        "RecordAccessUse"
                    ] += 1
                    self.report.signed_by[caller.label] += 1

    # --- lifecycle --------------------------------------------------------------------

    def lifecycle(
        self, listings: dict[str, str], grants: dict[str, tuple[Product, access_pb2.Grant]]
    ) -> None:
        cohort = buyers(self.scale)
        researcher, rating_agency, driving_lab = cohort[3].key, cohort[4].key, cohort[5].key

        # Consent withdrawn by the patients' representative: the medical grant ends.
        _, medical_grant = grants[f"{MEDICAL.key}/{researcher}"]
        self.revoked_grant = medical_grant.id
        revoke = access_pb2.RevokeAccessRequest(
            request_id=self.rid("revoke/medical"),
            grant_id=medical_grant.id,
            reason=common_pb2.REVOCATION_REASON_CONSENT_WITHDRAWN,
            note="separate consent withdrawn for secondary research use",
        )
        self.act("RevokeAccess", self.venue(MEDICAL.exchange), lambda c: c.revoke_access(revoke))

        _, invoices_grant = grants[f"{INVOICES.key}/{cohort[0].key}"]
        misuse = access_pb2.RevokeAccessRequest(
            request_id=self.rid("revoke/invoices"),
            grant_id=invoices_grant.id,
            reason=common_pb2.REVOCATION_REASON_MISUSE_DETECTED,
            note="signals used outside the declared scenario",
        )
        self.act("RevokeAccess", self.venue(INVOICES.exchange), lambda c: c.revoke_access(misuse))

        # A port data incident: the listing is suspended (its grants with it, R15) and
        # reinstated; one grant is reinstated on request, the others stay suspended.
        venue = self.venue(PORT.exchange)
        suspend = listing_pb2.SuspendListingRequest(
            request_id=self.rid("suspend/port"),
            listing_id=listings[PORT.key],
            reason_note="berth sensor data quality incident",
        )
        self.act("SuspendListing", venue, lambda c: c.suspend_listing(suspend))
        reinstate = listing_pb2.ReinstateListingRequest(
            request_id=self.rid("reinstate/port"), listing_id=listings[PORT.key]
        )
        self.act("ReinstateListing", venue, lambda c: c.reinstate_listing(reinstate))
        _, port_grant = grants[f"{PORT.key}/{cohort[1].key}"]
        back = access_pb2.ReinstateAccessRequest(
            request_id=self.rid("reinstate/port-grant"), grant_id=port_grant.id
        )
        self.act("ReinstateAccess", venue, lambda c: c.reinstate_access(back))

        # A supervisory inquiry: the rating agency is suspended, and so are its grants (R14).
        suspended = participant_pb2.SuspendParticipantRequest(
            request_id=self.rid("suspend/rating-agency"),
            participant_id=self.ids[rating_agency],
            reason_note="regulator inquiry into onward resale of licensed data",
        )
        self.act("SuspendParticipant", self.registry, lambda c: c.suspend_participant(suspended))
        self.suspended_buyer = rating_agency

        # The driving lab closes down: deregistered, its grants revoked (R14).
        gone = participant_pb2.DeregisterParticipantRequest(
            request_id=self.rid("deregister/driving-lab"),
            participant_id=self.ids[driving_lab],
            reason_note="company dissolved",
        )
        self.act("DeregisterParticipant", self.registry, lambda c: c.deregister_participant(gone))

        # The dealer's certification is suspended during a review, then reinstated.
        cert = self.certifications["dealer/shuhe"]
        review = participant_pb2.SuspendCertificationRequest(
            request_id=self.rid("suspend-cert/shuhe"),
            participant_id=self.ids["dealer/shuhe"],
            certification_id=cert,
            reason_note="annual review",
        )
        self.act("SuspendCertification", self.registry, lambda c: c.suspend_certification(review))
        cleared = participant_pb2.ReinstateCertificationRequest(
            request_id=self.rid("reinstate-cert/shuhe"),
            participant_id=self.ids["dealer/shuhe"],
            certification_id=cert,
        )
        self.act(
            "ReinstateCertification", self.registry, lambda c: c.reinstate_certification(cleared)
        )

        # An assessor loses its certification by regulator order.
        lost = participant_pb2.RevokeCertificationRequest(
            request_id=self.rid("revoke-cert/pengcheng"),
            participant_id=self.ids["assessor/pengcheng"],
            certification_id=self.certifications["assessor/pengcheng"],
            reason=common_pb2.REVOCATION_REASON_REGULATOR_ORDER,
            note="assessment quality findings",
        )
        self.act("RevokeCertification", self.registry, lambda c: c.revoke_certification(lost))

        # An unpaid trade is cancelled: its licence ends and its grant is revoked.
        _, cancelled_grant = grants[self.unpaid]
        cancel = trade_pb2.CancelTradeRequest(
            request_id=self.rid("cancel/public"),
            trade_id=cancelled_grant.trade_id,
            reason_note="payment not received",
        )
        self.act(
            "CancelTrade", self.venue(REGISTRY_DATA.exchange), lambda c: c.cancel_trade(cancel)
        )

        # Smart-meter curves turn out to be CORE data: delisted, grants revoked (R01).
        core = listing_pb2.ReclassifyListingRequest(
            request_id=self.rid("reclassify/meters"),
            listing_id=listings[METERS.key],
            classification=common_pb2.CLASSIFICATION_CORE,
        )
        self.act(
            "ReclassifyListing", self.venue(METERS.exchange), lambda c: c.reclassify_listing(core)
        )

        # The public data product is superseded: delisted, grants revoked (R15).
        delist = listing_pb2.DelistListingRequest(
            request_id=self.rid("delist/public"),
            listing_id=listings[REGISTRY_DATA.key],
            reason_note="superseded by the daily feed",
        )
        self.act(
            "DelistListing", self.venue(REGISTRY_DATA.exchange), lambda c: c.delist_listing(delist)
        )

    # --- refusals ---------------------------------------------------------------------

    def refusals(
        self, listings: dict[str, str], grants: dict[str, tuple[Product, access_pb2.Grant]]
    ) -> None:
        """Acts each enforced rule must refuse; each leaves the state as it was, so a
        re-run meets the same refusal."""
        cohort = buyers(self.scale)

        def sale(
            key: str,
            listing_id: str,
            seller: str,
            buyer: str,
            scenario: str,
            *,
            transfer_hold: bool = False,
        ) -> Callable[[LedgerClient], Message]:
            request = trade_pb2.RecordSaleRequest(
                request_id=self.rid(f"refused/{key}"),
                listing_id=listing_id,
                seller_id=self.ids[seller],
                buyer_id=self.ids[buyer],
                rights=(common_pb2.RIGHT_HOLD if transfer_hold else common_pb2.RIGHT_PROCESS_USE,),
                conveyance=(
                    common_pb2.CONVEYANCE_TRANSFER
                    if transfer_hold
                    else common_pb2.CONVEYANCE_LICENCE
                ),
                term_start=None if transfer_hold else timestamp(TERM_START),
                term_end=None if transfer_hold else timestamp(TERM_END),
                scenario=scenario,
                price=common_pb2.Money(currency="CNY", amount_minor=1_000_000),
            )
            return lambda c: c.record_sale(request)

        medical = listings[MEDICAL.key]
        self.refused(
            "R09_EXCHANGE_IS_PARTY",
            "the Shanghai exchange buying on its own venue",
            self.venue(MEDICAL.exchange),
            sale("r09", medical, MEDICAL.provider, MEDICAL.exchange, MEDICAL.scenarios[0]),
        )
        core = listing_pb2.SubmitListingRequest(
            request_id=self.rid("refused/r01"),
            exchange_id=self.ids[GRID.exchange],
            provider_id=self.ids[GRID.provider],
            title="Grid dispatch topology",
            category=common_pb2.CATEGORY_INDUSTRIAL,
            classification=common_pb2.CLASSIFICATION_CORE,
            personal_information_level=NO_PI,
            rights=ALL_RIGHTS,
            delivery_modes=(API,),
            scenarios=("grid-planning",),
            list_price=common_pb2.Money(currency="CNY", amount_minor=1),
        )
        self.refused(
            "R01_CORE_DATA",
            "listing CORE grid data",
            self.venue(GRID.exchange),
            lambda c: c.submit_listing(core),
        )
        self.refused(
            "R05_LISTING_NOT_LISTED",
            "a sale on a listing still awaiting a passing assessment",
            self.venue(FOOTFALL.exchange),
            sale("r05", self.pending, FOOTFALL.provider, cohort[0].key, FOOTFALL.scenarios[0]),
        )
        self.refused(
            "R10_RIGHTS_NOT_HELD",
            "the survey institute transferring HOLD it already transferred",
            self.venue(LAND_USE.exchange),
            sale(
                "r10",
                listings[LAND_USE.key],
                LAND_USE.provider,
                cohort[1].key,
                LAND_USE.scenarios[0],
                transfer_hold=True,
            ),
        )
        self.refused(
            "R08_BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
            "IMPORTANT grid telemetry to an uncertified bank",
            self.venue(GRID.exchange),
            sale("r08", listings[GRID.key], GRID.provider, cohort[1].key, GRID.scenarios[0]),
        )
        self.refused(
            "R06_SCENARIO_NOT_ALLOWED",
            "port data sold for a scenario the listing does not declare",
            self.venue(PORT.exchange),
            sale("r06", listings[PORT.key], PORT.provider, cohort[0].key, "ad-targeting"),
        )
        no_consent = listing_pb2.SubmitListingRequest(
            request_id=self.rid("refused/r13"),
            exchange_id=self.ids[MEDICAL.exchange],
            provider_id=self.ids[MEDICAL.provider],
            title="Paediatric imaging archive",
            category=common_pb2.CATEGORY_MEDICAL,
            classification=GENERAL,
            personal_information_level=SENSITIVE,
            rights=ALL_RIGHTS,
            delivery_modes=(SANDBOX,),
            scenarios=("clinical-research",),
            list_price=common_pb2.Money(currency="CNY", amount_minor=1),
            pi_impact_assessment_ref="PIA-2025-0101",
        )
        self.refused(
            "R13_SEPARATE_CONSENT_REQUIRED",
            "SENSITIVE medical data without a separate-consent basis",
            self.venue(MEDICAL.exchange),
            lambda c: c.submit_listing(no_consent),
        )
        approve = listing_pb2.ApproveListingRequest(
            request_id=self.rid("refused/r03"), listing_id=self.pending
        )
        self.refused(
            "R03_ASSESSMENT_FAILED",
            "approving a listing whose assessment failed",
            self.venue(FOOTFALL.exchange),
            lambda c: c.approve_listing(approve),
        )
        approve_disputed = listing_pb2.ApproveListingRequest(
            request_id=self.rid("refused/r04"), listing_id=self.disputed
        )
        self.refused(
            "R04_OWNERSHIP_DISPUTED",
            "approving a listing whose ownership is contested",
            self.venue(DISPUTED.exchange),
            lambda c: c.approve_listing(approve_disputed),
        )
        _, trips_grant = grants[f"{TRIPS.key}/{cohort[0].key}"]
        abroad = access_pb2.GrantAccessRequest(
            request_id=self.rid("refused/r12"),
            trade_id=trips_grant.trade_id,
            delivery_mode=API,
            scenario=trips_grant.scenario,
            valid_until=timestamp(GRANT_UNTIL),
            destination_country="DE",
        )
        self.refused(
            "R12_CROSS_BORDER_BASIS_REQUIRED",
            "personal trip data to Germany without a cross-border basis",
            self.venue(TRIPS.exchange),
            lambda c: c.grant_access(abroad),
        )
        _, suspended_grant = grants[f"{PORT.key}/{self.suspended_buyer}"]
        regrant = access_pb2.GrantAccessRequest(
            request_id=self.rid("refused/r14"),
            trade_id=suspended_grant.trade_id,
            delivery_mode=suspended_grant.delivery_mode,
            scenario=suspended_grant.scenario,
            valid_until=timestamp(GRANT_UNTIL),
        )
        self.refused(
            "R14_GRANTEE_NOT_ACTIVE",
            "a new grant to the suspended rating agency",
            self.venue(PORT.exchange),
            lambda c: c.grant_access(regrant),
        )
        reinstate = access_pb2.ReinstateAccessRequest(
            request_id=self.rid("refused/r16"), grant_id=self.revoked_grant
        )
        self.refused(
            "R16_REVOKED_IS_FINAL",
            "reinstating the grant revoked after consent was withdrawn",
            self.venue(MEDICAL.exchange),
            lambda c: c.reinstate_access(reinstate),
        )


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def print_summary(report: Report, console: Console) -> None:
    table = Table(title="ledger demo", show_edge=False)
    table.add_column("command")
    table.add_column("written", justify="right")
    table.add_column("replayed", justify="right")
    for kind in sorted(set(report.written) | set(report.replayed)):
        table.add_row(kind, str(report.written[kind]), str(report.replayed[kind]))
    table.add_row(
        "[bold]total[/]",
        f"[bold]{report.written.total()}[/]",
        f"[bold]{report.replayed.total()}[/]",
    )
    console.print(table)
    console.print(f"refused as expected: {len(report.refusals)} commands, nothing written")
    console.print(
        "signed by: " + ", ".join(f"{k} {v}" for k, v in sorted(report.signed_by.items()))
    )
    console.print(
        f"head position {report.head_before} → {report.head_after}: "
        f"{report.events_written} events written"
    )


def run_demo(
    address: str,
    tokens_file: Path,
    seed: int,
    scale: int,
    console: Console | None = None,
    connect_timeout_s: float = 5.0,
) -> Report:
    """Loads the market and prints what was done; raises ``DemoError`` if it cannot."""
    if scale < 1:
        raise DemoError("--scale must be at least 1")
    console = console or Console(highlight=False)
    demo = Demo(address, Tokens.load(tokens_file), seed, scale, console)
    try:
        report = demo.run(connect_timeout_s)
    except LedgerCallError as exc:
        if exc.code is grpc.StatusCode.ALREADY_EXISTS:
            raise DemoError(
                f"{exc}; this store holds a market from another version of the demo: "
                "run it with another --seed"
            ) from exc
        raise DemoError(str(exc)) from exc
    finally:
        demo.close()
    print_summary(report, console)
    return report
