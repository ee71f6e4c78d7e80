"""The start hold through the pod worker, on the simulated backend and a fake clock (no cluster):
prepared ahead (containers created, not started), held (one status write), started by the wave at
the instant and never before, deadline from the instant, restarts during and after the hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hook_fakes import started
from pod_fakes import FakeApi, FakeRecorder, make_pod

from common.clock import FakeClock
from provider.config import WarmletConfig
from provider.pods import hold
from provider.pods.worker import START_LEVEL_ANNOTATION, PodWorker
from provider.resolve_source import ApiObjectSource
from provider.workload import OwnerResolver
from sandbox.backend import ContainerRuntimeState, ContainerState
from sandbox.simulated import SimulatedBackend

LEAD = 30.0


class Node:
    """A worker over an in-memory API and a simulated runtime that outlives it (a restart)."""

    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.api = FakeApi()
        self.backend = SimulatedBackend(tmp_path / "logs", clock=clock)
        self.rec = FakeRecorder()
        self.requested: list[str] = []
        self.worker = self.new_worker()

    def new_worker(self) -> PodWorker:
        cfg = WarmletConfig()
        cfg.pods.volumes_dir = self.tmp_path / "pods"

        async def fetch(path: str) -> dict[str, Any] | None:
            return None

        return PodWorker(
            cfg.pods,
            cfg.node.internal_ip,
            self.api,  # type: ignore[arg-type]
            self.backend,
            self.api.pods.get,
            self.rec,  # type: ignore[arg-type]
            OwnerResolver(fetch),
            ApiObjectSource(self.api),  # type: ignore[arg-type]
            {"cpu": "16", "memory": "64Gi"},
            self.clock,
            on_probe_change=self.requested.append,
        )

    async def restart(self) -> None:
        await self.worker.holds.close()
        self.worker = self.new_worker()

    async def containers(self, uid: str = "u1") -> list[ContainerRuntimeState]:
        return await self.backend.pod_containers(uid)

    async def states(self, uid: str = "u1") -> dict[str, ContainerState]:
        return {c.name: c.state for c in await self.containers(uid)}

    def status(self, uid: str = "u1") -> dict[str, Any]:
        status: dict[str, Any] = self.api.pods[uid]["status"]
        return status


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path, FakeClock())
    yield n
    await n.worker.holds.close()
    await n.backend.close()


def held_pod(node: Node, lead: float = LEAD, uid: str = "u1", **kw: Any) -> tuple[dict[str, Any], float]:
    instant = node.clock.time() + lead
    ann = {hold.START_AT_ANNOTATION: hold.format_millis(instant), **kw.pop("annotations", {})}
    p = make_pod(f"p-{uid}", uid, kw.pop("policy", "Never"), ann, **kw)
    node.api.add(p)
    return p, hold.parse_instant(hold.format_millis(instant)) or 0.0


async def test_prepared_held_and_started_exactly_at_the_instant(node: Node) -> None:
    _, instant = held_pod(node, containers=[{"name": "a", "image": "i"}, {"name": "b", "image": "i"}])
    assert await node.worker.sync("u1") is None
    assert await node.states() == {"a": ContainerState.CREATED, "b": ContainerState.CREATED}
    st = node.status()
    assert st["phase"] == "Pending"
    waiting = [c["state"]["waiting"] for c in st["containerStatuses"]]
    assert {w["reason"] for w in waiting} == {"StartHeld"}
    assert hold.format_millis(instant) in waiting[0]["message"]
    ready = {c["type"]: c["status"] for c in st["conditions"]}
    assert ready["PodReadyToStartContainers"] == "True" and ready["Ready"] == "False"
    assert len(node.api.patches()) == 1  # one status write while held
    assert "Started" not in node.rec.reasons()
    ids = [c.container_id for c in await node.containers()]

    await node.worker.sync("u1")  # a resync while held changes nothing
    assert len(node.api.patches()) == 1 and [c.container_id for c in await node.containers()] == ids

    await node.clock.advance(LEAD - 0.001)
    assert set((await node.states()).values()) == {ContainerState.CREATED}
    await node.clock.advance(0.001)
    runtime = await node.containers()
    assert [c.container_id for c in runtime] == ids  # the very containers created ahead
    assert {c.state for c in runtime} == {ContainerState.RUNNING}
    assert {c.started_at for c in runtime} == {instant}
    assert node.requested == ["u1"]

    await node.worker.sync("u1")
    assert node.status()["phase"] == "Running"
    anns = node.api.pods["u1"]["metadata"]["annotations"]
    assert anns[START_LEVEL_ANNOTATION] == "precreated"
    assert anns[hold.STARTED_AT_ANNOTATION] == hold.format_millis(instant)
    assert node.rec.reasons().count("Started") == 2


async def test_post_start_runs_before_the_next_container_starts(node: Node) -> None:
    hooked = {"name": "a", "image": "i", "lifecycle": {"postStart": {"sleep": {"seconds": 5}}}}
    held_pod(node, containers=[hooked, {"name": "b", "image": "i"}])
    await node.worker.sync("u1")
    await node.clock.advance(LEAD)
    assert await node.states() == {"a": ContainerState.RUNNING, "b": ContainerState.CREATED}
    sync = asyncio.create_task(node.worker.sync("u1"))  # runs a's postStart (5 s), then starts b
    await started(node.clock, 2)  # the hook's sleep and its deletion check
    await node.clock.advance(4.9)
    assert (await node.states())["b"] == ContainerState.CREATED
    await node.clock.advance(0.1)
    await sync
    runtime = {c.name: c for c in await node.containers()}
    assert runtime["b"].state == ContainerState.RUNNING
    assert runtime["b"].started_at == pytest.approx(runtime["a"].started_at + 5)  # type: ignore[operator]


async def test_active_deadline_counts_from_the_instant(node: Node) -> None:
    held_pod(node, activeDeadlineSeconds=10)
    await node.worker.sync("u1")
    await node.clock.advance(LEAD - 5)  # 25 s after startTime: past 10 s, but before the instant
    await node.worker.sync("u1")
    assert node.status()["phase"] == "Pending"
    await node.clock.advance(5)
    assert await node.worker.sync("u1") == pytest.approx(10.0)  # requeued for the deadline
    assert node.status()["phase"] == "Running"
    await node.clock.advance(9.9)
    await node.worker.sync("u1")
    assert node.status()["phase"] == "Running"
    await node.clock.advance(0.1)
    await node.worker.sync("u1")
    assert node.status()["phase"] == "Failed" and node.status()["reason"] == "DeadlineExceeded"


async def test_restart_during_the_hold_adopts_the_created_containers(node: Node) -> None:
    _, instant = held_pod(node)
    await node.worker.sync("u1")
    ids = [c.container_id for c in await node.containers()]
    await node.restart()
    await node.worker.sync("u1")
    assert [c.container_id for c in await node.containers()] == ids  # never created again
    assert node.status()["phase"] == "Pending"
    assert node.status()["containerStatuses"][0]["state"]["waiting"]["reason"] == "StartHeld"
    assert node.rec.reasons().count("Created") == 1
    await node.clock.advance(LEAD)
    runtime = await node.containers()
    assert [c.container_id for c in runtime] == ids and runtime[0].started_at == instant


async def test_restart_after_the_instant_never_starts_a_container_twice(node: Node) -> None:
    held_pod(node, containers=[{"name": "a", "image": "i"}, {"name": "b", "image": "i"}])
    await node.worker.sync("u1")
    await node.restart()  # warmlet died before the instant; its wave is gone
    await node.clock.advance(LEAD + 1)
    runtime = {c.name: c for c in await node.containers()}
    await node.backend.start_container(runtime["a"].container_id)  # the wave had started a only
    a_started = (await node.containers())[0].started_at
    await node.worker.sync("u1")
    runtime = {c.name: c for c in await node.containers()}
    assert len(runtime) == 2 and runtime["a"].started_at == a_started  # a is not started again
    assert runtime["b"].state == ContainerState.RUNNING
    assert node.status()["phase"] == "Running"
    assert node.rec.reasons().count("Started") == 1  # b, resumed by the sync: a started once


async def test_a_pod_arriving_after_its_instant_starts_at_once(node: Node) -> None:
    held_pod(node, lead=-5.0)
    await node.worker.sync("u1")
    assert await node.states() == {"app": ContainerState.RUNNING}
    assert node.status()["phase"] == "Running"
    anns = node.api.pods["u1"]["metadata"]["annotations"]
    assert anns[START_LEVEL_ANNOTATION] != "precreated"
    assert anns[hold.STARTED_AT_ANNOTATION] == hold.format_millis(node.clock.time())


async def test_init_containers_are_not_run_before_the_instant(node: Node) -> None:
    held_pod(node, initContainers=[{"name": "init", "image": "i"}])
    await node.worker.sync("u1")
    assert await node.states() == {}  # sandbox and images only
    st = node.status()
    assert st["phase"] == "Pending"
    assert st["initContainerStatuses"][0]["state"]["waiting"]["reason"] == "StartHeld"
    await node.clock.advance(LEAD - 0.001)
    await node.worker.sync("u1")
    assert await node.states() == {}
    await node.clock.advance(0.001)
    assert node.requested == ["u1"]
    await node.worker.sync("u1")  # the init chain starts at the instant
    assert await node.states() == {"init": ContainerState.RUNNING}


async def test_a_held_pod_deleted_before_its_instant_never_starts(node: Node) -> None:
    held_pod(node)
    await node.worker.sync("u1")
    node.api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    node.api.pods["u1"]["metadata"]["deletionGracePeriodSeconds"] = 0
    await node.worker.sync("u1")
    await node.clock.advance(LEAD + 1)
    assert all(c.started_at is None for c in await node.containers())
    assert node.worker.holds.wave.holding("u1") is None


async def test_an_unreadable_instant_is_a_warning_and_an_ordinary_start(node: Node) -> None:
    node.api.add(make_pod("p", "u1", "Never", {hold.START_AT_ANNOTATION: "at midnight"}))
    await node.worker.sync("u1")
    assert ("p", "Warning", "InvalidStartAt") in [e[:3] for e in node.rec.events]
    assert await node.states() == {"app": ContainerState.RUNNING}


async def test_many_pods_of_one_instant_start_together(node: Node) -> None:
    instant = node.clock.time() + LEAD
    for i in range(200):
        ann = {hold.START_AT_ANNOTATION: hold.format_millis(instant)}
        node.api.add(make_pod(f"p{i}", f"u{i}", "Never", ann))
        await node.worker.sync(f"u{i}")
    assert len(node.worker.holds.wave) == 200 and len(node.worker.holds.wave.timers) == 1
    await node.clock.advance(LEAD)
    starts = [c.started_at for i in range(200) for c in await node.containers(f"u{i}")]
    assert len(starts) == 200 and all(t == pytest.approx(instant, abs=1e-3) for t in starts)
    assert sorted(node.requested) == sorted(f"u{i}" for i in range(200))
