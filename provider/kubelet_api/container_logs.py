"""Serving one container's CRI log file: which instance, which bytes, and following it.

Instance selection mirrors kubelet's validateContainerLogStatus (``previous`` = the last
terminated instance before the current one) but reads the runtime's instances, which are
fresher than the pod status. Rendering applies sinceTime/stream/timestamps/limitBytes to
joined CRI lines; reading runs in a worker thread in chunks so a 100 MB log neither
blocks the event loop nor is held in memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

from common.clock import SYSTEM, Clock
from common.crilog import CRILogParser, tail_offset
from common.retry import Backoff
from provider.kubelet_api.log_options import LogOptions
from provider.kubelet_api.pods import container_status
from sandbox.backend import ContainerRuntimeState, ContainerState

CHUNK_BYTES = 256 * 1024
# following a log that has no new bytes: poll after 0.1 s, then 1.5 times longer each time, at most
# every 0.5 s (back to 0.1 s as soon as bytes come)
FOLLOW_POLL: Final = Backoff(base=0.1, cap=0.5, factor=1.5, jitter=0.0)


class LogNotAvailable(Exception):
    """The container has no log to serve; kubelet answers 400 with this message."""


def _waiting_message(pod: dict[str, Any] | None, pod_name: str, container: str) -> str:
    cs = container_status(pod, container) if pod is not None else None
    if cs is None:
        return f'container "{container}" in pod "{pod_name}" is waiting to start - no logs yet'
    waiting = (cs.get("state") or {}).get("waiting")
    if waiting is not None:
        reason = waiting.get("reason", "")
        if reason == "ErrImagePull":
            return f'container "{container}" in pod "{pod_name}" is waiting to start: image can\'t be pulled'
        if reason == "ImagePullBackOff":
            return (
                f'container "{container}" in pod "{pod_name}" is waiting to start: '
                "trying and failing to pull image"
            )
        return f'container "{container}" in pod "{pod_name}" is waiting to start: {reason}'
    return f'container "{container}" in pod "{pod_name}" is waiting to start - no logs yet'


def select_instance(
    states: list[ContainerRuntimeState],
    pod: dict[str, Any] | None,
    pod_name: str,
    container: str,
    previous: bool,
) -> ContainerRuntimeState:
    """The container instance whose log to serve, or LogNotAvailable with kubelet's message."""
    mine = sorted((s for s in states if s.name == container), key=lambda s: (s.attempt, s.created_at or 0.0))
    if previous:
        for s in reversed(mine[:-1]):
            if s.state == ContainerState.EXITED:
                return s
        raise LogNotAvailable(f'previous terminated container "{container}" in pod "{pod_name}" not found')
    if not mine:
        raise LogNotAvailable(_waiting_message(pod, pod_name, container))
    current = mine[-1]
    if current.state in (ContainerState.RUNNING, ContainerState.EXITED):
        return current
    for s in reversed(mine[:-1]):
        if s.state == ContainerState.EXITED:
            return s
    raise LogNotAvailable(_waiting_message(pod, pod_name, container))


def path_within(path: str, root: str) -> bool:
    """True if ``path`` (symlinks resolved) lies inside ``root``: no escape from the log dir."""
    real = os.path.realpath(path)
    real_root = os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root and real != real_root


