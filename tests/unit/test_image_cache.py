"""ImageCache with a fake runtime on a fake clock: deduplicated pulls, policies, errors, semaphore, GC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.clock import FakeClock
from sandbox.backend import (
    BackendError,
    ImageNeverPullError,
    ImagePullError,
    InvalidImageNameError,
    PullPolicy,
    RegistryCredential,
)
from sandbox.images import ImageCache, ImageInfo
from sandbox.pull_records import PullRecords


class FakeRuntime:
    """Pulls take ``delay`` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, delay: float = 0.05) -> None:
        self.clock = clock
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

    async def pull(self, image: str, credential: RegistryCredential | None = None) -> str:
        self.pulls.append(image)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.clock.sleep(self.delay)
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


def make(delay: float = 0.05, **kw: object) -> tuple[FakeClock, FakeRuntime, ImageCache]:
    clock = FakeClock()
    rt = FakeRuntime(clock, delay)
    return clock, rt, ImageCache(rt, clock=clock, **kw)  # type: ignore[arg-type]


async def test_concurrent_ensure_pulls_once() -> None:
    clock, rt, cache = make()
    waiters = asyncio.gather(*(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT) for _ in range(20)))
    await clock.advance(0)
    assert rt.active == 1  # one pull in flight for 20 waiters
    await clock.advance(0.04)
    assert not waiters.done()
    await clock.advance(0.01)
    results = await waiters
    assert rt.pulls == ["reg.local/app:1"]
    assert all(r.pulled for r in results)
    assert {r.image_ref for r in results} == {"sha256:1"}
    again = await cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT)
    assert not again.pulled and rt.pulls == ["reg.local/app:1"]


async def test_never_policy() -> None:
    _, rt, cache = make()
    with pytest.raises(ImageNeverPullError) as ei:
        await cache.ensure("reg.local/app:1", PullPolicy.NEVER)
    assert ei.value.reason == "ErrImageNeverPull"
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:x", size=5)
    r = await cache.ensure("reg.local/app:1", PullPolicy.NEVER)
    assert r.image_ref == "sha256:x" and not r.pulled and rt.pulls == []


async def test_invalid_name_never_reaches_runtime() -> None:
    _, rt, cache = make()
    with pytest.raises(InvalidImageNameError):
        await cache.ensure("Bad Image", PullPolicy.ALWAYS)
    assert rt.status_calls == 0 and rt.pulls == []


async def test_pull_error_carries_registry_message() -> None:
    clock, rt, cache = make()
    rt.fail["reg.local/nope:1"] = "failed to resolve reference: reg.local/nope:1: not found"
    waiters = asyncio.gather(
        *(cache.ensure("reg.local/nope:1", PullPolicy.IF_NOT_PRESENT) for _ in range(3)),
        return_exceptions=True,
    )
    await clock.advance(0)
    await clock.advance(0.05)
    errs = await waiters
    assert len(rt.pulls) == 1
    for e in errs:
        assert isinstance(e, ImagePullError)
        assert e.reason == "ErrImagePull"
        assert "not found" in e.message and "reg.local/nope:1" in e.message
    # A later attempt retries (failures are not cached).
    rt.fail.clear()
    retry = asyncio.ensure_future(cache.ensure("reg.local/nope:1", PullPolicy.IF_NOT_PRESENT))
    await clock.advance(0)
    await clock.advance(0.05)
    r = await retry
    assert r.pulled and len(rt.pulls) == 2


async def test_always_on_unchanged_image_is_not_a_pull() -> None:
    _, rt, cache = make(delay=0)
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:same", size=5)
    r = await cache.ensure("reg.local/app:1", PullPolicy.ALWAYS)
    assert rt.pulls == ["reg.local/app:1"]
    assert not r.pulled and r.image_ref == "sha256:same"


async def test_parallel_pull_semaphore() -> None:
    clock, rt, cache = make(delay=0.05, max_parallel_pulls=2)
    pulls = asyncio.gather(
        *(cache.ensure(f"reg.local/app{i}:1", PullPolicy.IF_NOT_PRESENT) for i in range(6))
    )
    await clock.advance(0)
    assert rt.active == 2 and len(rt.pulls) == 2  # the other four wait for the semaphore
    for done in (2, 4, 6):
        await clock.advance(0.05)
        assert len(rt.pulls) == min(6, done + 2)
    await pulls
    assert len(rt.pulls) == 6 and rt.max_active == 2


