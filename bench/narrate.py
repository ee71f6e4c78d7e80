"""Saying what a slow step does while it runs, so a command is never silent for long.

``await Narrator(console).step("deleting namespace x", "up to 60 s", work)`` prints
"→ deleting namespace x (up to 60 s)…", then "… still deleting namespace x (20 s)" every
``heartbeat`` seconds, then "✓ deleting namespace x (23 s)", or "✗ …" with the error or
"interrupted". Used by ``warmlet demo`` while it stops and cleans up. The heartbeat and the
durations run on a :class:`~common.clock.Clock` (a ``FakeClock`` in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from common.clock import SYSTEM, Clock

T = TypeVar("T")
HEARTBEAT_SECONDS = 10.0  # a slow step says it is still at it this often


class Narrator:
    """Says what a slow step does while it runs: "→ step", "… still step (20 s)" every
    ``heartbeat`` seconds, "✓ step (12 s)" (or "✗ step: error"), so no step is ever silent."""

    def __init__(self, console: Any, heartbeat: float = HEARTBEAT_SECONDS, clock: Clock = SYSTEM) -> None:
        self.console, self.heartbeat, self.clock = console, heartbeat, clock

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    async def step(self, what: str, detail: str, work: Awaitable[T]) -> T:
        self.say(f"  [bold]→[/] {what}" + (f" ({detail})" if detail else "") + "…")
        t0 = self.clock.monotonic()
        task = asyncio.ensure_future(work)
        try:
            while True:
                beat = asyncio.ensure_future(self.clock.sleep(self.heartbeat))
                try:
                    await asyncio.wait({task, beat}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    beat.cancel()
                if task.done():
                    break
                self.say(f"    … still {what} ({self.clock.monotonic() - t0:.0f} s)")
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.say(f"  [yellow]✗[/] {what}: interrupted")
            raise
        elapsed = self.clock.monotonic() - t0
        try:
            result = task.result()
        except Exception as e:
            self.say(f"  [red]✗[/] {what}: {e!r} ({elapsed:.0f} s)")
            raise
        self.say(f"  [green]✓[/] {what} ({elapsed:.0f} s)")
        return result

    def run(self, what: str, detail: str, fn: Callable[[], T]) -> T:
        """A blocking step (outside the event loop), with the same heartbeat."""

        async def in_thread() -> T:
            return await asyncio.to_thread(fn)

        return asyncio.run(self.step(what, detail, in_thread()))
