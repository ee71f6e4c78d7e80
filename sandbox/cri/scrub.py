"""Making a sandbox fit for the next pod of its workload, and removing containers whatever state
they are in.

A scrub stops and removes every container of the sandbox, kills any process left in its network
namespace other than the pause tree, wipes the pod's scratch (emptyDir) directories, and empties
its IPC (/dev/shm files, SysV objects). Setting the next pod's hostname is done when that pod
acquires the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandbox.cri import host
from sandbox.cri.client import CriCallError
from sandbox.cri.context import CriContext
from sandbox.cri.facts import SandboxFacts
from sandbox.pool import SandboxRecord

log = logging.getLogger("warmlet.cri")


class ContainerReaper:
    """Stop and remove a container, including one whose containerd task outlived a failed start."""

    def __init__(self, ctx: CriContext) -> None:
        self.ctx = ctx

    async def kill_and_remove(self, container_id: str) -> None:
        client = self.ctx.client
        with contextlib.suppress(CriCallError):
            await client.stop_container(container_id, 0)
        try:
            await client.remove_container(container_id)
        except CriCallError as e:
            if e.not_found:
                return
            if "running task" not in e.message:
                raise
            await self._remove_orphan_task(container_id, e)

    async def _remove_orphan_task(self, container_id: str, err: CriCallError) -> None:
        """Remove a container whose containerd task outlived a failed start.

        A StartContainer cancelled right after containerd created the task ("failed to create
        containerd task: failed to get task pid: context canceled") marks the container exited but
        leaves its task (``runc init``, never exec'd) behind; CRI can neither stop it (not running
        for CRI) nor remove it ("cannot delete running task"). Killing the task's processes (found
        by the container id in their cgroup) lets containerd reap and delete the task.
        """
        pids = await asyncio.to_thread(host.pids_in_cgroup_of, container_id)
        killed = await asyncio.to_thread(host.kill_pids, pids)
        log.warning(
            "container task left by an interrupted start, killing it container=%s pids=%s error=%s",
            container_id[:12],
            killed,
            err.message,
        )
        for i in range(12):
            await self.ctx.clock.sleep(0.25)
            if i == 4:
                # Its process already gone, the task record may stay (containerd never got the
                # exit): containerd's own client deletes it, the one thing CRI cannot do.
                await asyncio.to_thread(host.ctr_delete_task, self.ctx.runtime_endpoint, container_id)
            try:
                await self.ctx.client.remove_container(container_id)
                return
            except CriCallError as e:
                if e.not_found:
                    return
                if "running task" not in e.message:
                    raise
        raise err


class Scrubber:
    """The pool's scrub (``SandboxDriver.scrub_sandbox``), see the module doc."""

    def __init__(self, ctx: CriContext, facts: SandboxFacts, reaper: ContainerReaper) -> None:
        self.ctx = ctx
        self.facts = facts
        self.reaper = reaper

    async def scrub(self, record: SandboxRecord) -> bool:
        """True when the sandbox is clean and ready; False: it cannot be reused (destroy it)."""
        sid = record.sandbox_id
        client = self.ctx.client
        conts = await client.list_containers(sandbox_id=sid)
        await asyncio.gather(*(self.reaper.kill_and_remove(c.id) for c in conts))
        left = await client.list_containers(sandbox_id=sid)
        if left:
            log.warning("scrub left containers sandbox=%s count=%d", sid[:12], len(left))
            return False
        if not await self.facts.ready(sid):
            return False
        facts = await self.facts.known(sid)
        if facts.pause_pid:
            stray = await asyncio.to_thread(host.leftover_pids, facts.pause_pid)
            if stray:
                killed = await asyncio.to_thread(host.kill_pids, stray)
                log.warning("scrub killed leftover processes sandbox=%s pids=%s", sid[:12], killed)
                await self.ctx.clock.sleep(0.05)
                if await asyncio.to_thread(host.leftover_pids, facts.pause_pid):
                    return False
        for d in record.scratch_dirs:
            await asyncio.to_thread(host.wipe_dir, d)
        if facts.pause_pid:
            # IPC is per sandbox (ipc=POD): /dev/shm files and SysV objects of the last pod would
            # otherwise be visible to the next one.
            await asyncio.to_thread(host.wipe_ipc, facts.pause_pid, self.ctx.runtime.shm_dir(sid))
        return True
