"""run_forever's outcomes without services: SIGTERM (graceful, 0), fatal error (1), lost leadership (3)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from provider import app
from provider.config import WarmletConfig


class FakeNode:
    made: list[FakeNode] = []
    started = asyncio.Event()  # any node started (renewed per test by the fixture)

    def __init__(self, cfg: WarmletConfig, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.node: Any = type("N", (), {"registered": asyncio.Event()})()
        self.fail = fail
        FakeNode.made.append(self)

    async def start(self, within: float) -> None:
        self.calls.append("start")
        if self.fail:
            raise RuntimeError("boom")
        self.node.registered.set()
        FakeNode.started.set()

    async def wait(self) -> None:
        await asyncio.Event().wait()

    async def shutdown(self, grace: float = 20.0) -> int:
        self.calls.append("shutdown")
        return 0

    async def stop(self, close_backend: bool = True) -> None:
        self.calls.append("stop")

    async def crash(self) -> None:
        self.calls.append("crash")


class LosingElector:
    async def hold(self) -> None:
        # the node runs, then renewals fail past the deadline: hold() returns
        await FakeNode.started.wait()


@pytest.fixture(autouse=True)
def fake_node(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNode.made.clear()
    FakeNode.started = asyncio.Event()
    monkeypatch.setattr(app, "WarmletNode", FakeNode)


async def test_sigterm_is_a_graceful_shutdown_exit_0() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(app._lead(WarmletConfig(), stop, None))
    await FakeNode.started.wait()  # SIGTERM now finds a running node
    stop.set()
    assert await asyncio.wait_for(task, 5) == app.EXIT_OK
    assert FakeNode.made[0].calls[:2] == ["start", "shutdown"]


async def test_lost_leadership_stops_abruptly_exit_3() -> None:
    code = await asyncio.wait_for(app._lead(WarmletConfig(), asyncio.Event(), LosingElector()), 5)  # type: ignore[arg-type]
    assert code == app.EXIT_LOST_LEADERSHIP
    calls = FakeNode.made[0].calls
    assert "crash" in calls and "shutdown" not in calls  # no more writes: not even the node condition


async def test_fatal_error_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "WarmletNode", lambda cfg: FakeNode(cfg, fail=True))
    assert await asyncio.wait_for(app._lead(WarmletConfig(), asyncio.Event(), None), 5) == app.EXIT_ERROR
