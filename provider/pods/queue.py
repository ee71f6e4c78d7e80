"""A keyed work queue: one worker per key at a time, coalescing, bounded workers, retries.

Like client-go's workqueue: adding a key that is queued is a no-op; adding a key that is
being processed marks it dirty so it runs once more afterwards. Handlers return an
optional delay to be re-run after (back-off expiry, periodic checks); exceptions are
retried with per-key exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from common.clock import SYSTEM, Clock
from common.retry import Backoff
from common.timers import Timer, TimerQueue

log = logging.getLogger(__name__)

Handler = Callable[[str], Awaitable[float | None]]


class WorkQueue:
    def __init__(
        self,
        handler: Handler,
        workers: int = 64,
        base_delay: float = 0.2,
        max_delay: float = 30.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._workers = workers
        self._retry = Backoff(base=base_delay, cap=max_delay)  # per key, after a handler failed
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, Timer] = {}  # key -> its pending requeue
        self._timer_queue = TimerQueue(clock, name="requeue-timers")  # one task for every requeue
        self._paused = False
        self._drained = asyncio.Event()  # set when no handler runs (watched only while pausing)

    def add(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        """Re-run the key after ``delay`` seconds (an earlier timer for the key wins)."""
        if delay <= 0:
            self.add(key)
            return
        when = self._clock.monotonic() + delay
        t = self._timers.get(key)
        if t is not None and t.when <= when:
            return
        if t is not None:
            t.cancel()
        self._timers[key] = self._timer_queue.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)
        t = self._timers.pop(key, None)
        if t is not None:
            t.cancel()

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def idle(self) -> bool:
        return not self._queued and not self._active

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            if self._paused:  # graceful stop: leave it queued, take nothing more
                self._queue.put_nowait(key)
                await asyncio.Event().wait()  # until cancelled
            self._queued.discard(key)
            self._active.add(key)
            try:
                again = await self._handler(key)
                self._failures.pop(key, None)
                if again is not None:
                    self.add_after(key, again)
            except asyncio.CancelledError:
                raise
            except Exception:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = self._retry.delay(n, random.random())
                log.exception("sync failed key=%s attempt=%d retry_in=%.1fs", key, n, delay)
                self.add_after(key, delay)
            finally:
                self._active.discard(key)
                if not self._active:
                    self._drained.set()
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    async def pause(self, within: float) -> bool:
        """Take no new key; wait (up to ``within`` s) for the handlers running now. True if drained."""
        self._paused = True
        if self._active:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), within)
        return not self._active

    def close(self) -> None:
        self._timer_queue.clear()
        self._timers.clear()
