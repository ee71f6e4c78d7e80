"""A simulated runtime: a KWOK-like fake node that runs 10,000 pods on two cores.

Containers do not exist; they only have state, configurable latencies (image pull the
first time per image, sandbox creation, start), real CRI log files (so ``kubectl logs``
works as on the CRI backend) and synthetic resource usage. Sandboxes come from the real
``WarmPool`` and images through the real ``ImageCache`` (this backend is their driver and
image runtime), so the pool's settings and caps apply here as on the CRI backend and the
scale runs exercise them. Each running container costs one timer (its exit or its next log
tick), never a task, and every lookup is a dict access. Time comes from an injected ``Clock``.

Pod annotations drive behaviour (a ``.<container>`` suffix overrides per container):

- ``warmlet.io/sim-run-seconds``: run time before exiting (default: config; ``inf`` = forever)
- ``warmlet.io/sim-exit-code`` / ``warmlet.io/sim-exit-reason``: how it exits (default 0)
- ``warmlet.io/sim-log`` / ``warmlet.io/sim-stderr``: lines written at start
- ``warmlet.io/sim-log-every-seconds``: write a ``tick <n>`` line periodically
- ``warmlet.io/sim-ignore-term``: ``true`` = TERM is ignored, exits at the grace deadline
- ``warmlet.io/sim-cpu-nano-cores`` / ``warmlet.io/sim-memory-bytes``: reported usage
- ``warmlet.io/sim-exec-exit-code`` / ``warmlet.io/sim-exec-output`` / ``warmlet.io/sim-exec-seconds``:
  what a command run in the container (ExecSync: exec probes and hooks) returns and how long it
  takes (default: exit 0 at once; longer than the timeout: timed out)

Images whose name contains a marker such as ``does-not-exist`` fail to pull.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from typing import Protocol

from common.clock import SYSTEM, Clock
from common.crilog import container_log_path, pod_log_dir
from sandbox.backend import (
    BackendCapabilities,
    BackendError,
    BackendHealth,
    ContainerRuntimeState,
    ContainerSpec,
    CreateContainerError,
    ExecResult,
    ImageResult,
    NodeUsage,
    PodChangeCallback,
    PodSandboxSpec,
    PullPolicy,
    RegistryCredential,
    SandboxInfo,
)
from sandbox.images import ImageCache, ImageInfo, parse_reference
from sandbox.pool import SandboxRecord, WarmPool
from sandbox.pool_policy import PoolDefaults, PoolSettings
from sandbox.sim_containers import ContainerDefaults, SimContainers

log = logging.getLogger(__name__)

MISSING_IMAGE_MARKERS = ("does-not-exist", "doesnotexist", "notfound", "not-found", "nonexistent", "missing")


def normalize_image(image: str) -> tuple[str, str]:
    """(repository, ``:tag`` or ``@digest``) of a reference, normalized as the runtimes do
    (:mod:`common.imageref`); raises InvalidImageNameError with kubelet's message."""
    ref = parse_reference(image)
    return ref.repository, ref.version


class SimulatedSettings(Protocol):
    """The ``simulated`` section of the configuration (``SimulatedConfig``)."""

    pull_seconds: float
    sandbox_seconds: float
    start_seconds: float
    default_run_seconds: float | None
    cpu_nano_cores: int
    memory_bytes: int


class SimImageRuntime:
    """``images.ImageRuntime`` of the simulated node: a dict of present images, pulls that take time."""

    def __init__(self, clock: Clock, pull_seconds: float = 0.0) -> None:
        self.clock = clock
        self.pull_seconds = pull_seconds
        self._images: dict[str, ImageInfo] = {}  # normalized reference -> image
        self.pulls = 0  # images actually "downloaded" (for tests and benches)

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # every container start looks its image up
    def _key(image: str) -> tuple[str, str]:
        repo, tag = normalize_image(image)  # raises InvalidImageNameError (not cached)
        return repo, repo + tag

    def add(self, image: str) -> ImageInfo:
        repo, key = self._key(image)
        digest = hashlib.sha256(key.encode()).hexdigest()
        info = ImageInfo(id=f"{repo}@sha256:{digest}", size=1_000_000 + int(digest[:6], 16) * 16, tags=(key,))
        self._images[key] = info
        return info

    def has(self, image: str) -> bool:
        return self._key(image)[1] in self._images

    def image_id(self, image: str) -> str:
        """The id of a present image, '' if absent (raises InvalidImageNameError if invalid)."""
        info = self._images.get(self._key(image)[1])
        return info.id if info is not None else ""

    async def status(self, image: str) -> ImageInfo | None:
        return self._images.get(self._key(image)[1])

    async def pull(self, image: str, credential: RegistryCredential | None = None) -> str:
        repo, key = self._key(image)
        present = self._images.get(key)
        if present is not None:  # Always: the manifest is re-checked, the layers are all present
            return present.id
        name = repo.split("/", 1)[1] if "/" in repo else repo
        if any(marker in name for marker in MISSING_IMAGE_MARKERS):
            raise BackendError(
                f"rpc error: code = NotFound desc = "
                f'failed to pull and unpack image "{image}": {repo}: not found'
            )
        if self.pull_seconds > 0:
            await self.clock.sleep(self.pull_seconds)
        self.pulls += 1
        return self.add(image).id

    async def list(self) -> list[ImageInfo]:
        return list(self._images.values())

    async def remove(self, image_id: str) -> None:
        for key, info in list(self._images.items()):
            if info.id == image_id:
                del self._images[key]


