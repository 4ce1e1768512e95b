"""The long-running processes space out garbage collections and exempt what they loaded
at start."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger import collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settling_freezes_what_is_loaded_and_raises_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    collector.settle_after_start()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0
    # Cycles made after start are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restored_collector")
def test_bulk_work_collects_less_often_and_restores_the_settings_after() -> None:
    before = gc.get_threshold()
    with collector.bulk():
        assert gc.get_threshold() == (collector.BULK_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
