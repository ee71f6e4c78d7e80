"""The start hold, pure: a pod carrying ``warmlet.io/start-at`` is prepared ahead and started at the
instant (issue 16). Which pods are held, what is prepared for them, what the start wave starts.

A pod bound to this node with ``warmlet.io/start-at: <RFC3339 UTC, milliseconds>`` (the CronJob's
scheduled instant; such pods only land on nodes labelled ``warmlet.io/holds-start=true``) is:

* **prepared** while the instant is ahead: sandbox (warm from the pool when one is idle), every
  image present, volumes and env resolved, and each app container *created* but not started
  (``StartLevel.PRECREATED``). A pod with init containers gets its sandbox and images only: its
  init containers are user code that must finish before any app container starts, and running
  them early would run user code before the instant;
* **held**: phase Pending, each container waiting with reason ``StartHeld`` (one status write);
* **started** by the start wave at the instant, never before; a pod whose instant is already past
  when it arrives (or when its preparation ends) starts at once, as any pod.

Everything here is a pure function of the pod, the runtime's containers and the wall clock.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from provider.status import Waiting
from sandbox.backend import ContainerRuntimeState, ContainerState

START_AT_ANNOTATION = "warmlet.io/start-at"
# The first app container's start as the runtime reports it, RFC3339 UTC with milliseconds
# (containerStatuses[].state.running.startedAt is a metav1.Time: whole seconds).
STARTED_AT_ANNOTATION = "warmlet.io/started-at"
HELD_REASON = "StartHeld"
INVALID_REASON = "InvalidStartAt"


class Hold(StrEnum):
    """What a sync does with a pod as to the hold."""

    NONE = "none"  # no (valid) start-at: an ordinary pod
    PREPARE = "prepare"  # the instant is ahead and nothing of the pod ever ran: prepare and hold
    START = "start"  # the instant has come, or the pod ran already: an ordinary pod from now on


@dataclass(frozen=True)
class StartAt:
    """The pod's annotation: the instant (epoch seconds), or why it could not be read."""

    instant: float | None
    error: str = ""


def parse_instant(value: str) -> float | None:
    """RFC3339 (``Z`` or a numeric offset, any fraction of a second) to epoch seconds; None when
    it is not one. Exact to the millisecond: the fraction is not rounded through a float parse."""
    s = value.strip()
    if "T" not in s and "t" not in s:
        return None
    try:
        dt = datetime.fromisoformat(s.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None  # RFC3339 requires an offset: a local time would be a guess
    dt = dt.astimezone(UTC)
    whole = calendar.timegm(dt.replace(microsecond=0).timetuple())
    return whole + dt.microsecond / 1e6


def format_millis(ts: float) -> str:
    """Epoch seconds as RFC3339 UTC with milliseconds (``2026-11-28T00:00:00.123Z``), truncated to
    the millisecond (a start reported at .9996 is not moved into the next second). Within a
    microsecond: ``ts`` and ``ts * 1000`` are binary floats, a hair below the millisecond they
    name (549755813.887 * 1000 is 549755813886.99994; up to 2100 the error is below 0.5 us).
    """
    ms = math.floor(ts * 1000 + 1e-3)
    secs, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:03d}Z"


def start_at(pod: Mapping[str, Any]) -> StartAt | None:
    """The pod's ``warmlet.io/start-at``; None when it has none."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(START_AT_ANNOTATION)
    if value is None:
        return None
    instant = parse_instant(str(value))
    if instant is None:
        return StartAt(
            None, f"{START_AT_ANNOTATION}={value!r} is not an RFC3339 time; the pod starts at once"
        )
    return StartAt(instant)


def ran_already(runtime: Sequence[ContainerRuntimeState]) -> bool:
    """Some container of the pod was started (running or exited): the hold is over for good, even
    if the wall clock went back (a restart after the instant never holds again)."""
    return any(c.state in (ContainerState.RUNNING, ContainerState.EXITED) for c in runtime)


def decide(at: StartAt | None, runtime: Sequence[ContainerRuntimeState], now: float) -> Hold:
    """The hold decision for one sync. ``now``: wall clock seconds."""
    if at is None or at.instant is None:
        return Hold.NONE
    if now >= at.instant or ran_already(runtime):
        return Hold.START
    return Hold.PREPARE


def has_init(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("initContainers"))


def app_names(pod: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]


def all_names(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]


def to_create(pod: Mapping[str, Any], runtime: Sequence[ContainerRuntimeState]) -> list[str]:
    """App containers to create ahead, in spec order: those the runtime has no instance of (a
    restart during the hold adopts the ones already created). None for a pod with init
    containers: its app containers are created after the init chain, as for any pod."""
    if has_init(pod):
        return []
    present = {c.name for c in runtime}
    return [n for n in app_names(pod) if n not in present]


def has_post_start(container: Mapping[str, Any]) -> bool:
    return bool((container.get("lifecycle") or {}).get("postStart"))


def wave_part(pod: Mapping[str, Any], runtime: Sequence[ContainerRuntimeState]) -> tuple[list[str], str]:
    """What the start wave starts for a prepared pod: the created app containers' IDs in spec
    order, up to and including the first one with a postStart hook (kubelet starts a pod's
    containers one after another and runs each postStart before starting the next: the rest are
    started by the pod's sync after that hook), and the name of that container ('' for none).
    Empty for a pod with init containers (its sync starts the init chain at the instant) or one
    whose next container is not created (the sync creates it)."""
    if has_init(pod):
        return [], ""
    created = {c.name: c.container_id for c in runtime if c.state == ContainerState.CREATED}
    ids: list[str] = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        cid = created.get(c["name"])
        if cid is None:
            return ids, ""
        ids.append(cid)
        if has_post_start(c):
            return ids, c["name"]
    return ids, ""


def held_message(instant: float) -> str:
    return f"start held until {format_millis(instant)} ({START_AT_ANNOTATION})"


def held_waiting(pod: Mapping[str, Any], instant: float) -> dict[str, Waiting]:
    """The waiting state of every container of a held pod (``kubectl get pods`` shows the reason)."""
    w = Waiting(HELD_REASON, held_message(instant))
    return dict.fromkeys(all_names(pod), w)


def first_start(runtime: Sequence[ContainerRuntimeState], names: Sequence[str]) -> float | None:
    """The earliest runtime start of the named (app) containers' first attempts: the pod's start."""
    starts = [
        c.started_at for c in runtime if c.name in names and c.attempt == 0 and c.started_at is not None
    ]
    return min(starts) if starts else None
