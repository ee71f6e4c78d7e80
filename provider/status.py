"""Pod status as a pure function of (pod, runtime containers, provider waiting info, clock).

Mirrors kubelet's status manager: ``getPhase``, the Initialized / ContainersReady / Ready
/ PodReadyToStartContainers / PodScheduled conditions, container states with lastState
and restartCount. A container's ``started`` and ``ready`` come from its startup and readiness
probes (given as plain data, see ``provider.probes``); a container without them is started
and ready once running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provider.qos import qos_class
from provider.timefmt import rfc3339
from sandbox.backend import ContainerRuntimeState, ContainerState

JSON = dict[str, Any]

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED})
OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


@dataclass(frozen=True)
class Waiting:
    """Why the provider has not (re)started a container: CrashLoopBackOff, ErrImagePull, ..."""

    reason: str
    message: str = ""


def is_sidecar(container: Mapping[str, Any]) -> bool:
    """A restartable init container (restartPolicy: Always on an init container)."""
    return container.get("restartPolicy") == "Always"


def instances_by_name(containers: Sequence[ContainerRuntimeState]) -> dict[str, list[ContainerRuntimeState]]:
    """Runtime instances grouped by container name, oldest attempt first."""
    out: dict[str, list[ContainerRuntimeState]] = {}
    for c in containers:
        out.setdefault(c.name, []).append(c)
    for lst in out.values():
        lst.sort(key=lambda c: (c.attempt, c.created_at or 0.0))
    return out


def container_id(c: ContainerRuntimeState, scheme: str) -> str:
    return c.container_id if "://" in c.container_id else f"{scheme}://{c.container_id}"


def _terminated(c: ContainerRuntimeState, scheme: str) -> JSON:
    code = c.exit_code if c.exit_code is not None else 0
    t: JSON = {
        "exitCode": code,
        "reason": c.reason or ("Completed" if code == 0 else "Error"),
        "containerID": container_id(c, scheme),
    }
    if c.message:
        t["message"] = c.message
    if c.started_at is not None:
        t["startedAt"] = rfc3339(c.started_at)
    if c.finished_at is not None:
        t["finishedAt"] = rfc3339(c.finished_at)
    return {"terminated": t}


def _waiting(w: Waiting) -> JSON:
    d: JSON = {"reason": w.reason}
    if w.message:
        d["message"] = w.message
    return {"waiting": d}


def container_status(
    spec: Mapping[str, Any],
    instances: Sequence[ContainerRuntimeState],
    waiting: Waiting | None,
    default_reason: str,
    scheme: str,
    probe: tuple[bool, bool] | None = None,
    regular_init: bool = False,
) -> JSON:
    """One entry of containerStatuses / initContainerStatuses.

    ``probe``: (started, ready) from the container's startup and readiness probes; None when it
    has neither (a running container is then started and ready). ``regular_init``: an init
    container that is not a sidecar; kubelet's prober reports it ``ready`` only once it has
    terminated with exit code 0 (never while it runs), ``started`` while it runs."""
    st: JSON = {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "restartCount": 0,
        "ready": False,
        "started": False,
        "lastState": {},
    }
    latest = instances[-1] if instances else None
    prev = instances[-2] if len(instances) > 1 else None
    if latest is None:
        st["state"] = _waiting(waiting or Waiting(default_reason))
        return st
    st["imageID"] = latest.image_ref
    st["containerID"] = container_id(latest, scheme)
    st["restartCount"] = latest.attempt
    if latest.state == ContainerState.RUNNING:
        st["state"] = {"running": {"startedAt": rfc3339(latest.started_at or latest.created_at or 0.0)}}
        started, ready = probe if probe is not None else (True, True)
        st["ready"] = started and ready
        st["started"] = started
        if prev is not None and prev.state == ContainerState.EXITED:
            st["lastState"] = _terminated(prev, scheme)
    elif latest.state == ContainerState.EXITED:
        if waiting is not None:
            st["state"] = _waiting(waiting)
            st["lastState"] = _terminated(latest, scheme)
        else:
            st["state"] = _terminated(latest, scheme)
            if prev is not None and prev.state == ContainerState.EXITED:
                st["lastState"] = _terminated(prev, scheme)
    else:
        st["state"] = _waiting(waiting or Waiting("ContainerCreating"))
        if prev is not None and prev.state == ContainerState.EXITED:
            st["lastState"] = _terminated(prev, scheme)
    if regular_init:
        st["ready"] = _state(st) == "terminated" and st["state"]["terminated"]["exitCode"] == 0
    return st


def ephemeral_container_status(
    spec: Mapping[str, Any],
    instances: Sequence[ContainerRuntimeState],
    waiting: Waiting | None,
    default_reason: str,
    scheme: str,
) -> JSON:
    """One entry of ephemeralContainerStatuses: the state, image, imageID, containerID of a
    regular container, restartCount 0 (never restarted); never ``ready`` and no ``started``
    (kubelet's prober reports neither for ephemeral containers)."""
    st = container_status(spec, instances, waiting, default_reason, scheme)
    st["ready"] = False
    st.pop("started", None)
    return st


def _state(st: Mapping[str, Any]) -> str:
    return next(iter(st.get("state") or {"waiting": {}}))


def _last_terminated(st: Mapping[str, Any]) -> JSON | None:
    t: JSON | None = (st.get("lastState") or {}).get("terminated")
    return t


def get_phase(
    pod: Mapping[str, Any], init_statuses: Sequence[JSON], statuses: Sequence[JSON], terminal: bool = False
) -> str:
    """kubelet's getPhase over the computed container statuses."""
    spec = pod.get("spec") or {}
    restart_policy = spec.get("restartPolicy", "Always")
    by_name = {s["name"]: s for s in [*init_statuses, *statuses]}
    pending_init = pending_sidecars = failed_init = 0
    for c in spec.get("initContainers") or []:
        st = by_name.get(c["name"])
        if st is None:
            if is_sidecar(c):
                pending_sidecars += 1
            else:
                pending_init += 1
            continue
        state = _state(st)
        if is_sidecar(c):
            if not (state == "running" and st.get("started")):
                pending_sidecars += 1
            continue
        if state == "running":
            pending_init += 1
        elif state == "terminated":
            if st["state"]["terminated"].get("exitCode", 0) != 0:
                failed_init += 1
        else:
            last = _last_terminated(st)
            if last is not None:
                if last.get("exitCode", 0) != 0:
                    failed_init += 1
            else:
                pending_init += 1

    unknown = running = waiting = stopped = succeeded = 0
    for c in spec.get("containers") or []:
        st = by_name.get(c["name"])
        if st is None:
            unknown += 1
            continue
        state = _state(st)
        if state == "running":
            running += 1
        elif state == "terminated":
            stopped += 1
            if st["state"]["terminated"].get("exitCode", 0) == 0:
                succeeded += 1
        elif _last_terminated(st) is not None:
            stopped += 1
        else:
            waiting += 1

    initialized = any(_state(by_name.get(c["name"], {})) != "waiting" for c in spec.get("containers") or [])
    if failed_init > 0 and restart_policy == "Never":
        return FAILED
    if pending_init > 0 or (pending_sidecars > 0 and not initialized):
        return PENDING
    if waiting > 0:
        return PENDING
    if running > 0 and unknown == 0:
        return RUNNING
    if running == 0 and stopped > 0 and unknown == 0:
        if terminal:
            return SUCCEEDED if stopped == succeeded else FAILED
        if restart_policy == "Always":
            return RUNNING
        if stopped == succeeded:
            return SUCCEEDED
        if restart_policy == "Never":
            return FAILED
        return RUNNING
    return PENDING


def _names(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"  # Go's %s of a []string


def _cond(ctype: str, ok: bool, reason: str = "", message: str = "") -> JSON:
    c: JSON = {"type": ctype, "status": "True" if ok else "False"}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def initialized_condition(
    pod: Mapping[str, Any], init_statuses: Sequence[JSON], statuses: Sequence[JSON], phase: str
) -> JSON:
    spec = pod.get("spec") or {}
    by_name = {s["name"]: s for s in init_statuses}
    unknown: list[str] = []
    incomplete: list[str] = []
    for c in spec.get("initContainers") or []:
        st = by_name.get(c["name"])
        if st is None:
            unknown.append(c["name"])
        elif is_sidecar(c):
            if not st.get("started"):
                incomplete.append(c["name"])
        elif not (_state(st) == "terminated" and st["state"]["terminated"].get("exitCode", 0) == 0):
            incomplete.append(c["name"])
    if phase == SUCCEEDED and not unknown:
        return _cond("Initialized", True, "PodCompleted")
    if any(_state(s) != "waiting" or _last_terminated(s) is not None for s in statuses):
        return _cond("Initialized", True)  # a regular container started: initialized before
    msgs = []
    if unknown:
        msgs.append(f"containers with unknown status: {_names(unknown)}")
    if incomplete:
        msgs.append(f"containers with incomplete status: {_names(incomplete)}")
    if msgs:
        return _cond("Initialized", False, "ContainersNotInitialized", ", ".join(msgs))
    return _cond("Initialized", True)


def containers_ready_condition(
    pod: Mapping[str, Any], init_statuses: Sequence[JSON], statuses: Sequence[JSON], phase: str, ctype: str
) -> JSON:
    """ContainersReady (ctype="ContainersReady") or, before readiness gates, Ready."""
    spec = pod.get("spec") or {}
    by_name = {s["name"]: s for s in [*init_statuses, *statuses]}
    unknown: list[str] = []
    unready: list[str] = []
    containers = [c for c in spec.get("initContainers") or [] if is_sidecar(c)] + list(
        spec.get("containers") or []
    )
    for c in containers:
        st = by_name.get(c["name"])
        if st is None:
            unknown.append(c["name"])
        elif not st.get("ready"):
            unready.append(c["name"])
    if phase == SUCCEEDED and not unknown:
        return _cond(ctype, False, "PodCompleted")
    if phase == FAILED:
        return _cond(ctype, False, "PodFailed")
    msgs = []
    if unknown:
        msgs.append(f"containers with unknown status: {_names(unknown)}")
    if unready:
        msgs.append(f"containers with unready status: {_names(unready)}")
    if msgs:
        return _cond(ctype, False, "ContainersNotReady", ", ".join(msgs))
    return _cond(ctype, True)


def ready_condition(pod: Mapping[str, Any], containers_ready: JSON) -> JSON:
    """Ready = ContainersReady and every readiness gate's condition is True."""
    ready = dict(containers_ready, type="Ready")
    if ready["status"] != "True":
        return ready
    conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    missing = [
        g["conditionType"]
        for g in (pod.get("spec") or {}).get("readinessGates") or []
        if conds.get(g.get("conditionType")) != "True"
    ]
    if missing:
        return _cond(
            "Ready",
            False,
            "ReadinessGatesNotReady",
            f"corresponding condition of pod readiness gate {missing[0]!r} does not exist or is not True",
        )
    return ready


def _with_times(new: JSON, old: Mapping[str, Any] | None, now: float) -> JSON:
    same = old is not None and old.get("status") == new["status"]
    new["lastProbeTime"] = None
    new["lastTransitionTime"] = (old or {}).get("lastTransitionTime") if same else rfc3339(now)
    if same and new["lastTransitionTime"] is None:
        new["lastTransitionTime"] = rfc3339(now)
    return new


def compute_status(
    pod: Mapping[str, Any],
    containers: Sequence[ContainerRuntimeState],
    waiting: Mapping[str, Waiting],
    now: float,
    *,
    sandbox_ready: bool,
    pod_ip: str = "",
    host_ip: str = "",
    scheme: str = "simulated",
    terminal: bool = False,
    probes: Mapping[str, tuple[bool, bool]] | None = None,
) -> JSON:
    """The status block warmlet would write for this pod now.

    ``probes``: (started, ready) by container name from the probe results (containers absent
    have no startup/readiness probe)."""
    probes = probes or {}
    spec = pod.get("spec") or {}
    old: Mapping[str, Any] = pod.get("status") or {}
    inst = instances_by_name(containers)
    init_specs = spec.get("initContainers") or []
    app_specs = spec.get("containers") or []

    init_statuses = [
        container_status(
            c,
            inst.get(c["name"], []),
            waiting.get(c["name"]),
            "PodInitializing",
            scheme,
            probes.get(c["name"]),
            regular_init=not is_sidecar(c),
        )
        for c in init_specs
    ]
    init_done = all(
        (
            s.get("started")
            if is_sidecar(c)
            else (_state(s) == "terminated" and s["state"]["terminated"].get("exitCode", 0) == 0)
        )
        for c, s in zip(init_specs, init_statuses, strict=True)
    )
    app_default = "ContainerCreating" if init_done else "PodInitializing"
    statuses = [
        container_status(
            c, inst.get(c["name"], []), waiting.get(c["name"]), app_default, scheme, probes.get(c["name"])
        )
        for c in app_specs
    ]

    ephemeral = [  # sorted by name, as kubelet's status manager sorts them
        ephemeral_container_status(c, inst.get(c["name"], []), waiting.get(c["name"]), app_default, scheme)
        for c in sorted(spec.get("ephemeralContainers") or [], key=lambda c: str(c["name"]))
    ]

    phase = get_phase(pod, init_statuses, statuses, terminal)
    if old.get("phase") in TERMINAL_PHASES:
        phase = old["phase"]  # a terminal phase never changes back

    cready = containers_ready_condition(pod, init_statuses, statuses, phase, "ContainersReady")
    new_conds = [
        _cond("PodReadyToStartContainers", sandbox_ready),
        initialized_condition(pod, init_statuses, statuses, phase),
        ready_condition(pod, cready),
        cready,
        _cond("PodScheduled", True),
    ]
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}
    conditions = [_with_times(c, old_conds.get(c["type"]), now) for c in new_conds]

    status: JSON = {"phase": phase, "conditions": conditions}
    host_ip = host_ip or old.get("hostIP", "")
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    pod_ip = pod_ip or old.get("podIP", "")
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    status["startTime"] = old.get("startTime") or rfc3339(now)
    if init_specs:
        status["initContainerStatuses"] = init_statuses
    status["containerStatuses"] = statuses
    if ephemeral:
        status["ephemeralContainerStatuses"] = ephemeral
    if not old.get("qosClass"):
        status["qosClass"] = qos_class(pod)
    return status


def rejected_status(pod: Mapping[str, Any], reason: str, message: str, now: float) -> JSON:
    """Status of a pod refused by admission on this node (kubelet's rejectPod)."""
    old = pod.get("status") or {}
    return {
        "phase": FAILED,
        "reason": reason,
        "message": message,
        "startTime": old.get("startTime") or rfc3339(now),
    }


def _normalize(v: Any) -> Any:
    if isinstance(v, dict):
        out = {k: _normalize(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, "", {}, [])}
    if isinstance(v, list):
        return [_normalize(x) for x in v]
    return v


def status_changed(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> bool:
    """Whether writing new_status would change anything (only the fields warmlet owns)."""
    old = dict(old_status or {})
    for key, value in new_status.items():
        if key == "conditions":
            mine = {c["type"]: c for c in old.get("conditions") or [] if c.get("type") in OWN_CONDITIONS}
            theirs = {c["type"]: c for c in value}
            if mine != theirs and _normalize(mine) != _normalize(theirs):
                return True
        elif (was := old.get(key)) != value and _normalize(was) != _normalize(value):
            return True  # (equal as they are: equal normalized; most fields of most syncs)
    return False
