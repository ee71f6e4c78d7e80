"""provider.punctual.controller: the loop against an in-memory API on a fake clock.

The fake API checks after every write what the real CronJob controller would complain about
(an unfinished Job it controls missing from status.active: UnexpectedJob; an entry of
status.active whose Job is gone: MissingJob), and counts creates: a restart must never create a
second Job for one instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

from common.clock import FakeClock
from provider.config import PunctualConfig
from provider.events import EventRecorder
from provider.kubeclient import ApiError, KubeClient
from provider.punctual.controller import RECORD_DEFER_SECONDS, PunctualController
from provider.punctual.job import is_controlled

JSON = dict[str, Any]
T = datetime(2026, 11, 28, 18, 0, tzinfo=UTC).timestamp()
CJ_PATH = "/apis/batch/v1/cronjobs"
JOB_PATH = "/apis/batch/v1/jobs"
NODE_PATH = "/api/v1/nodes"


class FakeBatchApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, JSON]] = {CJ_PATH: {}, JOB_PATH: {}, NODE_PATH: {}}
        self.watchers: dict[str, list[asyncio.Queue[JSON]]] = {CJ_PATH: [], JOB_PATH: [], NODE_PATH: []}
        self.rv = itertools.count(100)
        self.uids = itertools.count(1)
        self.creates = 0
        self.writes: list[str] = []
        self.leases: dict[str, JSON] = {}
        self.posts_by: dict[str, int] = {}  # create attempts by client name (see Named)

    def _emit(self, coll: str, etype: str, obj: JSON) -> None:
        for q in self.watchers[coll]:
            q.put_nowait({"type": etype, "object": copy.deepcopy(obj)})
        self.check()

    def store(self, coll: str, obj: JSON, etype: str = "ADDED") -> JSON:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(self.uids)}")
        meta["resourceVersion"] = str(next(self.rv))
        self.objects[coll][meta["uid"]] = obj
        self._emit(coll, etype, obj)
        return copy.deepcopy(obj)

    def check(self) -> None:
        for cj in self.objects[CJ_PATH].values():
            uid = cj["metadata"]["uid"]
            active = {r["uid"] for r in (cj.get("status") or {}).get("active") or []}
            for j in self.objects[JOB_PATH].values():
                assert not is_controlled(j, uid) or j["metadata"]["uid"] in active, "UnexpectedJob"
            assert active <= set(self.objects[JOB_PATH]), "MissingJob"

    def _find(self, coll: str, ns: str, name: str) -> JSON:
        for o in self.objects[coll].values():
            if o["metadata"]["namespace"] == ns and o["metadata"]["name"] == name:
                return o
        raise ApiError(404, "NotFound", f"{name} not found")

    # -------------------------------------------------------------- KubeClient's surface

    async def list_all(self, path: str, **params: Any) -> JSON:
        if path == NODE_PATH:  # the controller lists only the nodes that hold starts
            assert params.get("labelSelector") == "warmlet.io/holds-start=true"
        return {
            "metadata": {"resourceVersion": str(next(self.rv))},
            "items": [copy.deepcopy(o) for o in self.objects[path].values()],
        }

    async def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 0, **p: Any
    ) -> AsyncIterator[JSON]:
        q: asyncio.Queue[JSON] = asyncio.Queue()
        self.watchers[path].append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self.watchers[path].remove(q)

    async def get(self, path: str, **params: Any) -> JSON:
        if path not in self.leases:
            raise ApiError(404, "NotFound", "no lease")
        return copy.deepcopy(self.leases[path])

    def _lease(self, path: str, body: JSON) -> JSON:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self.rv))
        self.leases[path] = body
        return copy.deepcopy(body)

    async def post(self, path: str, body: JSON, **params: Any) -> JSON:
        if path.endswith("/leases"):
            full = f"{path}/{body['metadata']['name']}"
            if full in self.leases:
                raise ApiError(409, "AlreadyExists", "lease")
            return self._lease(full, body)
        ns = path.split("/namespaces/")[1].split("/")[0]
        with contextlib.suppress(ApiError):
            self._find(JOB_PATH, ns, body["metadata"]["name"])
            raise ApiError(409, "AlreadyExists", "exists")
        self.creates += 1
        self.writes.append("create")
        return self.store(JOB_PATH, body)

    async def put(self, path: str, body: JSON, **params: Any) -> JSON:
        if "/leases/" in path:
            cur = self.leases.get(path)
            if cur is None or cur["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
                raise ApiError(409, "Conflict", "lease")
            return self._lease(path, body)
        ns, rest = path.split("/namespaces/")[1].split("/cronjobs/")
        cur = self._find(CJ_PATH, ns, rest.split("/")[0])
        if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "stale")
        cur = copy.deepcopy(cur)
        cur["status"] = body["status"]
        self.writes.append("status")
        return self.store(CJ_PATH, cur, "MODIFIED")

    async def patch(self, path: str, body: JSON, content_type: str = "", **params: Any) -> JSON:
        ns, name = path.split("/namespaces/")[1].split("/jobs/")
        cur = copy.deepcopy(self._find(JOB_PATH, ns, name))
        assert content_type == "application/json-patch+json", content_type
        for op in body:  # RFC 6902 test/add/replace, as the API server applies them
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            target = cur
            for p in parents:
                target = target[p]
            if op["op"] == "test":
                if target.get(last) != op["value"]:
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
            elif op["op"] == "replace" and last not in target:
                raise ApiError(422, "Invalid", f"replace of missing {op['path']}")
            else:
                target[last] = copy.deepcopy(op["value"])
        self.writes.append("owner")
        return self.store(JOB_PATH, cur, "MODIFIED")

    async def delete(self, path: str, body: Any = None, **params: Any) -> JSON:
        ns, name = path.split("/namespaces/")[1].split("/jobs/")
        cur = self._find(JOB_PATH, ns, name)
        if body and body["preconditions"]["uid"] != cur["metadata"]["uid"]:
            raise ApiError(409, "Conflict", "uid")
        del self.objects[JOB_PATH][cur["metadata"]["uid"]]
        self.writes.append("delete")
        self._emit(JOB_PATH, "DELETED", cur)
        return {}

    # -------------------------------------------------------------- test helpers

    def cronjob(self) -> JSON:
        return next(iter(self.objects[CJ_PATH].values()))

    def jobs(self) -> list[JSON]:
        return list(self.objects[JOB_PATH].values())

    def edit(self, fn: Any) -> None:
        cj = copy.deepcopy(self.cronjob())
        fn(cj)
        self.store(CJ_PATH, cj, "MODIFIED")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def record(self, obj: JSON, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def punctual_cronjob(**spec: Any) -> JSON:
    return {
        "metadata": {
            "name": "nightly",
            "namespace": "ns",
            "uid": "cj-uid",
            "creationTimestamp": "2026-11-01T00:00:00Z",
            "annotations": {"warmlet.io/punctual": "true"},
        },
        "spec": {
            "schedule": "0 * * * *",
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
            },
            **spec,
        },
        "status": {"lastScheduleTime": "2026-11-28T17:00:00Z"},
    }


async def settle(clock: FakeClock) -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Named:
    """One process's client of the shared fake API: counts its Job creates."""

    def __init__(self, api: FakeBatchApi, name: str) -> None:
        self.api, self.name = api, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.api, attr)

    async def post(self, path: str, body: JSON, **params: Any) -> JSON:
        if path.endswith("/jobs"):
            self.api.posts_by[self.name] = self.api.posts_by.get(self.name, 0) + 1
        return await self.api.post(path, body, **params)


