"""TimerQueue: the simulated runtime's timers on one heap and one task, driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from common.clock import FakeClock
from common.timers import TimerQueue

pytestmark = pytest.mark.unit


async def test_timers_fire_in_deadline_order_at_their_time() -> None:
    clock = FakeClock(start=0.0)
    q = TimerQueue(clock)
    fired: list[tuple[str, float]] = []
    for name, when in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
        q.call_at(when, lambda n: fired.append((n, clock.monotonic())), name)
    await clock.advance(0)
    pumps = [t for t in asyncio.all_tasks() if t.get_name() == q.name and not t.done()]
    assert clock.sleepers == 1 and len(pumps) == 1  # one pump for all timers
    await clock.advance(1.5)
    assert fired == [("a", 1.0)]
    await clock.advance(10)
    assert fired == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert len(q) == 0 and clock.sleepers == 0  # the pump ended with the last timer


async def test_an_earlier_timer_wakes_the_sleeping_pump_and_cancel_skips() -> None:
    clock = FakeClock(start=0.0)
    q = TimerQueue(clock)
    fired: list[str] = []
    q.call_at(100.0, fired.append, "late")
    await clock.advance(0)
    q.call_later(1.0, fired.append, "early")  # before the deadline the pump sleeps towards
    cancelled = q.call_later(2.0, fired.append, "cancelled")
    cancelled.cancel()
    await clock.advance(2.0)
    assert fired == ["early"]
    await clock.advance(98.0)
    assert fired == ["early", "late"]


async def test_callbacks_scheduling_timers_and_failing_keep_the_pump_alive() -> None:
    clock = FakeClock(start=0.0)
    q = TimerQueue(clock)
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.monotonic())
        if len(ticks) < 3:
            q.call_later(1.0, tick)

    def boom() -> None:
        raise RuntimeError("callback bug")

    q.call_at(0.5, boom)
    q.call_at(1.0, tick)
    await clock.advance(0)
    await clock.advance(5)
    assert ticks == [1.0, 2.0, 3.0]


async def test_close_drops_timers_and_stops_the_pump() -> None:
    clock = FakeClock(start=0.0)
    q = TimerQueue(clock)
    fired: list[str] = []
    q.call_at(1.0, fired.append, "x")
    await clock.advance(0)
    await q.close()
    await clock.advance(5)
    assert fired == [] and clock.sleepers == 0 and len(q) == 0
