"""An exec session's process ends with the session: the backend is told when one begins and ends.

A client that leaves (killed ``kubectl exec``, a dropped connection) must leave no process behind
in the container. Kubelet leaves this to the runtime, and containerd 1.6 does not end a streaming
exec with its connection; where the runtime does not, a backend with the optional ``ExecSessionTracker``
finds the session's process and kills what of it still runs once the proxied connection is over.
This module calls it around an exec session: started before the session's URL is asked for,
ended after the proxy finished, shielded from cancellation, and never failing the request (a
tracker error is logged and counted; the session goes on untracked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import prometheus_client

from sandbox.backend import Backend, ExecSessionTracker

log = logging.getLogger(__name__)

REAPED = prometheus_client.Counter(
    "warmlet_kubelet_api_exec_processes_reaped_total",
    "Processes of exec sessions killed because they still ran when their session ended (the "
    "client left or its connection dropped).",
)
TRACKER_ERRORS = prometheus_client.Counter(
    "warmlet_kubelet_api_exec_reaper_errors_total",
    "Failures of the backend's exec session tracking, by stage (started, ended); the session "
    "itself is not affected.",
    ["stage"],
)

_ENDING: set[asyncio.Task[int]] = set()  # ends that outlive a cancelled handler (shielded)


@contextlib.asynccontextmanager
async def exec_session(
    backend: Backend, container_id: str, cmd: list[str], where: str
) -> AsyncIterator[None]:
    """Track the exec session run inside the ``async with`` (a no-op without a tracker)."""
    if not isinstance(backend, ExecSessionTracker):
        yield
        return
    key: str | None = None
    try:
        key = await backend.exec_session_started(container_id, cmd)
    except Exception as e:
        TRACKER_ERRORS.labels("started").inc()
        log.warning("exec session tracking failed to start where=%s error=%r", where, e)
    try:
        yield
    finally:
        if key is not None:
            task = asyncio.create_task(_end(backend, key, where), name=f"exec-session-end-{key}")
            _ENDING.add(task)
            task.add_done_callback(_ENDING.discard)
            await asyncio.shield(task)


async def _end(backend: ExecSessionTracker, key: str, where: str) -> int:
    try:
        killed = await backend.exec_session_ended(key)
    except Exception as e:
        TRACKER_ERRORS.labels("ended").inc()
        log.warning("exec session tracking failed to end where=%s session=%s error=%r", where, key, e)
        return 0
    if killed:
        REAPED.inc(killed)
        log.info(
            "exec session ended with its process still running: killed where=%s session=%s processes=%d",
            where,
            key,
            killed,
        )
    return killed
