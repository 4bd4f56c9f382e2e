"""The service's own schedule for Python's garbage collector, on the real ``gc`` module."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from callbridge.collector import Collector


class Node:
    """An object in a reference cycle with itself, watched through a weak reference."""

    def __init__(self) -> None:
        self.me = self


class Leaf:
    """No cycle: reference counting frees it."""


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector(young_every=0.05, full_every=1.0, thaw_every=60.0)
    c.begin(0.0)
    try:
        yield c
    finally:
        c.end()


def cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_the_automatic_collector_is_off_and_comes_back() -> None:
    assert gc.isenabled()
    c = Collector()
    c.begin(0.0)
    try:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        c.end()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_end_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        c = Collector()
        c.begin(0.0)
        c.end()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_young_pass_frees_a_new_cycle(collector: Collector) -> None:
    watched = cycle()
    assert watched() is not None, "the automatic collector ran"
    collector.step(0.05)
    assert watched() is None
    assert collector.stats.young_passes == 1
    assert collector.stats.full_passes == 0


def test_a_cycle_alive_at_a_full_pass_waits_for_a_thaw_pass(collector: Collector) -> None:
    holder = [Node()]
    watched = weakref.ref(holder[0])
    collector.step(1.0)
    assert collector.stats.full_passes == 1
    holder.clear()
    for now in (1.05, 1.1, 2.0, 3.0):
        collector.step(now)
        assert watched() is not None, f"frozen, yet collected at {now}"
    assert collector.stats.full_passes == 3
    # The heap held steady: the thaw pass is not worth its pause.
    collector.step(60.0)
    assert collector.stats.thaw_passes == 0
    assert watched() is not None
    # A third more frozen objects than the last thaw left: the whole heap is walked again.
    grown = [Leaf() for _ in range(gc.get_freeze_count() // 3 + 1)]
    collector.step(61.0)
    assert collector.stats.thaw_passes == 0, "not before thaw_every"
    collector.step(120.0)
    assert collector.stats.thaw_passes == 1
    assert watched() is None
    assert grown


def test_frozen_objects_still_go_by_reference_counting(collector: Collector) -> None:
    holder = [Leaf()]
    watched = weakref.ref(holder[0])
    collector.step(1.0)
    holder.clear()
    assert watched() is None


def test_the_thaw_pass_is_logged(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    grown = [Leaf() for _ in range(gc.get_freeze_count() // 3 + 1)]
    collector.step(1.0)
    with caplog.at_level(logging.INFO, logger="callbridge.collector"):
        collector.step(60.0)
    assert grown
    (record,) = caplog.records
    assert "thaw pass over" in record.getMessage()
    assert collector.stats.last_thaw_ms > 0


def test_intervals_must_nest() -> None:
    with pytest.raises(ValueError, match="young_every"):
        Collector(young_every=1.0, full_every=0.5)
    with pytest.raises(ValueError, match="young_every"):
        Collector(young_every=0.0)


async def test_the_running_collector_frees_cycles_on_its_own() -> None:
    async with Collector(young_every=0.01, full_every=0.05, thaw_every=10.0) as c:
        watched = cycle()
        for _ in range(100):
            if watched() is None:
                break
            await asyncio.sleep(0.01)
        assert watched() is None
        for _ in range(100):
            if c.stats.full_passes:
                break
            await asyncio.sleep(0.01)
        assert c.stats.full_passes > 0
        assert not gc.isenabled()
    assert gc.isenabled()
