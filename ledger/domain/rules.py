"""The enforced rules R01-R16 of the rule catalogue, one check per rule.

Each check quotes its rule, raises :class:`RuleViolation` carrying the rule id, and is
named after the rule, so a rejection can always be traced to the catalogue.
Detected rules (R17-R20) live in the compliance projection and the audit verifier.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from typing import TYPE_CHECKING

from ledger.domain.errors import RuleViolation
from ledger.domain.values import (
    Category,
    Classification,
    Conveyance,
    CrossBorderBasis,
    CrossBorderBasisKind,
    DeliveryMode,
    ListingState,
    ParticipantRole,
    PersonalInformationLevel,
    RevocationReason,
    Right,
    TradeState,
)

if TYPE_CHECKING:
    from ledger.domain.listing import Listing
    from ledger.domain.participant import Participant
    from ledger.domain.trade import Trade

RULE_SET_VERSION = "2026.1"
DOMESTIC = "CN"


def check_r01_not_core(classification: Classification, action: str) -> None:
    """R01: ``CORE`` data is never listed, sold or granted."""
    if classification is Classification.CORE:
        raise RuleViolation(
            "R01", "CORE_DATA", f"CORE data is never circulated; cannot {action}", "classification"
        )


def check_r02_exchange_eligible(exchange: Participant, at: datetime) -> None:
    """R02: a listing's exchange is an ACTIVE participant with role ``EXCHANGE`` and a
    valid certification."""
    if not exchange.has_role(ParticipantRole.EXCHANGE):
        raise RuleViolation("R02", "NOT_AN_EXCHANGE", "the venue lacks the EXCHANGE role")
    if not exchange.is_active:
        raise RuleViolation("R02", "EXCHANGE_NOT_ACTIVE", f"the exchange is {exchange.state.name}")
    if exchange.valid_certification(at) is None:
        raise RuleViolation(
            "R02", "EXCHANGE_NOT_CERTIFIED", "the exchange holds no valid certification"
        )


def check_r03_assessor_eligible(
    assessor: Participant,
    provider_id: str,
    category: Category,
    classification: Classification,
    at: datetime,
) -> None:
    """R03: the assessment is by an ACTIVE ``ASSESSOR`` whose certification covers the
    listing's category and classification; the assessor is not the provider."""
    if str(assessor.id) == provider_id:
        raise RuleViolation(
            "R03", "ASSESSOR_IS_PROVIDER", "the provider cannot assess its own listing"
        )
    if not assessor.has_role(ParticipantRole.ASSESSOR):
        raise RuleViolation("R03", "NOT_AN_ASSESSOR", "the participant lacks the ASSESSOR role")
    if not assessor.is_active:
        raise RuleViolation("R03", "ASSESSOR_NOT_ACTIVE", f"the assessor is {assessor.state.name}")
    if assessor.valid_certification(at, category, classification) is None:
        raise RuleViolation(
            "R03",
            "ASSESSOR_NOT_CERTIFIED",
            f"no valid certification covering {category.name}/{classification.name}",
        )


def check_r03_passing_assessment(listing: Listing) -> None:
    """R03 (不合规不挂牌): a listing becomes LISTED only after a passing assessment."""
    if listing.assessment is None:
        raise RuleViolation("R03", "NOT_ASSESSED", "no compliance assessment is recorded")
    if not listing.assessment.passed:
        raise RuleViolation("R03", "ASSESSMENT_FAILED", "the latest assessment did not pass")


def check_r04_provider_holds_operate(rights: Set[Right]) -> None:
    """R04: the provider holds ``OPERATE`` on the product."""
    if Right.OPERATE not in rights:
        raise RuleViolation(
            "R04", "PROVIDER_LACKS_OPERATE", "the provider must hold OPERATE to list", "rights"
        )


def check_r04_not_disputed(listing: Listing, action: str) -> None:
    """R04: a listing with an open ownership dispute cannot be approved, sold or granted."""
    if listing.disputed:
        raise RuleViolation("R04", "OWNERSHIP_DISPUTED", f"ownership is disputed; cannot {action}")


def check_r05_listing_is_listed(listing: Listing) -> None:
    """R05: sales and new grants only on LISTED listings."""
    if listing.state is not ListingState.LISTED:
        raise RuleViolation(
            "R05", "LISTING_NOT_LISTED", f"the listing is {listing.state.name}", "listing_id"
        )


