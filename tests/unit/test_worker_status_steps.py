"""The statuses the pod worker writes, step by step, against the simulated backend: kubelet's
order (an exit visible before its restart; unready at the deadline before the kill), and no
extra write on the common start path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker

from common.clock import FakeClock
from provider.pods.status_writer import patch_body
from provider.pods.worker import PodWorker
from sandbox.backend import ContainerState
from sandbox.simulated import SimulatedBackend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def env(tmp_path: Path, clock: FakeClock) -> tuple[FakeApi, SimulatedBackend, PodWorker]:
    api = FakeApi()
    backend = SimulatedBackend(tmp_path / "logs", clock=clock)
    return api, backend, make_worker(tmp_path, api, backend, FakeRecorder(), clock)


def app_states(api: FakeApi) -> list[tuple[str, int]]:
    """(state kind, restartCount) of the app container in each status patch, in order."""
    out = []
    for body in api.patches():
        cs = body["status"].get("containerStatuses") or []
        if cs:
            out.append((next(iter(cs[0]["state"])), cs[0]["restartCount"]))
    return out


async def exit_now(clock: FakeClock, backend: SimulatedBackend, uid: str, seconds: float) -> None:
    await clock.advance(0)
    await clock.advance(seconds)
    assert (await backend.pod_containers(uid))[-1].state == ContainerState.EXITED


async def test_a_pod_start_is_one_status_write(env: Any) -> None:
    api, _, worker = env
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    assert app_states(api) == [("running", 0)]


async def test_an_exit_is_reported_terminated_before_its_restart(env: Any, clock: FakeClock) -> None:
    api, backend, worker = env
    crash = {"warmlet.io/sim-run-seconds": "0.01", "warmlet.io/sim-exit-code": "1"}
    api.add(make_pod("p1", "u1", annotations=crash))
    await worker.sync("u1")
    await exit_now(clock, backend, "u1", 0.01)
    await worker.sync("u1")  # restarted at once: the exit was written first
    assert app_states(api) == [("running", 0), ("terminated", 0), ("running", 1)]
    term = api.patches()[1]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (1, "Error")
    await exit_now(clock, backend, "u1", 0.01)
    await worker.sync("u1")  # in back-off: terminated, then waiting CrashLoopBackOff
    assert app_states(api)[3:] == [("terminated", 1), ("waiting", 1)]
    n = len(api.patches())
    await clock.advance(20)
    await worker.sync("u1")  # back-off over: the exit was reported, no terminated step again
    assert app_states(api)[n:] == [("running", 2)]


async def test_the_deadline_makes_the_pod_unready_before_the_kill(env: Any, clock: FakeClock) -> None:
    api, _, worker = env
    api.add(make_pod("p1", "u1", activeDeadlineSeconds=5, terminationGracePeriodSeconds=0))
    await worker.sync("u1")
    await clock.advance(5)
    await worker.sync("u1")
    steps = [b["status"] for b in api.patches()]
    ready = [{c["type"]: c.get("reason") for c in s["conditions"]}["Ready"] for s in steps]
    assert [s["phase"] for s in steps] == ["Running", "Running", "Failed"]
    assert ready == [None, "PodFailed", "PodFailed"]
    assert "running" in steps[1]["containerStatuses"][0]["state"] and "reason" not in steps[1]
    assert steps[2]["reason"] == "DeadlineExceeded"


def test_the_patch_deletes_a_condition_reason_and_message_no_longer_there() -> None:
    """Strategic merge merges conditions by type: without a null, a Ready condition turning True
    keeps its old ContainersNotReady reason."""
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False", "reason": "R"}],
    }
    body = patch_body(status)
    assert body["conditions"][0] == {"type": "Ready", "status": "True", "reason": None, "message": None}
    assert body["conditions"][1]["reason"] == "R"
    assert "reason" not in status["conditions"][0]  # the recorded status is untouched
