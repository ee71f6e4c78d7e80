"""Pod phase, conditions and container states: kubelet's status manager, case by case."""

from __future__ import annotations

from typing import Any

import pytest

from provider.status import (
    Waiting,
    compute_status,
    container_status,
    get_phase,
    rejected_status,
    status_changed,
)
from provider.timefmt import rfc3339
from sandbox.backend import ContainerRuntimeState, ContainerState

NOW = 1_700_000_000.0


def pod(
    containers: list[str] = ["app"],  # noqa: B006
    init: list[str] | None = None,
    policy: str = "Always",
    sidecars: list[str] | None = None,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "restartPolicy": policy,
        "containers": [{"name": n, "image": f"img/{n}"} for n in containers],
        **spec,
    }
    inits = [{"name": n, "image": f"img/{n}"} for n in init or []]
    inits += [{"name": n, "image": f"img/{n}", "restartPolicy": "Always"} for n in sidecars or []]
    if inits:
        s["initContainers"] = inits
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": s, "status": status or {}}


def run(name: str, attempt: int = 0, started: float = NOW - 5) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"{name}-{attempt}",
        pod_uid="u1",
        name=name,
        attempt=attempt,
        state=ContainerState.RUNNING,
        image_ref=f"sha256:{name}",
        created_at=started,
        started_at=started,
    )


def exited(name: str, code: int = 0, attempt: int = 0, reason: str = "") -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"{name}-{attempt}",
        pod_uid="u1",
        name=name,
        attempt=attempt,
        state=ContainerState.EXITED,
        exit_code=code,
        created_at=NOW - 10 + attempt,
        started_at=NOW - 10 + attempt,
        finished_at=NOW - 9 + attempt,
        reason=reason,
    )


def created(name: str, attempt: int = 0) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"{name}-{attempt}",
        pod_uid="u1",
        name=name,
        attempt=attempt,
        state=ContainerState.CREATED,
        created_at=NOW - 1,
    )


def st(
    p: dict[str, Any], cs: list[ContainerRuntimeState], waiting: dict[str, Waiting] | None = None, **kw: Any
) -> dict[str, Any]:
    kw.setdefault("sandbox_ready", True)
    return compute_status(p, cs, waiting or {}, NOW, **kw)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


# ---- phase -------------------------------------------------------------------------------------


def test_no_containers_yet_is_pending_container_creating() -> None:
    s = st(pod(), [])
    assert s["phase"] == "Pending"
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert s["containerStatuses"][0]["ready"] is False


def test_running_container_is_running_and_ready() -> None:
    s = st(pod(), [run("app")])
    assert s["phase"] == "Running"
    c = s["containerStatuses"][0]
    assert c["ready"] and c["started"]
    assert c["state"] == {"running": {"startedAt": rfc3339(NOW - 5)}}
    assert c["containerID"] == "simulated://app-0"
    assert c["imageID"] == "sha256:app"
    assert c["image"] == "img/app"
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "ContainersReady")["status"] == "True"


def test_container_id_scheme() -> None:
    s = st(pod(), [run("app")], scheme="containerd")
    assert s["containerStatuses"][0]["containerID"] == "containerd://app-0"


def test_one_of_two_running_is_pending() -> None:
    s = st(pod(["a", "b"]), [run("a")])
    assert s["phase"] == "Pending"
    r = cond(s, "Ready")
    assert r["status"] == "False" and r["reason"] == "ContainersNotReady"
    assert r["message"] == "containers with unready status: [b]"


def test_created_not_started_is_waiting_container_creating() -> None:
    s = st(pod(), [created("app")])
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert s["phase"] == "Pending"


@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [
        ("Never", 0, "Succeeded"),
        ("Never", 1, "Failed"),
        ("OnFailure", 0, "Succeeded"),
        ("OnFailure", 1, "Running"),
        ("Always", 0, "Running"),
        ("Always", 1, "Running"),
    ],
)
def test_exited_phase_by_restart_policy(policy: str, code: int, phase: str) -> None:
    assert st(pod(policy=policy), [exited("app", code)])["phase"] == phase


def test_terminal_flag_forces_terminal_phase() -> None:
    assert st(pod(policy="Always"), [exited("app", 0)], terminal=True)["phase"] == "Succeeded"
    assert st(pod(policy="Always"), [exited("app", 2)], terminal=True)["phase"] == "Failed"


def test_mixed_exit_codes_never_is_failed() -> None:
    assert st(pod(["a", "b"], policy="Never"), [exited("a", 0), exited("b", 3)])["phase"] == "Failed"


def test_one_running_one_exited_is_running() -> None:
    assert st(pod(["a", "b"], policy="Never"), [run("a"), exited("b", 0)])["phase"] == "Running"


def test_terminal_phase_is_sticky() -> None:
    s = st(pod(policy="Never", status={"phase": "Succeeded"}), [])
    assert s["phase"] == "Succeeded"


