"""ImageCache with a fake runtime: deduplicated pulls, policies, errors, semaphore, GC execution."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.backend import (
    BackendError,
    ImageNeverPullError,
    ImagePullError,
    InvalidImageNameError,
    PullPolicy,
)
from sandbox.images import ImageCache, ImageInfo


class FakeRuntime:
    def __init__(self, delay: float = 0.05) -> None:
        self.images: dict[str, ImageInfo] = {}
        self.pulls: list[str] = []
        self.status_calls = 0
        self.delay = delay
        self.fail: dict[str, str] = {}
        self.active = 0
        self.max_active = 0
        self.removed: list[str] = []
        self.next_id = 0

    async def status(self, image: str) -> ImageInfo | None:
        self.status_calls += 1
        return self.images.get(image)

    async def pull(self, image: str) -> str:
        self.pulls.append(image)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        if image in self.fail:
            raise BackendError(self.fail[image])
        old = self.images.get(image)
        self.next_id += 1
        self.images[image] = ImageInfo(
            id=old.id if old else f"sha256:{self.next_id}", size=1000, tags=(image,)
        )
        return self.images[image].id

    async def list(self) -> list[ImageInfo]:
        return list(self.images.values())

    async def remove(self, image_id: str) -> None:
        self.removed.append(image_id)
        self.images = {k: v for k, v in self.images.items() if v.id != image_id}


async def test_concurrent_ensure_pulls_once() -> None:
    rt = FakeRuntime()
    cache = ImageCache(rt)
    results = await asyncio.gather(
        *(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT) for _ in range(20))
    )
    assert rt.pulls == ["reg.local/app:1"]
    assert all(r.pulled for r in results)
    assert {r.image_ref for r in results} == {"sha256:1"}
    again = await cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT)
    assert not again.pulled and rt.pulls == ["reg.local/app:1"]


async def test_never_policy() -> None:
    rt = FakeRuntime()
    cache = ImageCache(rt)
    with pytest.raises(ImageNeverPullError) as ei:
        await cache.ensure("reg.local/app:1", PullPolicy.NEVER)
    assert ei.value.reason == "ErrImageNeverPull"
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:x", size=5)
    r = await cache.ensure("reg.local/app:1", PullPolicy.NEVER)
    assert r.image_ref == "sha256:x" and not r.pulled and rt.pulls == []


async def test_invalid_name_never_reaches_runtime() -> None:
    rt = FakeRuntime()
    cache = ImageCache(rt)
    with pytest.raises(InvalidImageNameError):
        await cache.ensure("Bad Image", PullPolicy.ALWAYS)
    assert rt.status_calls == 0 and rt.pulls == []


async def test_pull_error_carries_registry_message() -> None:
    rt = FakeRuntime()
    rt.fail["reg.local/nope:1"] = "failed to resolve reference: reg.local/nope:1: not found"
    cache = ImageCache(rt)
    errs = await asyncio.gather(
        *(cache.ensure("reg.local/nope:1", PullPolicy.IF_NOT_PRESENT) for _ in range(3)),
        return_exceptions=True,
    )
    assert len(rt.pulls) == 1
    for e in errs:
        assert isinstance(e, ImagePullError)
        assert e.reason == "ErrImagePull"
        assert "not found" in e.message and "reg.local/nope:1" in e.message
    # A later attempt retries (failures are not cached).
    rt.fail.clear()
    r = await cache.ensure("reg.local/nope:1", PullPolicy.IF_NOT_PRESENT)
    assert r.pulled and len(rt.pulls) == 2


async def test_always_on_unchanged_image_is_not_a_pull() -> None:
    rt = FakeRuntime(delay=0)
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:same", size=5)
    cache = ImageCache(rt)
    r = await cache.ensure("reg.local/app:1", PullPolicy.ALWAYS)
    assert rt.pulls == ["reg.local/app:1"]
    assert not r.pulled and r.image_ref == "sha256:same"


async def test_parallel_pull_semaphore() -> None:
    rt = FakeRuntime(delay=0.05)
    cache = ImageCache(rt, max_parallel_pulls=2)
    await asyncio.gather(*(cache.ensure(f"reg.local/app{i}:1", PullPolicy.IF_NOT_PRESENT) for i in range(6)))
    assert len(rt.pulls) == 6 and rt.max_active == 2


async def test_cancelled_waiter_does_not_cancel_shared_pull() -> None:
    rt = FakeRuntime(delay=0.1)
    cache = ImageCache(rt)
    a = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    b = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    await asyncio.sleep(0.02)
    a.cancel()
    r = await b
    assert r.pulled and rt.pulls == ["reg.local/app:1"]
    await cache.close()


async def test_close_cancels_inflight() -> None:
    rt = FakeRuntime(delay=10)
    cache = ImageCache(rt)
    t = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    await asyncio.sleep(0.01)
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert cache._inflight == {}


async def test_garbage_collect_respects_in_use_and_age() -> None:
    now = [1000.0]
    rt = FakeRuntime(delay=0)
    cache = ImageCache(rt, gc_budget_bytes=1500, gc_min_age_seconds=100, clock=lambda: now[0])
    for i in range(3):
        await cache.ensure(f"reg.local/app{i}:1", PullPolicy.IF_NOT_PRESENT)
    assert await cache.garbage_collect(set()) == []  # all too young
    now[0] += 200
    await cache.ensure("reg.local/app2:1", PullPolicy.IF_NOT_PRESENT)  # touched: most recently used
    removed = await cache.garbage_collect({"reg.local/app0:1"})
    # 3000 bytes > 1500: remove LRU unused (app1) then stop at <= 1200? app2 is young again.
    assert removed == ["sha256:2"]
    assert set(rt.images) == {"reg.local/app0:1", "reg.local/app2:1"}
