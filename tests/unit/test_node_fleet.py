"""Several nodes in one process on a fake API and clock: which objects are theirs (pure), each node
registered with its own Lease renewals spread over the interval, one Node watch for all of them
(a deleted Node comes back, other Nodes are ignored), and one pod informer for all their pods."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from provider.config import NodeConfig
from provider.kubeclient import ApiError
from provider.node_fleet import NodeFleet
from provider.node_scope import lease_phases, node_scope, pod_scope, pods_per_node, status_phases
from provider.pods.informer import PodInformer
from sandbox.backend import BackendHealth

pytestmark = pytest.mark.unit
JSON = dict[str, Any]


def pod(uid: str, node: str | None) -> JSON:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns"}, "spec": {"nodeName": node}}


# ---------------------------------------------------------------------------------------- pure


def test_one_node_watches_by_field_selector_several_watch_all_bound_pods_once() -> None:
    params, key = pod_scope(["a"])
    assert params == {"fieldSelector": "spec.nodeName=a"}
    assert key(pod("u", "a")) == "u"
    params, key = pod_scope(["a", "b"])
    assert params == {"fieldSelector": "spec.nodeName!="}
    assert (key(pod("u1", "a")), key(pod("u2", "b")), key(pod("u3", "c")), key(pod("u4", None))) == (
        "u1",
        "u2",
        None,
        None,
    )
    params, key = node_scope(["a"])
    assert params == {"fieldSelector": "metadata.name=a"}
    params, key = node_scope(["a", "b"])
    assert params == {}
    assert key({"metadata": {"name": "b"}}) == "b" and key({"metadata": {"name": "c"}}) is None


@given(
    names=st.sets(st.sampled_from("abcdef"), min_size=1),
    pods=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=30),
)
def test_a_pod_is_kept_exactly_when_bound_to_one_of_the_nodes(
    names: set[str], pods: list[tuple[str, bool]]
) -> None:
    _, key = pod_scope(names)
    objs = [pod(f"u{i}", n if bound else None) for i, (n, bound) in enumerate(pods)]
    for o in objs:
        assert (key(o) is not None) == (o["spec"]["nodeName"] in names)
    counts = pods_per_node(objs, names)
    assert set(counts) == names
    assert sum(counts.values()) == sum(1 for o in objs if key(o) is not None)


@given(n=st.integers(1, 5000), interval=st.floats(0.5, 60.0))
def test_lease_phases_spread_the_renewals_evenly_over_the_interval(n: int, interval: float) -> None:
    phases = lease_phases(n, interval)
    assert len(phases) == n
    assert all(0 < p <= interval * (1 + 1e-9) for p in phases)
    assert phases[-1] == pytest.approx(interval)
    gaps = [b - a for a, b in zip([0.0, *phases], phases, strict=False)]
    assert all(g == pytest.approx(interval / n) for g in gaps)


# ---------------------------------------------------------------------------------------- fakes


class FakeApi:
    """Nodes and Leases by name (get/post/patch/put) and a Node list/watch a test feeds."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.nodes: dict[str, JSON] = {}
        self.leases: dict[str, JSON] = {}
        self.renewals: dict[str, list[float]] = {}  # lease name -> monotonic time of each write
        self.posts: dict[str, int] = {}
        self.events: asyncio.Queue[JSON] = asyncio.Queue()
        self.rv = 0
        self.list_params: list[dict[str, Any]] = []

    def _name(self, path: str) -> str:
        return path.rstrip("/").split("/")[-1]

    async def get(self, path: str, **params: Any) -> JSON:
        store = self.leases if "/leases/" in path else self.nodes
        name = self._name(path)
        if name not in store:
            raise ApiError(404, "NotFound", "")
        return store[name]

    def _stored(self, body: JSON) -> JSON:
        self.rv += 1
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}

    async def post(self, path: str, body: JSON, **params: Any) -> JSON:
        name = body["metadata"]["name"]
        if path.endswith("/leases"):
            self.leases[name] = self._stored(body)
            self.renewals.setdefault(name, []).append(self.clock.monotonic())
            return self.leases[name]
        self.posts[name] = self.posts.get(name, 0) + 1
        self.nodes[name] = self._stored(body)
        self.nodes[name]["metadata"]["uid"] = f"{name}-uid-{self.posts[name]}"
        return self.nodes[name]

    async def put(self, path: str, body: JSON, **params: Any) -> JSON:
        name = self._name(path)
        self.leases[name] = self._stored(body)
        self.renewals[name].append(self.clock.monotonic())
        return self.leases[name]

    async def patch(self, path: str, body: JSON, content_type: str = "", **params: Any) -> JSON:
        name = self._name(path.removesuffix("/status"))
        if name not in self.nodes:
            raise ApiError(404, "NotFound", "")
        node = self.nodes[name]
        if path.endswith("/status"):
            node = {**node, "status": body["status"]}
        self.nodes[name] = {**node, "metadata": {**node["metadata"], "managedFields": [{"manager": "x"}]}}
        return self.nodes[name]

    async def list_all(self, path: str, **params: Any) -> JSON:
        self.list_params.append(params)
        foreign = {"metadata": {"name": "kwok-node-0", "resourceVersion": "1"}}
        return {"metadata": {"resourceVersion": "1"}, "items": [*self.nodes.values(), foreign]}

    async def watch(self, path: str, resource_version: str, **params: Any) -> AsyncIterator[JSON]:
        while True:
            yield await self.events.get()


