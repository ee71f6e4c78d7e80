"""The Backend protocol over CRI (containerd/CRI-O): real sandboxes, a warm pool, an image cache.

A facade: it wires the parts of this package and forwards the seam's calls to them. Mapping
follows kubelet (``mapping``). What is specific to warmlet:

- Sandboxes are reused by pods of the same workload key (``pool.WarmPool`` over ``sandboxes``);
  warmlet tracks "pod uid -> sandbox" itself (state file plus the ``warmlet.io/pod-uid`` label on
  every container) and sends the CURRENT pod's PodSandboxConfig with every CreateContainer
  (``containers``). On reuse a sandbox is scrubbed (``scrub``) and its hostname reset.
- A PLEG (``pleg``) relists containers and tells subscribers which pod changed. On start the
  backend adopts what runs (``adoption``) instead of recreating it. GC of logs, images and orphan
  sandboxes is ``gc``; usage is ``stats``; what CRI cannot do on the node is ``host``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from common import crilog, logrotation
from common.clock import SYSTEM, Clock
from sandbox.backend import (
    BackendCapabilities,
    BackendError,
    BackendHealth,
    ContainerExecutor,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerState,
    ContainerStreamer,
    ExecResult,
    ExecSessionTracker,
    ImageResult,
    NodeUsage,
    PodChangeCallback,
    PodLifecycleAware,
    PodSandboxSpec,
    Prewarmer,
    PullPolicy,
    Reconciler,
    RegistryCredential,
    SandboxInfo,
)
from sandbox.cri import host
from sandbox.cri import mapping as m
from sandbox.cri.adoption import adopt
from sandbox.cri.client import CriApi, CriClient
from sandbox.cri.containers import CriContainers
from sandbox.cri.context import CriContext
from sandbox.cri.exec_sessions import ExecSessions
from sandbox.cri.facts import SandboxFacts
from sandbox.cri.finished import FinishedPods
from sandbox.cri.gc import ImageGC, OrphanSweeper, PodGC
from sandbox.cri.host import RuntimeInfo
from sandbox.cri.image_runtime import CriImageRuntime
from sandbox.cri.log_rotation import ContainerLogRotator
from sandbox.cri.metered import MeteredCriClient
from sandbox.cri.pleg import Pleg
from sandbox.cri.relay import RelayProcess, start_relay, stop_relay
from sandbox.cri.sandboxes import CriSandboxes
from sandbox.cri.scrub import ContainerReaper
from sandbox.cri.stats import CriStats, OomCounter
from sandbox.cri.streaming import CriStreamer
from sandbox.images import ImageCache
from sandbox.pool import WarmPool
from sandbox.pool_policy import PoolDefaults, PoolSettings
from sandbox.pull_records import RECORDS_FILE, PullRecords

log = logging.getLogger("warmlet.cri")

STATE_FILE = "cri-pool.json"


class CriSettings(Protocol):
    """Every field of provider.config.CRIConfig this backend reads (no provider import)."""

    runtime_endpoint: str
    image_endpoint: str
    call_timeout_seconds: float
    pull_timeout_seconds: float
    max_parallel_pulls: int
    cgroup_parent: str
    poll_interval_seconds: float
    image_gc_high_bytes: int
    image_gc_min_age_seconds: float
    container_log_max_size: str
    container_log_max_files: int
    container_log_monitor_interval_seconds: float
    pod_pids_limit: int
    call_relay: bool


class CriBackend(
    Prewarmer, Reconciler, PodLifecycleAware, ContainerExecutor, ContainerStreamer, ExecSessionTracker
):
    """Backend over a CRI runtime with a per-workload warm pool (see module docstring)."""

    name = "cri"
    capabilities = BackendCapabilities(runs_processes=True)

    def __init__(
        self,
        client: CriApi,
        cri: CriSettings,
        pool: PoolSettings,
        log_dir: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        *,
        maintenance_interval: float = 5.0,
        image_gc_interval: float = 60.0,
        instance: str = "",
        clock: Clock = SYSTEM,
    ) -> None:
        self.cri = cri
        self.client = client
        self.instance = instance
        self.selector = m.managed_selector(instance)
        self.log_dir = os.fspath(log_dir)
        self.state_dir = Path(state_dir)
        self.maintenance_interval = maintenance_interval
        self.ctx = CriContext(client, cri.runtime_endpoint, self.selector, instance, self.log_dir, clock)
        self._runtime_name = "containerd"  # until the runtime's Version answers (start)
        self.images = ImageCache(
            CriImageRuntime(client),
            max_parallel_pulls=cri.max_parallel_pulls,
            gc_budget_bytes=cri.image_gc_high_bytes,
            gc_min_age_seconds=cri.image_gc_min_age_seconds,
            clock=clock,
            records=PullRecords(self.state_dir / RECORDS_FILE),  # survive restarts, like kubelet's
        )
        self.facts = SandboxFacts(client)
        self.reaper = ContainerReaper(self.ctx)
        self.sandboxes = CriSandboxes(
            self.ctx,
            self.images,
            self.facts,
            self.reaper,
            cgroup_parent=cri.cgroup_parent,
            pids_limit=cri.pod_pids_limit,
        )
        defaults = PoolDefaults.from_settings(pool)
        self.pool = WarmPool(self.sandboxes, defaults, state_file=self.state_dir / STATE_FILE, clock=clock)
        self.finished = FinishedPods(self.pool, self.log_dir)
        self._specs: dict[str, PodSandboxSpec] = {}  # pod uid -> spec (for create_container)
        self.oom = OomCounter(client)
        self.containers = CriContainers(
            self.ctx,
            self.pool,
            self.sandboxes,
            self.images,
            self.reaper,
            self.oom,
            self.finished.states,
            host.node_memory_bytes(),
        )
        self.pleg = Pleg(
            client,
            self.selector,
            cri.poll_interval_seconds,
            self._notify,
            self.oom.check,
            self._notify_recovered,
            clock=clock,
        )
        self.pod_gc = PodGC(
            self.ctx, self.pool, self.sandboxes, self.reaper, self.finished, self.release_sandbox
        )
        self.streams = CriStreamer(client, self._sandbox_of)
        self.exec_sessions = ExecSessions(clock=clock)
        self.orphans = OrphanSweeper(self.ctx, self.pool, self.sandboxes)
        self.image_gc = ImageGC(self.ctx, self.pool, self.images, image_gc_interval)
        self.usage = CriStats(self.ctx, self.facts, self.pool.get_by_pod, self._specs, self.log_path)
        self.log_rotator: ContainerLogRotator | None = None
        max_size = logrotation.parse_size(cri.container_log_max_size)
        if max_size > 0:
            self.log_rotator = ContainerLogRotator(
                client,
                self.selector,
                max_size,
                cri.container_log_max_files,
                cri.container_log_monitor_interval_seconds,
                clock=clock,
            )
        self.relay: RelayProcess | None = None  # keeps calls in flight alive if warmlet dies
        self._subscribers: list[PodChangeCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @classmethod
    def from_config(
        cls,
        cri: CriSettings,
        pool: PoolSettings,
        log_dir: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        *,
        instance: str = "",
        maintenance_interval: float = 5.0,
        clock: Clock = SYSTEM,
    ) -> CriBackend:
        """The backend over a metered CRI client to ``cri.runtime_endpoint``."""
        client = CriClient(
            cri.runtime_endpoint,
            cri.image_endpoint,
            call_timeout=cri.call_timeout_seconds,
            pull_timeout=cri.pull_timeout_seconds,
            clock=clock,
        )
        return cls(
            MeteredCriClient(client),
            cri,
            pool,
            log_dir,
            state_dir,
            instance=instance,
            maintenance_interval=maintenance_interval,
            clock=clock,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def container_id_scheme(self) -> str:
        """The runtime's name from its Version call (``containerd``, ``cri-o``), as kubelet uses it."""
        return self._runtime_name

    async def start(self) -> None:
        """Connect, adopt existing warmlet sandboxes/containers, start PLEG and maintenance loops."""
        if self._started:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.cri.call_relay and self.relay is None:
            self.relay = await start_relay(self.state_dir, self.cri.runtime_endpoint)
            self.client.dial_through(self.relay.target)
        self.client.connect()
        v = await self.client.version()
        self._runtime_name = v.runtime_name or self._runtime_name
        log.info(
            "cri connected runtime=%s version=%s api=%s",
            v.runtime_name,
            v.runtime_version,
            v.runtime_api_version,
        )
        try:
            self.ctx.runtime = RuntimeInfo.from_status_info((await self.client.status(verbose=True)).info)
        except BackendError:
            self.ctx.runtime = RuntimeInfo()
        await adopt(self.ctx, self.pool, self.finished, self.sandboxes, self.reaper, self.pleg)
        self._started = True
        loops = [(self.pleg.run(), "cri-pleg"), (self.image_gc.run(), "cri-image-gc")]
        if self.log_rotator is not None:
            loops.append((self.log_rotator.run(), "cri-log-rotation"))
        loops.append((self.orphans.run(), "cri-orphan-sweep"))
        self._tasks += [asyncio.create_task(coro, name=name) for coro, name in loops]
        self.pool.start_maintenance(self.maintenance_interval)

    async def close(self) -> None:
        """Stop loops and in-flight pulls; containers keep running (a restarted warmlet adopts them)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.exec_sessions.close()
        await self.pool.stop_maintenance()
        await self.images.close()
        self.pool.save()
        await self.client.close()
        if self.relay is not None:
            await stop_relay(self.relay, self.state_dir)
        self._started = False

    async def health(self) -> BackendHealth:
        """The runtime's own conditions first, then whether the PLEG keeps relisting."""
        try:
            v = await self.client.version()
            st = await self.client.status()
        except BackendError as e:
            return BackendHealth(ok=False, reason="ContainerRuntimeDown", message=e.message)
        names = {"runtime_name": v.runtime_name, "runtime_version": v.runtime_version}
        conds = {c.type: c for c in st.status.conditions}
        for ctype, reason in (
            ("RuntimeReady", "ContainerRuntimeNotReady"),
            ("NetworkReady", "NetworkNotReady"),
        ):
            c = conds.get(ctype)
            if c is None or not c.status:
                msg = f"{ctype}=false reason:{c.reason if c else 'missing'} message:{c.message if c else ''}"
                return BackendHealth(ok=False, reason=reason, message=msg, **names)
        pleg_ok, pleg_msg = self.pleg.healthy()
        if not pleg_ok:
            return BackendHealth(ok=False, reason="PLEGNotHealthy", message=pleg_msg, **names)
        return BackendHealth(ok=True, **names)

    def subscribe(self, callback: PodChangeCallback) -> None:
        self._subscribers.append(callback)

    def _notify(self, pod_uid: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(pod_uid)
            except Exception:
                log.exception("pod change subscriber failed pod_uid=%s", pod_uid)

    def _notify_recovered(self) -> None:
        """The runtime answers again: every pod with a sandbox and every pod a call failed for
        meanwhile syncs now, not when its (by then long) back-off expires."""
        uids = {r.pod_uid for r in self.pool.records.values() if r.pod_uid} | self.ctx.retry_on_recovery
        self.ctx.retry_on_recovery.clear()
        log.info("cri relist recovered pods_to_sync=%d", len(uids))
        for uid in uids:
            self._notify(uid)

    # ------------------------------------------------------------------ images and sandboxes

    async def ensure_image(
        self, image: str, policy: PullPolicy, credentials: Sequence[RegistryCredential] = ()
    ) -> ImageResult:
        return await self.images.ensure(image, policy, credentials)

    async def acquire_sandbox(self, pod: PodSandboxSpec) -> SandboxInfo:
        rec = self.pool.get_by_pod(pod.uid)
        if rec is not None and not await self.sandboxes.sandbox_ready(rec.sandbox_id):
            # The pod's sandbox died (pause killed, node reboot): like kubelet, start a new one.
            log.warning("sandbox not ready, recreating sandbox=%s pod_uid=%s", rec.sandbox_id[:12], pod.uid)
            await self.pool.forget_pod(pod.uid)
            await self.sandboxes.destroy_sandbox(rec.sandbox_id)
            pod = dataclasses.replace(pod, attempt=pod.attempt + 1)
        rec = await self.pool.acquire(pod)
        self._specs[pod.uid] = pod
        os.makedirs(crilog.pod_log_dir(self.log_dir, pod.namespace, pod.name, pod.uid), exist_ok=True)
        await self.sandboxes.prepare_for(rec, pod)
        return rec.info()

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return [
            r.info() for r in self.pool.records.values() if r.state in ("in_use", "releasing") and r.pod_uid
        ]

    async def release_sandbox(self, pod_uid: str, reusable: bool) -> None:
        """Scrub the pod's sandbox back to the pool; its log files and final states are kept
        until the pod object is deleted (:meth:`pod_gone`, see ``finished``)."""
        spec = self._specs.pop(pod_uid, None)
        if spec is not None and self.pool.get_by_pod(pod_uid) is not None:
            final = [s for s in await self.pod_containers(pod_uid) if s.state == ContainerState.EXITED]
            if final:
                self.finished.keep(spec, final)
        await self.pool.release(pod_uid, reusable)

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        return await self.pool.prewarm(pod, count)

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        await self.pod_gc.reconcile(live_pod_uids)

    async def final_status_written(self, pod_uid: str) -> None:
        self.finished.status_written(pod_uid)

    async def pod_gone(self, pod_uid: str) -> None:
        await self.finished.gone(pod_uid)

    # ------------------------------------------------------------------ containers and stats

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        return await self.containers.create_container(sandbox, pod, container, attempt)

    async def start_container(self, container_id: str) -> None:
        """Raises ``ContainerStartInProgressError`` while an earlier start is still carried out."""
        await self.containers.start_container(container_id)

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        await self.containers.stop_container(container_id, grace_seconds)

    async def remove_container(self, container_id: str) -> None:
        await self.containers.remove_container(container_id)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        # never while an interactive exec of the same command looks for its process
        async with self.exec_sessions.exclusive(container_id, cmd):
            return await self.containers.exec_sync(container_id, cmd, timeout_seconds)

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        return await self.containers.pod_containers(pod_uid)

    # ------------------------------------------------------------------ interactive streams

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        return await self.streams.exec_url(
            container_id, cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        return await self.streams.attach_url(container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr)

    async def port_forward_url(self, pod_uid: str, ports: list[int]) -> str:
        return await self.streams.port_forward_url(pod_uid, ports)

    async def exec_session_started(self, container_id: str, cmd: list[str]) -> str:
        return await self.exec_sessions.exec_session_started(container_id, cmd)

    async def exec_session_ended(self, key: str) -> int:
        return await self.exec_sessions.exec_session_ended(key)

    def _sandbox_of(self, pod_uid: str) -> str | None:
        rec = self.pool.get_by_pod(pod_uid)
        return rec.sandbox_id if rec is not None else None

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        return self.containers.log_path(namespace, name, uid, container, attempt)

    async def stats(self) -> NodeUsage:
        return await self.usage.stats()