@contextlib.asynccontextmanager
async def running(
    api: FakeBatchApi,
    clock: FakeClock,
    elect: bool = False,
    name: str = "a",
    wave_idle: asyncio.Event | None = None,
) -> AsyncIterator[tuple[PunctualController, Recorder]]:
    rec = Recorder()
    ctl = PunctualController(
        PunctualConfig(enabled=True, lead_seconds=60, leader_election=elect),
        cast(KubeClient, Named(api, name)),
        cast(EventRecorder, rec),
        {"kubernetes.io/hostname": "vnode"},
        [],
        clock=clock,
        identity=name,
        wave_idle=wave_idle,
    )
    task = asyncio.create_task(ctl.run())
    await settle(clock)
    try:
        yield ctl, rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def clock_at(t: float) -> FakeClock:
    return FakeClock(start=1000.0, wall_offset=t - 1000.0)


async def step(clock: FakeClock, seconds: float) -> None:
    await clock.advance(seconds)
    await settle(clock)


async def test_precreated_at_the_lead_adopted_and_recorded_at_the_instant() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 120)
    async with running(api, clock) as (_, rec):
        await step(clock, 50)
        assert api.jobs() == []  # T-70: not yet
        await step(clock, 10.5)
        (job,) = api.jobs()
        assert job["metadata"]["name"] == f"nightly-{int(T // 60)}"
        assert is_controlled(job, "cj-uid")
        assert [r["uid"] for r in api.cronjob()["status"]["active"]] == [job["metadata"]["uid"]]
        assert api.writes == ["create", "status", "owner"]
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T17:00:00Z"
        await step(clock, 59.6)  # the instant (T + 0.1)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T18:00:00Z"
        assert api.creates == 1
        assert ("Normal", "PunctualPrecreated") in rec.events


