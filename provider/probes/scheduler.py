"""One scheduler for every probe of the node: a timer heap, and a few runners per lane.

1,000 pods with a readiness and a liveness probe every 10 s are 200 probe runs a second. kubelet
keeps a goroutine per probe; here every probe is one entry of one :class:`TimerQueue` (one pump
task on the injected Clock), and a probe that must wait for I/O (exec, network) is handed to a
fixed pool of runner tasks per lane, so at most ``lanes[lane]`` such probes run at once and no
task is created per probe or per period. Ticks follow a fixed period like Go's ticker; a tick
that comes while the previous run of the same probe is still queued or running is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.clock import Clock
from common.timers import Timer, TimerQueue

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass
class _Entry:
    period: float
    due: float
    timer: Timer | None = None
    busy: bool = False  # queued for, or running in, a runner


class ProbeScheduler(Generic[K]):
    """``tick(key)`` runs on the timer (synchronously) and returns the lane whose runners must
    ``await run(key)``, or None when the tick needed no I/O."""

    def __init__(
        self,
        clock: Clock,
        tick: Callable[[K], str | None],
        run: Callable[[K], Awaitable[None]],
        lanes: Mapping[str, int],
    ) -> None:
        self.clock = clock
        self._tick = tick
        self._run = run
        self.lanes = dict(lanes)
        self.timers = TimerQueue(clock, name="probe-timers")
        self._entries: dict[K, _Entry] = {}
        self._queues: dict[str, asyncio.Queue[K]] = {lane: asyncio.Queue() for lane in self.lanes}
        self.running = dict.fromkeys(self.lanes, 0)  # runs in progress per lane
        self.max_running = dict.fromkeys(self.lanes, 0)  # high-water mark per lane

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def add(self, key: K, period: float, first_delay: float) -> None:
        """Tick ``key`` after ``first_delay``, then every ``period`` seconds (replaces an existing key)."""
        self.remove(key)
        due = self.clock.monotonic() + max(0.0, first_delay)
        e = _Entry(period=period, due=due)
        self._entries[key] = e
        e.timer = self.timers.call_at(due, self._fire, key)

    def remove(self, key: K) -> None:
        e = self._entries.pop(key, None)
        if e is not None and e.timer is not None:
            e.timer.cancel()

    def trigger(self, key: K) -> None:
        """Tick now and restart the period from now (kubelet's manual trigger)."""
        e = self._entries.get(key)
        if e is None or e.busy:
            return
        if e.timer is not None:
            e.timer.cancel()
        e.due = self.clock.monotonic()
        e.timer = self.timers.call_at(e.due, self._fire, key)

    def _fire(self, key: K) -> None:
        e = self._entries.get(key)
        if e is None:
            return
        now = self.clock.monotonic()
        e.due = max(e.due + e.period, now)
        e.timer = self.timers.call_at(e.due, self._fire, key)
        if e.busy:
            return  # the previous run is still queued or running: this tick is dropped
        try:
            lane = self._tick(key)
        except Exception:
            log.exception("probe tick failed key=%s", key)
            return
        if lane is not None and key in self._entries:
            e.busy = True
            self._queues[lane].put_nowait(key)

    async def run(self) -> None:
        """The runner tasks (``lanes[lane]`` per lane); cancel to stop."""
        try:
            async with asyncio.TaskGroup() as tg:
                for lane, n in self.lanes.items():
                    for i in range(n):
                        tg.create_task(self._runner(lane), name=f"probe-{lane}-{i}")
        finally:
            await self.timers.close()

    async def _runner(self, lane: str) -> None:
        q = self._queues[lane]
        while True:
            key = await q.get()
            self.running[lane] += 1
            self.max_running[lane] = max(self.max_running[lane], self.running[lane])
            try:
                await self._run(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe run failed key=%s", key)
            finally:
                self.running[lane] -= 1
                e = self._entries.get(key)
                if e is not None:
                    e.busy = False
