"""Ephemeral containers through the pod worker (in-memory API, simulated runtime): started once in
the running pod's sandbox with the target's process namespace, never restarted, reported in
ephemeralContainerStatuses; the pod's other containers untouched; stopped with the pod; a backend
that runs no processes and a finished pod say why they cannot run (Warning + waiting status)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker
from prometheus_client import REGISTRY

from common.clock import FakeClock
from provider.ephemeral import NOT_SUPPORTED, POD_NOT_RUNNING
from sandbox.backend import BackendCapabilities, ContainerSpec, ContainerState, PodSandboxSpec, SandboxInfo
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.unit

DBG = {
    "name": "dbg",
    "image": "registry.local/busybox:1",
    "stdin": True,
    "tty": True,
    "targetContainerName": "app",
}


class ProcessBackend(SimulatedBackend):
    """The simulated runtime posing as one that runs processes; records what ephemeral containers
    it was asked to create."""

    capabilities = BackendCapabilities(runs_processes=True)

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ephemeral: list[ContainerSpec] = []

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        if container.is_ephemeral:
            self.ephemeral.append(container)
            container = container.model_copy(update={"is_ephemeral": False})
        return await super().create_container(sandbox, pod, container, attempt)


def outcomes(result: str) -> float:
    return REGISTRY.get_sample_value("warmlet_ephemeral_containers_total", {"result": result}) or 0.0


def eph_status(api: FakeApi, uid: str) -> dict[str, Any]:
    statuses = api.pods[uid]["status"]["ephemeralContainerStatuses"]
    assert len(statuses) == 1
    return dict(statuses[0])


def conds(api: FakeApi, uid: str) -> dict[str, str]:
    return {c["type"]: c["status"] for c in api.pods[uid]["status"]["conditions"]}


async def test_started_once_in_target_namespace_and_stopped_with_pod(tmp_path: Path) -> None:
    clock = FakeClock()
    api, rec = FakeApi(), FakeRecorder()
    backend = ProcessBackend(tmp_path / "logs", clock=clock)
    worker = make_worker(tmp_path, api, backend, rec, clock)
    api.add(make_pod("p", "u", policy="Never", annotations={"warmlet.io/sim-run-seconds.dbg": "1"}))
    await worker.sync("u")
    app = api.pods["u"]["status"]["containerStatuses"][0]
    assert "running" in app["state"]
    rec.events.clear()

    api.pods["u"]["spec"]["ephemeralContainers"] = [DBG]  # kubectl debug --target=app
    started = outcomes("started")
    await worker.sync("u")
    assert outcomes("started") == started + 1
    (spec,) = backend.ephemeral
    assert spec.target_container_id == app["containerID"].split("://")[1]
    assert spec.stdin and spec.tty and spec.is_ephemeral
    assert rec.reasons() == ["Pulling", "Pulled", "Created", "Started"]
    s = eph_status(api, "u")
    assert "running" in s["state"] and s["restartCount"] == 0 and s["ready"] is False
    assert s["containerID"].startswith("simulated://")
    # the pod is the same pod: same app container, still Running and Ready
    assert api.pods["u"]["status"]["containerStatuses"][0] == app
    assert api.pods["u"]["status"]["phase"] == "Running" and conds(api, "u")["Ready"] == "True"

    await clock.advance(0)
    await clock.set(clock.monotonic() + 1)  # the debug container exits 0
    await worker.sync("u")
    await worker.sync("u")
    assert eph_status(api, "u")["state"]["terminated"]["exitCode"] == 0
    assert len(backend.ephemeral) == 1  # never restarted
    assert api.pods["u"]["status"]["phase"] == "Running"

    # a second debug container, without target, still running when the pod finishes
    api.pods["u"]["spec"]["ephemeralContainers"].append({"name": "dbg2", "image": "registry.local/busybox:1"})
    await worker.sync("u")
    assert backend.ephemeral[1].target_container_id == ""
    assert not worker.terminator.reusable("u", api.pods["u"])  # a debugged sandbox is never reused
    for c in await backend.pod_containers("u"):
        if c.name == "app":
            await backend.stop_container(c.container_id, 0)
    await worker.sync("u")
    final = api.pods["u"]["status"]
    assert final["phase"] in ("Succeeded", "Failed")
    by_name = {s["name"]: s for s in final["ephemeralContainerStatuses"]}
    assert "terminated" in by_name["dbg2"]["state"]  # stopped with the pod, reported so
    assert not [c for c in await backend.pod_containers("u") if c.state == ContainerState.RUNNING]


async def test_simulated_backend_says_why_it_cannot_run(tmp_path: Path) -> None:
    clock = FakeClock()
    api, rec = FakeApi(), FakeRecorder()
    backend = SimulatedBackend(tmp_path / "logs", clock=clock)
    worker = make_worker(tmp_path, api, backend, rec, clock)
    api.add(make_pod("p", "u"))
    await worker.sync("u")
    before = await backend.pod_containers("u")
    rec.events.clear()
    api.pods["u"]["spec"]["ephemeralContainers"] = [DBG]
    unsupported = outcomes(NOT_SUPPORTED)
    await worker.sync("u")
    await worker.sync("u")
    assert outcomes(NOT_SUPPORTED) == unsupported + 1  # counted once, like the event
    w = eph_status(api, "u")["state"]["waiting"]
    assert w["reason"] == NOT_SUPPORTED and "runs no processes" in w["message"]
    assert [(t, r) for _, t, r, _ in rec.events] == [("Warning", "Failed")]
    assert "runs no processes" in rec.events[0][3]
    await worker.sync("u")
    assert len(rec.events) == 1  # said once
    assert await backend.pod_containers("u") == before  # nothing created, nothing restarted
    assert api.pods["u"]["status"]["phase"] == "Running" and conds(api, "u")["Ready"] == "True"


async def test_finished_pod_says_why_it_cannot_run(tmp_path: Path) -> None:
    clock = FakeClock()
    api, rec = FakeApi(), FakeRecorder()
    backend = ProcessBackend(tmp_path / "logs", clock=clock)
    worker = make_worker(tmp_path, api, backend, rec, clock)
    api.add(make_pod("p", "u", policy="Never", annotations={"warmlet.io/sim-run-seconds": "1"}))
    await worker.sync("u")
    await clock.advance(0)
    await clock.set(clock.monotonic() + 1)
    await worker.sync("u")
    assert api.pods["u"]["status"]["phase"] == "Succeeded"
    rec.events.clear()
    api.pods["u"]["spec"]["ephemeralContainers"] = [DBG]
    await worker.sync("u")
    await worker.sync("u")
    w = eph_status(api, "u")["state"]["waiting"]
    assert w["reason"] == POD_NOT_RUNNING and "phase Succeeded" in w["message"]
    assert [(t, r) for _, t, r, _ in rec.events] == [("Warning", "Failed")]
    assert backend.ephemeral == []
    assert api.pods["u"]["status"]["phase"] == "Succeeded"


async def test_unpullable_image_waits_with_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    api, rec = FakeApi(), FakeRecorder()
    backend = ProcessBackend(tmp_path / "logs", clock=clock)
    worker = make_worker(tmp_path, api, backend, rec, clock)
    api.add(make_pod("p", "u"))
    await worker.sync("u")
    api.pods["u"]["spec"]["ephemeralContainers"] = [{**DBG, "image": "registry.local/does-not-exist:1"}]
    retry = await worker.sync("u")
    assert retry is not None
    w = eph_status(api, "u")["state"]["waiting"]
    assert w["reason"] == "ErrImagePull"
    assert "Failed" in rec.reasons()
    assert api.pods["u"]["status"]["phase"] == "Running" and conds(api, "u")["Ready"] == "True"