def check_r06_sale_scenario(listing: Listing, scenario: str) -> None:
    """R06 (无场景不交易): a sale's scenario is one of the listing's scenarios."""
    if scenario not in listing.scenarios:
        raise RuleViolation(
            "R06",
            "SCENARIO_NOT_ALLOWED",
            f"{scenario!r} is not a scenario of the listing",
            "scenario",
        )


def check_r06_grant_scenario(trade: Trade, scenario: str) -> None:
    """R06: a grant's scenario is its trade's."""
    if scenario != trade.scenario:
        raise RuleViolation(
            "R06", "SCENARIO_MISMATCH", f"the trade's scenario is {trade.scenario!r}", "scenario"
        )


def check_r07_parties(
    listing: Listing, seller: Participant, buyer: Participant, at: datetime
) -> None:
    """R07: seller and buyer are ACTIVE; a seller that is not the provider is a
    ``DATA_DEALER`` whose certification covers the category and classification."""
    for side, party in (("seller", seller), ("buyer", buyer)):
        if not party.is_active:
            raise RuleViolation(
                "R07",
                f"{side.upper()}_NOT_ACTIVE",
                f"the {side} is {party.state.name}",
                f"{side}_id",
            )
    if str(seller.id) != listing.provider_id:
        if not seller.has_role(ParticipantRole.DATA_DEALER):
            raise RuleViolation(
                "R07",
                "SELLER_NOT_DEALER",
                "a seller other than the provider must be a certified DATA_DEALER",
                "seller_id",
            )
        if seller.valid_certification(at, listing.category, listing.classification) is None:
            raise RuleViolation(
                "R07",
                "DEALER_NOT_CERTIFIED",
                f"the dealer holds no valid certification covering "
                f"{listing.category.name}/{listing.classification.name}",
                "seller_id",
            )


def check_r08_important_buyer(listing: Listing, buyer: Participant, at: datetime) -> None:
    """R08: ``IMPORTANT`` data is sold only to buyers holding a valid certification covering
    ``IMPORTANT``, or with role ``REGULATOR``."""
    if listing.classification is not Classification.IMPORTANT:
        return
    if buyer.has_role(ParticipantRole.REGULATOR):
        return
    if buyer.valid_certification(at, None, Classification.IMPORTANT) is None:
        raise RuleViolation(
            "R08",
            "BUYER_NOT_CERTIFIED_FOR_IMPORTANT",
            "IMPORTANT data goes only to certified buyers or regulators",
            "buyer_id",
        )


def check_r09_no_self_dealing(listing: Listing, seller_id: str, buyer_id: str) -> None:
    """R09: the exchange that operates the venue is neither seller nor buyer there;
    seller ≠ buyer."""
    if seller_id == buyer_id:
        raise RuleViolation("R09", "SELLER_IS_BUYER", "seller and buyer are the same", "buyer_id")
    if listing.exchange_id in (seller_id, buyer_id):
        raise RuleViolation(
            "R09", "EXCHANGE_IS_PARTY", "the venue's exchange cannot trade on its own venue"
        )


def check_r10_rights_held(
    listing: Listing, seller_id: str, rights: Set[Right], conveyance: Conveyance, at: datetime
) -> None:
    """R10: rights conveyed ⊆ rights the seller holds at that moment; ``HOLD`` has one
    holder (it is transferred, never licensed); licensing to others needs ``OPERATE``."""
    if conveyance is Conveyance.LICENCE and Right.HOLD in rights:
        raise RuleViolation(
            "R10",
            "HOLD_NOT_LICENSABLE",
            "HOLD has exactly one holder; it can only be transferred",
            "rights",
        )
    if conveyance is Conveyance.TRANSFER:
        held = listing.exclusive_rights_of(seller_id)
    else:
        held = listing.rights_held_by(seller_id, at)
        if Right.OPERATE not in held:
            raise RuleViolation(
                "R10",
                "OPERATE_NOT_HELD",
                "licensing data to others needs the OPERATE right",
                "rights",
            )
    missing = set(rights) - held
    if missing:
        raise RuleViolation(
            "R10",
            "RIGHTS_NOT_HELD",
            f"the seller does not hold {', '.join(sorted(r.name for r in missing))}",
            "rights",
        )


