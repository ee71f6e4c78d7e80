"""Stand-ins shared by the lifecycle hook tests: a backend answering ExecSync from a script."""

from __future__ import annotations

import asyncio

from common.clock import FakeClock
from sandbox.backend import BackendCapabilities, ExecResult


class ExecBackend:
    """A backend stand-in that runs processes and answers ExecSync from a script."""

    capabilities = BackendCapabilities(runs_processes=True)

    def __init__(self, answer: ExecResult | Exception | None = None, hang: bool = False) -> None:
        self.answer = answer or ExecResult(exit_code=0)
        self.hang = hang
        self.calls: list[tuple[str, list[str], float]] = []
        self.stopped: list[tuple[str, float]] = []

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        self.calls.append((container_id, cmd, timeout_seconds))
        if self.hang:
            await asyncio.Event().wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        self.stopped.append((container_id, grace_seconds))


class NoExecBackend:
    capabilities = BackendCapabilities(runs_processes=True)


EXEC = {"exec": {"command": ["sh", "-c", "echo hi"]}}


async def started(clock: FakeClock, sleepers: int = 1) -> None:
    """Let the task just created run until it sleeps on the clock (no time passes)."""
    for _ in range(200):
        if clock.sleepers >= sleepers:
            return
        await clock.advance(0)
    raise AssertionError("nothing sleeps on the clock")
