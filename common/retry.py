"""The one retry/back-off and periodic-loop helper, on an injectable :class:`~common.clock.Clock`.

Why one module: every long-running loop of warmlet (node status, lease renewal, leader election,
watches, placement polls, runtime loops) has the same two shapes, and each hand-written copy got
something subtly different (no jitter, a hot loop on an error, a wall-time sleep a test must wait
for). Here:

- :class:`Backoff` is a pure policy: ``delay(attempt, rand)`` (exponential, capped, jittered).
- :func:`retry` runs one step until it succeeds, backing off between failures.
- :func:`periodic` runs a step every interval (or when woken), backing off on failures, until the
  step returns :data:`STOP`.
- :func:`sleep_or_wake` sleeps on the clock unless an event fires first.

All of them cancel cleanly (``CancelledError`` is never swallowed and no task is left behind) and
never spin: a failure always waits before the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from common.clock import SYSTEM, Clock

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_EXPONENT = 16


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``min(cap, base * factor**attempt)``, scaled by a jitter factor drawn
    from ``[1 - jitter, 1]`` (``jitter=0``: no randomness; ``jitter < 1``, so never 0).
    ``attempt`` counts failures from 1."""

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid back-off {self}")

    def delay(self, attempt: int, rand: float = 1.0) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure; ``rand`` in [0, 1]."""
        raw = min(self.cap, self.base * self.factor ** min(max(attempt, 0), MAX_EXPONENT))
        return raw * (1.0 - self.jitter + self.jitter * min(1.0, max(0.0, rand)))

    async def sleep(
        self, attempt: int, clock: Clock = SYSTEM, rand: Callable[[], float] = random.random
    ) -> None:
        await clock.sleep(self.delay(attempt, rand()))


def doubling(interval: float, cap: float) -> Backoff:
    """A background pass's back-off: twice the interval after the first failure, doubling, capped
    (no jitter: these are local loops, not many clients of one server)."""
    return Backoff(base=interval, cap=max(cap, interval), factor=2.0, jitter=0.0)


# the API loops' back-off (0.5 s doubling, jittered): capped at 10 s for watches and status, 30 s
# for slower loops
API_BACKOFF: Final = Backoff(base=0.5, cap=10.0)
SLOW_BACKOFF: Final = Backoff(base=0.5, cap=30.0)


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Event | None) -> bool:
    """Sleep ``seconds`` on ``clock``, or less if ``wake`` is (or gets) set; True if woken.

    The event is not cleared (the caller decides what a wake-up means)."""
    if wake is None:
        await clock.sleep(seconds)
        return False
    if wake.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waiter):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    return wake.is_set()


class _Stop:
    def __repr__(self) -> str:
        return "STOP"


STOP: Final = _Stop()
"""Returned by a :func:`periodic` step to end the loop."""

ErrorHook = Callable[[Exception, int], None]


async def retry(
    step: Callable[[], Awaitable[T]],
    backoff: Backoff = API_BACKOFF,
    *,
    clock: Clock = SYSTEM,
    fatal: tuple[type[BaseException], ...] = (),
    on_error: ErrorHook | None = None,
    rand: Callable[[], float] = random.random,
) -> T:
    """``await step()`` until it returns, backing off after each failure.

    Exceptions of a ``fatal`` type propagate at once; others are reported to
    ``on_error(error, consecutive_failures)`` and retried."""
    failures = 0
    while True:
        try:
            return await step()
        except fatal:
            raise
        except Exception as e:
            failures += 1
            _report(on_error, e, failures)
            await backoff.sleep(failures, clock, rand)


async def periodic(
    step: Callable[[], Awaitable[object]],
    interval: float | Callable[[], float],
    *,
    clock: Clock = SYSTEM,
    backoff: Backoff | None = None,
    wake: asyncio.Event | None = None,
    wait_first: bool = False,
    fatal: tuple[type[BaseException], ...] = (),
    on_error: ErrorHook | None = None,
    on_recovery: Callable[[int], None] | None = None,
    rand: Callable[[], float] = random.random,
) -> None:
    """Run ``step`` every ``interval`` seconds until it returns :data:`STOP`.

    - ``interval`` may be a function (read after each step: "when next").
    - ``wait_first``: wait the interval before each step (else: step, then wait).
    - ``wake``: an event that cuts a wait short (not cleared here; the step may look at it).
    - A failing step (not of a ``fatal`` type) is reported to ``on_error(error, failures)``;
      with ``backoff`` the wait before the next step is then ``backoff.delay(failures)`` instead
      of the interval, without it the usual interval.
    - ``on_recovery(failures)``: called when a step succeeds after ``failures`` failed ones.
    """
    failures = 0
    wait: float | None = None  # the wait before the next step when it is not the interval
    while True:
        if wait_first:
            await sleep_or_wake(clock, _seconds(interval) if wait is None else wait, wake)
        wait = None
        try:
            result = await step()
        except fatal:
            raise
        except Exception as e:
            failures += 1
            _report(on_error, e, failures)
            if backoff is not None:
                wait = backoff.delay(failures, rand())
            if not wait_first:
                await sleep_or_wake(clock, _seconds(interval) if wait is None else wait, wake)
            continue
        if failures and on_recovery is not None:
            try:
                on_recovery(failures)
            except Exception:  # a logging/metrics hook must never end the loop
                log.exception("recovery hook failed")
        failures = 0
        if result is STOP:
            return
        if not wait_first:
            await sleep_or_wake(clock, _seconds(interval), wake)


def _seconds(interval: float | Callable[[], float]) -> float:
    return interval() if callable(interval) else interval


def _report(on_error: ErrorHook | None, e: Exception, failures: int) -> None:
    if on_error is None:
        log.warning("retrying after error attempt=%d err=%r", failures, e)
        return
    try:
        on_error(e, failures)
    except Exception:  # a logging/metrics hook must never end the loop
        log.exception("error hook failed")
