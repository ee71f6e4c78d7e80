"""A pod's ``activeDeadlineSeconds`` as a pure function (kubelet's activeDeadlineHandler).

kubelet counts from ``status.startTime`` (the first time it reported the pod on the node) and
fails the pod once ``now - startTime >= activeDeadlineSeconds``: phase ``Failed``, reason
``DeadlineExceeded``, its containers killed with the pod's grace period, and a Normal event
with the same reason and message. A pod without a deadline or without a start time is never
past it. A pod held until its ``warmlet.io/start-at`` instant (provider/pods/hold.py) counts
from that instant when it was bound early: from ``max(startTime, instant)``, so the time it waits
for its instant is not taken from its deadline. :func:`remaining` also tells how long until the
deadline, so the pod worker requeues the pod to fire on time instead of polling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.pods.hold import StartAt, start_at
from provider.timefmt import parse_rfc3339

REASON = "DeadlineExceeded"
MESSAGE = "Pod was active on the node longer than the specified deadline"


def active_deadline(pod: Mapping[str, Any]) -> int | None:
    """``spec.activeDeadlineSeconds`` when set to an integer (the API server ensures > 0)."""
    value = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def start_time(pod: Mapping[str, Any], reported: Mapping[str, Any] | None = None) -> float | None:
    """Where the deadline counts from: the pod's start time from the status warmlet last reported,
    else the API's status (kubelet: the status manager's copy first, then ``pod.Status``); for a
    pod with a start instant, never before that instant."""
    for status in (reported, pod.get("status")):
        ts = parse_rfc3339((status or {}).get("startTime"))
        if ts is not None:
            return counted_from(ts, start_at(pod))
    return None


def counted_from(started: float, at: StartAt | None) -> float:
    """``started``, or the pod's instant when that is later (a pod bound ahead of its instant)."""
    if at is None or at.instant is None:
        return started
    return max(started, at.instant)


def left(pod: Mapping[str, Any], reported: Mapping[str, Any] | None, now: float) -> float | None:
    """Seconds until the pod's active deadline (``remaining``), None without one; its start time is
    looked up only for a pod that has a deadline (most have none)."""
    seconds = active_deadline(pod)
    if seconds is None:
        return None
    return remaining(seconds, start_time(pod, reported), now)


def remaining(deadline_seconds: int | None, started: float | None, now: float) -> float | None:
    """Seconds until the deadline (<= 0: it has passed); None when there is no deadline to
    enforce (no ``activeDeadlineSeconds`` or no start time yet)."""
    if deadline_seconds is None or started is None:
        return None
    return started + deadline_seconds - now


def exceeded(deadline_seconds: int | None, started: float | None, now: float) -> bool:
    """kubelet's ``pastActiveDeadline``: active for at least the deadline."""
    left = remaining(deadline_seconds, started, now)
    return left is not None and left <= 0