class SimulatedBackend:
    """The Backend protocol with timers and files only, over the real warm pool and image cache.

    It is the pool's ``SandboxDriver`` (``create_sandbox``, ``scrub_sandbox``, ...) and the image
    cache's runtime (``SimImageRuntime``).
    """

    name = "simulated"
    container_id_scheme = "simulated"
    # Simulated starts are timers (simulated.start_seconds each), not processes: they do not slow
    # each other down, so a start wave may have many in flight.
    capabilities = BackendCapabilities(runs_processes=False, start_concurrency=512)

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        pull_seconds: float = 0.0,
        sandbox_seconds: float = 0.0,
        start_seconds: float = 0.0,
        default_run_seconds: float | None = None,
        cpu_nano_cores: int = 1_000_000,
        memory_bytes: int = 8 * 1024 * 1024,
        pool: PoolDefaults | None = None,
        node_memory_bytes: int = 64 * 1024**3,
        node_fs_bytes: int = 200 * 1024**3,
        preloaded_images: tuple[str, ...] = (),
        max_parallel_pulls: int = 64,
        maintenance_interval: float = 5.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self.log_dir = os.fspath(log_dir)
        self.clock = clock
        self.sandbox_seconds = sandbox_seconds
        self.node_memory_bytes = node_memory_bytes
        self.node_fs_bytes = node_fs_bytes
        self.maintenance_interval = maintenance_interval
        self.start_time = clock.time()
        self.image_runtime = SimImageRuntime(clock, pull_seconds)
        for image in preloaded_images:
            self.image_runtime.add(image)
        self.images = ImageCache(self.image_runtime, max_parallel_pulls=max_parallel_pulls, clock=clock)
        self.pool = WarmPool(self, pool or PoolDefaults(), clock=clock)
        defaults = ContainerDefaults(default_run_seconds, cpu_nano_cores, memory_bytes, start_seconds)
        self.containers = SimContainers(clock, defaults, self._notify)
        self._sandboxes: dict[str, list[str]] = {}  # sandbox id -> its containers' ids
        self._subscribers: list[PodChangeCallback] = []
        self._ip_counter = 0
        self._closed = False
        self.sandboxes_created = 0

    @classmethod
    def from_config(
        cls,
        sim: SimulatedSettings,
        log_dir: str | os.PathLike[str],
        pool: PoolSettings | None = None,
        *,
        clock: Clock = SYSTEM,
    ) -> SimulatedBackend:
        """Build from the ``simulated`` and ``pool`` sections of the configuration."""
        return cls(
            log_dir,
            pull_seconds=sim.pull_seconds,
            sandbox_seconds=sim.sandbox_seconds,
            start_seconds=sim.start_seconds,
            default_run_seconds=sim.default_run_seconds,
            cpu_nano_cores=sim.cpu_nano_cores,
            memory_bytes=sim.memory_bytes,
            pool=PoolDefaults.from_settings(pool) if pool is not None else None,
            clock=clock,
        )

    @property
    def pulls(self) -> int:
        """Images actually "downloaded" (for tests and benches)."""
        return self.image_runtime.pulls

    @property
    def pool_max_per_workload(self) -> int:
        return self.pool.defaults.max_per_workload

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        self._closed = False
        self.containers.reopen()
        self.pool.start_maintenance(self.maintenance_interval)
        log.info("simulated backend started log_dir=%s", self.log_dir)

    async def close(self) -> None:
        self._closed = True
        await self.pool.stop_maintenance()
        await self.containers.close()
        await self.images.close()

    async def health(self) -> BackendHealth:
        if self._closed:
            return BackendHealth(ok=False, reason="Closed", message="simulated backend is closed")
        return BackendHealth(ok=True, runtime_name="simulated", runtime_version="0.1.0")

    def subscribe(self, callback: PodChangeCallback) -> None:
        self._subscribers.append(callback)

    def _notify(self, pod_uid: str) -> None:
        for cb in self._subscribers:
            try:
                cb(pod_uid)
            except Exception:
                log.exception("pod change subscriber failed pod_uid=%s", pod_uid)

    # -- images ------------------------------------------------------------------------------

    def has_image(self, image: str) -> bool:
        return self.image_runtime.has(image)

    async def ensure_image(
        self, image: str, policy: PullPolicy, credentials: Sequence[RegistryCredential] = ()
    ) -> ImageResult:
        return await self.images.ensure(image, policy, credentials)

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        """SandboxDriver: cache the workload's images (IfNotPresent) ahead of its pods."""
        for image in dict.fromkeys(spec.images):
            await self.images.ensure(image, PullPolicy.IF_NOT_PRESENT, spec.pull_credentials.get(image, ()))

    # -- sandboxes: the pool's driver --------------------------------------------------------

    def _next_ip(self) -> str:
        self._ip_counter += 1
        n = self._ip_counter
        return f"10.{88 + (n >> 16) % 100}.{(n >> 8) & 0xFF}.{n & 0xFF or 1}"

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        if self.sandbox_seconds > 0:
            await self.clock.sleep(self.sandbox_seconds)
        sid = secrets.token_hex(32)
        self._sandboxes[sid] = []
        self.sandboxes_created += 1
        return sid, self._next_ip()

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        for cid in self._sandboxes.get(record.sandbox_id, ()):
            self.containers.drop(cid)
        if record.sandbox_id not in self._sandboxes:
            return False
        self._sandboxes[record.sandbox_id] = []
        return True

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        for cid in self._sandboxes.pop(sandbox_id, ()):
            self.containers.drop(cid)
        log.debug("sandbox destroyed sandbox_id=%s", sandbox_id)

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return sandbox_id in self._sandboxes

    # -- sandboxes: the Backend's --------------------------------------------------------------

    async def acquire_sandbox(self, pod: PodSandboxSpec) -> SandboxInfo:
        return (await self.pool.acquire(pod)).info()

    async def release_sandbox(self, pod_uid: str, reusable: bool) -> None:
        """Remove the pod's containers and log directory; the pool keeps or destroys its sandbox."""
        rec = self.pool.get_by_pod(pod_uid)
        if rec is None:
            return
        for cid in self._sandboxes.get(rec.sandbox_id, ()):
            self.containers.drop(cid)
        shutil.rmtree(pod_log_dir(self.log_dir, rec.namespace, rec.pod_name, pod_uid), ignore_errors=True)
        await self.pool.release(pod_uid, reusable)

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        """Cache the template's images and create idle sandboxes for its key (the pool's caps apply)."""
        return await self.pool.prewarm(pod, count)

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        """Release sandboxes of pods that no longer exist and remove stray pod log directories."""
        for uid in [u for u in self.pool.by_pod if u not in live_pod_uids]:
            log.info("releasing sandbox of unknown pod pod_uid=%s", uid)
            await self.release_sandbox(uid, reusable=True)
        try:
            entries = os.listdir(self.log_dir)
        except OSError:
            return
        for entry in entries:
            parts = entry.split("_")
            if len(parts) != 3 or parts[2] in live_pod_uids or parts[2] in self.pool.by_pod:
                continue
            shutil.rmtree(os.path.join(self.log_dir, entry), ignore_errors=True)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        records = self.pool.records
        return [records[sid].info() for sid in self.pool.by_pod.values()]

    def idle_sandboxes(self, workload_key: str | None = None) -> int:
        """Warm pool size, for one workload or in total."""
        if workload_key is None:
            return self.pool.index.idle_total
        return self.pool.index.idle_count(workload_key)

    # -- containers --------------------------------------------------------------------------

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        return container_log_path(self.log_dir, namespace, name, uid, container, attempt)

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        rec = self.pool.get_by_pod(pod.uid)
        if rec is None or rec.sandbox_id != sandbox.sandbox_id:
            raise CreateContainerError(f"sandbox {sandbox.sandbox_id[:12]} of pod {pod.uid} not found")
        if container.is_ephemeral:
            # A debug container here would pretend to run: refuse (the provider, seeing
            # capabilities.runs_processes False, reports it without asking).
            raise CreateContainerError(
                f'ephemeral container "{container.name}" cannot run: the simulated backend runs no processes'
            )
        cid = self.containers.create(
            rec.sandbox_id,
            pod,
            container,
            attempt,
            self.image_runtime.image_id(container.image),
            self.log_path(pod.namespace, pod.name, pod.uid, container.name, attempt),
        )
        self._sandboxes[rec.sandbox_id].append(cid)
        return cid

    async def start_container(self, container_id: str) -> None:
        await self.containers.start(container_id)

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        await self.containers.stop(container_id, grace_seconds)

    async def remove_container(self, container_id: str) -> None:
        c = self.containers.drop(container_id)
        if c is None:
            return
        cids = self._sandboxes.get(c.sandbox_id)
        if cids is not None and container_id in cids:
            cids.remove(container_id)
        try:
            os.unlink(c.state.log_path)
        except OSError:
            pass

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        return await self.containers.exec_sync(container_id, cmd, timeout_seconds)

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        rec = self.pool.get_by_pod(pod_uid)
        if rec is None:
            return []
        return self.containers.states(self._sandboxes.get(rec.sandbox_id, ()))

    # -- stats -------------------------------------------------------------------------------

    async def stats(self) -> NodeUsage:
        pods = []
        for uid, sid in self.pool.by_pod.items():
            r = self.pool.records[sid]
            pods.append((uid, r.namespace, r.pod_name, r.created_at, self._sandboxes.get(sid, [])))
        return self.containers.node_usage(pods, self.node_memory_bytes, self.node_fs_bytes, self.start_time)