async def test_cancelled_waiter_does_not_cancel_shared_pull() -> None:
    clock, rt, cache = make(delay=0.1)
    a = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    b = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    await clock.advance(0)
    await clock.advance(0.02)
    a.cancel()
    await clock.advance(0.08)
    r = await b
    assert r.pulled and rt.pulls == ["reg.local/app:1"]
    await cache.close()


async def test_close_cancels_inflight() -> None:
    clock, rt, cache = make(delay=10)
    t = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    await clock.advance(0)
    assert rt.active == 1
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert cache._inflight == {}


async def test_garbage_collect_respects_in_use_and_age() -> None:
    clock, rt, cache = make(delay=0, gc_budget_bytes=1500, gc_min_age_seconds=100)
    for i in range(3):
        await cache.ensure(f"reg.local/app{i}:1", PullPolicy.IF_NOT_PRESENT)
    assert await cache.garbage_collect(set()) == []  # all too young
    await clock.advance(200)
    await cache.ensure("reg.local/app2:1", PullPolicy.IF_NOT_PRESENT)  # touched: most recently used
    removed = await cache.garbage_collect({"reg.local/app0:1"})
    # 3000 bytes > 1500: remove LRU unused (app1) then stop at <= 1200? app2 is young again.
    assert removed == ["sha256:2"]
    assert set(rt.images) == {"reg.local/app0:1", "reg.local/app2:1"}


# ---------------------------------------------------------------------------- private images


def cred(user: str, password: str = "p") -> RegistryCredential:
    return RegistryCredential(username=user, password=password, source=f"ns/{user}", fingerprint=f"fp-{user}")


class AuthRuntime(FakeRuntime):
    """A registry that accepts only ``allowed`` credentials for ``private/`` repositories; every
    image has the same id whatever repository it is pulled as (a private copy of a public image)."""

    def __init__(self, clock: FakeClock, allowed: set[str]) -> None:
        super().__init__(clock, delay=0.0)
        self.allowed = allowed
        self.used: list[str] = []

    async def pull(self, image: str, credential: RegistryCredential | None = None) -> str:
        self.used.append(credential.username if credential else "")
        self.pulls.append(image)
        if "/private/" in image and (credential is None or credential.username not in self.allowed):
            raise BackendError("401 Unauthorized")
        self.images[image] = ImageInfo(id="sha256:same", size=10, tags=(image,))
        return "sha256:same"


PRIVATE = "reg.local/private/app:1"


async def test_a_pod_without_matching_credentials_never_uses_a_private_image_pulled_by_another() -> None:
    clock = FakeClock()
    rt = AuthRuntime(clock, allowed={"alice", "bob"})
    cache = ImageCache(rt, clock=clock)  # type: ignore[arg-type]
    first = await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT, [cred("alice")])
    assert first.pulled and rt.used == ["alice"]
    # no credentials, IfNotPresent, the image present: pulled again anonymously and refused
    with pytest.raises(ImagePullError, match="401 Unauthorized"):
        await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT)
    # wrong credentials: refused too
    with pytest.raises(ImagePullError, match="401 Unauthorized"):
        await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT, [cred("mallory")])
    # Never: the image is hidden as if absent
    with pytest.raises(ImageNeverPullError):
        await cache.ensure(PRIVATE, PullPolicy.NEVER)
    assert rt.used == ["alice", "", "mallory"]
    # the credentials that pulled it: used without a pull
    again = await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT, [cred("alice")])
    assert not again.pulled and rt.used == ["alice", "", "mallory"]
    # other valid credentials: verified once by a pull, then remembered
    await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT, [cred("bob")])
    await cache.ensure(PRIVATE, PullPolicy.NEVER, [cred("bob")])
    assert rt.used == ["alice", "", "mallory", "bob"]


async def test_credentials_are_tried_in_order_until_one_is_accepted() -> None:
    clock = FakeClock()
    rt = AuthRuntime(clock, allowed={"good"})
    cache = ImageCache(rt, clock=clock)  # type: ignore[arg-type]
    await cache.ensure(PRIVATE, PullPolicy.ALWAYS, [cred("bad1"), cred("good"), cred("bad2")])
    assert rt.used == ["bad1", "good"]
    with pytest.raises(ImagePullError) as e:
        await cache.ensure(PRIVATE, PullPolicy.ALWAYS, [cred("bad1"), cred("bad2")])
    assert str(e.value.message).endswith("[401 Unauthorized, 401 Unauthorized]")


