"""The pod lifecycle event generator (PLEG), like kubelet's GenericPLEG.

Every ``interval`` it relists this warmlet's containers, compares each one's state with the last
relist, and turns the differences into typed events (:func:`diff`); the pods of those events are
told to sync. While the runtime does not answer, relists back off (up to 10 s); the first relist
that works again syncs every pod with a sandbox and every pod a call failed for meanwhile.

Health, as kubelet's ``Healthy``: a PLEG whose last successful relist is older than
``RELIST_THRESHOLD_SECONDS`` is unhealthy (the backend's ``health()`` reports it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from common.clock import SYSTEM, Clock
from common.retry import doubling, periodic
from proto import cri_pb2 as pb
from sandbox.cri import mapping as m
from sandbox.cri.client import CriApi

log = logging.getLogger("warmlet.cri")

RELIST_THRESHOLD_SECONDS = 180.0  # kubelet's relistThreshold (3 minutes)
MAX_RELIST_DELAY_SECONDS = 10.0  # back-off cap while the runtime does not answer

Snapshot = Mapping[str, tuple[int, str]]
"""container id -> (CRI container state, pod uid) as one relist saw them."""


class EventType(StrEnum):
    CONTAINER_STARTED = "ContainerStarted"  # now running
    CONTAINER_DIED = "ContainerDied"  # now exited
    CONTAINER_REMOVED = "ContainerRemoved"  # no longer listed
    CONTAINER_CHANGED = "ContainerChanged"  # new, or now created/unknown


@dataclass(frozen=True)
class PodLifecycleEvent:
    pod_uid: str
    container_id: str
    type: EventType


_EVENT_OF_STATE = {
    pb.CONTAINER_RUNNING: EventType.CONTAINER_STARTED,
    pb.CONTAINER_EXITED: EventType.CONTAINER_DIED,
}


def snapshot(containers: Iterable[pb.Container]) -> dict[str, tuple[int, str]]:
    return {c.id: (int(c.state), m.pod_uid_of(c.labels)) for c in containers}


def diff(old: Snapshot, new: Snapshot) -> list[PodLifecycleEvent]:
    """The events between two relists: one per container of a pod whose state changed (a new
    container counts as changed) or that is no longer listed. Containers without a pod uid (not
    a pod's) make no event."""
    events: list[PodLifecycleEvent] = []
    for cid, (state, uid) in new.items():
        before = old.get(cid)
        if uid and (before is None or before[0] != state):
            kind = _EVENT_OF_STATE.get(state, EventType.CONTAINER_CHANGED)
            events.append(PodLifecycleEvent(uid, cid, kind))
    for cid, (_, uid) in old.items():
        if uid and cid not in new:
            events.append(PodLifecycleEvent(uid, cid, EventType.CONTAINER_REMOVED))
    return events


def relist_health(last_relist: float | None, now: float, threshold: float) -> tuple[bool, str]:
    """(healthy, message) of a PLEG whose last successful relist was at ``last_relist`` (None:
    not started yet, which is healthy: there is nothing to be late with)."""
    if last_relist is None:
        return True, ""
    elapsed = now - last_relist
    if elapsed > threshold:
        return False, f"pleg was last seen active {elapsed:.1f}s ago; threshold is {threshold:.0f}s"
    return True, ""


class Pleg:
    """Relist loop, events to subscribers, health (see module doc)."""

    def __init__(
        self,
        client: CriApi,
        selector: dict[str, str],
        interval: float,
        notify: Callable[[str], None],
        on_died: Callable[[list[str]], Awaitable[None]],
        on_recovered: Callable[[], None],
        *,
        clock: Clock = SYSTEM,
        threshold: float = RELIST_THRESHOLD_SECONDS,
    ) -> None:
        self.client = client
        self.selector = selector
        self.interval = interval
        self.notify = notify  # pod uid -> its sync
        self.on_died = on_died  # awaited with the ids of containers that newly exited
        self.on_recovered = on_recovered
        self.clock = clock
        self.threshold = threshold
        self._snapshot: Snapshot = {}
        self._last_relist: float | None = None

    def seed(self, containers: Iterable[pb.Container]) -> None:
        """Start from what adoption listed (no events for what already ran before)."""
        self._snapshot = snapshot(containers)
        self._last_relist = self.clock.monotonic()

    def healthy(self) -> tuple[bool, str]:
        return relist_health(self._last_relist, self.clock.monotonic(), self.threshold)

    async def run(self) -> None:
        """Relist forever; back off while the runtime is away (logged once per outage)."""

        def failed(e: Exception, failures: int) -> None:
            if failures == 1:
                log.warning("cri relist failed error=%s", e)

        await periodic(
            self.relist,
            self.interval,
            wait_first=True,
            backoff=doubling(self.interval, MAX_RELIST_DELAY_SECONDS),
            on_error=failed,
            on_recovery=lambda _: self.on_recovered(),
            clock=self.clock,
        )

    async def relist(self) -> set[str]:
        """One relist; returns the pod uids notified."""
        new = snapshot(await self.client.list_containers(labels=self.selector))
        events = diff(self._snapshot, new)
        died = [e.container_id for e in events if e.type == EventType.CONTAINER_DIED]
        if died:
            await self.on_died(died)
        self._snapshot = new
        self._last_relist = self.clock.monotonic()
        changed = {e.pod_uid for e in events}
        for uid in changed:
            self.notify(uid)
        return changed
