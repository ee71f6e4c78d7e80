"""The benches' shared pod watch: list, watch, relist on 410 Gone or a dropped connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.harness import watch_namespace_pods
from provider.kubeclient import ApiError


class FakeClient:
    """Two watch sessions: the first breaks with 410 Gone, the second with a dropped connection."""

    def __init__(self) -> None:
        self.lists = 0
        self.sessions = 0

    async def list_all(self, path: str, **params: Any) -> dict[str, Any]:
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": [pod(f"listed-{self.lists}")]}

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "7"}, "items": []}

    async def watch(self, path: str, rv: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        self.sessions += 1
        if self.sessions == 1:
            yield {"type": "ADDED", "object": pod("a")}
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
            raise ApiError(410, "Gone", "too old resource version")
        if self.sessions == 2:
            yield {"type": "MODIFIED", "object": pod("a")}
            raise ConnectionResetError("dropped")
        yield {"type": "DELETED", "object": pod("a")}
        await asyncio.sleep(3600)


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "8"}}


async def test_relists_after_gone_and_dropped_connections_and_skips_bookmarks() -> None:
    client = FakeClient()
    seen: list[tuple[str, str]] = []
    started = asyncio.Event()
    deleted = asyncio.Event()

    async def on_event(etype: str, obj: dict[str, Any]) -> None:
        seen.append((etype, obj["metadata"]["name"]))
        if etype == "DELETED":
            deleted.set()

    task = asyncio.create_task(watch_namespace_pods(client, "ns", on_event, started=started))  # type: ignore[arg-type]
    await asyncio.wait_for(deleted.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started.is_set()
    assert client.lists == 3  # the first list, then one relist per broken watch
    assert seen == [
        ("ADDED", "listed-1"),
        ("ADDED", "a"),
        ("ADDED", "listed-2"),
        ("MODIFIED", "a"),
        ("ADDED", "listed-3"),
        ("DELETED", "a"),
    ]


async def test_without_list_first_only_positions_the_watch() -> None:
    client = FakeClient()
    seen: list[str] = []
    got = asyncio.Event()

    def on_event(etype: str, obj: dict[str, Any]) -> None:
        seen.append(etype)
        got.set()

    task = asyncio.create_task(watch_namespace_pods(client, "ns", on_event, list_first=False))  # type: ignore[arg-type]
    await asyncio.wait_for(got.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.lists == 0 and seen[0] == "ADDED"
