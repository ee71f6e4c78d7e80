"""Poll until a condition holds: the one wait-until helper of the test bed, the tests and the benches.

One loop, :class:`Poll` (deadline, interval, an optional liveness probe of the process waited on,
the failure message with the last value seen or the log tail), driven two ways:

- :func:`wait_until` blocks (``time.sleep``): the bed's own start-up, where a check that raises
  (connection refused, TLS not up yet) means "not ready yet" and a dead process fails at once;
- :func:`wait_for` awaits (``asyncio.sleep``): tests and benches polling the API, where ``fn``'s
  errors propagate (a test's own bug must not turn into a timeout).

Both raise :class:`WaitTimeout` (a ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from testbed.util import tail

T = TypeVar("T")
MESSAGE_LIMIT = 2000  # characters of the last value kept in the error


class WaitTimeout(TimeoutError):
    """A condition did not hold in time, or the process it waited on exited first."""


@dataclass
class Poll:
    """One wait: when to give up and what to say then (``clock`` injectable for tests)."""

    what: str
    timeout: float
    interval: float
    alive: Callable[[], bool] | None = None
    log_path: Path | None = None
    clock: Callable[[], float] = time.monotonic
    last: Any = None
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.timeout

    def done(self, value: Any) -> bool:
        """Record the latest value of the check; true when it holds."""
        self.last = value
        return bool(value)

    def failure(self) -> WaitTimeout | None:
        """The error to stop with (process exited, or past the deadline), else None: poll again."""
        dead = self.alive is not None and not self.alive()
        if not dead and self.clock() <= self.deadline:
            return None
        if dead:
            msg = f"{self.what}: process exited"
        else:
            msg = f"timed out after {self.timeout:g}s waiting for {self.what}"
        if self.last is not None:
            msg = f"{msg}; last={self.last!r}"[:MESSAGE_LIMIT]
        if self.log_path is not None:
            msg += f"\n--- last 40 lines of {self.log_path} ---\n{tail(self.log_path)}"
        return WaitTimeout(msg)


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], bool] | None = None,
    log_path: Path | None = None,
) -> Any:
    """Block until ``check()`` is truthy (returned); a check that raises is "not yet".

    Fails fast when ``alive()`` turns false (the process waited on died), with ``log_path``'s tail.
    """
    poll = Poll(what, timeout, interval, alive, log_path)
    while True:
        try:
            if poll.done(check()):
                return poll.last
        except Exception as e:  # not ready yet: connection refused, TLS not up, ...
            poll.last = e
        if (err := poll.failure()) is not None:
            raise err
        time.sleep(interval)


async def wait_for(
    fn: Callable[[], Awaitable[T]], within: float = 60.0, interval: float = 0.5, what: str = "condition"
) -> T:
    """Await ``fn()`` every ``interval`` seconds until it returns something truthy (returned)."""
    poll = Poll(what, within, interval)
    while True:
        value = await fn()
        if poll.done(value):
            return value
        if (err := poll.failure()) is not None:
            raise err
        await asyncio.sleep(interval)