def test_succeeded_pod_conditions_pod_completed() -> None:
    s = st(pod(policy="Never"), [exited("app", 0)], sandbox_ready=False)
    assert s["phase"] == "Succeeded"
    assert cond(s, "Ready") == {**cond(s, "Ready"), "status": "False", "reason": "PodCompleted"}
    assert cond(s, "ContainersReady")["reason"] == "PodCompleted"
    assert cond(s, "Initialized")["status"] == "True"
    assert cond(s, "PodReadyToStartContainers")["status"] == "False"
    t = s["containerStatuses"][0]["state"]["terminated"]
    assert t["exitCode"] == 0 and t["reason"] == "Completed"
    assert t["startedAt"] == rfc3339(NOW - 10) and t["finishedAt"] == rfc3339(NOW - 9)


def test_failed_pod_conditions_pod_failed() -> None:
    s = st(pod(policy="Never"), [exited("app", 1)])
    assert s["phase"] == "Failed"
    assert cond(s, "Ready")["reason"] == "PodFailed"
    assert s["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_runtime_reason_is_kept_oomkilled() -> None:
    s = st(pod(policy="Never"), [exited("app", 137, reason="OOMKilled")])
    assert s["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    assert s["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


# ---- waiting reasons from the provider ---------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "CreateContainerConfigError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerError",
    ],
)
def test_provider_waiting_reason_before_first_start(reason: str) -> None:
    s = st(pod(), [], {"app": Waiting(reason, "details")})
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": reason, "message": "details"}}
    assert s["containerStatuses"][0]["lastState"] == {}
    assert s["phase"] == "Pending"