class Healthy:
    async def health(self) -> BackendHealth:
        return BackendHealth(ok=True, runtime_name="fake")


async def settle(clock: FakeClock, sleepers: int) -> None:
    for _ in range(2000):
        if clock.sleepers >= sleepers:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{clock.sleepers} sleepers, expected {sleepers}")


def fleet_of(names: list[str], api: FakeApi, clock: FakeClock) -> NodeFleet:
    cfgs = [NodeConfig(name=n, cpu=str(i + 1)) for i, n in enumerate(names)]  # renewed every 10 s
    return NodeFleet(cfgs, api, api, Healthy(), 10250, clock=clock)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- the fleet


async def test_every_node_registers_with_its_own_capacity_and_renews_its_own_lease_spread_out() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    fleet = fleet_of(["n-0", "n-1", "n-2", "n-3"], api, clock)
    task = asyncio.create_task(fleet.run())
    await settle(clock, 4 * 2)  # per node: the lease and the status loop wait on the clock
    assert fleet.registered.is_set()
    assert {n: api.nodes[n]["status"]["capacity"]["cpu"] for n in api.nodes} == {
        "n-0": "1",
        "n-1": "2",
        "n-2": "3",
        "n-3": "4",
    }
    assert all(api.leases[n]["spec"]["holderIdentity"] == n for n in api.nodes)
    assert all(api.leases[n]["metadata"]["ownerReferences"][0]["uid"] == f"{n}-uid-1" for n in api.nodes)
    assert api.list_params == [{}]  # one Node list for all four (no per-node field selector)
    assert all("managedFields" not in c.node["metadata"] for c in fleet.controllers if c.node)
    await clock.advance(10.0)
    # created together at 0, then renewed at 2.5, 5, 7.5 and 10: one after another, not in a burst
    assert sorted(api.renewals[n][1] for n in api.nodes) == [2.5, 5.0, 7.5, 10.0]
    await clock.advance(10.0)
    assert [api.renewals[n][1:] for n in sorted(api.nodes)] == [  # then every 10 s, each its own phase
        [2.5, 12.5],
        [5.0, 15.0],
        [7.5, 17.5],
        [10.0, 20.0],
    ]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_deleted_node_comes_back_and_other_nodes_events_are_ignored() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    fleet = fleet_of(["n-0", "n-1"], api, clock)
    task = asyncio.create_task(fleet.run())
    await settle(clock, 4)
    await clock.advance(1.0)
    api.events.put_nowait({"type": "DELETED", "object": {"metadata": {"name": "kwok-node-0"}}})
    gone = api.nodes.pop("n-1")
    api.events.put_nowait({"type": "DELETED", "object": gone})
    for _ in range(200):
        if api.posts.get("n-1") == 2:
            break
        await asyncio.sleep(0)
    assert api.posts == {"n-0": 1, "n-1": 2}  # only n-1 registered again, at once
    assert "kwok-node-0" not in api.nodes and clock.monotonic() == 1.0
    assert fleet.by_name["n-1"].node_uid() == "n-1-uid-2"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_mark_stopped_tells_each_node_its_own_pods_left_running() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    fleet = fleet_of(["n-0", "n-1"], api, clock)
    task = asyncio.create_task(fleet.run())
    await settle(clock, 4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await fleet.mark_stopped({"n-0": 3})
    ready = {
        n: next(c for c in api.nodes[n]["status"]["conditions"] if c["type"] == "Ready") for n in api.nodes
    }
    assert all(r["status"] == "False" and r["reason"] == "WarmletStopped" for r in ready.values())
    assert "3 pods left running" in ready["n-0"]["message"]
    assert "0 pods left running" in ready["n-1"]["message"]


def test_a_fleet_sets_the_kubelet_port_of_every_node() -> None:
    clock = FakeClock(start=0.0)
    fleet = fleet_of(["a", "b"], FakeApi(clock), clock)
    fleet.set_kubelet_port(4321)
    assert [c.kubelet_port for c in fleet.controllers] == [4321, 4321]
    assert fleet.primary.cfg.name == "a" and fleet.names == ["a", "b"]


# ---------------------------------------------------------------------------------------- pods


class FakePods:
    def __init__(self, items: list[JSON]) -> None:
        self.items = items
        self.events: asyncio.Queue[JSON] = asyncio.Queue()
        self.params: list[dict[str, Any]] = []

    async def list_all(self, path: str, **params: Any) -> JSON:
        self.params.append(params)
        return {"metadata": {"resourceVersion": "5"}, "items": self.items}

    async def watch(self, path: str, resource_version: str, **params: Any) -> AsyncIterator[JSON]:
        while True:
            yield await self.events.get()


async def test_one_pod_informer_holds_every_pod_of_the_processs_nodes_and_no_other() -> None:
    api = FakePods([pod("a1", "a"), pod("b1", "b"), pod("x1", "kwok-node-0")])
    changed: list[str] = []
    informer = PodInformer(api, ["a", "b"], changed.append)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    api.events.put_nowait({"type": "ADDED", "object": {**pod("x2", "other"), "metadata": {"uid": "x2"}}})
    api.events.put_nowait({"type": "ADDED", "object": pod("b2", "b")})
    for _ in range(50):
        if "b2" in changed:
            break
        await asyncio.sleep(0)
    assert api.params == [{"fieldSelector": "spec.nodeName!="}]
    assert set(informer.pods) == {"a1", "b1", "b2"}
    assert changed == ["a1", "b1", "b2"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@given(n=st.integers(1, 5000), interval=st.floats(1.0, 600.0))
def test_status_phases_start_at_zero_and_spread_evenly_below_the_interval(n: int, interval: float) -> None:
    phases = status_phases(n, interval)
    assert phases[0] == 0.0 and len(phases) == n
    assert all(0 <= p < interval for p in phases)
    assert all(b - a == pytest.approx(interval / n) for a, b in itertools.pairwise(phases))


async def test_the_nodes_periodic_status_writes_are_spread_over_the_interval() -> None:
    clock = FakeClock(start=0.0)
    api = FakeApi(clock)
    cfgs = [NodeConfig(name=f"n-{i}", status_update_interval_seconds=20.0) for i in range(4)]
    fleet = NodeFleet(cfgs, api, api, Healthy(), 10250, clock=clock)  # type: ignore[arg-type]
    for c in fleet.controllers:
        c.health_interval = 1.0
    writes: dict[str, list[float]] = {}
    patch = api.patch

    async def counting(path: str, body: JSON, content_type: str = "", **params: Any) -> JSON:
        if path.endswith("/status"):
            writes.setdefault(path.split("/")[-2], []).append(clock.monotonic())
        return await patch(path, body, content_type, **params)

    api.patch = counting  # type: ignore[method-assign]
    task = asyncio.create_task(fleet.run())
    await settle(clock, 8)
    for _ in range(40):
        await clock.advance(1.0)
    # registered together at 0; then every 20 s, node i i*5 s sooner: not all four at once
    assert {n: w[1:] for n, w in writes.items()} == {
        "n-0": [20.0, 40.0],
        "n-1": [15.0, 35.0],
        "n-2": [10.0, 30.0],
        "n-3": [5.0, 25.0],
    }
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
