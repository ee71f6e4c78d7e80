"""Ephemeral containers (kubectl debug), pure decisions: which to start, never restarted, the target's
process namespace, their status entries, and that they never change the pod's workload, phase,
readiness or the regular containers' actions."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.backoff import Backoff
from provider.ephemeral import (
    CONFIG_ERROR,
    NOT_SUPPORTED,
    POD_NOT_RUNNING,
    compute_ephemeral_actions,
    finished_pod_statuses,
    live_ephemeral,
)
from provider.podspec import has_privileged_container, sandbox_spec
from provider.status import compute_status
from provider.sync import Start, compute_pod_actions, is_finished
from provider.workload import make_key
from sandbox.backend import ContainerRuntimeState, ContainerSpec, ContainerState
from sandbox.cri import mapping as m

pytestmark = pytest.mark.unit

NOW = 1000.0
STATES = [None, *ContainerState]
POLICIES = ["Always", "OnFailure", "Never"]


def inst(
    name: str, state: ContainerState, attempt: int = 0, code: int | None = None
) -> ContainerRuntimeState:
    exited = state == ContainerState.EXITED
    return ContainerRuntimeState(
        container_id=f"{name}-{attempt}",
        pod_uid="u",
        name=name,
        attempt=attempt,
        state=state,
        image="img",
        image_ref="sha256:img",
        created_at=NOW - 10 + attempt,
        started_at=NOW - 9 + attempt if state != ContainerState.CREATED else None,
        finished_at=NOW - 1 if exited else None,
        exit_code=(code if code is not None else 0) if exited else None,
    )


def pod(policy: str = "Always", *, target: str | None = "app", ephemeral: bool = True, **extra: Any) -> Any:
    spec: dict[str, Any] = {
        "restartPolicy": policy,
        "containers": [{"name": "app", "image": "app:1"}, {"name": "side", "image": "app:1"}],
        **extra,
    }
    if ephemeral:
        ec: dict[str, Any] = {"name": "dbg", "image": "busybox:1", "stdin": True, "tty": True}
        if target is not None:
            ec["targetContainerName"] = target
        spec["ephemeralContainers"] = [ec]
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec, "status": {}}


# ------------------------------------------------------------------ which to start


@pytest.mark.parametrize(
    ("eph", "tgt", "runs", "policy"),
    list(itertools.product(STATES, STATES, [True, False], POLICIES)),
)
def test_exhaustive_start_decision(
    eph: ContainerState | None, tgt: ContainerState | None, runs: bool, policy: str
) -> None:
    runtime = [inst("dbg", eph, code=1)] if eph is not None else []
    if tgt is not None:
        runtime += [inst("app", ContainerState.EXITED, 0, code=1), inst("app", tgt, 1)]
    a = compute_ephemeral_actions(pod(policy), runtime, runs_processes=runs, backend="sim")
    decided = [s.name for s in a.start] + list(a.waiting) + (["dbg"] if a.resume else [])
    assert len(decided) <= 1
    if eph is not None:
        # never restarted, whatever its state and the pod's restartPolicy; a created one (a warmlet
        # killed between create and start) is started, never created again
        assert a.start == [] and a.waiting == {}
        assert a.resume == (["dbg-0"] if eph == ContainerState.CREATED else [])
    elif not runs:
        assert a.start == [] and a.waiting["dbg"].reason == NOT_SUPPORTED
        assert "runs no processes" in a.waiting["dbg"].message and "(sim)" in a.waiting["dbg"].message
    elif tgt is None:
        assert a.start == []
        assert a.waiting["dbg"].reason == CONFIG_ERROR
        assert a.waiting["dbg"].message == "unable to find target container app"
    else:
        # the target's latest instance, whatever its state (kubelet's getTargetID)
        assert a.start == [Start("dbg", 0, False, is_ephemeral=True, target_id="app-1")]


def test_without_target_no_namespace_is_shared() -> None:
    a = compute_ephemeral_actions(pod(target=None), [], runs_processes=True)
    assert a.start == [Start("dbg", 0, False, is_ephemeral=True, target_id="")]
    assert compute_ephemeral_actions(pod(ephemeral=False), [], runs_processes=True).start == []


runtime_strategy = st.lists(
    st.builds(
        inst,
        st.sampled_from(["app", "side", "dbg", "dbg2"]),
        st.sampled_from(list(ContainerState)),
        st.integers(0, 3),
        st.integers(0, 2),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(runtime=runtime_strategy, policy=st.sampled_from(POLICIES), runs=st.booleans())
def test_ephemeral_never_changes_what_the_pod_does(
    runtime: list[ContainerRuntimeState], policy: str, runs: bool
) -> None:
    plain = pod(policy, ephemeral=False)
    debugged = pod(policy)
    debugged["spec"]["ephemeralContainers"].append({"name": "dbg2", "image": "busybox:1"})
    # the regular containers' actions, finish and status are those of the pod without them
    assert compute_pod_actions(debugged, runtime, Backoff(), NOW) == compute_pod_actions(
        plain, runtime, Backoff(), NOW
    )
    assert is_finished(debugged, runtime) == is_finished(plain, runtime)
    s1 = compute_status(debugged, runtime, {}, NOW, sandbox_ready=True, scheme="x")
    s0 = compute_status(plain, runtime, {}, NOW, sandbox_ready=True, scheme="x")
    assert s1.pop("ephemeralContainerStatuses") and s1 == s0
    # an ephemeral container with an instance is never started again
    a = compute_ephemeral_actions(debugged, runtime, runs_processes=runs)
    have = {c.name for c in runtime}
    assert not {s.name for s in a.start} & have
    assert not set(a.waiting) & have
    for s in a.start:
        assert s.is_ephemeral and s.attempt == 0 and not s.is_init


# ------------------------------------------------------------------ status


def test_status_entries_running_terminated_waiting() -> None:
    p = pod()
    p["spec"]["ephemeralContainers"].append({"name": "dbg2", "image": "busybox:2"})
    p["spec"]["ephemeralContainers"].append({"name": "dbg3", "image": "busybox:3"})
    runtime = [
        inst("app", ContainerState.RUNNING),
        inst("side", ContainerState.RUNNING),
        inst("dbg", ContainerState.RUNNING),
        inst("dbg2", ContainerState.EXITED, code=0),
    ]
    from provider.status import Waiting

    waiting = {"dbg3": Waiting("ErrImagePull", "nope")}
    s = compute_status(p, runtime, waiting, NOW, sandbox_ready=True, scheme="containerd")
    assert s["phase"] == "Running"
    assert {c["type"]: c["status"] for c in s["conditions"]}["Ready"] == "True"
    dbg, dbg2, dbg3 = s["ephemeralContainerStatuses"]
    assert dbg["name"] == "dbg" and "running" in dbg["state"]
    assert dbg["containerID"] == "containerd://dbg-0" and dbg["imageID"] == "sha256:img"
    assert dbg["restartCount"] == 0 and dbg["ready"] is False and "started" not in dbg
    assert dbg2["state"]["terminated"]["exitCode"] == 0
    assert dbg2["state"]["terminated"]["reason"] == "Completed"
    assert dbg3["state"] == {"waiting": {"reason": "ErrImagePull", "message": "nope"}}
    assert dbg3["image"] == "busybox:3" and "containerID" not in dbg3
    # no ephemeral containers: no field at all
    assert "ephemeralContainerStatuses" not in compute_status(
        pod(ephemeral=False), runtime, {}, NOW, sandbox_ready=True
    )


def test_finished_pod_statuses_keep_reported_and_add_not_running() -> None:
    p = pod("Never")
    p["spec"]["ephemeralContainers"].append({"name": "late", "image": "busybox:2"})
    p["status"] = {
        "phase": "Succeeded",
        "ephemeralContainerStatuses": [{"name": "dbg", "state": {"terminated": {"exitCode": 0}}}],
    }
    statuses, new = finished_pod_statuses(p)
    assert new == ["late"]
    assert statuses[0] == {"name": "dbg", "state": {"terminated": {"exitCode": 0}}}
    w = statuses[1]["state"]["waiting"]
    assert w["reason"] == POD_NOT_RUNNING and "phase Succeeded" in w["message"]
    p["status"]["ephemeralContainerStatuses"] = statuses
    assert finished_pod_statuses(p)[1] == []  # reported once


def test_live_ephemeral_lists_only_live_debug_containers() -> None:
    runtime = [
        inst("app", ContainerState.RUNNING),
        inst("dbg", ContainerState.RUNNING),
        inst("dbg", ContainerState.EXITED, 1),
    ]
    assert live_ephemeral(pod(), runtime) == ["dbg-0"]
    assert live_ephemeral(pod(ephemeral=False), runtime) == []


# ------------------------------------------------------------------ workload identity, CRI mapping


@pytest.mark.parametrize("privileged", [False, True])
def test_workload_key_ignores_ephemeral_containers(privileged: bool) -> None:
    plain = pod(ephemeral=False)["spec"]
    debugged = pod()["spec"]
    debugged["ephemeralContainers"][0]["securityContext"] = {"privileged": privileged}
    assert make_key("ns", "ReplicaSet", "web", debugged) == make_key("ns", "ReplicaSet", "web", plain)
    # kubelet's HasPrivilegedContainer (the sandbox config) still counts them
    assert has_privileged_container(debugged) is privileged
    assert not has_privileged_container(debugged, ephemeral=False)
    spec = sandbox_spec({"metadata": {"uid": "u"}, "spec": debugged}, "k", [], "cluster.local")
    assert spec.images == ["app:1"]  # never prewarmed with the debug image


def test_cri_pid_namespace_target() -> None:
    c = ContainerSpec(
        name="dbg", image="busybox", is_ephemeral=True, target_container_id="abc", stdin=True, tty=True
    )
    ns = m.namespace_options(c)
    assert ns.pid == m.pb.TARGET and ns.target_id == "abc"
    assert ns.network == m.pb.POD and ns.ipc == m.pb.POD
    plain = m.namespace_options(ContainerSpec(name="app", image="busybox"))
    assert plain.pid == m.pb.CONTAINER and plain.target_id == ""
    from sandbox.backend import PodSandboxSpec

    cfg = m.container_config(
        PodSandboxSpec(uid="u", namespace="ns", name="p", workload_key="k", hostname="p"), c, 0
    )
    assert cfg.linux.security_context.namespace_options.pid == m.pb.TARGET
    assert cfg.linux.security_context.namespace_options.target_id == "abc"
    assert cfg.stdin and cfg.tty  # kubectl debug -it attaches to it


def test_stdin_once_reaches_the_cri_config() -> None:
    """kubectl run -i / attach: stdinOnce is passed to the runtime as kubelet does."""
    from provider.podspec import container_spec
    from sandbox.backend import PodSandboxSpec

    sandbox = PodSandboxSpec(uid="u", namespace="ns", name="p", workload_key="k", hostname="p")
    for once in (True, False):
        c = {"name": "app", "image": "busybox", "stdin": True, "stdinOnce": once, "tty": True}
        spec = container_spec(c, {"spec": {}}, [], [], False)
        assert spec.stdin and spec.stdin_once is once
        cfg = m.container_config(sandbox, spec, 0)
        assert cfg.stdin and cfg.stdin_once is once and cfg.tty
