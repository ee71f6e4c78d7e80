"""Pod status writes under a QPS/burst limit, coalesced per pod.

kubelet's status manager keeps only the LATEST status of each pod and writes it when its turn
comes; client-go's rate limiter bounds the writes per second. Here: with no limit
(``pods.status_qps: 0``) every write goes out at once, awaited by the sync that made it (errors
reach that sync, which the work queue retries). With a limit, a write that finds a token (and no
queue ahead of it) goes out at once too; one that does not waits in a queue of one entry per pod
(first come, first served) and the sync goes on. A newer write of a pod whose write still waits
is merged into it (:func:`coalesce`): only the latest state reaches the API, in one request.
One drain task (:meth:`StatusQueue.run`) sends the queued writes as tokens come; a write that
fails there for a passing reason (no answer, 429, 5xx) is queued again after a back-off.

:func:`coalesce` is pure: sending ``coalesce(a, b)`` leaves the API object as sending ``a`` then
``b`` would (strategic merge: ``conditions`` merge by ``type``, podIPs/hostIPs carry
``$patch: replace``, every other status field and annotation is replaced by the newer value).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common.clock import SYSTEM, Clock
from common.ratelimit import TokenBucket
from common.retry import API_BACKOFF, Backoff
from provider.kubeclient import ApiError
from provider.metrics import STATUS_WRITES_COALESCED, STATUS_WRITES_QUEUED

log = logging.getLogger(__name__)
JSON = dict[str, Any]

# status lists whose elements strategic merge merges by a key (the others are replaced whole)
MERGED_LISTS = {"conditions": "type"}


@dataclass
class StatusWrite:
    """One pod's status patch: ``after`` runs once the API took it (bookkeeping of the writer)."""

    key: str  # the pod's uid
    path: str
    body: JSON
    after: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _merge_by_key(older: list[Any], newer: list[Any], key: str) -> list[Any]:
    """Elements merged by ``key`` (the newer's fields win), the older's order first."""
    out: list[Any] = []
    index: dict[Any, int] = {}
    for el in [*older, *newer]:
        k = el.get(key) if isinstance(el, dict) else None
        if k is not None and k in index:
            out[index[k]] = {**out[index[k]], **el}
            continue
        if k is not None:
            index[k] = len(out)
        out.append(el)
    return out


def coalesce(older: JSON, newer: JSON) -> JSON:
    """One status patch body with the effect of ``older`` then ``newer`` (see module doc)."""
    out = {**older, **newer}
    if "metadata" in older or "metadata" in newer:
        om, nm = older.get("metadata") or {}, newer.get("metadata") or {}
        meta = {**om, **nm}
        if "annotations" in om or "annotations" in nm:
            meta["annotations"] = {**(om.get("annotations") or {}), **(nm.get("annotations") or {})}
        out["metadata"] = meta
    if "status" in older and "status" in newer:
        os_, ns_ = older["status"], newer["status"]
        status = {**os_, **ns_}
        for name, key in MERGED_LISTS.items():
            if name in os_ and name in ns_:
                status[name] = _merge_by_key(os_[name], ns_[name], key)
        out["status"] = status
    return out


def retryable(e: BaseException) -> bool:
    """A failure that passes (no answer, throttled, server error): the write is tried again."""
    if isinstance(e, ApiError):
        return e.status == 429 or e.status >= 500
    return isinstance(e, OSError | TimeoutError)


class StatusQueue:
    """Sends :class:`StatusWrite` s through ``send``, at most ``qps`` per second (burst
    ``burst``; ``qps`` 0: no limit, nothing ever queued), coalesced per pod while they wait."""

    def __init__(
        self,
        send: Callable[[StatusWrite], Awaitable[None]],
        qps: float = 0.0,
        burst: int = 100,
        clock: Clock = SYSTEM,
        backoff: Backoff = API_BACKOFF,
    ) -> None:
        self._send = send
        self._clock = clock
        self._backoff = backoff
        self._bucket = TokenBucket(qps, burst, clock.monotonic()) if qps > 0 else None
        self._queued: dict[str, StatusWrite] = {}  # insertion order: first come, first served
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queued)

    async def submit(self, w: StatusWrite) -> bool:
        """Send ``w`` now (True, awaited: its errors are the caller's) or queue it (False)."""
        if self._bucket is None:
            await self._send(w)
            return True
        if self._queued or w.key in self._in_flight or self._bucket.take(self._clock.monotonic()) > 0:
            self._enqueue(w)
            return False
        self._in_flight.add(w.key)
        try:
            await self._send(w)
        finally:
            self._in_flight.discard(w.key)
        return True

    def _enqueue(self, w: StatusWrite) -> None:
        prior = self._queued.get(w.key)
        if prior is not None:
            STATUS_WRITES_COALESCED.inc()
            w = StatusWrite(w.key, w.path, coalesce(prior.body, w.body), [*prior.after, *w.after])
        self._queued[w.key] = w  # a merged write keeps its place in the queue
        STATUS_WRITES_QUEUED.set(len(self._queued))
        self._wake.set()

    async def run(self) -> None:
        """Drain the queue under the bucket until cancelled (returns at once without a limit)."""
        if self._bucket is None:
            return
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queued:
                wait = self._bucket.take(self._clock.monotonic())
                if wait > 0:
                    await self._clock.sleep(wait)
                    continue
                key = next(iter(self._queued))
                w = self._queued.pop(key)
                STATUS_WRITES_QUEUED.set(len(self._queued))
                self._in_flight.add(key)
                try:
                    await self._send(w)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if not retryable(e):
                        log.warning("status write dropped key=%s err=%r", key, e)
                        continue
                    failures += 1
                    log.warning("status write failed, retrying key=%s attempt=%d err=%r", key, failures, e)
                    self._in_flight.discard(key)
                    newer = self._queued.pop(key, None)
                    self._enqueue(
                        w
                        if newer is None
                        else StatusWrite(key, w.path, coalesce(w.body, newer.body), [*w.after, *newer.after])
                    )
                    await self._backoff.sleep(failures, self._clock)
                finally:
                    self._in_flight.discard(key)
