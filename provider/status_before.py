"""The status kubelet writes BEFORE a sync acts: a container's exit is visible before its restart.

kubelet's SyncPod generates the pod status from the runtime at its START, then restarts what
exited. So a container that exited is first reported ``terminated`` (``Error``, exit code), and
only the next status shows it running again (or waiting in ``CrashLoopBackOff``). warmlet
computes its status after acting; to show the same sequence, the pod worker writes the status
"before" once more, only when the sync restarts (or backs off) a container whose exit no status
has reported yet. The common start path never gets this extra write.

kubelet remembers why a container waits (its ``reasonCache``: ``CrashLoopBackOff``,
``ErrImagePull``, ...) until the next start succeeds; warmlet reads the same from the status it
last wrote (:func:`reported_waiting`). Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from provider.status import Waiting, container_id, instances_by_name
from sandbox.backend import ContainerRuntimeState, ContainerState

JSON = dict[str, Any]
DEFAULT_WAITING = frozenset({"ContainerCreating", "PodInitializing"})


def _statuses(last: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    st = last or {}
    return {
        s.get("name", ""): s
        for s in [
            *(st.get("initContainerStatuses") or []),
            *(st.get("containerStatuses") or []),
            *(st.get("ephemeralContainerStatuses") or []),
        ]
    }


def _ids(s: Mapping[str, Any]) -> tuple[str, str]:
    """(the terminated state's containerID, the lastState's terminated containerID)."""
    state = (s.get("state") or {}).get("terminated") or {}
    last = (s.get("lastState") or {}).get("terminated") or {}
    return str(state.get("containerID", "")), str(last.get("containerID", ""))


def exit_reported(last: Mapping[str, Any] | None, instance: ContainerRuntimeState, scheme: str) -> bool:
    """Whether the status ``last`` already shows this exited instance (as its terminated state, or
    as the lastState of a waiting/restarted container)."""
    s = _statuses(last).get(instance.name)
    if s is None:
        return False
    return container_id(instance, scheme) in _ids(s)


def unreported_exits(
    last: Mapping[str, Any] | None,
    containers: Sequence[ContainerRuntimeState],
    acting_on: Iterable[str],
    scheme: str,
) -> list[str]:
    """The containers of ``acting_on`` (restarted or backed off by this sync) whose latest
    instance has exited without any written status showing it: kubelet's status at the start of
    its sync would report them ``terminated``."""
    inst = instances_by_name(containers)
    out: list[str] = []
    for name in acting_on:
        runs = inst.get(name) or []
        latest = runs[-1] if runs else None
        if (
            latest is not None
            and latest.state == ContainerState.EXITED
            and not exit_reported(last, latest, scheme)
        ):
            out.append(name)
    return out


def reported_waiting(
    last: Mapping[str, Any] | None, containers: Sequence[ContainerRuntimeState], scheme: str
) -> dict[str, Waiting]:
    """Why each container was last reported waiting (kubelet's reasonCache), for the containers
    still in that same situation: never started since (no instance, or the same exited instance
    as the reported lastState). Default reasons (ContainerCreating, PodInitializing) are not kept:
    they follow from the runtime alone."""
    inst = instances_by_name(containers)
    out: dict[str, Waiting] = {}
    for name, s in _statuses(last).items():
        waiting = (s.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if not reason or reason in DEFAULT_WAITING:
            continue
        runs = inst.get(name) or []
        latest = runs[-1] if runs else None
        if latest is None or (
            latest.state == ContainerState.EXITED and container_id(latest, scheme) == _ids(s)[1]
        ):
            out[name] = Waiting(reason, waiting.get("message") or "")
    return out


def terminal_pending(status: Mapping[str, Any], last: Mapping[str, Any] | None) -> JSON:
    """The status of a pod decided terminal (e.g. past its activeDeadlineSeconds) while its
    containers may still run: the conditions already say so (``Ready=False``, ``PodFailed``), the
    phase, reason and message stay as last reported until the containers are stopped (kubelet's
    status manager never reports a terminal phase while a container could run)."""
    old = last or {}
    out = {k: v for k, v in status.items() if k not in ("reason", "message")}
    out["phase"] = old.get("phase") or "Pending"
    for key in ("reason", "message"):
        if old.get(key):
            out[key] = old[key]
    return out
