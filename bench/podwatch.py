"""Pod start timing for the benchmarks: one watch per namespace records when each pod was
created, bound, Running, deleted and gone (:class:`PodTimes`), awaitable per pod (:class:`PodClock`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common.clock import SYSTEM, Clock
from provider.kubeclient import ApiError, KubeClient
from provider.pods.status_writer import START_LEVEL_ANNOTATION
from provider.reflector import Reflector, by_name

JSON = dict[str, Any]


@dataclass
class PodTimes:
    """Client-side timestamps of one pod (what a user watching the API sees), on the recorder's
    clock: ``time.monotonic()`` for :class:`PodClock`, wall-clock ``time.time()`` where they are
    compared with a scheduled instant (bench/midnight_burst.py)."""

    created: float | None = None  # just before the POST was sent (or: first watch event)
    bound: float | None = None  # first watch event with spec.nodeName
    running: float | None = None  # first watch event with phase Running
    deleted: float | None = None  # DELETED watch event
    annotations: dict[str, str] = field(default_factory=dict)  # latest seen
    phase: str = ""

    @property
    def level(self) -> str | None:
        """The start level warmlet reported (``warmlet.io/start-level``), once seen."""
        return self.annotations.get(START_LEVEL_ANNOTATION) or None

    @property
    def start_seconds(self) -> float | None:
        """POST → Running: the start latency a user sees."""
        if self.created is None or self.running is None:
            return None
        return self.running - self.created


PodEventHandler = Callable[[str, JSON], Awaitable[None] | None]


async def watch_namespace_pods(
    client: KubeClient,
    ns: str,
    on_event: PodEventHandler,
    *,
    list_first: bool = True,
    started: asyncio.Event | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """List, then watch a namespace's pods until cancelled (``provider.reflector.Reflector``:
    bookmarks, relist on 410 Gone, back-off on errors). ``on_event(type, pod)`` sees listed pods
    as ADDED (with ``list_first``; without it only later changes), then every ADDED / MODIFIED /
    DELETED event, and what a relist finds changed; ``started`` is set once the watch is positioned."""
    reflector = Reflector(
        client,
        f"/api/v1/namespaces/{ns}/pods",
        on_event,
        key=by_name,
        watch_timeout=300,
        replay_list=list_first,
        strip_managed_fields=True,
        name=f"bench-pods-{ns}",
        clock=clock,
    )
    if started is None:
        await reflector.run()
        return
    async with asyncio.TaskGroup() as tg:
        tg.create_task(reflector.run(), name=f"bench-pods-{ns}")
        await reflector.synced.wait()
        started.set()


class PodClock:
    """One watch on a namespace's pods recording :class:`PodTimes`; awaitable per pod.

    ``async with PodClock(client, ns) as clock:`` starts the watch (from a fresh list's
    resourceVersion, relisting on 410) and stops it on exit.
    """

    def __init__(self, client: KubeClient, ns: str) -> None:
        self.client, self.ns = client, ns
        self.pods: dict[str, PodTimes] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def __aenter__(self) -> PodClock:
        self._task = asyncio.create_task(self._run(), name=f"pod-clock-{self.ns}")
        await asyncio.wait_for(self._started.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def times(self, name: str) -> PodTimes:
        return self.pods.setdefault(name, PodTimes())

    async def _run(self) -> None:
        await watch_namespace_pods(
            self.client, self.ns, self._observe, list_first=False, started=self._started
        )

    async def _observe(self, etype: str, obj: JSON) -> None:
        now = time.monotonic()
        meta = obj.get("metadata") or {}
        t = self.times(str(meta.get("name")))
        t.annotations = dict(meta.get("annotations") or {})
        t.phase = str((obj.get("status") or {}).get("phase", ""))
        if t.bound is None and (obj.get("spec") or {}).get("nodeName"):
            t.bound = now
        if t.running is None and t.phase == "Running":
            t.running = now
        if etype == "DELETED":
            t.deleted = now
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, name: str, what: str, within: float = 120.0) -> PodTimes:
        """Until pod ``name`` has timestamp ``what`` ("bound", "running", "deleted")."""
        t = self.times(name)

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: getattr(t, what) is not None)

        try:
            await asyncio.wait_for(until(), within)
        except TimeoutError:
            msg = f"pod {self.ns}/{name} not {what} after {within}s (phase={t.phase!r})"
            raise TimeoutError(msg) from None
        return t

    async def wait_annotation(self, name: str, key: str, within: float = 10.0) -> str | None:
        """The pod's annotation once it appears (None after ``within`` seconds)."""
        t = self.times(name)

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: key in t.annotations)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until(), within)
        return t.annotations.get(key)

    async def create(self, pod: JSON) -> PodTimes:
        """POST the pod, stamping ``created`` just before the request leaves."""
        name = pod["metadata"]["name"]
        t = self.times(name)
        t.created = time.monotonic()
        await self.client.post(f"/api/v1/namespaces/{self.ns}/pods", pod)
        return t

    async def delete_and_wait_gone(self, name: str, within: float = 120.0) -> PodTimes:
        """Delete (default grace) and wait for the DELETED event: warmlet has released the sandbox."""
        with contextlib.suppress(ApiError):
            await self.client.delete(f"/api/v1/namespaces/{self.ns}/pods/{name}")
        return await self.wait(name, "deleted", within)
