"""Pod sandboxes over CRI: the warm pool's ``SandboxDriver`` (create, scrub, destroy, ready).

CRI fixes a sandbox's metadata at RunPodSandbox, so the pool tracks "pod uid -> sandbox" itself;
prewarmed sandboxes get placeholder metadata. With a pids limit a pod gets its own cgroup parent
(``pids.max`` written before the sandbox starts in it), removed again with the sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from common import crilog
from proto import cri_pb2 as pb
from sandbox import metrics
from sandbox.backend import (
    BackendError,
    PodSandboxSpec,
    PullPolicy,
    RunSandboxError,
    RuntimeUnavailableError,
)
from sandbox.cri import host, uts
from sandbox.cri import mapping as m
from sandbox.cri.client import CriCallError
from sandbox.cri.context import CriContext
from sandbox.cri.facts import SandboxFacts
from sandbox.cri.scrub import ContainerReaper, Scrubber
from sandbox.images import ImageCache
from sandbox.pool import SandboxRecord

log = logging.getLogger("warmlet.cri")

DEFAULT_CGROUP_BASE = ""  # empty: let the runtime place cgroups (no pod cgroup to clean up)
PIDS_CGROUP_BASE = "/warmlet"  # pod cgroups' parent when a pids limit is set and cgroup_parent is not
ANNOTATION_CGROUP_PARENT = "warmlet.io/cgroup-parent"


class CriSandboxes:
    """``pool.SandboxDriver`` over CRI (see module doc)."""

    def __init__(
        self,
        ctx: CriContext,
        images: ImageCache,
        facts: SandboxFacts,
        reaper: ContainerReaper,
        *,
        cgroup_parent: str,
        pids_limit: int,
    ) -> None:
        self.ctx = ctx
        self.images = images
        self.facts = facts
        self.reaper = reaper
        self.scrubber = Scrubber(ctx, facts, reaper)
        self.cgroup_base = cgroup_parent
        self.pids_limit = pids_limit
        self._creating: dict[str, int] = {}  # pod uid -> RunPodSandbox calls in flight

    def creating(self, pod_uid: str) -> bool:
        """Whether a RunPodSandbox for the pod is in flight (its sandbox is no orphan yet)."""
        return pod_uid in self._creating

    def cgroup_parent(self, spec: PodSandboxSpec) -> str:
        base = self.cgroup_base or DEFAULT_CGROUP_BASE
        if not base and self.pids_limit > 0:
            base = PIDS_CGROUP_BASE  # a pids limit needs a pod cgroup to write pids.max into
        return f"{base.rstrip('/')}/pod{spec.uid}" if base else ""

    def sandbox_config(
        self, spec: PodSandboxSpec, prewarmed: bool = False, cgroup_parent: str = ""
    ) -> pb.PodSandboxConfig:
        logdir = crilog.pod_log_dir(self.ctx.log_dir, spec.namespace, spec.name, spec.uid)
        return m.sandbox_config(
            spec, logdir, cgroup_parent=cgroup_parent, prewarmed=prewarmed, instance=self.ctx.instance
        )

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        """SandboxDriver: cache the workload's images (IfNotPresent) ahead of its pods."""
        await asyncio.gather(
            *(
                self.images.ensure(i, PullPolicy.IF_NOT_PRESENT, spec.pull_credentials.get(i, ()))
                for i in dict.fromkeys(spec.images)
            )
        )

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        """SandboxDriver: RunPodSandbox (+ its IP). Prewarmed ones get placeholder metadata."""
        self._creating[spec.uid] = self._creating.get(spec.uid, 0) + 1  # not an orphan: in flight
        try:
            return await self._create_sandbox(spec, prewarmed)
        except RuntimeUnavailableError:
            self.ctx.retry_on_recovery.add(spec.uid)
            raise
        finally:
            self._creating[spec.uid] -= 1
            if not self._creating[spec.uid]:
                del self._creating[spec.uid]

    async def _create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        cfg = self.sandbox_config(spec, prewarmed, self.cgroup_parent(spec))
        cfg.annotations[ANNOTATION_CGROUP_PARENT] = cfg.linux.cgroup_parent
        if not prewarmed:
            os.makedirs(cfg.log_directory, exist_ok=True)
        if self.pids_limit > 0 and cfg.linux.cgroup_parent:
            try:
                await asyncio.to_thread(host.set_pids_max, cfg.linux.cgroup_parent, self.pids_limit)
            except OSError as e:  # run the pod anyway, like kubelet with an unsupported controller
                metrics.POD_PIDS_LIMIT_ERRORS.inc()
                log.warning("pod pids limit not set parent=%s error=%s", cfg.linux.cgroup_parent, e)
        t0 = time.perf_counter()
        for _ in range(3):
            try:
                sid = await self.ctx.client.run_pod_sandbox(cfg, spec.runtime_class)
                break
            except RuntimeUnavailableError:
                raise
            except BackendError as e:
                if "reserved" not in e.message:
                    raise RunSandboxError(f"Failed to create pod sandbox: {e.message}") from e
                # The name (pod + attempt) belongs to a sandbox an earlier warmlet made and lost
                # track of (killed mid-create): like kubelet after a sandbox died, next attempt.
                log.warning("sandbox name reserved, next attempt pod_uid=%s error=%s", spec.uid, e.message)
                cfg.metadata.attempt += 1
        else:
            raise RunSandboxError(f"Failed to create pod sandbox: name of pod {spec.uid} stays reserved")
        ip = await self.facts.read(sid)
        self.facts.set_cgroup_parent(sid, cfg.linux.cgroup_parent)
        log.info(
            "sandbox created sandbox=%s pod=%s/%s prewarmed=%s ip=%s seconds=%.3f",
            sid[:12],
            spec.namespace,
            spec.name,
            prewarmed,
            ip,
            time.perf_counter() - t0,
        )
        return sid, ip

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return await self.facts.ready(sandbox_id)

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        """SandboxDriver: make a sandbox fit for the next pod of its workload (``scrub``)."""
        return await self.scrubber.scrub(record)

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """SandboxDriver: stop + remove a sandbox with all its containers (idempotent)."""
        facts = self.facts.pop(sandbox_id)
        client = self.ctx.client
        try:
            conts = await client.list_containers(sandbox_id=sandbox_id)
            await asyncio.gather(*(self.reaper.kill_and_remove(c.id) for c in conts), return_exceptions=True)
            await client.stop_pod_sandbox(sandbox_id)
            await client.remove_pod_sandbox(sandbox_id)
        except CriCallError as e:
            if not e.not_found:
                raise
        if facts is not None and facts.cgroup_parent:
            # The runtime removes the sandbox's own cgroup, not the pod-level parent we asked for:
            # leaked empty cgroups are what degrades busy nodes, so remove it like kubelet does.
            await asyncio.to_thread(host.remove_cgroup, facts.cgroup_parent)

    async def prepare_for(self, rec: SandboxRecord, pod: PodSandboxSpec) -> None:
        """The pod got ``rec``: know its pause process, set a reused sandbox's hostname to the
        pod's, and start the pod's network counters from here."""
        facts = self.facts.get(rec.sandbox_id)
        if facts is None or not facts.pause_pid:
            ip = await self.facts.read(rec.sandbox_id)
            rec.pod_ip = rec.pod_ip or ip
            facts = self.facts.get(rec.sandbox_id)
            assert facts is not None  # read() recorded it
        if rec.from_pool and facts.pause_pid:
            # A reused sandbox keeps the first pod's UTS hostname: the new pod's, in its namespace
            # and in the runtime's hostname file (best effort, as before the pod's containers).
            hostname = (pod.hostname or pod.name)[:63]
            try:
                await uts.in_own_thread(uts.set_hostname_in, facts.pause_pid, hostname)
            except (OSError, ValueError) as e:
                log.warning("hostname reset failed sandbox=%s error=%s", rec.sandbox_id[:12], e)
            host.write_hostname_file(self.ctx.runtime.hostname_file(rec.sandbox_id), hostname)
        facts.net_baseline = self.facts.net_counters(rec.sandbox_id)
