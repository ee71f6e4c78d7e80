"""kubelet's computePodActions, pure: which containers to start now, which wait in back-off.

Given the pod spec, the runtime's container instances and the restart back-off, it
decides the next step of one pod. It only reads the back-off: the restarts it decides are
returned as back-off keys to advance (:attr:`PodActions.backoff_steps`), which the caller
records with :func:`apply_backoff`. All I/O happens in the pod worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provider.backoff import Backoff
from provider.status import Waiting, instances_by_name, is_sidecar
from sandbox.backend import ContainerRuntimeState, ContainerState

RESTART_RESET_SECONDS = 600.0  # a container that ran this long starts a fresh back-off


@dataclass(frozen=True)
class Start:
    name: str
    attempt: int
    is_init: bool
    # an ephemeral container (kubectl debug): never restarted; ``target_id`` is the runtime ID of
    # the container whose process namespace it joins ('' for none)
    is_ephemeral: bool = False
    target_id: str = ""


@dataclass(frozen=True)
class BackoffStep:
    """A restart decided now: the caller advances the key's back-off (after resetting it first
    when the previous run lasted long enough to start a fresh back-off)."""

    key: str
    reset: bool = False


@dataclass
class PodActions:
    start: list[Start] = field(default_factory=list)
    # Containers that should restart but are in back-off: name -> (seconds left, CrashLoopBackOff).
    backoff: dict[str, tuple[float, Waiting]] = field(default_factory=dict)
    # Containers created but never started (warmlet died in between): start them, don't recreate.
    resume: list[str] = field(default_factory=list)
    # Containers in the runtime's "unknown" state: killed before their next attempt starts (like
    # kubelet, so that two instances never run side by side).
    kill: list[str] = field(default_factory=list)
    # Back-off keys of the restarts in ``start``: recorded by the caller (apply_backoff).
    backoff_steps: list[BackoffStep] = field(default_factory=list)
    init_failed: bool = False  # a regular init container failed and restartPolicy is Never
    terminal: bool = False  # nothing will ever run again in this pod

    @property
    def next_check(self) -> float | None:
        return min((s for s, _ in self.backoff.values()), default=None)


def backoff_key(uid: str, name: str) -> str:
    return f"{uid}/{name}"


def should_restart(restart_policy: str, exit_code: int | None) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return (exit_code or 0) != 0
    return False


def crashloop_message(delay: float, pod: Mapping[str, Any], name: str) -> str:
    md = pod.get("metadata") or {}
    return (
        f"back-off {int(delay)}s restarting failed container={name} "
        f"pod={md.get('name')}_{md.get('namespace')}({md.get('uid')})"
    )


def _restart(
    pod: Mapping[str, Any],
    name: str,
    latest: ContainerRuntimeState,
    is_init: bool,
    backoff: Backoff,
    now: float,
    actions: PodActions,
) -> None:
    uid = (pod.get("metadata") or {}).get("uid", "")
    key = backoff_key(uid, name)
    finished = latest.finished_at if latest.finished_at is not None else now
    started = latest.started_at if latest.started_at is not None else finished
    fresh = finished - started >= RESTART_RESET_SECONDS  # ran long enough: a fresh back-off
    left = 0.0 if fresh else backoff.peek_remaining(key, finished, now)
    if left > 0:
        msg = crashloop_message(backoff.delay(key), pod, name)
        actions.backoff[name] = (left, Waiting("CrashLoopBackOff", msg))
    else:
        # the restart happens now; the caller records it, so the next one waits longer
        actions.backoff_steps.append(BackoffStep(key, reset=fresh))
        actions.start.append(Start(name, latest.attempt + 1, is_init))


def _replace_unknown(latest: ContainerRuntimeState, is_init: bool, actions: PodActions) -> None:
    """kubelet: a container in unknown state is always restarted, after being killed."""
    actions.kill.append(latest.container_id)
    actions.start.append(Start(latest.name, latest.attempt + 1, is_init))


def compute_pod_actions(
    pod: Mapping[str, Any],
    containers: Sequence[ContainerRuntimeState],
    backoff: Backoff,
    now: float,
    killed: frozenset[str] = frozenset(),
) -> PodActions:
    """Init containers in order (sidecars must be running before the next), then app containers.

    ``killed``: app containers this sync killed for a failed liveness/startup probe; kubelet
    restarts them in the same sync whatever their exit code, unless restartPolicy is Never.
    Pure: ``backoff`` is only read; record the decided restarts with :func:`apply_backoff`.
    """
    spec = pod.get("spec") or {}
    policy = spec.get("restartPolicy", "Always")
    inst = instances_by_name(containers)
    actions = PodActions()
    app_specs: Sequence[Mapping[str, Any]] = spec.get("containers") or []
    app_started = any(inst.get(c["name"]) for c in app_specs)

    for c in spec.get("initContainers") or []:
        runs = inst.get(c["name"], [])
        latest = runs[-1] if runs else None
        if is_sidecar(c):
            if latest is None:
                actions.start.append(Start(c["name"], 0, True))
                return actions
            if latest.state == ContainerState.EXITED:
                if _all_app_done(app_specs, inst, policy):
                    continue
                _restart(pod, c["name"], latest, True, backoff, now, actions)
                if not app_started:
                    return actions
            elif latest.state == ContainerState.CREATED:
                actions.resume.append(latest.container_id)
                if not app_started:
                    return actions
            elif latest.state == ContainerState.UNKNOWN:
                _replace_unknown(latest, True, actions)
                if not app_started:
                    return actions
            elif latest.state != ContainerState.RUNNING and not app_started:
                return actions
            continue
        if app_started:
            continue  # init already completed once; never re-run init containers
        if latest is None:
            actions.start.append(Start(c["name"], 0, True))
            return actions
        if latest.state == ContainerState.CREATED:
            actions.resume.append(latest.container_id)
            return actions
        if latest.state == ContainerState.UNKNOWN:
            _replace_unknown(latest, True, actions)
            return actions
        if latest.state != ContainerState.EXITED:
            return actions  # still running
        if (latest.exit_code or 0) == 0:
            continue
        if policy == "Never":
            actions.init_failed = True
            actions.terminal = True
            return actions
        _restart(pod, c["name"], latest, True, backoff, now, actions)
        return actions

    for c in app_specs:
        runs = inst.get(c["name"], [])
        latest = runs[-1] if runs else None
        if latest is None:
            actions.start.append(Start(c["name"], 0, False))
        elif latest.state == ContainerState.CREATED:
            actions.resume.append(latest.container_id)
        elif latest.state == ContainerState.UNKNOWN:
            _replace_unknown(latest, False, actions)
        elif latest.state == ContainerState.EXITED and (
            should_restart(policy, latest.exit_code) or (c["name"] in killed and policy != "Never")
        ):
            _restart(pod, c["name"], latest, False, backoff, now, actions)
    actions.terminal = _all_app_done(app_specs, inst, policy)
    return actions


def apply_backoff(actions: PodActions, backoff: Backoff, now: float) -> None:
    """Record the restarts ``compute_pod_actions`` decided: each one lengthens the next wait."""
    for step in actions.backoff_steps:
        if step.reset:
            backoff.reset(step.key)
        backoff.next(step.key, now)


def is_finished(pod: Mapping[str, Any], containers: Sequence[ContainerRuntimeState]) -> bool:
    """Nothing will ever run again in this pod."""
    spec = pod.get("spec") or {}
    policy = spec.get("restartPolicy", "Always")
    inst = instances_by_name(containers)
    app_specs = spec.get("containers") or []
    if policy == "Never" and not any(inst.get(c["name"]) for c in app_specs):
        for c in spec.get("initContainers") or []:
            runs = inst.get(c["name"], [])
            if not is_sidecar(c) and runs and runs[-1].state == ContainerState.EXITED and runs[-1].exit_code:
                return True
    return _all_app_done(app_specs, inst, policy)


def _all_app_done(
    app_specs: Sequence[Mapping[str, Any]], inst: Mapping[str, Sequence[ContainerRuntimeState]], policy: str
) -> bool:
    """Every app container exited and none will be restarted."""
    if not app_specs:
        return False
    for c in app_specs:
        runs = inst.get(c["name"], [])
        if not runs or runs[-1].state != ContainerState.EXITED:
            return False
        if should_restart(policy, runs[-1].exit_code):
            return False
    return True
