"""Restart safety (pure parts): interrupted starts, and final states kept across a SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.backend import ContainerRuntimeState, ContainerState
from sandbox.cri.containers import interrupted_start
from sandbox.pool import WarmPool
from sandbox.pool_policy import PoolDefaults


def state(**kw: object) -> ContainerRuntimeState:
    base: dict[str, object] = {
        "container_id": "c",
        "pod_uid": "u",
        "name": "main",
        "state": ContainerState.EXITED,
    }
    base.update(kw)
    return ContainerRuntimeState(**base)  # type: ignore[arg-type]


def test_interrupted_start_is_only_a_cancelled_start_that_never_ran() -> None:
    msg = "failed to create containerd task: failed to create shim task: context canceled: unknown"
    assert interrupted_start(state(exit_code=128, reason="StartError", message=msg))
    shim = "failed to create containerd task: failed to start shim: start failed: : signal: killed: unknown"
    assert interrupted_start(state(exit_code=128, reason="StartError", message=shim))
    pid = "failed to create containerd task: failed to get task pid: context canceled: unknown"
    assert interrupted_start(state(exit_code=128, reason="StartError", message=pid))
    # cancelled once the task existed: the process may have run, never start it again
    started = 'failed to start containerd task "abc": context canceled: unknown'
    assert not interrupted_start(state(exit_code=128, reason="StartError", message=started))
    # ran, then exited: its own outcome
    assert not interrupted_start(state(exit_code=1, started_at=5.0, message=msg))
    # a start error of the container itself (bad command) is kept, like kubelet does
    assert not interrupted_start(state(exit_code=128, reason="StartError", message='exec: "x": not found'))
    assert not interrupted_start(state(state=ContainerState.CREATED, message=msg))


class NoDriver:
    pass


def test_finished_states_survive_a_restart_until_the_status_is_written(tmp_path: Path) -> None:
    f = tmp_path / "pool.json"
    pool = WarmPool(NoDriver(), PoolDefaults(), state_file=f)  # type: ignore[arg-type]
    pool.keep_finished("u1", {"namespace": "ns", "name": "p", "states": [{"exit_code": 0}]})
    pool.save()
    assert json.loads(f.read_text())["finished"]["u1"]["name"] == "p"
    again = WarmPool(NoDriver(), PoolDefaults(), state_file=f)  # type: ignore[arg-type]
    again.load()
    assert again.finished_of("u1") == {"namespace": "ns", "name": "p", "states": [{"exit_code": 0}]}
    again.drop_finished("u1")
    again.save()
    assert json.loads(f.read_text())["finished"] == {}
    assert again.finished_of("u1") is None


def test_an_oom_kill_is_counted_once_whoever_sees_it_first() -> None:
    from prometheus_client import REGISTRY

    from proto import cri_pb2 as pb
    from sandbox.cri.stats import OomCounter

    def total() -> float:
        return float(REGISTRY.get_sample_value("warmlet_container_oom_kills_total") or 0.0)

    counter = OomCounter(client=None, maxsize=8)  # type: ignore[arg-type]
    before = total()
    oom = pb.ContainerStatus(id="c1", reason="OOMKilled", exit_code=137)
    counter.note("c1", oom)  # the pod sync sees it
    counter.note("c1", oom)  # then the PLEG
    counter.note("c2", pb.ContainerStatus(id="c2", reason="Error", exit_code=1))
    assert total() == before + 1


@pytest.mark.parametrize(
    ("comms", "expected"),
    [
        ({}, None),  # no process left: nothing tells whether it ran
        ({11: "runc:[2:INIT]"}, True),  # runc create done, runc start never came
        ({11: "runc:[2:INIT]", 12: "runc:[1:CHILD]"}, True),
        ({11: "sh"}, False),  # exec'd: the process ran
        ({11: "runc:[2:INIT]", 12: "sleep"}, False),
    ],
)
def test_task_never_started_reads_the_processes_of_the_containers_cgroup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, comms: dict[int, str], expected: bool | None
) -> None:
    from sandbox.cri import host

    monkeypatch.setattr(host, "pids_in_cgroup_of", lambda cid: list(comms) if cid == "cid" else [])
    monkeypatch.setattr(host, "read_text", lambda path: comms[int(path.split("/")[2])] + "\n")
    assert host.task_never_started("cid", str(tmp_path)) is expected  # the task exists
    assert host.task_never_started("cid", None) is expected  # where tasks live: unknown
    # containerd never made the task (a CreateContainer or start cut short before it): never ran
    assert host.task_never_started("cid", str(tmp_path / "cid")) is True


class RefusingClient:
    def __init__(self, details: str) -> None:
        self.details = details

    async def start_container(self, container_id: str) -> None:
        import grpc

        from sandbox.cri.client import CriCallError

        raise CriCallError("StartContainer", grpc.StatusCode.UNKNOWN, self.details)


@pytest.mark.parametrize(
    ("details", "typed"),
    [
        ('failed to start container "abc": container is in starting state: unknown', True),
        ('failed to start containerd task "abc": exec: "x": not found', False),
    ],
)
async def test_a_start_still_carried_out_by_the_runtime_is_a_typed_error(details: str, typed: bool) -> None:
    """The provider learns "an earlier StartContainer is still running" from the error's type,
    never from the runtime's text; any other refusal stays a RunContainerError."""
    from sandbox.backend import BackendError, ContainerStartInProgressError
    from sandbox.cri.containers import CriContainers
    from sandbox.cri.context import CriContext

    ctx = CriContext(RefusingClient(details), "unix:///x", {}, "", "/tmp")  # type: ignore[arg-type]
    containers = CriContainers(ctx, None, None, None, None, None, lambda uid: None, 0)  # type: ignore[arg-type]
    with pytest.raises(BackendError) as ei:
        await containers.start_container("abc")
    assert isinstance(ei.value, ContainerStartInProgressError) is typed
    assert ei.value.reason == ("ContainerStarting" if typed else "RunContainerError")
    assert details in ei.value.message