async def test_preloaded_and_anonymously_pulled_images_are_not_verified() -> None:
    clock = FakeClock()
    rt = AuthRuntime(clock, allowed=set())
    rt.images[PRIVATE] = ImageInfo(id="sha256:pre", size=1, tags=(PRIVATE,))  # never pulled by us
    cache = ImageCache(rt, clock=clock)  # type: ignore[arg-type]
    assert not (await cache.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT)).pulled
    await cache.ensure("reg.local/public/app:1", PullPolicy.IF_NOT_PRESENT)  # anonymous
    assert not (await cache.ensure("reg.local/public/app:1", PullPolicy.IF_NOT_PRESENT, [cred("x")])).pulled
    assert rt.used == [""]


async def test_pulls_are_deduplicated_per_credentials_only() -> None:
    clock = FakeClock()
    rt = FakeRuntime(clock, delay=0.05)
    cache = ImageCache(rt, clock=clock)  # type: ignore[arg-type]
    waiters = asyncio.gather(
        cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT),
        cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT),
        cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT, [cred("a")]),
        cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT, [cred("a")]),
    )
    await clock.advance(0)
    assert rt.active == 2  # the anonymous pull and alice's, one each
    await clock.advance(0.05)
    await waiters
    assert rt.pulls == ["reg.local/app:1", "reg.local/app:1"]  # anonymous once, alice's once


async def test_records_persist_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = AuthRuntime(clock, allowed={"alice"})
    path = tmp_path / "records.json"
    await ImageCache(rt, clock=clock, records=PullRecords(path)).ensure(  # type: ignore[arg-type]
        PRIVATE, PullPolicy.IF_NOT_PRESENT, [cred("alice")]
    )
    restarted = ImageCache(rt, clock=clock, records=PullRecords(path))  # type: ignore[arg-type]
    with pytest.raises(ImagePullError):
        await restarted.ensure(PRIVATE, PullPolicy.IF_NOT_PRESENT)


async def test_the_create_after_ensure_reuses_its_answer_within_the_reuse_window() -> None:
    from sandbox.images import STATUS_REUSE_SECONDS

    clock, rt, cache = make()
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:x", size=5, uid=1000)
    await cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT)
    assert rt.status_calls == 1
    info = await cache.status("reg.local/app:1")
    assert info is not None and info.id == "sha256:x" and info.uid == 1000
    assert rt.status_calls == 1  # the create did not ask again
    await clock.advance(STATUS_REUSE_SECONDS + 0.01)
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:y", size=5)
    info = await cache.status("reg.local/app:1")
    assert info is not None and info.id == "sha256:y" and rt.status_calls == 2  # asked: too old
    # ensure always asks the runtime (its answer decides the pull), and refreshes the one kept
    rt.images["reg.local/app:1"] = ImageInfo(id="sha256:z", size=5)
    await cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT)
    assert rt.status_calls == 3
    info = await cache.status("reg.local/app:1")
    assert info is not None and info.id == "sha256:z" and rt.status_calls == 3


async def test_a_pull_keeps_the_pulled_image_for_the_create_and_absence_is_not_kept() -> None:
    clock, rt, cache = make()
    assert await cache.status("reg.local/none:1") is None
    assert await cache.status("reg.local/none:1") is None
    assert rt.status_calls == 2  # "not there" is always asked again
    task = asyncio.ensure_future(cache.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT))
    await clock.advance(0)
    await clock.advance(0.05)
    result = await task
    calls = rt.status_calls
    info = await cache.status("reg.local/app:1")
    assert info is not None and info.id == result.image_ref and rt.status_calls == calls


async def test_image_gc_drops_every_kept_answer() -> None:
    clock, rt, cache = make(gc_budget_bytes=1, gc_min_age_seconds=0)
    rt.images["reg.local/old:1"] = ImageInfo(id="sha256:old", size=10, tags=("reg.local/old:1",))
    await cache.ensure("reg.local/old:1", PullPolicy.IF_NOT_PRESENT)
    await clock.advance(1)
    assert await cache.garbage_collect(set()) == ["sha256:old"]
    calls = rt.status_calls
    assert await cache.status("reg.local/old:1") is None
    assert rt.status_calls == calls + 1
