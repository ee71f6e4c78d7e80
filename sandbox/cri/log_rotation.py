"""Container log rotation for the CRI backend (kubelet's ContainerLogManager).

containerd appends a container's output to its CRI log file for as long as it runs: without
rotation one container printing at full speed fills the node's disk. Every
``monitor_interval`` this rotates the log of each running container that reached
``max_size``: the live file is renamed to ``<log>.<timestamp>`` and the runtime asked to reopen
its log (``ReopenContainerLog``), as kubelet does (if the reopen fails the rename is undone). The
oldest rotated files beyond ``max_files`` are removed before, the older rotated ones gzipped
after (kubelet gzips before, which lets the live file of a fast writer grow while gzip runs).
``kubectl logs`` serves the live file, as on a kubelet node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from common.clock import SYSTEM, Clock
from common.logrotation import COMPRESSED_SUFFIX, compress_file, list_rotated, plan_rotation, rotated_name
from common.retry import doubling, periodic
from proto import cri_pb2 as pb
from sandbox import metrics
from sandbox.cri.client import CriApi, CriCallError

log = logging.getLogger("warmlet.cri.logs")


class ContainerLogRotator:
    """Rotates the CRI logs of one warmlet instance's running containers (see module doc)."""

    def __init__(
        self,
        client: CriApi,
        selector: dict[str, str],
        max_size: int,
        max_files: int,
        monitor_interval: float = 10.0,
        clock: Clock = SYSTEM,
    ) -> None:
        if max_files < 2:
            raise ValueError("container_log_max_files must be at least 2 (the live file and one rotated)")
        self.client = client
        self.selector = selector
        self.max_size = max_size
        self.max_files = max_files
        self.interval = monitor_interval
        self.clock = clock
        self._paths: dict[str, str] = {}  # container id -> log path (fixed for its lifetime)
        # gzip runs beside the passes (one at a time), so a pass never waits for it
        self._gzip: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Forever: one pass per interval; failures back off (up to 10 intervals), never stop."""

        backoff = doubling(self.interval, self.interval * 10)

        def failed(e: Exception, failures: int) -> None:
            # the runtime away: the PLEG reports that; just slow down
            log.warning("log rotation pass failed retry_in=%.0f error=%s", backoff.delay(failures), e)

        try:
            await periodic(
                self.rotate_all,
                self.interval,
                wait_first=True,
                backoff=backoff,
                on_error=failed,
                clock=self.clock,
            )
        finally:
            await self._gzip_done()

    async def _gzip_done(self) -> None:
        if self._gzip is not None:
            with contextlib.suppress(Exception):
                await self._gzip  # a thread: runs to its end anyway, so wait for it
            self._gzip = None

    async def rotate_all(self) -> int:
        """One pass over the running containers; returns how many logs were rotated."""
        conts = await self.client.list_containers(labels=self.selector, state=pb.CONTAINER_RUNNING)
        live = {c.id for c in conts}
        for cid in [c for c in self._paths if c not in live]:
            del self._paths[cid]
        rotated = 0
        for c in conts:
            path = await self._log_path(c.id)
            if path and await self.rotate_one(c.id, path):
                rotated += 1
        return rotated

    async def _log_path(self, cid: str) -> str:
        path = self._paths.get(cid)
        if path is None:
            try:
                path = (await self.client.container_status(cid)).status.log_path
            except CriCallError as e:
                if e.not_found:
                    return ""
                raise
            self._paths[cid] = path
        return path

    async def rotate_one(self, cid: str, path: str) -> bool:
        """Rotate ``path`` if it reached the size cap; True if it was rotated."""
        try:
            size = os.stat(path).st_size
        except OSError:
            return False
        existing = await asyncio.to_thread(list_rotated, path)
        plan = plan_rotation(size, self.max_size, existing, self.max_files)
        if not plan.rotate:
            return False
        if plan.remove:
            await self._gzip_done()  # never remove a file gzip is reading
        await asyncio.to_thread(self._remove, plan.remove)  # first: never more than max_files
        target = rotated_name(path, self.clock.time(), set(existing))
        try:
            os.rename(path, target)
        except OSError as e:
            metrics.LOG_ROTATIONS.labels("error").inc()
            log.warning("log rotation rename failed container=%s path=%s error=%s", cid[:12], path, e)
            return False
        try:
            await self.client.reopen_container_log(cid)
        except Exception as e:
            # the container stopped meanwhile (or the runtime is away): put the file back
            with contextlib.suppress(OSError):
                os.rename(target, path)
            metrics.LOG_ROTATIONS.labels("error").inc()
            log.warning("log reopen failed, rotation undone container=%s error=%s", cid[:12], e)
            return False
        # Only now the older files: gzip takes a while on a big file, and the live one must not
        # keep growing meanwhile (kubelet compresses first; at full speed that lets it grow).
        if plan.compress and (self._gzip is None or self._gzip.done()):
            # (if one runs, these stay plain until the next rotation: still within max_files)
            self._gzip = asyncio.create_task(asyncio.to_thread(self._compress, plan.compress))
        metrics.LOG_ROTATIONS.labels("ok").inc()
        metrics.LOG_ROTATED_BYTES.inc(size)
        log.info(
            "container log rotated container=%s size=%d rotated_to=%s removed=%d",
            cid[:12],
            size,
            os.path.basename(target),
            len(plan.remove),
        )
        return True

    @staticmethod
    def _remove(files: tuple[str, ...]) -> None:
        for f in files:
            # listed plain while a gzip was still running: by now it may be the .gz
            for name in (f, f if f.endswith(COMPRESSED_SUFFIX) else f + COMPRESSED_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(name)

    @staticmethod
    def _compress(files: tuple[str, ...]) -> None:
        for f in files:
            try:
                compress_file(f)
            except OSError as e:
                log.warning("log compression failed file=%s error=%s", f, e)
