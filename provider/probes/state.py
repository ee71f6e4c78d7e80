"""One probe's state machine (kubelet's prober worker ``doProbe``), pure.

A probe of one kind for one container of one pod goes through two steps each period:

- :func:`observe` looks at the container before probing: a new container ID starts fresh (the
  kind's initial result, off hold), a container not running reads as Failure, nothing is probed
  during ``initialDelaySeconds`` (counted from the container's start), liveness/readiness wait for
  the container to be started and startup stops once it is, a held probe waits for a new container;
- :func:`record` counts a probe's outcome against the thresholds; liveness Failure and any startup
  result put the probe on hold until the container is replaced.

A probe that *errored* (kubelet: ``err != nil``) is not recorded at all: its result stays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from provider.probes.spec import ProbeKind


class Result(Enum):
    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILURE = "failure"


INITIAL = {
    ProbeKind.READINESS: Result.FAILURE,
    ProbeKind.LIVENESS: Result.SUCCESS,
    ProbeKind.STARTUP: Result.UNKNOWN,
}


class Step(Enum):
    PROBE = "probe"  # run the handler now, then record its outcome
    WAIT = "wait"  # nothing to do this period
    STOP = "stop"  # the probe is over for this pod (pod terminal, deleted, container done for good)


@dataclass(frozen=True)
class Observation:
    """What the pod status says about the probed container at this tick."""

    container_id: str  # "" = no container yet
    running: bool
    started_at: float | None  # wall seconds
    started: bool  # the container's ``started`` (startup probe passed, or none)
    terminated: bool = False
    will_restart: bool = True  # a terminated container will be restarted (restartPolicy)
    pod_terminal: bool = False
    deleting: bool = False
    # Running since before the probe manager started (warmlet restarted): kubelet keeps no
    # initial result for it, so its previous readiness stands until a probe decides.
    predates_manager: bool = False


@dataclass(frozen=True)
class ProbeState:
    container_id: str = ""
    result: Result | None = None  # None: no result set for this container (kubelet: not found)
    last: Result | None = None  # the last outcome probed
    run: int = 0  # how many times in a row ``last`` was probed
    on_hold: bool = False


def observe(
    s: ProbeState, kind: ProbeKind, obs: Observation, now: float, initial_delay: int
) -> tuple[ProbeState, Step]:
    if obs.pod_terminal:
        return s, Step.STOP
    if not obs.container_id:
        return s, Step.WAIT
    if obs.container_id != s.container_id:
        initial = None if obs.running and obs.predates_manager else INITIAL[kind]
        s = ProbeState(container_id=obs.container_id, result=initial, last=s.last, run=s.run)
    if s.on_hold:
        return s, Step.WAIT
    if not obs.running:
        s = replace(s, result=Result.FAILURE)
        if obs.terminated and not obs.will_restart:
            return s, Step.STOP
        return s, Step.WAIT
    if obs.deleting and kind in (ProbeKind.LIVENESS, ProbeKind.STARTUP):
        return replace(s, result=Result.SUCCESS), Step.STOP
    if obs.started_at is not None and int(now - obs.started_at) < initial_delay:
        return s, Step.WAIT
    if obs.started:
        if kind == ProbeKind.STARTUP:
            return s, Step.WAIT
    elif kind != ProbeKind.STARTUP:
        return s, Step.WAIT
    return s, Step.PROBE


def record(
    s: ProbeState, kind: ProbeKind, outcome: Result, success_threshold: int, failure_threshold: int
) -> ProbeState:
    """Count a probed outcome (Success or Failure); the result changes once a threshold is met."""
    run = s.run + 1 if s.last == outcome else 1
    s = replace(s, last=outcome, run=run)
    if (outcome == Result.FAILURE and run < failure_threshold) or (
        outcome == Result.SUCCESS and run < success_threshold
    ):
        return s
    s = replace(s, result=outcome)
    if (kind == ProbeKind.LIVENESS and outcome == Result.FAILURE) or kind == ProbeKind.STARTUP:
        s = replace(s, on_hold=True, run=0)
    return s
