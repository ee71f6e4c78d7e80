"""The one clock abstraction: wall time, monotonic time and sleeping, fakeable in tests.

Product code takes a :class:`Clock` (default :data:`SYSTEM`) instead of calling ``time.time``,
``time.monotonic`` or ``asyncio.sleep`` directly wherever a test would otherwise have to wait.
:class:`FakeClock` advances only when told to, and wakes the sleepers whose deadline passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps written to the API, cron instants)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines, back-off)."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on this clock (cancellable)."""


class SystemClock:
    """The real clocks of this machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM: Clock = SystemClock()


class FakeClock:
    """A clock that moves only when :meth:`advance` (or :meth:`set`) is called.

    ``sleep(s)`` returns once the clock was advanced by at least ``s`` (``sleep(0)`` yields once).
    Wall and monotonic time move together; ``wall_offset`` sets where wall time starts.
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._wall_offset + self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (not yet woken, not cancelled)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        pending = [d for d, _, f in self._sleepers if not f.done()]
        return min(pending) if pending else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own deadline in order,
        and let the woken tasks run before returning."""
        await self.set(self._now + seconds)

    async def set(self, monotonic: float) -> None:
        target = max(self._now, monotonic)
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await _settle()
        self._now = target
        await _settle()

    async def run_until_idle(self, limit: float = 3600.0) -> None:
        """Advance to each pending deadline in turn until no sleeper is left within ``limit``."""
        end = self._now + limit
        while (d := self.next_deadline()) is not None and d <= end:
            await self.set(d)


async def _settle(rounds: int = 5) -> None:
    """Let ready tasks run (a few loop iterations) so effects of a wake-up are visible."""
    for _ in range(rounds):
        await asyncio.sleep(0)
