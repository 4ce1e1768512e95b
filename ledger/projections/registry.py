"""Every projection the engine runs, in one list."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.projections.access import Access
from ledger.projections.catalogue import Catalogue
from ledger.projections.chain import AuditChain
from ledger.projections.compliance import Compliance
from ledger.projections.engine import Projection
from ledger.projections.ownership import Ownership
from ledger.settings import Settings


def all_projections(settings: Settings) -> Sequence[Projection]:
    return (
        Catalogue(),
        Ownership(),
        Access(),
        AuditChain(),
        Compliance(settlement_window_days=settings.settlement_window_days),
    )
