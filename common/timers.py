"""Timers on a ``Clock``: one heap and one task, however many timers.

10,000 simulated containers each need one pending event (their exit or next log tick), and 10,000
pods of the work queue one pending requeue. A task or a ``clock.sleep`` each would cost a task per
timer; ``loop.call_at`` would tie them to the event
loop's clock, which a ``FakeClock`` does not move. Here timers sit in one heap, and one pump task
sleeps on the clock until the earliest is due, then runs every due callback in deadline order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

from common.clock import Clock

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; ``cancel()`` before it runs and it never does."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """``call_at(when, cb, *args)`` on ``clock.monotonic()`` time; callbacks run on the event loop."""

    def __init__(self, clock: Clock, name: str = "timers") -> None:
        self.clock = clock
        self.name = name  # of the pump task
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self._pump_until = float("inf")  # the deadline the pump sleeps towards
        self._closed = False
        self._firing = False  # the pump is running callbacks: it re-reads the heap afterwards

    def __len__(self) -> int:
        """Timers pending (cancelled ones are dropped lazily, so this is an upper bound)."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if self._closed or self._firing:
            return timer
        if self._pump is None or when < self._pump_until:
            self._restart()
        return timer

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        return self.call_at(self.clock.monotonic() + delay, callback, *args)

    def _restart(self) -> None:
        """(Re)start the pump: none is running, or a new timer is due before the one it waits for."""
        if self._pump is not None:
            self._pump.cancel()
        self._pump_until = self._heap[0][0]
        self._pump = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        heap = self._heap
        while heap:
            when = heap[0][0]
            self._pump_until = when
            delay = when - self.clock.monotonic()
            if delay > 0:
                await self.clock.sleep(delay)
            now = self.clock.monotonic()
            self._firing = True
            try:
                while heap and heap[0][0] <= now:
                    timer = heapq.heappop(heap)[2]
                    if not timer.cancelled:
                        try:
                            timer.callback(*timer.args)
                        except Exception:
                            log.exception("timer callback failed")
            finally:
                self._firing = False
        self._pump = None
        self._pump_until = float("inf")

    def clear(self) -> asyncio.Task[None] | None:
        """Drop every timer and cancel the pump (returned, for a caller that can await its end)."""
        self._heap.clear()
        pump, self._pump = self._pump, None
        self._pump_until = float("inf")
        if pump is not None:
            pump.cancel()
        return pump

    async def close(self) -> None:
        """Drop every timer and stop the pump."""
        self._closed = True
        pump = self.clear()
        if pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def reopen(self) -> None:
        self._closed = False
