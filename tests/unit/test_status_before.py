"""The status kubelet writes before a sync acts (provider/status_before.py), and the init
container ``ready``/``started`` kubelet's prober reports (provider/status.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provider.status import Waiting, compute_status
from provider.status_before import reported_waiting, terminal_pending, unreported_exits
from sandbox.backend import ContainerRuntimeState, ContainerState

NOW = 1_700_000_000.0
S = "containerd"


def inst(name: str, attempt: int, state: ContainerState, code: int | None = None) -> ContainerRuntimeState:
    return ContainerRuntimeState(
        container_id=f"{name}-{attempt}",
        pod_uid="u",
        name=name,
        state=state,
        attempt=attempt,
        exit_code=code,
        started_at=NOW - 10 + attempt,
        created_at=NOW - 11 + attempt,
        finished_at=NOW - 9 + attempt if state == ContainerState.EXITED else None,
    )


def pod(**spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "i"}])
    return {"metadata": {"uid": "u"}, "spec": spec, "status": {}}


def status_of(containers: list[ContainerRuntimeState], waiting: dict[str, Waiting] | None = None) -> Any:
    return compute_status(pod(), containers, waiting or {}, NOW, sandbox_ready=True, scheme=S)


# -- exits not reported yet ------------------------------------------------------------------------


def test_an_exit_the_last_status_showed_running_is_unreported() -> None:
    last = status_of([inst("app", 0, ContainerState.RUNNING)])
    now = [inst("app", 0, ContainerState.EXITED, 1)]
    assert unreported_exits(last, now, ["app"], S) == ["app"]
    assert unreported_exits(last, now, [], S) == []  # not restarted/backed off by this sync
    assert unreported_exits(None, now, ["app"], S) == ["app"]  # nothing written yet


def test_an_exit_already_shown_terminated_or_as_last_state_is_reported() -> None:
    exited = [inst("app", 0, ContainerState.EXITED, 1)]
    assert unreported_exits(status_of(exited), exited, ["app"], S) == []
    backoff = status_of(exited, {"app": Waiting("CrashLoopBackOff", "m")})
    assert unreported_exits(backoff, exited, ["app"], S) == []


def test_a_running_container_killed_by_this_sync_is_not_an_exit_to_report() -> None:
    running = [inst("app", 0, ContainerState.RUNNING)]
    assert unreported_exits(status_of(running), running, ["app"], S) == []


def test_reported_waiting_kept_until_the_next_start() -> None:
    exited = [inst("app", 0, ContainerState.EXITED, 1)]
    last = status_of(exited, {"app": Waiting("CrashLoopBackOff", "back-off")})
    assert reported_waiting(last, exited, S) == {"app": Waiting("CrashLoopBackOff", "back-off")}
    # a newer instance ran since: that waiting reason is history
    again = [*exited, inst("app", 1, ContainerState.EXITED, 1)]
    assert reported_waiting(last, again, S) == {}
    # a container that never ran keeps e.g. ErrImagePull; default reasons are not kept
    assert reported_waiting(status_of([], {"app": Waiting("ErrImagePull")}), [], S) == {
        "app": Waiting("ErrImagePull")
    }
    assert reported_waiting(status_of([]), [], S) == {}


@given(st.lists(st.sampled_from([ContainerState.EXITED, ContainerState.RUNNING]), min_size=1, max_size=4))
def test_the_exit_of_the_latest_instance_is_unreported_iff_it_exited_after_the_last_status(
    states: list[ContainerState],
) -> None:
    """Whatever the history: after writing a status of the current runtime, nothing is
    unreported; if the latest then exits, exactly that exit is."""
    runs = [inst("app", i, ContainerState.EXITED, 1) for i in range(len(states) - 1)]
    runs.append(inst("app", len(states) - 1, states[-1], 1 if states[-1] == ContainerState.EXITED else None))
    last = status_of(runs)
    assert unreported_exits(last, runs, ["app"], S) == []
    if states[-1] == ContainerState.RUNNING:
        exited = [*runs[:-1], inst("app", len(states) - 1, ContainerState.EXITED, 1)]
        assert unreported_exits(last, exited, ["app"], S) == ["app"]


# -- a terminal decision while containers may still run ----------------------------------------


def test_terminal_pending_keeps_the_last_phase_reason_and_message() -> None:
    decided = {
        "phase": "Failed",
        "reason": "DeadlineExceeded",
        "message": "m",
        "conditions": [{"type": "Ready"}],
    }
    out = terminal_pending(decided, {"phase": "Running"})
    assert out == {"phase": "Running", "conditions": [{"type": "Ready"}]}
    assert terminal_pending(decided, None)["phase"] == "Pending"
    assert terminal_pending(decided, {"phase": "Running", "reason": "r"})["reason"] == "r"


# -- init containers: ready and started as kubelet's prober reports them ---------------------------


def init_pod(sidecar: bool = False) -> dict[str, Any]:
    init: dict[str, Any] = {"name": "init", "image": "i"}
    if sidecar:
        init["restartPolicy"] = "Always"
    return pod(initContainers=[init])


def init_status(p: dict[str, Any], *runs: ContainerRuntimeState) -> Any:
    s = compute_status(p, list(runs), {}, NOW, sandbox_ready=True, scheme=S)
    return s["initContainerStatuses"][0]


def test_a_running_init_container_is_started_but_not_ready() -> None:
    s = init_status(init_pod(), inst("init", 0, ContainerState.RUNNING))
    assert (s["started"], s["ready"]) == (True, False)


def test_an_init_container_is_ready_once_exited_zero() -> None:
    ok = init_status(init_pod(), inst("init", 0, ContainerState.EXITED, 0))
    assert (ok["started"], ok["ready"]) == (False, True)
    failed = init_status(init_pod(), inst("init", 0, ContainerState.EXITED, 1))
    assert (failed["started"], failed["ready"]) == (False, False)


def test_a_running_sidecar_is_ready_like_a_regular_container() -> None:
    s = init_status(init_pod(sidecar=True), inst("init", 0, ContainerState.RUNNING))
    assert (s["started"], s["ready"]) == (True, True)
