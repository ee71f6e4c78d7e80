"""The benches' shared pod watch (provider.reflector underneath): list, watch, relist on 410 Gone
with the vanished pods delivered as DELETED, resume after a dropped connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.podwatch import watch_namespace_pods
from common.clock import FakeClock
from provider.kubeclient import ApiError


class FakeClient:
    """Three watch sessions: the first breaks with 410 Gone, the second with a dropped connection."""

    def __init__(self) -> None:
        self.lists = 0
        self.sessions = 0
        self.watch_rvs: list[str] = []

    async def list_all(self, path: str, **params: Any) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": [pod(f"listed-{self.lists}")]}

    async def watch(self, path: str, rv: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        self.sessions += 1
        self.watch_rvs.append(rv)
        if self.sessions == 1:
            yield {"type": "ADDED", "object": pod("a")}
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
            raise ApiError(410, "Gone", "too old resource version")
        if self.sessions == 2:
            yield {"type": "MODIFIED", "object": pod("a")}
            raise ConnectionResetError("dropped")
        yield {"type": "DELETED", "object": pod("a")}
        await asyncio.Event().wait()


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "8"}}


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def test_relists_after_gone_resumes_after_dropped_connections_and_skips_bookmarks() -> None:
    client = FakeClient()
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    started = asyncio.Event()

    async def on_event(etype: str, obj: dict[str, Any]) -> None:
        seen.append((etype, obj["metadata"]["name"]))

    task = asyncio.create_task(watch_namespace_pods(client, "ns", on_event, started=started, clock=clock))  # type: ignore[arg-type]
    await settle()
    assert started.is_set()
    await clock.advance(1.0)  # the back-off after the dropped connection
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.lists == 2  # the first list, one relist after 410; the dropped watch is resumed
    assert client.watch_rvs == ["1", "2", "8"]
    assert seen == [
        ("ADDED", "listed-1"),
        ("ADDED", "a"),
        ("DELETED", "listed-1"),  # the relist shows both gone
        ("DELETED", "a"),
        ("ADDED", "listed-2"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]


async def test_without_list_first_only_later_changes_are_delivered() -> None:
    client = FakeClient()
    seen: list[str] = []
    got = asyncio.Event()

    def on_event(etype: str, obj: dict[str, Any]) -> None:
        seen.append(f"{etype} {obj['metadata']['name']}")
        got.set()

    task = asyncio.create_task(watch_namespace_pods(client, "ns", on_event, list_first=False))  # type: ignore[arg-type]
    await asyncio.wait_for(got.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[0] == "ADDED a"  # not the listed pod
