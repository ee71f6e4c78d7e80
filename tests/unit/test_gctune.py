"""common/gctune.py: startup objects frozen out of the collector, the young generation collected
less often, cyclic garbage still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from common import gctune

pytestmark = pytest.mark.unit


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_tune_freezes_what_is_alive_and_raises_the_young_threshold(restored: None) -> None:
    before = gc.get_threshold()
    alive = object.__new__(type("Alive", (), {}))
    gctune.tune(young=5_000)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (5_000, before[1], before[2])
    assert not any(o is alive for o in gc.get_objects())  # frozen: in no generation any more


def test_cycles_made_after_tuning_are_still_collected(restored: None) -> None:
    gctune.tune()
    collected: list[str] = []

    class Node:
        def __del__(self) -> None:
            collected.append("node")

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    gc.collect()
    assert collected == ["node", "node"]
