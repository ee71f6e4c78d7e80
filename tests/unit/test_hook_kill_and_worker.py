"""Lifecycle hooks in the kill path (preStop within the grace period) and in the pod worker
(postStart before Running, failures kill and restart) on the simulated backend."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hook_fakes import EXEC, ExecBackend, started
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker

from common.clock import FakeClock
from provider.podspec import MIN_GRACE_SECONDS
from sandbox.backend import (
    ContainerRuntimeState,
    ContainerState,
    ExecResult,
)
from sandbox.simulated import SimulatedBackend

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": {}}, "spec": {}}
C = {"name": "app", "image": "x", "ports": [{"name": "web", "containerPort": 8080}]}


# -- kill_container: Killing, preStop within the grace period, then stop -------------------------


def terminator(backend: Any, rec: FakeRecorder, clock: FakeClock, tmp_path: Path) -> Any:
    from provider.config import WarmletConfig
    from provider.pods.termination import PodTerminator

    cfg = WarmletConfig()
    cfg.pods.volumes_dir = tmp_path / "pods"
    return PodTerminator(cfg.pods, None, backend, rec, {}, lambda _: None, clock)  # type: ignore[arg-type]


def hooked_pod(pre_stop: dict[str, Any], grace: int = 10) -> dict[str, Any]:
    return make_pod(
        "p",
        "u1",
        containers=[{"name": "app", "image": "x", "lifecycle": {"preStop": pre_stop}}],
        terminationGracePeriodSeconds=grace,
    )


RUNNING = ContainerRuntimeState(container_id="cid", pod_uid="u1", name="app", state=ContainerState.RUNNING)


async def test_kill_container_runs_pre_stop_before_the_stop(tmp_path: Path) -> None:
    clock, rec, b = FakeClock(), FakeRecorder(), ExecBackend()
    t = terminator(b, rec, clock, tmp_path)
    await t.kill_container(
        hooked_pod(EXEC), RUNNING, 10, "Container app failed liveness probe, will be restarted"
    )
    assert b.calls == [("cid", ["sh", "-c", "echo hi"], 10)]
    assert b.stopped == [("cid", 10)]
    assert rec.events == [
        ("p", "Normal", "Killing", "Container app failed liveness probe, will be restarted")
    ]


async def test_kill_container_pre_stop_counts_against_the_grace_period(tmp_path: Path) -> None:
    clock, rec, b = FakeClock(), FakeRecorder(), ExecBackend()
    t = terminator(b, rec, clock, tmp_path)
    task = asyncio.create_task(t.kill_container(hooked_pod({"sleep": {"seconds": 4}}), RUNNING, 10, "m"))
    await started(clock)
    await clock.advance(3.9)
    assert b.stopped == []  # the hook runs before SIGTERM
    await clock.advance(0.1)
    await task
    assert b.stopped == [("cid", 6)]


async def test_kill_container_cuts_a_long_pre_stop_at_the_grace_period(tmp_path: Path) -> None:
    clock, rec, b = FakeClock(), FakeRecorder(), ExecBackend(hang=True)
    t = terminator(b, rec, clock, tmp_path)
    task = asyncio.create_task(t.kill_container(hooked_pod(EXEC), RUNNING, 3, "m"))
    await started(clock)
    await clock.advance(2.9)
    assert b.stopped == []
    await clock.advance(0.1)
    await task
    assert b.stopped == [("cid", MIN_GRACE_SECONDS)]
    assert rec.reasons() == ["Killing"]  # cut short is not a failure event


async def test_kill_container_failed_pre_stop_is_reported_and_the_stop_goes_on(tmp_path: Path) -> None:
    clock, rec, b = FakeClock(), FakeRecorder(), ExecBackend(ExecResult(exit_code=1))
    t = terminator(b, rec, clock, tmp_path)
    await t.kill_container(hooked_pod(EXEC), RUNNING, 10, "m")
    assert rec.events[-1] == ("p", "Warning", "FailedPreStopHook", "PreStopHook failed")
    assert b.stopped == [("cid", 10)]


async def test_kill_container_without_grace_skips_pre_stop(tmp_path: Path) -> None:
    clock, rec, b = FakeClock(), FakeRecorder(), ExecBackend()
    t = terminator(b, rec, clock, tmp_path)
    await t.kill_container(hooked_pod(EXEC), RUNNING, 0, "m")
    assert b.calls == [] and b.stopped == [("cid", MIN_GRACE_SECONDS)]
    exited = dataclasses.replace(RUNNING, state=ContainerState.EXITED)
    await t.kill_container(hooked_pod(EXEC), exited, 10, "m")  # not running: no hook
    assert b.calls == []


# -- the pod worker: postStart before Running, failures kill and restart --------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def env(tmp_path: Path, clock: FakeClock) -> tuple[FakeApi, SimulatedBackend, FakeRecorder, Any]:
    api = FakeApi()
    backend = SimulatedBackend(tmp_path / "logs", clock=clock)
    rec = FakeRecorder()
    return api, backend, rec, make_worker(tmp_path, api, backend, rec, clock)


def post_start_pod(
    handler: dict[str, Any], annotations: dict[str, str] | None = None, policy: str = "Always"
) -> dict[str, Any]:
    return make_pod(
        "p",
        "u1",
        policy,
        annotations,
        containers=[{"name": "app", "image": "registry.local/app:1", "lifecycle": {"postStart": handler}}],
        terminationGracePeriodSeconds=5,
    )


async def test_status_is_not_running_before_post_start_returns(env: Any, clock: FakeClock) -> None:
    api, _backend, rec, worker = env
    api.add(post_start_pod({"sleep": {"seconds": 3}}))
    sync = asyncio.create_task(worker.sync("u1"))
    await started(clock)
    await clock.advance(2.9)
    assert not sync.done()
    assert (api.pods["u1"].get("status") or {}).get("phase") != "Running"
    assert "Started" in rec.reasons()  # the container started; the hook holds the status back
    await clock.advance(0.1)
    await sync
    assert api.pods["u1"]["status"]["phase"] == "Running"
    assert "FailedPostStartHook" not in rec.reasons()


async def test_failed_post_start_kills_and_reports(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    api.add(post_start_pod({"exec": {"command": ["false"]}}, {"warmlet.io/sim-hook-poststart": "fail"}))
    await worker.sync("u1")
    assert ("p", "Warning", "FailedPostStartHook", "PostStartHook failed") in rec.events
    assert ("p", "Normal", "Killing", "FailedPostStartHook") in rec.events
    assert [c.state for c in await backend.pod_containers("u1")] == [ContainerState.EXITED]
    (cs,) = api.pods["u1"]["status"]["containerStatuses"]
    assert cs["state"]["waiting"]["reason"] == "PostStartHookError"
    assert "simulated postStart hook failure" in cs["state"]["waiting"]["message"]
    assert "terminated" in cs["lastState"]
    await worker.sync("u1")  # restarts per restartPolicy (Always)
    assert len(await backend.pod_containers("u1")) == 2


async def test_failed_post_start_with_restart_never_ends_the_pod(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(post_start_pod({"httpGet": {"port": 80}}, {"warmlet.io/sim-hook-poststart.app": "fail"}, "Never"))
    await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Failed"
    (cs,) = api.pods["u1"]["status"]["containerStatuses"]
    assert "terminated" in cs["state"]


async def test_graceful_deletion_runs_pre_stop_first(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    pod = make_pod(
        "p",
        "u1",
        containers=[
            {
                "name": "app",
                "image": "registry.local/app:1",
                "lifecycle": {"preStop": {"sleep": {"seconds": 2}}},
            }
        ],
    )
    api.add(pod)
    await worker.sync("u1")
    api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    api.pods["u1"]["metadata"]["deletionGracePeriodSeconds"] = 5
    sync = asyncio.create_task(worker.sync("u1"))
    await started(clock)
    await clock.advance(1.9)
    assert [c.state for c in await backend.pod_containers("u1")] == [ContainerState.RUNNING]
    await clock.advance(0.1)
    await clock.advance(0)
    await sync
    assert "u1" not in api.pods
    assert rec.reasons("p")[-1] == "Killing"
    # before the object went: its status said the container stopped (a finalizer may keep it)
    calls = [(verb, path.endswith("/status")) for verb, path, _ in api.calls]
    last_status = api.patches()[-1]["status"]
    assert calls.index(("PATCH", True), len(calls) - 2) < calls.index(("DELETE", False))
    assert "terminated" in last_status["containerStatuses"][0]["state"]
    assert last_status["phase"] in ("Succeeded", "Failed")


async def test_deletion_abandons_a_running_post_start(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    api.add(post_start_pod({"sleep": {"seconds": 600}}))
    sync = asyncio.create_task(worker.sync("u1"))
    await started(clock)
    await clock.advance(10)
    assert not sync.done()
    api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    await clock.advance(1)
    await clock.advance(0)
    assert sync.done()
    await sync
    assert ("p", "Warning", "FailedPostStartHook", "PostStartHook failed") in rec.events
    assert "FailedPostStartHook" not in [m for *_, m in rec.events]  # no kill of its own
    await worker.sync("u1")  # the deletion stops it
    assert "u1" not in api.pods
    assert [c.state for c in await backend.pod_containers("u1")] in ([], [ContainerState.EXITED])


# -- sidecars stop after the app containers (kubelet's terminationOrdering) ---------------------


def test_termination_prereqs_order_sidecars_after_apps_and_later_sidecars() -> None:
    from provider.pods.termination import termination_prereqs

    pod = {
        "spec": {
            "initContainers": [
                {"name": "s1", "restartPolicy": "Always"},
                {"name": "init"},
                {"name": "s2", "restartPolicy": "Always"},
            ],
            "containers": [{"name": "a"}, {"name": "b"}],
        }
    }
    assert termination_prereqs(pod, ["s1", "s2", "a", "b"]) == {"s2": ["a", "b"], "s1": ["a", "b", "s2"]}
    assert termination_prereqs(pod, ["s1", "a"]) == {"s2": ["a"], "s1": ["a"]}  # s2 not running
    no_sidecar = {"spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}]}}
    assert termination_prereqs(no_sidecar, ["a"]) == {}


class PodBackend(ExecBackend):
    def __init__(self, running: list[ContainerRuntimeState]) -> None:
        super().__init__()
        self.running = running

    async def pod_containers(self, uid: str) -> list[ContainerRuntimeState]:
        return [c for c in self.running if c.container_id not in {s for s, _ in self.stopped}]


async def test_a_sidecar_is_stopped_after_the_app_containers_pre_stop(tmp_path: Path) -> None:
    """The app's preStop may need its sidecar (a proxy): the sidecar stays up until the app stopped."""
    side = ContainerRuntimeState(
        container_id="side", pod_uid="u1", name="proxy", state=ContainerState.RUNNING
    )
    app = RUNNING
    pod = make_pod(
        "p",
        "u1",
        initContainers=[{"name": "proxy", "image": "x", "restartPolicy": "Always"}],
        containers=[{"name": "app", "image": "x", "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}],
        terminationGracePeriodSeconds=10,
    )
    clock, rec, b = FakeClock(), FakeRecorder(), PodBackend([side, app])
    t = terminator(b, rec, clock, tmp_path)
    task = asyncio.create_task(t.stop_all(pod, "u1", 10))
    await started(clock)
    await clock.advance(2.9)
    assert b.stopped == []  # the app's preStop runs; the sidecar waits for the app
    await clock.advance(0.2)
    await task
    assert [cid for cid, _ in b.stopped] == ["cid", "side"]
    assert b.stopped[1][1] == 7  # the sidecar's grace: what the wait left of the 10 s
