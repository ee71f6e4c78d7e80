"""The one background loop of the CRI backend's parts: a step every interval, slower after failures.

The PLEG, the orphan sweep, image GC and log rotation all run "sleep, do one pass; if the pass
failed (the runtime is away), wait twice as long, up to a cap; once it works again, back to the
interval". Written once here, on an injectable :class:`common.clock.Clock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from common.clock import SYSTEM, Clock

FailureHook = Callable[[Exception, float, int], None]
"""Called after a failed pass with (the error, the delay before the next pass, failures in a row)."""


def next_delay(delay: float, interval: float, max_delay: float) -> float:
    """The delay after one more failed pass: doubled, at least the interval, at most ``max_delay``."""
    return min(max(delay * 2, interval), max_delay)


async def run_every(
    step: Callable[[], Awaitable[object]],
    interval: float,
    max_delay: float,
    *,
    on_failure: FailureHook,
    on_recovery: Callable[[int], None] | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """Forever: sleep, then ``step()``. A failed pass calls ``on_failure`` and backs off; the
    first pass that works after failures calls ``on_recovery(failures)``. Cancellation ends it."""
    delay = interval
    failures = 0
    while True:
        await clock.sleep(delay)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failures += 1
            delay = next_delay(delay, interval, max_delay)
            on_failure(e, delay, failures)
            continue
        if failures and on_recovery is not None:
            on_recovery(failures)
        failures = 0
        delay = interval
