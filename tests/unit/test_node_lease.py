"""The node's loops on a fake clock: Lease renewal (every interval, fast retries after a failure)
and the Node status loop (periodic patches, re-registration at once when the Node is deleted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common.clock import FakeClock
from common.retry import API_BACKOFF
from provider.config import NodeConfig
from provider.kubeclient import ApiError
from provider.lease import RENEW_RETRY, LeaseKeeper
from provider.node import NodeController
from provider.timefmt import micro_time
from sandbox.backend import BackendHealth

pytestmark = pytest.mark.unit
JSON = dict[str, Any]


async def asleep(clock: FakeClock, sleepers: int = 1) -> None:
    """Let the tasks just created run until ``sleepers`` of them sleep on the clock."""
    for _ in range(200):
        if clock.sleepers >= sleepers:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{clock.sleepers} sleepers, expected {sleepers}")


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FakeLeases:
    """One Lease with resourceVersion preconditions; ``fail`` makes every call an outage."""

    def __init__(self) -> None:
        self.obj: JSON | None = None
        self.rv = 0
        self.fail = False
        self.renewals: list[str] = []  # renewTime of every successful write

    async def get(self, path: str) -> JSON:
        self._check()
        if self.obj is None:
            raise ApiError(404, "NotFound", "")
        return self.obj

    async def post(self, path: str, body: JSON) -> JSON:
        self._check()
        return self._store(body)

    async def put(self, path: str, body: JSON) -> JSON:
        self._check()
        assert self.obj is not None
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "")
        return self._store(body)

    def _check(self) -> None:
        if self.fail:
            raise OSError("apiserver away")

    def _store(self, body: JSON) -> JSON:
        self.rv += 1
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        self.renewals.append(body["spec"]["renewTime"])
        return self.obj


async def test_lease_renews_every_interval_and_retries_fast_after_a_failure() -> None:
    api = FakeLeases()
    clock = FakeClock(start=0.0, wall_offset=1_800_000_000.0)
    keeper = LeaseKeeper(api, "vn", lambda: "node-uid", duration=40, interval=10.0, clock=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(keeper.run())
    await asleep(clock)
    assert api.renewals == [micro_time(clock.time())]  # created at once
    assert api.obj is not None and api.obj["metadata"]["ownerReferences"][0]["uid"] == "node-uid"
    await clock.advance(9.9)
    assert len(api.renewals) == 1
    await clock.advance(0.1)
    assert api.renewals[-1] == micro_time(clock.time()) and keeper.last_renewed == clock.time()
    api.fail = True
    await clock.advance(10.0)  # this renewal fails: retried after RENEW_RETRY, not the interval
    failed_at = clock.monotonic()
    await clock.advance(RENEW_RETRY.delay(1) + RENEW_RETRY.delay(2))  # two more failures
    api.fail = False
    await clock.advance(RENEW_RETRY.delay(3))
    assert len(api.renewals) == 3
    assert clock.monotonic() - failed_at < 10.0  # back well before another interval
    assert api.renewals[-1] == micro_time(clock.time())
    await clock.advance(10.0)  # and on the interval again
    assert len(api.renewals) == 4
    await cancel(task)
    assert clock.sleepers == 0


class FakeNodes:
    """The Node API: get/post/patch of one Node, and a list/watch whose events a test pushes."""

    def __init__(self) -> None:
        self.node: JSON | None = None
        self.status_patches: list[float] = []  # fake monotonic time of each status patch
        self.posts = 0
        self.fail_status = False
        self.events: asyncio.Queue[JSON] = asyncio.Queue()
        self.clock: FakeClock | None = None

    async def get(self, path: str, **params: Any) -> JSON:
        if self.node is None:
            raise ApiError(404, "NotFound", "")
        return self.node

    async def post(self, path: str, body: JSON, **params: Any) -> JSON:
        self.posts += 1
        self.node = {**body, "metadata": {**body["metadata"], "uid": f"uid-{self.posts}"}}
        return self.node

    async def patch(self, path: str, body: JSON, content_type: str = "", **params: Any) -> JSON:
        if self.node is None:
            raise ApiError(404, "NotFound", "")
        if path.endswith("/status"):
            if self.fail_status:
                raise OSError("apiserver away")
            assert self.clock is not None
            self.status_patches.append(self.clock.monotonic())
            self.node = {**self.node, "status": body["status"]}
        return self.node

    async def list_all(self, path: str, **params: Any) -> JSON:
        return {"metadata": {"resourceVersion": "1"}, "items": [self.node] if self.node else []}

    async def watch(self, path: str, resource_version: str, **params: Any) -> AsyncIterator[JSON]:
        while True:
            yield await self.events.get()


class Healthy:
    async def health(self) -> BackendHealth:
        return BackendHealth(ok=True, runtime_name="fake")


async def start_node(
    cfg: NodeConfig,
) -> tuple[NodeController, FakeNodes, FakeLeases, FakeClock, asyncio.Task[None]]:
    api, leases, clock = FakeNodes(), FakeLeases(), FakeClock(start=0.0)
    api.clock = clock
    node = NodeController(cfg, api, leases, Healthy(), 10250, health_interval=5.0, clock=clock)  # type: ignore[arg-type]
    task = asyncio.create_task(node.run())
    await asleep(clock, 2)  # the lease and the status loop wait on the clock
    assert node.registered.is_set()
    return node, api, leases, clock, task


async def test_node_status_is_patched_every_interval_on_the_clock() -> None:
    cfg = NodeConfig(name="vn", status_update_interval_seconds=20.0)
    _, api, leases, clock, task = await start_node(cfg)
    assert api.posts == 1 and api.status_patches == [0.0]  # registered: created, status written
    assert len(leases.renewals) == 1
    await clock.advance(15.0)  # health polls at 5, 10, 15: nothing changed, not due
    assert api.status_patches == [0.0]
    await clock.advance(5.0)  # due at 20
    assert api.status_patches == [0.0, 20.0]
    await clock.advance(20.0)
    assert api.status_patches == [0.0, 20.0, 40.0]
    assert len(leases.renewals) == 5  # 0, 10, 20, 30, 40
    await cancel(task)


async def test_node_status_failures_back_off_then_recover() -> None:
    cfg = NodeConfig(name="vn", status_update_interval_seconds=5.0)
    _, api, _, clock, task = await start_node(cfg)
    api.fail_status = True
    await clock.advance(5.0)  # this update fails: the next try comes after the back-off
    first = API_BACKOFF.delay(1, 1.0)  # at most (jittered down to half)
    await clock.advance(first)
    api.fail_status = False
    await clock.advance(API_BACKOFF.delay(2, 1.0) + 5.0)  # the back-off, then the health interval
    assert len(api.status_patches) == 2 and api.status_patches[-1] > 5.0
    assert not task.done()
    await cancel(task)


async def test_a_deleted_node_is_registered_again_at_once() -> None:
    node, api, _, clock, task = await start_node(NodeConfig(name="vn"))
    await clock.advance(1.0)
    deleted = api.node
    api.node = None
    api.events.put_nowait({"type": "DELETED", "object": deleted})
    await asleep(clock, 2)
    for _ in range(20):  # registration runs without the clock moving
        if api.posts == 2:
            break
        await asyncio.sleep(0)
    assert api.posts == 2 and clock.monotonic() == 1.0
    assert node.node_uid() == "uid-2"
    await cancel(task)