class LogRenderer:
    """Turns raw CRI bytes into ``kubectl logs`` bytes under the request's options."""

    def __init__(self, opts: LogOptions, max_bytes: int) -> None:
        self.opts = opts
        self.remaining = max_bytes if opts.limit_bytes is None else min(max_bytes, opts.limit_bytes)
        self.parser = CRILogParser()
        self._skip_continuation: dict[str, bool] = {}
        # Once a line at/after sinceTime was seen, later lines are (CRI logs are append-only in
        # time order) and the fast path can skip per-line timestamp checks.
        self._since_passed = False

    @property
    def done(self) -> bool:
        return self.remaining <= 0

    def feed(self, data: bytes) -> bytes:
        opts = self.opts
        if opts.since_ns is None or self._since_passed:
            fast = self.parser.feed_rendered(data, opts.timestamps, opts.stream)
            if fast is not None:
                return self._limit(fast)
        return self._render(self.parser.feed(data))

    def _limit(self, data: bytes) -> bytes:
        if len(data) > self.remaining:
            data = data[: max(0, self.remaining)]
        self.remaining -= len(data)
        return data

    def finish(self) -> bytes:
        return self._render(self.parser.finish())

    def _render(self, records: list[Any]) -> bytes:
        if self.remaining <= 0:
            return b""
        opts = self.opts
        out: list[bytes] = []
        size = 0
        since, stream, ts = opts.since_ns, opts.stream, opts.timestamps
        for r in records:
            if stream is not None and r.stream != stream:
                continue
            if r.continued:
                if self._skip_continuation.get(r.stream):
                    continue
            elif since is not None:
                skip = r.timestamp_ns < since
                self._skip_continuation[r.stream] = skip and not r.complete
                if skip:
                    continue
                self._since_passed = True
            b = r.render(ts)
            size += len(b)
            out.append(b)
            if size >= self.remaining:
                break
        data = b"".join(out)
        if len(data) > self.remaining:
            data = data[: self.remaining]
        self.remaining -= len(data)
        return data


class LogReader:
    """Reads a log file from its tail offset in chunks (blocking; run it in a thread)."""

    def __init__(self, path: str, opts: LogOptions, max_bytes: int) -> None:
        self.renderer = LogRenderer(opts, max_bytes)
        self.path = path
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            start = tail_offset(self.f, opts.tail_lines) if opts.tail_lines is not None else 0
            self.f.seek(start)
        except BaseException:
            self.f.close()
            raise

    def read(self) -> tuple[bytes, bool]:
        """(rendered bytes, at EOF)."""
        data = self.f.read(CHUNK_BYTES)
        if not data:
            return b"", True
        return self.renderer.feed(data), len(data) < CHUNK_BYTES

    def finish(self) -> bytes:
        return self.renderer.finish()

    def reopen_if_rotated(self) -> bool:
        """Follow across log rotation: once the open file (read to its end) was renamed away and a
        new file took its path, continue with the new file from its start (kubelet does the same)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        if now.st_ino == os.fstat(self.f.fileno()).st_ino:
            return False
        rest = self.f.read()  # written between the last read and the rename
        if rest:
            self.f.seek(-len(rest), os.SEEK_CUR)
            return True  # read that first; the next EOF switches
        self.f.close()
        self.f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        return True

    def close(self) -> None:
        self.f.close()


async def stream_log(
    reader: LogReader,
    opts: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    still_running: Callable[[], Awaitable[bool]],
    client_gone: Callable[[], bool],
    poll: Backoff = FOLLOW_POLL,
    clock: Clock = SYSTEM,
) -> int:
    """Write the log through ``write``; with follow, keep going until the container stops.

    Returns the number of bytes written. Stops early when limitBytes is reached or the
    client disconnected. Closes the reader.
    """
    written = 0
    idle = 0  # polls in a row that found nothing new
    try:
        while True:
            data, eof = await asyncio.to_thread(reader.read)
            if data:
                await write(data)
                written += len(data)
                idle = 0
            if reader.renderer.done:
                return written
            if not eof:
                continue
            if not opts.follow:
                break
            if client_gone():
                return written
            if await asyncio.to_thread(reader.reopen_if_rotated):
                continue
            if not await still_running():
                # Drain what the container wrote before it stopped, then end.
                while not reader.renderer.done:
                    data, eof = await asyncio.to_thread(reader.read)
                    if data:
                        await write(data)
                        written += len(data)
                    if eof:
                        break
                break
            await clock.sleep(poll.delay(idle))
            idle += 1
        tail = reader.finish()
        if tail:
            await write(tail)
            written += len(tail)
        return written
    finally:
        reader.close()
