"""Containers over CRI: create (with the CURRENT pod's sandbox config), start, stop, remove, and
the states of a pod's containers, with what a warmlet killed mid-start left behind cleaned up.

containerd 1.6 joins ``log_directory`` of the PodSandboxConfig sent with CreateContainer with the
container's ``log_path`` (verified), so logs of a reused sandbox land in the new pod's
kubelet-style directory; if a runtime ignores it, the expected path is linked to the real file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable

import grpc

from common import crilog
from proto import cri_pb2 as pb
from sandbox.backend import (
    BackendError,
    ContainerNotRunningError,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerStartInProgressError,
    ContainerState,
    CreateContainerError,
    ExecResult,
    ExecTimeoutError,
    PodSandboxSpec,
    RuntimeUnavailableError,
    SandboxInfo,
)
from sandbox.cri import host
from sandbox.cri import mapping as m
from sandbox.cri.client import CriCallError
from sandbox.cri.context import CriContext
from sandbox.cri.sandboxes import CriSandboxes
from sandbox.cri.scrub import ContainerReaper
from sandbox.cri.stats import OomCounter
from sandbox.cri.termination_message import read_message
from sandbox.images import ImageCache
from sandbox.pool import WarmPool

log = logging.getLogger("warmlet.cri")

# Termination messages of exited containers (immutable once read), bounded.
MESSAGE_CACHE_MAX = 4096


def interrupted_start(state: ContainerRuntimeState) -> bool:
    """A container whose start was cancelled by its caller (a warmlet killed mid-StartContainer)
    while containerd was still CREATING the task (shim + ``runc create``): the process never ran,
    so starting it again runs it once. A start cancelled later ("failed to start containerd task")
    may have run the process before containerd killed it: that one stays a StartError (exit 128),
    as kubelet reports it, and is never run again (at most once)."""
    msg = state.message or ""
    return (
        state.state == ContainerState.EXITED
        and not state.started_at
        and "failed to create containerd task" in msg
        # the caller's context ended: cancelled, or the shim's start command killed with it
        and ("context canceled" in msg or "signal: killed" in msg)
    )


def start_in_progress(err: BackendError) -> bool:
    """The runtime refused a StartContainer because an earlier one for the container is still
    being carried out (containerd: "container is in starting state"). Matching the runtime's
    error text belongs here, inside the CRI layer that knows the runtime; the provider only sees
    the typed ``ContainerStartInProgressError``."""
    return "starting state" in err.message


class CriContainers:
    """The container half of ``Backend`` over CRI (see module doc)."""

    def __init__(
        self,
        ctx: CriContext,
        pool: WarmPool,
        sandboxes: CriSandboxes,
        images: ImageCache,
        reaper: ContainerReaper,
        oom: OomCounter,
        finished_states: Callable[[str], list[ContainerRuntimeState] | None],
        node_memory_bytes: int,
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.sandboxes = sandboxes
        self.images = images
        self.reaper = reaper
        self.oom = oom
        self.finished_states = finished_states  # kept final states of a released finished pod
        self.node_memory_bytes = node_memory_bytes
        self._messages: dict[str, str] = {}  # exited container id -> terminated message
        self._log_directory_honoured = False  # see _ensure_log_location

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        return crilog.container_log_path(self.ctx.log_dir, namespace, name, uid, container, attempt)

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        rec = self.pool.records.get(sandbox.sandbox_id)
        if rec is None or rec.pod_uid != pod.uid:
            raise CreateContainerError(f"sandbox {sandbox.sandbox_id[:12]} is not assigned to pod {pod.uid}")
        image_ref = ""
        image_uid: int | None = 0  # kubelet's getImageUser: an image naming no user runs as root
        image_user = ""
        img = await self.images.status(container.image)  # usually the one ensure_image just got
        if img is not None:
            image_ref = img.id
            self.images.touch(img.id)
            if img.uid is not None:
                image_uid = img.uid
            elif img.username:
                image_uid, image_user = None, img.username
        pod_res = pod.resources
        has_pod_res = any(
            (
                pod_res.cpu_request_milli,
                pod_res.cpu_limit_milli,
                pod_res.memory_request_bytes,
                pod_res.memory_limit_bytes,
            )
        )
        qos = m.qos_class([pod_res if has_pod_res else container.resources])
        cfg = m.container_config(
            pod,
            container,
            attempt,
            image_ref,
            qos=qos,
            node_memory_bytes=self.node_memory_bytes,
            instance=self.ctx.instance,
            image_uid=image_uid,
            image_user=image_user,
        )
        # The CURRENT pod's sandbox config: containerd takes log_directory (and names) from it.
        sb_cfg = self.sandboxes.sandbox_config(
            pod, cgroup_parent=self.sandboxes.facts.cgroup_parent(rec.sandbox_id)
        )
        try:
            cid = await self.ctx.client.create_container(rec.sandbox_id, cfg, sb_cfg)
        except RuntimeUnavailableError:
            raise
        except BackendError as e:
            raise CreateContainerError(f"Error: {e.message}") from e
        if (rec.from_pool or rec.uses > 1) and not self._log_directory_honoured:
            await self._ensure_log_location(cid, pod, container.name, attempt)
        return cid

    async def _ensure_log_location(self, cid: str, pod: PodSandboxSpec, container: str, attempt: int) -> None:
        """If the runtime wrote the log elsewhere (old pod's dir), link the expected path to it.
        A runtime seen honouring the current pod's ``log_directory`` once does so every time (it
        is how its CreateContainer works): later creates skip this ContainerStatus call."""
        st = await self.ctx.client.container_status(cid)
        want = self.log_path(pod.namespace, pod.name, pod.uid, container, attempt)
        have = st.status.log_path
        if have == want:
            self._log_directory_honoured = True
            log.info("runtime honours the current pod's log_directory: log paths no longer checked")
        elif have:
            os.makedirs(os.path.dirname(want), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.symlink(have, want)
            log.info("container log linked container=%s path=%s target=%s", cid[:12], want, have)

    async def start_container(self, container_id: str) -> None:
        try:
            await self.ctx.client.start_container(container_id)
        except RuntimeUnavailableError:
            raise
        except BackendError as e:
            if start_in_progress(e):
                raise ContainerStartInProgressError(e.message) from e
            raise BackendError(e.message, reason="RunContainerError") from e

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        try:
            await self.ctx.client.stop_container(container_id, max(0, math.ceil(grace_seconds)))
        except CriCallError as e:
            if not e.not_found:
                raise

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        """ExecSync with the command's own timeout (whole seconds, at least 1, as kubelet sends)."""
        try:
            resp = await self.ctx.client.exec_sync(container_id, cmd, max(1, math.ceil(timeout_seconds)))
        except CriCallError as e:
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ExecTimeoutError(f"command {cmd!r} timed out after {timeout_seconds:g}s") from e
            if e.not_found or e.code == grpc.StatusCode.FAILED_PRECONDITION:
                msg = f"container {container_id[:12]} is not running: {e.details}"
                raise ContainerNotRunningError(msg) from e
            raise
        return ExecResult(exit_code=resp.exit_code, stdout=resp.stdout, stderr=resp.stderr)

    async def remove_container(self, container_id: str) -> None:
        self._messages.pop(container_id, None)
        try:
            await self.ctx.client.remove_container(container_id)
        except CriCallError as e:
            if not e.not_found:
                raise

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        try:
            conts = await self.ctx.client.list_containers(labels={m.LABEL_POD_UID: pod_uid})
        except RuntimeUnavailableError:
            self.ctx.retry_on_recovery.add(pod_uid)
            raise
        if not conts:
            kept = self.finished_states(pod_uid)
            if kept is not None:
                return kept  # a released finished pod
        out: list[ContainerRuntimeState] = []
        await asyncio.gather(*(self._state_of(c.id, pod_uid, out) for c in conts))
        out.sort(key=lambda s: (s.name, s.attempt, s.created_at or 0.0))
        return out

    async def _state_of(self, cid: str, pod_uid: str, out: list[ContainerRuntimeState]) -> None:
        """Append the container's state to ``out``, unless it is gone or was removed here because
        its start provably never ran (then the same attempt is created again)."""
        try:
            st = await self.ctx.client.container_status(cid)
        except CriCallError as e:
            if e.not_found:
                return
            raise
        self.oom.note(cid, st.status)
        state = m.container_state_from_status(st.status)
        if interrupted_start(state):
            # The StartContainer of a warmlet killed (or cancelled) mid-call: containerd gave up
            # before the process ran. Removed, the same attempt is created again: it never ran.
            log.warning(
                "container start was interrupted, never ran; removing it to start again "
                "container=%s pod_uid=%s name=%s message=%s",
                cid[:12],
                pod_uid,
                state.name,
                state.message,
            )
            await self.reaper.kill_and_remove(cid)
            return
        if state.state == ContainerState.UNKNOWN:
            # containerd restarted in the middle of this container's start and cannot load
            # its task. If the process provably never ran, remove it to create the same
            # attempt again; otherwise the pod sync kills it and restarts it, as kubelet does.
            never = await asyncio.to_thread(host.task_never_started, cid, self.ctx.runtime.task_dir(cid))
            log.warning(
                "container state unknown (runtime restarted during its start) container=%s "
                "pod_uid=%s name=%s never_started=%s",
                cid[:12],
                pod_uid,
                state.name,
                never,
            )
            if never:
                await self.reaper.kill_and_remove(cid)
                return
        if state.state == ContainerState.EXITED:
            state.message = await self._terminated_message(st.status, state)
        out.append(state)

    async def _terminated_message(self, status: pb.ContainerStatus, state: ContainerRuntimeState) -> str:
        """The runtime's message plus the termination message (file, or log tail on error)."""
        cached = self._messages.get(state.container_id)
        if cached is not None:
            return cached
        ann = status.annotations
        message = await asyncio.to_thread(
            read_message,
            state.message,
            ann.get(m.K8S_CONTAINER_TERMINATION_MESSAGE_PATH, ""),
            ann.get(m.K8S_CONTAINER_TERMINATION_MESSAGE_POLICY, "File"),
            state.exit_code or 0,
            state.reason,
            {mt.container_path: mt.host_path for mt in status.mounts},
            status.log_path,
        )
        if len(self._messages) >= MESSAGE_CACHE_MAX:
            self._messages.pop(next(iter(self._messages)))
        self._messages[state.container_id] = message
        return message
