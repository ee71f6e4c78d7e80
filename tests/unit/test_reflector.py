"""provider.reflector: the pure decisions (relist delta, event classification, failure handling)
and the list/watch loop against a scripted fake API on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from common.retry import Backoff
from provider.kubeclient import ApiError
from provider.reflector import (
    QUICK_CLOSE_SECONDS,
    Next,
    Reflector,
    after_failure,
    after_watch_end,
    by_name,
    by_uid,
    classify,
    relist_delta,
    strip_managed_fields,
)

JSON = dict[str, Any]


def obj(uid: str, rv: str = "1", name: str | None = None, ns: str | None = "ns") -> JSON:
    meta: JSON = {"uid": uid, "name": name or uid, "resourceVersion": rv}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta}


# ---------------------------------------------------------------------------------------- pure

stores = st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(["1", "2", "3"]), max_size=8)


@given(stores, stores)
def test_relist_delta_brings_a_handler_from_old_to_fresh(
    old_rv: dict[str, str], fresh_rv: dict[str, str]
) -> None:
    old = {k: obj(k, rv) for k, rv in old_rv.items()}
    fresh = {k: obj(k, rv) for k, rv in fresh_rv.items()}
    delta = relist_delta(old, fresh)
    view = dict(old)
    for etype, o in delta:
        k = o["metadata"]["uid"]
        if etype == "DELETED":
            assert k in view and k not in fresh
            del view[k]
        elif etype == "ADDED":
            assert k not in old
            view[k] = o
        else:
            assert (
                etype == "MODIFIED"
                and old[k]["metadata"]["resourceVersion"] != o["metadata"]["resourceVersion"]
            )
            view[k] = o
    assert view == fresh
    keys = [o["metadata"]["uid"] for _, o in delta]
    assert len(keys) == len(set(keys))  # one event per key at most; unchanged ones none
    assert len(delta) == sum(1 for k in old.keys() | fresh.keys() if old.get(k) != fresh.get(k))
    # deletions come first
    kinds = [e for e, _ in delta]
    assert kinds == sorted(kinds, key=lambda e: e != "DELETED")


def test_relist_delta_deleted_carries_the_last_known_state() -> None:
    last = obj("a", "7")
    assert relist_delta({"a": last}, {}) == [("DELETED", last)]


def test_classify() -> None:
    assert classify(
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}, by_uid
    ).action == ("bookmark")
    assert classify({"type": "ADDED", "object": obj("a", "3")}, by_uid) == classify(
        {"type": "MODIFIED", "object": obj("a", "3")}, by_uid
    )
    d = classify({"type": "DELETED", "object": obj("a", "4")}, by_uid)
    assert (d.action, d.resource_version, d.key) == ("delete", "4", "a")
    assert (
        classify({"type": "ADDED", "object": {"metadata": {"resourceVersion": "5"}}}, by_uid).action
        == "ignore"
    )
    assert classify({"type": "WHAT", "object": obj("a")}, by_uid).action == "ignore"


def test_keys() -> None:
    assert by_uid(obj("u", name="n")) == "u"
    assert by_name(obj("u", name="n")) == "ns/n"
    assert by_name(obj("u", name="n", ns=None)) == "n"
    assert by_uid({}) is None and by_name({}) is None


def test_strip_managed_fields() -> None:
    o = {"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}, "spec": {}}
    assert strip_managed_fields(o) == {"metadata": {"name": "a"}, "spec": {}}
    assert strip_managed_fields({}) == {}


def test_after_failure_gone_relists_at_once_without_counting() -> None:
    assert after_failure(2, gone=True) == Next(2, relist="gone", backoff=False)


@given(st.integers(0, 50), st.integers(1, 10))
def test_after_failure_backs_off_and_relists_after_too_many(failures: int, relist_after: int) -> None:
    n = after_failure(failures, gone=False, relist_after=relist_after)
    assert n.failures == failures + 1 and n.backoff  # never retried without waiting
    assert (n.relist == "errors") == (failures + 1 > relist_after)


def test_a_failed_relist_stays_due() -> None:
    assert after_failure(0, gone=False, pending="initial") == Next(1, relist="initial", backoff=True)
    assert after_failure(0, gone=False, pending="gone").relist == "gone"


@given(st.integers(0, 20), st.integers(0, 5), st.floats(0, 600))
def test_after_watch_end(failures: int, events: int, elapsed: float) -> None:
    n = after_watch_end(failures, events, elapsed)
    assert n.relist == ""
    if events == 0 and elapsed < QUICK_CLOSE_SECONDS:
        assert n == Next(failures + 1, backoff=True)  # an at-once close is a failure: no hot loop
    else:
        assert not n.backoff
        assert n.failures == (0 if events else failures)


# ---------------------------------------------------------------------------------------- loop


class FakeApi:
    """Scripted lists and watch sessions. A session is a list of events or exceptions; after its
    last item it ends (the server closed it) unless ``hold`` is set (then it waits forever)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lists: list[list[JSON] | Exception] = []
        self.sessions: list[list[JSON | Exception]] = []
        self.list_calls = 0
        self.watch_rvs: list[str] = []
        self.open_watches = 0
        self.hold = True
        self.list_rv = 10

    async def list_all(self, path: str, **params: Any) -> JSON:
        self.list_calls += 1
        item = self.lists.pop(0) if self.lists else []
        if isinstance(item, Exception):
            raise item
        self.list_rv += 10
        return {"metadata": {"resourceVersion": str(self.list_rv)}, "items": [dict(o) for o in item]}

    async def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 240, **p: Any
    ) -> AsyncIterator[JSON]:
        self.watch_rvs.append(resource_version)
        self.open_watches += 1
        try:
            script = self.sessions.pop(0) if self.sessions else []
            for item in script:
                if isinstance(item, Exception):
                    raise item
                await asyncio.sleep(0)
                yield item
            if self.hold and not self.sessions:
                await self.clock.sleep(10**9)
            else:
                await self.clock.sleep(5.0)  # a normal server-side end after a while
        finally:
            self.open_watches -= 1


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def ev(etype: str, o: JSON) -> JSON:
    return {"type": etype, "object": o}