def check_r11_grant_source(
    trade: Trade,
    listing: Listing,
    grantee_id: str,
    mode: DeliveryMode,
    valid_from: datetime,
    valid_until: datetime | None,
) -> None:
    """R11: a grant derives from an EXECUTED or SETTLED trade; its grantee is the buyer;
    its validity lies within the trade's term; its delivery mode is one of the listing's."""
    if trade.state not in (TradeState.EXECUTED, TradeState.SETTLED):
        raise RuleViolation(
            "R11", "TRADE_NOT_ACTIVE", f"the trade is {trade.state.name}", "trade_id"
        )
    if grantee_id != trade.buyer_id:
        raise RuleViolation("R11", "GRANTEE_NOT_BUYER", "the grantee must be the trade's buyer")
    if trade.term_start is not None and valid_from < trade.term_start:
        raise RuleViolation(
            "R11", "OUTSIDE_TRADE_TERM", "validity starts before the trade's term", "valid_from"
        )
    if trade.term_end is not None and (valid_until is None or valid_until > trade.term_end):
        raise RuleViolation(
            "R11", "OUTSIDE_TRADE_TERM", "validity ends after the trade's term", "valid_until"
        )
    if mode not in listing.delivery_modes:
        raise RuleViolation(
            "R11",
            "DELIVERY_MODE_NOT_OFFERED",
            f"the listing does not offer {mode.name}",
            "delivery_mode",
        )


def check_r12_cross_border(
    listing: Listing, destination_country: str, basis: CrossBorderBasis | None
) -> None:
    """R12: cross-border (destination ≠ ``CN``): ``IMPORTANT`` data needs a security-assessment
    reference; ``PERSONAL``/``SENSITIVE`` data needs a cross-border basis reference."""
    if destination_country == DOMESTIC:
        return
    if listing.classification is Classification.IMPORTANT and (
        basis is None or basis.kind is not CrossBorderBasisKind.SECURITY_ASSESSMENT
    ):
        raise RuleViolation(
            "R12",
            "SECURITY_ASSESSMENT_REQUIRED",
            "IMPORTANT data leaves China only under a security assessment",
            "cross_border_basis",
        )
    if listing.pi_level is not PersonalInformationLevel.NONE and basis is None:
        raise RuleViolation(
            "R12",
            "CROSS_BORDER_BASIS_REQUIRED",
            "personal information leaves China only with a cross-border basis "
            "(security assessment, standard contract or certification)",
            "cross_border_basis",
        )


def check_r13_sensitive_evidence(
    pi_level: PersonalInformationLevel, pi_impact_assessment_ref: str, consent_basis_ref: str
) -> None:
    """R13: a listing with ``SENSITIVE`` personal information carries a PI impact assessment
    reference and a separate-consent basis."""
    if pi_level is not PersonalInformationLevel.SENSITIVE:
        return
    if not pi_impact_assessment_ref:
        raise RuleViolation(
            "R13",
            "PI_IMPACT_ASSESSMENT_REQUIRED",
            "SENSITIVE data needs a PI impact assessment",
            "pi_impact_assessment_ref",
        )
    if not consent_basis_ref:
        raise RuleViolation(
            "R13",
            "SEPARATE_CONSENT_REQUIRED",
            "SENSITIVE data needs a separate-consent basis",
            "consent_basis_ref",
        )


def check_r14_grantee_active(grantee: Participant) -> None:
    """R14: no grant may be ACTIVE to a suspended or deregistered participant."""
    if not grantee.is_active:
        raise RuleViolation("R14", "GRANTEE_NOT_ACTIVE", f"the grantee is {grantee.state.name}")


def check_r15_listing_active(listing: Listing) -> None:
    """R15: no grant may be ACTIVE on a suspended or delisted listing; reinstating a
    listing does not reinstate its grants."""
    if listing.state is not ListingState.LISTED:
        raise RuleViolation("R15", "LISTING_NOT_LISTED", f"the listing is {listing.state.name}")


def check_r16_not_revoked(revoked: bool, resource: str) -> None:
    """R16: a revoked grant or a revoked certification is never reinstated."""
    if revoked:
        raise RuleViolation("R16", "REVOKED_IS_FINAL", f"a revoked {resource} is never reinstated")


def check_r16_revocation_reason(reason: RevocationReason | None, note: str) -> RevocationReason:
    """R16: revocation needs a reason code (and a note for ``OTHER``)."""
    if reason is None:
        raise RuleViolation("R16", "REASON_REQUIRED", "a revocation needs a reason code", "reason")
    if reason is RevocationReason.OTHER and not note.strip():
        raise RuleViolation(
            "R16", "NOTE_REQUIRED", "a revocation for reason OTHER needs a note", "note"
        )
    return reason