async def test_a_restart_during_the_lead_finds_its_job_and_never_creates_a_second() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 61)
    async with running(api, clock):
        await step(clock, 2)
        assert api.creates == 1
    async with running(api, clock):  # a new process: nothing in memory
        await step(clock, 30)
        assert api.creates == 1
        await step(clock, 30)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T18:00:00Z"
    assert api.creates == 1 and len(api.jobs()) == 1


async def test_suspend_during_the_lead_takes_the_job_back() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 61)
    async with running(api, clock) as (_, rec):
        await step(clock, 2)
        assert len(api.jobs()) == 1
        api.edit(lambda cj: cj["spec"].__setitem__("suspend", True))
        await step(clock, 0.1)
        assert not api.cronjob()["status"].get("active")
        assert api.writes[-2:] == ["owner", "status"]
        assert len(api.jobs()) == 1  # deleted only once the controller has surely seen that
        await step(clock, 1.0)
        assert api.jobs() == []
        assert api.writes[-3:] == ["owner", "status", "delete"]
        assert ("Normal", "PunctualDeleted") in rec.events
        await step(clock, 60)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T17:00:00Z"  # not recorded


async def test_cronjob_deleted_during_the_lead_deletes_its_job() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 61)
    async with running(api, clock):
        await step(clock, 2)
        cj = api.cronjob()
        del api.objects[CJ_PATH][cj["metadata"]["uid"]]
        for j in api.jobs():  # what the garbage collector would leave for a while
            j["metadata"]["ownerReferences"][0]["controller"] = False
        api.objects[CJ_PATH].clear()
        api._emit(CJ_PATH, "DELETED", cj)
        await step(clock, 0.1)
        assert api.jobs() == []


async def test_not_opted_in_nothing_happens() -> None:
    api = FakeBatchApi()
    cj = punctual_cronjob()
    cj["metadata"]["annotations"] = {}
    api.store(CJ_PATH, cj)
    clock = clock_at(T - 61)
    async with running(api, clock):
        await step(clock, 70)
    assert api.writes == []