NO_JITTER = Backoff(base=0.5, cap=10.0, jitter=0.0)


async def start(
    api: FakeApi, clock: FakeClock, **kw: Any
) -> tuple[Reflector, list[tuple[str, str]], asyncio.Task[None]]:
    seen: list[tuple[str, str]] = []

    def handler(etype: str, o: JSON) -> None:
        seen.append((etype, o["metadata"]["name"]))

    kw.setdefault("backoff", NO_JITTER)
    r = Reflector(api, "/api/v1/pods", handler, clock=clock, **kw)
    task = asyncio.create_task(r.run())
    await settle()
    return r, seen, task


async def stop(task: asyncio.Task[None], api: FakeApi, clock: FakeClock) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert api.open_watches == 0  # the watch's response is closed
    assert clock.sleepers == 0


async def test_list_then_watch_from_its_version_bookmarks_advance_it() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    api.lists = [[obj("a", "3")]]
    api.sessions = [
        [ev("MODIFIED", obj("a", "21")), ev("BOOKMARK", {"metadata": {"resourceVersion": "25"}})],
        [ev("ADDED", obj("b", "26"))],
    ]
    relists: list[str] = []
    r, seen, task = await start(api, clock, on_relist=relists.append)
    assert r.synced.is_set()
    assert api.watch_rvs == ["20"]
    await clock.advance(5.0)  # the first session ends normally: resumed from the bookmark at once
    await settle()
    assert api.watch_rvs == ["20", "25"]
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")]
    assert set(r.objects) == {"a", "b"} and r.resource_version == "26"
    assert relists == ["initial"] and api.list_calls == 1
    await stop(task, api, clock)


async def test_gone_relists_at_once_replacing_the_store_and_delivering_deletions() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    api.lists = [
        [obj("a", "1"), obj("b", "1"), obj("c", "1")],
        [obj("a", "1"), obj("c", "5"), obj("d", "5")],
    ]
    api.sessions = [[ApiError(410, "Expired", "too old resource version")]]
    relists: list[str] = []
    errors: list[Exception] = []
    r, seen, task = await start(api, clock, on_relist=relists.append, on_watch_error=errors.append)
    assert relists == ["initial", "gone"]
    assert seen[3:] == [("DELETED", "b"), ("MODIFIED", "c"), ("ADDED", "d")]  # "a" is unchanged
    assert set(r.objects) == {"a", "c", "d"}
    assert api.watch_rvs == ["20", "30"]
    assert errors == []  # a 410 is not an error
    assert clock.monotonic() == 1000.0  # no back-off
    await stop(task, api, clock)


