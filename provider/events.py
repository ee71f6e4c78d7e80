"""core/v1 Events, aggregated and rate limited so a burst cannot flood the apiserver.

``record`` never blocks the caller: events go to a bounded queue; a single task sends
them under a token bucket. A repeat of (object, type, reason, message) bumps the count
of the existing Event with a PATCH instead of creating a new one, as client-go does.

Status first: while a pod sync makes its runtime calls to start containers (``status_first``),
the sender holds back, for at most ``STATUS_FIRST_MAX_SECONDS`` after an event was recorded. A
pod start's own events (Pulled, Created, Started: three API writes) then no longer take the API
server's CPU from the runtime's start on a small node; they go out beside the status write that
shows the start, with the times they were recorded at. (Held until after that status write they
could trail it: a client that saw the restart might not find its FailedPostStartHook yet.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from common.clock import SYSTEM, Clock
from common.ratelimit import TokenBucket
from common.retry import sleep_or_wake
from provider.kubeclient import ApiError, KubeClient
from provider.metrics import EVENTS, EVENTS_DROPPED, EVENTS_NOT_SENT
from provider.timefmt import rfc3339

log = logging.getLogger(__name__)
JSON = dict[str, Any]

NORMAL, WARNING = "Normal", "Warning"

__all__ = ["NORMAL", "WARNING", "EventRecorder", "TokenBucket", "object_ref", "pod_events_policy", "sent"]

ALL, WARNINGS = "all", "warnings"

# The longest an event waits for the pod starts in flight (``EventRecorder.status_first``): a
# node that never stops starting pods still sends its events, at most this late.
STATUS_FIRST_MAX_SECONDS = 1.0


def pod_events_policy(setting: str, runs_processes: bool) -> str:
    """``pods.pod_events`` resolved: "auto" is kubelet's every event where containers are processes
    (CRI), Warnings only on a backend that runs none (simulated: thousands of pods a minute, whose
    Normal events nobody reads, would cost three API writes each)."""
    if setting == "auto":
        return ALL if runs_processes else WARNINGS
    return setting


def sent(kind: str, type_: str, pod_events: str) -> bool:
    """Whether an event is written: every event of other objects (the Node) and every Warning; a
    pod's Normal events unless ``pod_events`` is "warnings"."""
    return kind != "Pod" or type_ != NORMAL or pod_events != WARNINGS


@dataclass
class _Pending:
    ref: JSON
    type: str
    reason: str
    message: str
    ts: float
    recorded: float = 0.0  # monotonic: how long it may wait for the starts in flight


def object_ref(obj: Mapping[str, Any]) -> JSON:
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Pod"),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        node_name: str,
        qps: float = 50.0,
        burst: int = 200,
        queue_size: int = 5000,
        clock: Clock = SYSTEM,
    ) -> None:
        self._client = client
        self._clock = clock
        self._node = node_name
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(queue_size)
        self._bucket = TokenBucket(qps, burst, clock.monotonic())
        self._seen: LRUCache[tuple[str, str, str, str], tuple[str, str, int]] = LRUCache(4096)
        # "all" or "warnings" (pod_events_policy): set by the pod controller for its backend
        self.pod_events = ALL
        self._starting = 0  # pod syncs in their status_first section
        self._no_starts = asyncio.Event()
        self._no_starts.set()

    @contextlib.contextmanager
    def status_first(self, active: bool = True) -> Iterator[None]:
        """A section (a pod sync's runtime calls that start containers) that queued events wait
        for, up to STATUS_FIRST_MAX_SECONDS after each was recorded. Nests; a no-op
        unless ``active``."""
        if not active:
            yield
            return
        self._starting += 1
        self._no_starts.clear()
        try:
            yield
        finally:
            self._starting -= 1
            if self._starting == 0:
                self._no_starts.set()

    async def _wait_for_starts(self, ev: _Pending) -> None:
        left = ev.recorded + STATUS_FIRST_MAX_SECONDS - self._clock.monotonic()
        if left > 0:
            await sleep_or_wake(self._clock, left, self._no_starts)

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an event about a Pod or Node (non-blocking; dropped when the queue is full).
        Counted in ``warmlet_events_total`` even when ``pod_events`` keeps it from the API."""
        EVENTS.labels(type=type_, reason=reason).inc()
        ref = object_ref(obj)
        if not sent(ref["kind"], type_, self.pod_events):
            EVENTS_NOT_SENT.labels(reason=reason).inc()
            return
        try:
            clock = self._clock
            self._queue.put_nowait(_Pending(ref, type_, reason, message, clock.time(), clock.monotonic()))
        except asyncio.QueueFull:
            EVENTS_DROPPED.inc()

    async def run(self) -> None:
        while True:
            ev = await self._queue.get()
            await self._wait_for_starts(ev)
            wait = self._bucket.take(self._clock.monotonic())
            if wait > 0:
                await self._clock.sleep(wait)
            try:
                await self._send(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # events are best effort
                log.debug("event not recorded reason=%s err=%s", ev.reason, e)
            finally:
                self._queue.task_done()

    async def flush(self, within: float = 5.0) -> None:
        """Wait until queued events were sent (used by tests and shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)

    async def _send(self, ev: _Pending) -> None:
        ns = ev.ref.get("namespace") or "default"
        key = (ev.ref.get("uid", ""), ev.type, ev.reason, ev.message)
        seen = self._seen.get(key)
        if seen is not None:
            name, ens, count = seen
            try:
                await self._client.patch(
                    f"/api/v1/namespaces/{ens}/events/{name}",
                    {"count": count + 1, "lastTimestamp": rfc3339(ev.ts)},
                )
                self._seen[key] = (name, ens, count + 1)
                return
            except ApiError as e:
                if not e.not_found:
                    raise
        name = f"{ev.ref.get('name', 'obj')}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": ev.ref,
            "reason": ev.reason,
            "message": ev.message[:1024],
            "type": ev.type,
            "source": {"component": "warmlet", "host": self._node},
            "reportingComponent": "warmlet",
            "reportingInstance": self._node,
            "firstTimestamp": rfc3339(ev.ts),
            "lastTimestamp": rfc3339(ev.ts),
            "count": 1,
        }
        await self._client.post(f"/api/v1/namespaces/{ns}/events", body)
        self._seen[key] = (name, ns, 1)