async def test_with_leader_election_only_the_lease_holder_creates() -> None:
    api = FakeBatchApi()
    for i in range(5):
        cj = punctual_cronjob()
        cj["metadata"].update(name=f"cj{i}", uid=f"cj-{i}")
        api.store(CJ_PATH, cj)
    clock = clock_at(T - 65)
    async with (
        running(api, clock, elect=True, name="a") as (a, _),
        running(api, clock, elect=True, name="b") as (b, _),
    ):
        await step(clock, 1)
        assert a.leading.is_set() != b.leading.is_set()  # exactly one leads
        await step(clock, 10)
        assert api.creates == 5
        leader = "a" if a.leading.is_set() else "b"
        assert api.posts_by == {leader: 5}  # the standby never even tried


def holding_node(name: str, held: bool = True, ready: str = "True") -> JSON:
    labels = {"kubernetes.io/hostname": name}
    if held:
        labels["warmlet.io/holds-start"] = "true"
    status = {"conditions": [{"type": "Ready", "status": ready}]}
    return {"metadata": {"name": name, "uid": f"node-{name}", "labels": labels}, "spec": {}, "status": status}


async def test_a_cronjob_pinned_to_another_warmlet_node_is_precreated_by_this_one() -> None:
    """Several warmlet nodes, one of them acting (leader election): pods that can only land on
    another node that holds starts are pre-created all the same; on no such node, a Warning."""
    api = FakeBatchApi()
    template = {"nodeSelector": {"kubernetes.io/hostname": "vnode-2"}, "containers": [{"name": "c"}]}
    cj = punctual_cronjob()
    cj["spec"]["jobTemplate"]["spec"]["template"]["spec"] = template
    api.store(CJ_PATH, cj)
    clock = clock_at(T - 61)
    async with running(api, clock) as (_, rec):
        await step(clock, 2)
        assert api.jobs() == []  # vnode-2 is not a warmlet node that holds starts
        assert ("Warning", "PunctualNotOnWarmlet") in rec.events
        api.store(NODE_PATH, holding_node("vnode-2", ready="Unknown"))  # registered, but down
        await step(clock, 0.5)
        assert api.jobs() == []  # its CronJobs fire the normal way
        api.store(NODE_PATH, holding_node("vnode-2"))  # it is Ready
        await step(clock, 0.5)
        (job,) = api.jobs()
        assert job["metadata"]["name"] == f"nightly-{int(T // 60)}"


async def test_recording_the_instant_waits_for_this_nodes_start_wave() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 61)
    idle = asyncio.Event()
    idle.set()
    async with running(api, clock, wave_idle=idle) as (ctl, _):
        await step(clock, 2)
        assert len(api.jobs()) == 1
        await step(clock, 58.9)  # T - 0.1
        idle.clear()  # the instant's pods are being started
        decided: list[str] = []
        plan_for = ctl.plan_for
        ctl.plan_for = lambda uid: (decided.append(uid), plan_for(uid))[1]  # type: ignore[method-assign]
        await step(clock, 0.6)  # T + 0.5
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T17:00:00Z"  # waits
        passes = api.writes.count("status")
        await step(clock, 5)
        assert api.writes.count("status") == passes  # parked, not polled
        assert decided == []  # not even decided while the wave runs (the wave's CPU)
        idle.set()
        await step(clock, 0.01)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T18:00:00Z"
        assert not ctl._deferred


async def test_a_long_wave_delays_the_record_at_most_the_defer_bound() -> None:
    api = FakeBatchApi()
    api.store(CJ_PATH, punctual_cronjob())
    clock = clock_at(T - 61)
    idle = asyncio.Event()
    idle.set()
    async with running(api, clock, wave_idle=idle):
        await step(clock, 60.5)  # pre-created at the lead
        assert len(api.jobs()) == 1
        idle.clear()  # the wave starts at the instant and never ends
        await step(clock, 1.0)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T17:00:00Z"
        await step(clock, RECORD_DEFER_SECONDS)
        assert api.cronjob()["status"]["lastScheduleTime"] == "2026-11-28T18:00:00Z"