async def test_errors_back_off_resume_and_relist_after_too_many() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    api.lists = [[obj("a")], [obj("a")]]
    api.sessions = [[ConnectionResetError("reset")] for _ in range(4)]
    errors: list[Exception] = []
    relists: list[str] = []
    _, seen, task = await start(api, clock, on_watch_error=errors.append, on_relist=relists.append)
    assert len(api.watch_rvs) == 1 and len(errors) == 1
    # back-off 1, 2, 4 s between resumed watches (from the same version), then a relist
    await clock.advance(0.99)
    await settle()
    assert len(api.watch_rvs) == 1
    await clock.advance(0.01)
    await settle()
    assert len(api.watch_rvs) == 2
    await clock.advance(2.0)
    await settle()
    await clock.advance(4.0)
    await settle()
    assert api.watch_rvs == ["20", "20", "20", "20"] and relists == ["initial"]
    await clock.advance(8.0)
    await settle()
    assert relists == ["initial", "errors"] and api.watch_rvs[-1] == "30"
    assert seen == [("ADDED", "a")]  # the unchanged object is not delivered again
    assert len(errors) == 4
    await stop(task, api, clock)


async def test_a_failing_initial_list_is_retried_with_backoff() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    api.lists = [OSError("refused"), OSError("refused"), [obj("a")]]
    r, seen, task = await start(api, clock)
    assert not r.synced.is_set() and api.watch_rvs == []  # never a watch without a list
    await clock.advance(1.0)
    await settle()
    assert api.list_calls == 2 and not r.synced.is_set()
    await clock.advance(2.0)
    await settle()
    assert r.synced.is_set() and seen == [("ADDED", "a")] and api.watch_rvs == ["20"]
    await stop(task, api, clock)


async def test_a_watch_closed_at_once_backs_off_instead_of_spinning() -> None:
    clock = FakeClock(start=0.0)

    class Closing(FakeApi):
        async def watch(
            self, path: str, resource_version: str, timeout_seconds: int = 240, **p: Any
        ) -> AsyncIterator[JSON]:
            self.watch_rvs.append(resource_version)
            return
            yield {}

    api = Closing(clock)
    _, _, task = await start(api, clock)
    assert len(api.watch_rvs) == 1  # waiting, not reconnecting in a loop
    await clock.advance(1.0)
    await settle()
    assert len(api.watch_rvs) == 2
    await stop(task, api, clock)


async def test_replay_list_false_keeps_the_store_but_delivers_only_changes() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    api.lists = [[obj("old")], []]
    api.sessions = [[ev("ADDED", obj("new", "21")), ApiError(410, "Gone", "")]]
    r, seen, task = await start(api, clock, replay_list=False, key=by_name)
    assert seen == [("ADDED", "new"), ("DELETED", "old"), ("DELETED", "new")]
    assert r.objects == {}
    await stop(task, api, clock)


async def test_managed_fields_stripped_and_async_handlers_awaited() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    o = obj("a")
    o["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    api.lists = [[o]]
    got: list[JSON] = []

    async def handler(etype: str, x: JSON) -> None:
        await asyncio.sleep(0)
        got.append(x)

    r = Reflector(api, "/p", handler, clock=clock)  # stripped by default
    task = asyncio.create_task(r.run())
    await settle()
    assert "managedFields" not in r.objects["a"]["metadata"] and got == [r.objects["a"]]
    await stop(task, api, clock)


async def test_on_list_sees_every_list() -> None:
    clock = FakeClock()
    api = FakeApi(clock)
    api.lists = [[], [obj("a")]]
    api.sessions = [[ApiError(410, "Gone", "")]]
    lists: list[list[str]] = []
    _, _, task = await start(api, clock, on_list=lambda objs: lists.append(sorted(objs)))
    assert lists == [[], ["a"]]
    await stop(task, api, clock)
