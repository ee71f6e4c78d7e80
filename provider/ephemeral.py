"""Ephemeral containers (``kubectl debug``): which to start now, and why one cannot (pure).

kubelet's computePodActions: an ephemeral container of the spec that has no instance in the
runtime is started, even before the pod's initialization completes; one that has an instance is
never started again, whatever its state and the pod's restartPolicy. With
``targetContainerName`` it joins that container's process namespace: the ID of the target's
latest instance (kubelet's getTargetID); a target with no instance yet is a
``CreateContainerConfigError`` ("unable to find target container ..."), tried again next sync.

Where an ephemeral container cannot run, it waits with a reason that says why (and the pod gets
a Warning event), never silence: a backend that runs no processes, or a pod that has finished.
Ephemeral containers never count for the pod's phase, readiness or workload identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provider.status import Waiting, instances_by_name
from provider.sync import Start
from sandbox.backend import ContainerRuntimeState, ContainerState

JSON = dict[str, Any]

# Waiting reasons of an ephemeral container that cannot run here (kubelet has none: it either
# runs them or, for a finished pod, says nothing).
NOT_SUPPORTED = "EphemeralContainerNotSupported"
POD_NOT_RUNNING = "PodNotRunning"
CONFIG_ERROR = "CreateContainerConfigError"  # kubelet's ErrCreateContainerConfig


@dataclass
class EphemeralActions:
    start: list[Start] = field(default_factory=list)
    # created but never started (a warmlet that died between create and start): start them
    resume: list[str] = field(default_factory=list)
    # cannot be started now: why (each one a Warning event the first time)
    waiting: dict[str, Waiting] = field(default_factory=dict)


def ephemeral_specs(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("spec") or {}).get("ephemeralContainers") or [])


def not_supported_message(name: str, backend: str) -> str:
    return (
        f'ephemeral container "{name}" cannot run: this node\'s runtime backend ({backend}) runs no '
        "processes, so there is nothing to debug"
    )


def not_running_message(name: str, phase: str) -> str:
    return f'ephemeral container "{name}" cannot run: the pod is not running (phase {phase})'


def target_missing_message(target: str) -> str:
    return f"unable to find target container {target}"


def compute_ephemeral_actions(
    pod: Mapping[str, Any],
    containers: Sequence[ContainerRuntimeState],
    *,
    runs_processes: bool,
    backend: str = "",
) -> EphemeralActions:
    """What to do with the pod's ephemeral containers in this sync of a pod whose sandbox runs."""
    inst = instances_by_name(containers)
    out = EphemeralActions()
    for c in ephemeral_specs(pod):
        name = c["name"]
        runs = inst.get(name) or []
        if runs:
            if runs[-1].state == ContainerState.CREATED:
                out.resume.append(runs[-1].container_id)
            continue  # never restarted: running, exited or unknown, it stays as it is
        if not runs_processes:
            out.waiting[name] = Waiting(NOT_SUPPORTED, not_supported_message(name, backend))
            continue
        target = c.get("targetContainerName") or ""
        target_id = ""
        if target:
            target_runs = inst.get(target) or []
            if not target_runs:
                out.waiting[name] = Waiting(CONFIG_ERROR, target_missing_message(target))
                continue
            target_id = target_runs[-1].container_id
        out.start.append(Start(name, 0, False, is_ephemeral=True, target_id=target_id))
    return out


def finished_pod_statuses(pod: Mapping[str, Any]) -> tuple[list[JSON], list[str]]:
    """A finished pod's ephemeral container statuses: the reported ones as they are, a waiting
    ``PodNotRunning`` entry for each one added after the pod finished (kubelet leaves those
    without any status). Also the names of the entries new in this list (each one a Warning)."""
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "")
    have = {s.get("name"): s for s in status.get("ephemeralContainerStatuses") or []}
    out: list[JSON] = []
    new: list[str] = []
    for c in ephemeral_specs(pod):
        name = c["name"]
        old = have.get(name)
        if old is not None:
            out.append(dict(old))
            continue
        new.append(name)
        out.append(
            {
                "name": name,
                "image": c.get("image", ""),
                "imageID": "",
                "restartCount": 0,
                "ready": False,
                "lastState": {},
                "state": {
                    "waiting": {"reason": POD_NOT_RUNNING, "message": not_running_message(name, phase)}
                },
            }
        )
    return sorted(out, key=lambda s: str(s.get("name"))), new


def live_ephemeral(pod: Mapping[str, Any], containers: Sequence[ContainerRuntimeState]) -> list[str]:
    """IDs of the pod's ephemeral container instances still running (or created)."""
    names = {c["name"] for c in ephemeral_specs(pod)}
    live = (ContainerState.RUNNING, ContainerState.CREATED)
    return [c.container_id for c in containers if c.name in names and c.state in live]