def test_crashloop_backoff_shows_last_state_and_restart_count() -> None:
    s = st(
        pod(),
        [exited("app", 1, 0), exited("app", 1, 1)],
        {"app": Waiting("CrashLoopBackOff", "back-off 20s")},
    )
    c = s["containerStatuses"][0]
    assert c["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    assert c["lastState"]["terminated"]["exitCode"] == 1
    assert c["restartCount"] == 1
    assert s["phase"] == "Running"  # kubelet: restartable containers that stopped keep the pod Running
    assert cond(s, "Ready")["status"] == "False"


def test_crashloop_on_never_started_before_is_pending() -> None:
    s = st(pod(["a", "b"]), [run("a")], {"b": Waiting("CrashLoopBackOff")})
    assert s["phase"] == "Pending"


def test_restarted_running_container_has_last_state() -> None:
    s = st(pod(), [exited("app", 2, 0), run("app", 1)])
    c = s["containerStatuses"][0]
    assert c["restartCount"] == 1
    assert c["lastState"]["terminated"]["exitCode"] == 2
    assert "running" in c["state"]


def test_container_status_ordering_uses_attempt() -> None:
    c = container_status(
        {"name": "app", "image": "x"}, [exited("app", 1, 0), exited("app", 0, 1)], None, "X", "s"
    )
    assert c["state"]["terminated"]["exitCode"] == 0
    assert c["lastState"]["terminated"]["exitCode"] == 1


# ---- init containers ---------------------------------------------------------------------------


def test_init_pending_app_waits_pod_initializing() -> None:
    s = st(pod(init=["i1", "i2"]), [])
    assert s["phase"] == "Pending"
    assert [c["state"]["waiting"]["reason"] for c in s["initContainerStatuses"]] == ["PodInitializing"] * 2
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    i = cond(s, "Initialized")
    assert i["status"] == "False" and i["reason"] == "ContainersNotInitialized"
    assert i["message"] == "containers with incomplete status: [i1 i2]"


def test_init_running_is_pending() -> None:
    s = st(pod(init=["i1"]), [run("i1")])
    assert s["phase"] == "Pending"
    assert cond(s, "Initialized")["status"] == "False"


def test_init_done_app_creating() -> None:
    s = st(pod(init=["i1"]), [exited("i1", 0)])
    assert cond(s, "Initialized")["status"] == "True"
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert s["phase"] == "Pending"


def test_init_done_app_running() -> None:
    s = st(pod(init=["i1"]), [exited("i1", 0), run("app")])
    assert s["phase"] == "Running"
    assert cond(s, "Initialized")["status"] == "True"
    assert s["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_init_failed_never_is_failed() -> None:
    s = st(pod(init=["i1"], policy="Never"), [exited("i1", 1)])
    assert s["phase"] == "Failed"


def test_init_failed_onfailure_backoff_is_pending() -> None:
    s = st(pod(init=["i1"], policy="OnFailure"), [exited("i1", 1)], {"i1": Waiting("CrashLoopBackOff")})
    assert s["phase"] == "Pending"
    assert s["initContainerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"


def test_sidecar_running_app_running() -> None:
    s = st(pod(sidecars=["side"]), [run("side"), run("app")])
    assert s["phase"] == "Running"
    assert cond(s, "Initialized")["status"] == "True"
    assert cond(s, "Ready")["status"] == "True"


def test_sidecar_not_started_is_pending() -> None:
    s = st(pod(sidecars=["side"]), [])
    assert s["phase"] == "Pending"
    assert "side" in cond(s, "Initialized")["message"]


def test_sidecar_unready_makes_pod_unready() -> None:
    s = st(pod(sidecars=["side"]), [exited("side", 1), run("app")], {"side": Waiting("CrashLoopBackOff")})
    assert cond(s, "ContainersReady")["message"] == "containers with unready status: [side]"


def test_app_started_pod_stays_initialized() -> None:
    # Init statuses were garbage collected but the app container ran: still initialized.
    s = st(pod(init=["i1"]), [run("app")])
    assert cond(s, "Initialized")["status"] == "True"


# ---- conditions & fields -----------------------------------------------------------------------


def test_all_conditions_present_in_order() -> None:
    s = st(pod(), [run("app")])
    assert [c["type"] for c in s["conditions"]] == [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    assert all(c["lastTransitionTime"] == rfc3339(NOW) for c in s["conditions"])
    assert cond(s, "PodScheduled")["status"] == "True"


def test_sandbox_not_ready_condition() -> None:
    assert cond(st(pod(), [], sandbox_ready=False), "PodReadyToStartContainers")["status"] == "False"


def test_transition_time_kept_when_status_unchanged() -> None:
    old = {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    s = st(pod(status=old), [run("app")])
    assert cond(s, "Ready")["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    old["conditions"][0]["status"] = "False"
    s = st(pod(status=old), [run("app")])
    assert cond(s, "Ready")["lastTransitionTime"] == rfc3339(NOW)


def test_readiness_gate_not_true_makes_pod_unready() -> None:
    p = pod(readinessGates=[{"conditionType": "example.com/gate"}])
    s = st(p, [run("app")])
    assert cond(s, "Ready")["status"] == "False"
    assert cond(s, "Ready")["reason"] == "ReadinessGatesNotReady"
    assert cond(s, "ContainersReady")["status"] == "True"
    p["status"]["conditions"] = [{"type": "example.com/gate", "status": "True"}]
    assert cond(st(p, [run("app")]), "Ready")["status"] == "True"


def test_ips_and_start_time() -> None:
    s = st(pod(), [run("app")], pod_ip="10.1.0.5", host_ip="192.168.1.2")
    assert s["podIP"] == "10.1.0.5" and s["podIPs"] == [{"ip": "10.1.0.5"}]
    assert s["hostIP"] == "192.168.1.2" and s["hostIPs"] == [{"ip": "192.168.1.2"}]
    assert s["startTime"] == rfc3339(NOW)
    s2 = st(pod(status={"startTime": "2020-01-01T00:00:00Z", "podIP": "10.9.9.9"}), [])
    assert s2["startTime"] == "2020-01-01T00:00:00Z"
    assert s2["podIP"] == "10.9.9.9"  # an IP is kept once the sandbox is gone


def test_qos_class_only_when_missing() -> None:
    assert st(pod(), [])["qosClass"] == "BestEffort"
    assert "qosClass" not in st(pod(status={"qosClass": "BestEffort"}), [])


def test_no_init_statuses_without_init_containers() -> None:
    assert "initContainerStatuses" not in st(pod(), [])


def test_rejected_status() -> None:
    s = rejected_status(pod(), "UnsupportedOnVirtualNode", "no hostPath", NOW)
    assert s == {
        "phase": "Failed",
        "reason": "UnsupportedOnVirtualNode",
        "message": "no hostPath",
        "startTime": rfc3339(NOW),
    }


def test_get_phase_unknown_container_is_pending() -> None:
    assert get_phase(pod(["a", "b"]), [], [{"name": "a", "state": {"running": {}}}]) == "Pending"


# ---- change detection --------------------------------------------------------------------------


def test_status_changed_detects_only_real_changes() -> None:
    p = pod()
    s = st(p, [run("app")])
    assert status_changed(p["status"], s)
    # what the API server echoes back: same content plus fields we do not own and nulls
    echoed = {
        **s,
        "conditions": [*s["conditions"], {"type": "DisruptionTarget", "status": "True"}],
        "nominatedNodeName": None,
    }
    echoed["containerStatuses"] = [{**s["containerStatuses"][0], "volumeMounts": None}]
    assert not status_changed(echoed, s)
    s2 = st(p, [exited("app", 1)])
    assert status_changed(echoed, s2)


def test_status_changed_on_condition_flip() -> None:
    p = pod()
    s = st(p, [run("app")])
    s_unready = st(p, [])
    assert status_changed(s, s_unready)
