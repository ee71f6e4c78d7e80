"""A simulated runtime: a KWOK-like fake node that runs 10,000 pods on two cores.

Containers do not exist; they only have state, configurable latencies (image pull the
first time per image, sandbox creation, start), real CRI log files (so ``kubectl logs``
works as on the CRI backend), synthetic resource usage and a warm pool. Each running
container costs one ``loop.call_at`` timer (its exit or its next log tick), never a task,
and every lookup is a dict access, so the provider can be load-tested at scale.

Pod annotations drive behaviour (a ``.<container>`` suffix overrides per container):

- ``warmlet.io/sim-run-seconds``: run time before exiting (default: config; ``inf`` = forever)
- ``warmlet.io/sim-exit-code`` / ``warmlet.io/sim-exit-reason``: how it exits (default 0)
- ``warmlet.io/sim-log`` / ``warmlet.io/sim-stderr``: lines written at start
- ``warmlet.io/sim-log-every-seconds``: write a ``tick <n>`` line periodically
- ``warmlet.io/sim-ignore-term``: ``true`` = TERM is ignored, exits at the grace deadline
- ``warmlet.io/sim-cpu-nano-cores`` / ``warmlet.io/sim-memory-bytes``: reported usage

Images whose name contains a marker such as ``does-not-exist`` fail to pull.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections import deque
from collections.abc import Mapping

from common.crilog import STDERR, STDOUT, CRILogWriter, container_log_path, pod_log_dir
from sandbox.backend import (
    BackendCapabilities,
    BackendHealth,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerState,
    ContainerUsage,
    CreateContainerError,
    ImageNeverPullError,
    ImagePullError,
    ImageResult,
    InvalidImageNameError,
    NodeUsage,
    PodChangeCallback,
    PodSandboxSpec,
    PodUsage,
    PullPolicy,
    SandboxInfo,
)

log = logging.getLogger(__name__)

ANN = "warmlet.io/"
ANN_RUN_SECONDS = ANN + "sim-run-seconds"
ANN_EXIT_CODE = ANN + "sim-exit-code"
ANN_EXIT_REASON = ANN + "sim-exit-reason"
ANN_LOG = ANN + "sim-log"
ANN_STDERR = ANN + "sim-stderr"
ANN_LOG_EVERY = ANN + "sim-log-every-seconds"
ANN_IGNORE_TERM = ANN + "sim-ignore-term"
ANN_CPU = ANN + "sim-cpu-nano-cores"
ANN_MEMORY = ANN + "sim-memory-bytes"

MISSING_IMAGE_MARKERS = ("does-not-exist", "doesnotexist", "notfound", "not-found", "nonexistent", "missing")

EXIT_TERM = 143  # 128 + SIGTERM
EXIT_KILL = 137  # 128 + SIGKILL

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_IMAGE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


def normalize_image(image: str) -> tuple[str, str]:
    """(repository, tag-or-digest) of a reference the way Docker resolves short names.

    Raises InvalidImageNameError for references a runtime would refuse.
    """
    m = _IMAGE_RE.match(image) if image and len(image) <= 4096 else None
    if m is None:
        raise InvalidImageNameError(
            f'Failed to apply default image tag "{image}": couldn\'t parse image name'
        )
    domain, path = m.group("domain"), m.group("path")
    if domain is not None and not (
        "." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")
    ):
        path, domain = f"{domain}/{path}", None
        if not re.fullmatch(_NAME_COMPONENT, path.split("/", 1)[0]):
            raise InvalidImageNameError(
                f'Failed to apply default image tag "{image}": repository name must be lowercase'
            )
    if len(path) > 255:
        raise InvalidImageNameError(f'Failed to apply default image tag "{image}": repository name too long')
    if domain is None:
        domain = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    if m.group("digest"):
        return f"{domain}/{path}", "@" + m.group("digest")
    return f"{domain}/{path}", ":" + (m.group("tag") or "latest")


def _annotation(annotations: Mapping[str, str], key: str, container: str) -> str | None:
    value = annotations.get(f"{key}.{container}")
    return annotations.get(key) if value is None else value


def _float_annotation(
    annotations: Mapping[str, str], key: str, container: str, default: float | None
) -> float | None:
    raw = _annotation(annotations, key, container)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: not a number") from None
    if math.isnan(value) or value < 0:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: must be >= 0")
    return None if math.isinf(value) else value


def _int_annotation(annotations: Mapping[str, str], key: str, container: str, default: int) -> int:
    raw = _annotation(annotations, key, container)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: not an integer") from None


class _Sandbox:
    __slots__ = ("container_ids", "info", "spec")

    def __init__(self, info: SandboxInfo, spec: PodSandboxSpec | None) -> None:
        self.info = info
        self.spec = spec
        self.container_ids: list[str] = []


class _Container:
    """Runtime state plus the behaviour decided at create time."""

    __slots__ = (
        "cpu_nano_cores",
        "exit_at",
        "exit_code",
        "exit_reason",
        "ignore_term",
        "log_every",
        "log_lines",
        "memory_bytes",
        "next_is_exit",
        "run_seconds",
        "started_loop",
        "state",
        "stderr_lines",
        "ticks",
        "timer",
        "waiters",
    )

    def __init__(self, state: ContainerRuntimeState) -> None:
        self.state = state
        self.run_seconds: float | None = None
        self.exit_code = 0
        self.exit_reason = ""
        self.ignore_term = False
        self.log_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.log_every: float | None = None
        self.ticks = 0
        self.cpu_nano_cores = 0
        self.memory_bytes = 0
        self.exit_at: float | None = None  # loop time
        self.started_loop = 0.0  # loop time of the start: ticks are due at start + k * log_every
        self.next_is_exit = False
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] | None = None

    def cpu_usage_ns(self, now: float) -> int:
        started = self.state.started_at
        if started is None:
            return 0
        end = self.state.finished_at if self.state.finished_at is not None else now
        return int(max(0.0, end - started) * self.cpu_nano_cores)


class SimulatedBackend:
    """The Backend protocol implemented with timers and files only (see module docstring)."""

    name = "simulated"
    container_id_scheme = "simulated"
    capabilities = BackendCapabilities(runs_processes=False)

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
        pool_enabled: bool = True,
        pool_max_per_workload: int = 8,
        pool_max_idle: int = 256,
        node_memory_bytes: int = 64 * 1024**3,
        node_fs_bytes: int = 200 * 1024**3,
        preloaded_images: tuple[str, ...] = (),
    ) -> None:
        self.log_dir = os.fspath(log_dir)
        self.pull_seconds = pull_seconds
        self.sandbox_seconds = sandbox_seconds
        self.start_seconds = start_seconds
        self.default_run_seconds = default_run_seconds
        self.cpu_nano_cores = cpu_nano_cores
        self.memory_bytes = memory_bytes
        self.pool_enabled = pool_enabled
        self.pool_max_per_workload = pool_max_per_workload
        self.pool_max_idle = pool_max_idle  # across workloads; the least recently released go first
        self.node_memory_bytes = node_memory_bytes
        self.node_fs_bytes = node_fs_bytes
        self.start_time = time.time()
        self._images: dict[str, ImageResult] = {}
        self._pulling: dict[str, asyncio.Future[ImageResult]] = {}
        self._sandboxes: dict[str, _Sandbox] = {}  # pod uid -> sandbox
        self._pool: dict[str, deque[_Sandbox]] = {}  # workload key -> idle sandboxes
        self._containers: dict[str, _Container] = {}
        self._subscribers: list[PodChangeCallback] = []
        self._retired_cpu_ns = 0
        self._ip_counter = 0
        self._closed = False
        self.pulls = 0  # images actually "downloaded" (for tests and benches)
        self.sandboxes_created = 0
        for image in preloaded_images:
            self._images[image] = self._image_result(image, pulled=False)

    @classmethod
    def from_config(
        cls, cfg: object, log_dir: str | os.PathLike[str], pool_enabled: bool = True, pool_max_idle: int = 256
    ) -> SimulatedBackend:
        """Build from a SimulatedConfig-like object (plain attribute access, no import of provider/)."""
        return cls(
            log_dir,
            pull_seconds=float(getattr(cfg, "pull_seconds", 0.0)),
            sandbox_seconds=float(getattr(cfg, "sandbox_seconds", 0.0)),
            start_seconds=float(getattr(cfg, "start_seconds", 0.0)),
            default_run_seconds=getattr(cfg, "default_run_seconds", None),
            cpu_nano_cores=int(getattr(cfg, "cpu_nano_cores", 1_000_000)),
            memory_bytes=int(getattr(cfg, "memory_bytes", 8 * 1024 * 1024)),
            pool_enabled=pool_enabled,
            pool_max_idle=pool_max_idle,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        self._closed = False
        log.info("simulated backend started log_dir=%s", self.log_dir)

    async def close(self) -> None:
        self._closed = True
        for c in self._containers.values():
            if c.timer is not None:
                c.timer.cancel()
                c.timer = None
        for fut in self._pulling.values():
            if not fut.done():
                fut.cancel()

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

    @staticmethod
    def _image_result(image: str, pulled: bool) -> ImageResult:
        repo, _ = normalize_image(image)
        digest = hashlib.sha256(image.encode()).hexdigest()
        size = 1_000_000 + int(digest[:6], 16) * 16
        return ImageResult(image=image, image_ref=f"{repo}@sha256:{digest}", pulled=pulled, size_bytes=size)

    def has_image(self, image: str) -> bool:
        return image in self._images

    async def ensure_image(self, image: str, policy: PullPolicy) -> ImageResult:
        repo, _ = normalize_image(image)  # raises InvalidImageNameError
        cached = self._images.get(image)
        if cached is not None and policy != PullPolicy.ALWAYS:
            return cached.model_copy(update={"pulled": False})
        if cached is None and policy == PullPolicy.NEVER:
            raise ImageNeverPullError(f'Container image "{image}" is not present with pull policy of Never')
        if cached is not None:  # Always: the manifest is re-checked, layers are all present
            return cached.model_copy(update={"pulled": True})
        name = repo.split("/", 1)[1] if "/" in repo else repo
        if any(marker in name for marker in MISSING_IMAGE_MARKERS):
            raise ImagePullError(
                f'Failed to pull image "{image}": rpc error: code = NotFound '
                f'desc = failed to pull and unpack image "{image}": {repo}: not found'
            )
        fut = self._pulling.get(image)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._pulling[image] = fut
            try:
                if self.pull_seconds > 0:
                    await asyncio.sleep(self.pull_seconds)
                result = self._image_result(image, pulled=True)
                self._images[image] = result
                self.pulls += 1
                fut.set_result(result)
            except BaseException as e:
                if not fut.done():
                    if isinstance(e, Exception):
                        fut.set_exception(e)
                        fut.exception()  # retrieved: waiters may be none
                    else:
                        fut.cancel()
                raise
            finally:
                self._pulling.pop(image, None)
            return result
        return (await asyncio.shield(fut)).model_copy()

    # -- sandboxes ---------------------------------------------------------------------------

    def _next_ip(self) -> str:
        self._ip_counter += 1
        n = self._ip_counter
        return f"10.{88 + (n >> 16) % 100}.{(n >> 8) & 0xFF}.{n & 0xFF or 1}"

    async def acquire_sandbox(self, pod: PodSandboxSpec) -> SandboxInfo:
        existing = self._sandboxes.get(pod.uid)
        if existing is not None:
            return existing.info.model_copy()
        idle = self._pool.get(pod.workload_key) if self.pool_enabled else None
        if idle:
            sb = idle.popleft()
            if not idle:
                del self._pool[pod.workload_key]
            sb.info = sb.info.model_copy(
                update={"pod_uid": pod.uid, "namespace": pod.namespace, "name": pod.name, "from_pool": True}
            )
            sb.spec = pod
            self._sandboxes[pod.uid] = sb
            log.debug(
                "sandbox reused pod_uid=%s sandbox_id=%s key=%s",
                pod.uid,
                sb.info.sandbox_id,
                pod.workload_key,
            )
            return sb.info.model_copy()
        if self.sandbox_seconds > 0:
            await asyncio.sleep(self.sandbox_seconds)
            existing = self._sandboxes.get(pod.uid)  # a concurrent acquire won the race
            if existing is not None:
                return existing.info.model_copy()
        info = SandboxInfo(
            sandbox_id=secrets.token_hex(32),
            pod_uid=pod.uid,
            workload_key=pod.workload_key,
            pod_ip=self._next_ip(),
            from_pool=False,
            created_at=time.time(),
            namespace=pod.namespace,
            name=pod.name,
        )
        self._sandboxes[pod.uid] = _Sandbox(info, pod)
        self.sandboxes_created += 1
        return info.model_copy()

    async def release_sandbox(self, pod_uid: str, reusable: bool) -> None:
        sb = self._sandboxes.pop(pod_uid, None)
        if sb is None:
            return
        for cid in list(sb.container_ids):
            self._drop_container(cid)
        sb.container_ids = []
        if sb.spec is not None:
            shutil.rmtree(
                pod_log_dir(self.log_dir, sb.spec.namespace, sb.spec.name, pod_uid), ignore_errors=True
            )
        key = sb.info.workload_key
        if reusable and self.pool_enabled:
            idle = self._pool.setdefault(key, deque())
            if len(idle) < self.pool_max_per_workload:
                sb.info = sb.info.model_copy(
                    update={"pod_uid": "", "namespace": "", "name": "", "from_pool": False}
                )
                sb.spec = None
                idle.append(sb)
                self._pool[key] = self._pool.pop(key)  # most recently released key last
                self._trim_pool()
                return
            if not idle:
                del self._pool[key]
        log.debug("sandbox destroyed pod_uid=%s sandbox_id=%s", pod_uid, sb.info.sandbox_id)

    def _trim_pool(self) -> None:
        """Destroy idle sandboxes over ``pool_max_idle``, oldest workload first (like the CRI pool's
        global cap): keys of bare pods or finished Jobs are never asked for again."""
        excess = self.idle_sandboxes() - self.pool_max_idle
        while excess > 0 and self._pool:
            key = next(iter(self._pool))
            idle = self._pool[key]
            idle.popleft()
            excess -= 1
            if not idle:
                del self._pool[key]

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        """Cache the template's images and create idle sandboxes for its key, up to the pool cap."""
        if not self.pool_enabled:
            return 0
        for image in pod.images:
            await self.ensure_image(image, PullPolicy.IF_NOT_PRESENT)
        want = min(count, self.pool_max_per_workload)
        while self.idle_sandboxes(pod.workload_key) < want:
            if self.sandbox_seconds > 0:
                await asyncio.sleep(self.sandbox_seconds)
            info = SandboxInfo(
                sandbox_id=secrets.token_hex(32),
                pod_uid="",
                workload_key=pod.workload_key,
                pod_ip=self._next_ip(),
                created_at=time.time(),
            )
            self.sandboxes_created += 1
            idle = self._pool.setdefault(pod.workload_key, deque())
            if len(idle) >= want:
                break
            idle.append(_Sandbox(info, None))
        return self.idle_sandboxes(pod.workload_key)

    async def reconcile(self, live_pod_uids: set[str]) -> None:
        """Release sandboxes of pods that no longer exist and remove stray pod log directories."""
        for uid in [u for u in self._sandboxes if u not in live_pod_uids]:
            log.info("releasing sandbox of unknown pod pod_uid=%s", uid)
            await self.release_sandbox(uid, reusable=True)
        try:
            entries = os.listdir(self.log_dir)
        except OSError:
            return
        for entry in entries:
            parts = entry.split("_")
            if len(parts) != 3 or parts[2] in live_pod_uids or parts[2] in self._sandboxes:
                continue
            shutil.rmtree(os.path.join(self.log_dir, entry), ignore_errors=True)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return [sb.info.model_copy() for sb in self._sandboxes.values()]

    def idle_sandboxes(self, workload_key: str | None = None) -> int:
        """Warm pool size, for one workload or in total."""
        if workload_key is not None:
            return len(self._pool.get(workload_key, ()))
        return sum(len(q) for q in self._pool.values())

    # -- containers --------------------------------------------------------------------------

    def log_path(self, namespace: str, name: str, uid: str, container: str, attempt: int) -> str:
        return container_log_path(self.log_dir, namespace, name, uid, container, attempt)

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        sb = self._sandboxes.get(pod.uid)
        if sb is None or sb.info.sandbox_id != sandbox.sandbox_id:
            raise CreateContainerError(f"sandbox {sandbox.sandbox_id[:12]} of pod {pod.uid} not found")
        normalize_image(container.image)
        ann, cname = pod.annotations, container.name
        default_run = self.default_run_seconds
        if container.is_init and default_run is None:
            default_run = 0.0  # init containers must finish for the pod to start
        run_seconds = _float_annotation(ann, ANN_RUN_SECONDS, cname, default_run)
        exit_code = _int_annotation(ann, ANN_EXIT_CODE, cname, 0)
        log_every = _float_annotation(ann, ANN_LOG_EVERY, cname, None)
        cid = secrets.token_hex(32)
        image = self._images.get(container.image)
        state = ContainerRuntimeState(
            container_id=cid,
            pod_uid=pod.uid,
            name=cname,
            attempt=attempt,
            state=ContainerState.CREATED,
            image=container.image,
            image_ref=image.image_ref if image is not None else "",
            created_at=time.time(),
            log_path=self.log_path(pod.namespace, pod.name, pod.uid, cname, attempt),
        )
        c = _Container(state)
        c.run_seconds = run_seconds
        c.exit_code = exit_code
        c.exit_reason = _annotation(ann, ANN_EXIT_REASON, cname) or (
            "Completed" if exit_code == 0 else "Error"
        )
        c.ignore_term = (_annotation(ann, ANN_IGNORE_TERM, cname) or "").lower() == "true"
        c.log_lines = (_annotation(ann, ANN_LOG, cname) or "").splitlines()
        c.stderr_lines = (_annotation(ann, ANN_STDERR, cname) or "").splitlines()
        c.log_every = log_every if log_every else None
        c.cpu_nano_cores = _int_annotation(ann, ANN_CPU, cname, self.cpu_nano_cores)
        c.memory_bytes = _int_annotation(ann, ANN_MEMORY, cname, self.memory_bytes)
        self._containers[cid] = c
        sb.container_ids.append(cid)
        return cid

    async def start_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is None:
            raise CreateContainerError(f"container {container_id[:12]} not found")
        if c.state.state != ContainerState.CREATED:
            raise CreateContainerError(f"container {container_id[:12]} is {c.state.state.value}, not created")
        if self.start_seconds > 0:
            await asyncio.sleep(self.start_seconds)
            if self._containers.get(container_id) is not c or c.state.state != ContainerState.CREATED:
                raise CreateContainerError(f"container {container_id[:12]} was removed while starting")
        st = c.state
        st.state = ContainerState.RUNNING
        st.started_at = time.time()
        writer = CRILogWriter(st.log_path)
        try:
            writer.create()
            writer.write(f"simulated container {st.name} started\n")
            for line in c.log_lines:
                writer.write(line + "\n")
            for line in c.stderr_lines:
                writer.write(line + "\n", STDERR)
        except OSError as e:
            log.warning("cannot write container log path=%s error=%s", st.log_path, e)
        loop = asyncio.get_running_loop()
        c.started_loop = loop.time()
        if c.run_seconds is not None:
            c.exit_at = c.started_loop + c.run_seconds
        self._arm(c, loop)

    def _arm(self, c: _Container, loop: asyncio.AbstractEventLoop) -> None:
        """One timer per running container: the next log tick or the exit, whichever is first."""
        when = c.exit_at
        c.next_is_exit = when is not None
        if c.log_every is not None:
            tick = c.started_loop + (c.ticks + 1) * c.log_every
            if when is None or tick < when:
                when, c.next_is_exit = tick, False
        c.timer = None if when is None else loop.call_at(when, self._fire, c)

    def _fire(self, c: _Container) -> None:
        c.timer = None
        if c.state.state != ContainerState.RUNNING or self._closed:
            return
        loop = asyncio.get_running_loop()
        # Ticks are due on a fixed schedule; a late timer (a loaded loop) catches up on every
        # tick due before now and before the exit, so the log does not depend on load.
        now = loop.time()
        lines: list[str] = []
        if c.log_every is not None:
            while True:
                due = c.started_loop + (c.ticks + 1) * c.log_every
                if due > now or (c.exit_at is not None and due >= c.exit_at):
                    break
                c.ticks += 1
                lines.append(f"tick {c.ticks}\n")
        if lines:
            try:
                writer = CRILogWriter(c.state.log_path)
                for line in lines:
                    writer.write(line, STDOUT)
            except OSError:
                pass
        if c.exit_at is not None and now >= c.exit_at:
            self._finish(c, c.exit_code, c.exit_reason)
            return
        self._arm(c, loop)

    def _finish(self, c: _Container, exit_code: int, reason: str, message: str = "") -> None:
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        st = c.state
        st.state = ContainerState.EXITED
        st.finished_at = time.time()
        st.exit_code = exit_code
        st.reason = reason
        st.message = message
        if c.waiters:
            for w in c.waiters:
                if not w.done():
                    w.set_result(None)
            c.waiters = None
        self._notify(st.pod_uid)

    async def stop_container(self, container_id: str, grace_seconds: float) -> None:
        c = self._containers.get(container_id)
        if c is None:
            return
        st = c.state
        if st.state == ContainerState.CREATED:
            st.state = ContainerState.EXITED
            st.finished_at = time.time()
            st.exit_code = 0
            self._notify(st.pod_uid)
            return
        if st.state != ContainerState.RUNNING:
            return
        if not c.ignore_term:
            self._finish(c, EXIT_TERM, "Error")
            return
        if grace_seconds > 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            c.waiters = [*(c.waiters or []), waiter]
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace_seconds)
            except TimeoutError:
                pass
        if c.state.state == ContainerState.RUNNING:
            self._finish(c, EXIT_KILL, "Error")

    def _drop_container(self, container_id: str) -> None:
        c = self._containers.pop(container_id, None)
        if c is None:
            return
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        if c.state.state == ContainerState.RUNNING:
            c.state.finished_at = time.time()
            c.state.state = ContainerState.EXITED
            c.state.exit_code = EXIT_KILL
        if c.waiters:
            for w in c.waiters:
                if not w.done():
                    w.set_result(None)
        self._retired_cpu_ns += c.cpu_usage_ns(time.time())

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is None:
            return
        self._drop_container(container_id)
        sb = self._sandboxes.get(c.state.pod_uid)
        if sb is not None and container_id in sb.container_ids:
            sb.container_ids.remove(container_id)
        try:
            os.unlink(c.state.log_path)
        except OSError:
            pass

    async def pod_containers(self, pod_uid: str) -> list[ContainerRuntimeState]:
        sb = self._sandboxes.get(pod_uid)
        if sb is None:
            return []
        return [
            self._containers[cid].state.model_copy() for cid in sb.container_ids if cid in self._containers
        ]

    # -- stats -------------------------------------------------------------------------------

    async def stats(self) -> NodeUsage:
        now = time.time()
        node_cpu_ns = self._retired_cpu_ns
        node_nano = 0
        node_ws = 0
        pods: list[PodUsage] = []
        for uid, sb in self._sandboxes.items():
            containers: list[ContainerUsage] = []
            for cid in sb.container_ids:
                c = self._containers.get(cid)
                if c is None:
                    continue
                usage = c.cpu_usage_ns(now)
                node_cpu_ns += usage
                st = c.state
                if st.state != ContainerState.RUNNING:
                    continue
                node_nano += c.cpu_nano_cores
                node_ws += c.memory_bytes
                containers.append(
                    ContainerUsage.model_construct(
                        name=st.name,
                        container_id=cid,
                        start_time=st.started_at or 0.0,
                        timestamp=now,
                        cpu_usage_core_nanoseconds=usage,
                        cpu_usage_nano_cores=c.cpu_nano_cores,
                        memory_working_set_bytes=c.memory_bytes,
                        memory_usage_bytes=c.memory_bytes,
                        memory_rss_bytes=c.memory_bytes // 2,
                        rootfs_used_bytes=4096,
                        logs_used_bytes=0,
                    )
                )
            pods.append(
                PodUsage.model_construct(
                    uid=uid,
                    namespace=sb.info.namespace,
                    name=sb.info.name,
                    start_time=sb.info.created_at,
                    timestamp=now,
                    containers=containers,
                    network_rx_bytes=0,
                    network_tx_bytes=0,
                )
            )
        fs_used = min(self.node_fs_bytes, 4096 * len(self._containers))
        return NodeUsage(
            timestamp=now,
            start_time=self.start_time,
            cpu_usage_core_nanoseconds=node_cpu_ns,
            cpu_usage_nano_cores=node_nano,
            memory_working_set_bytes=node_ws,
            memory_usage_bytes=node_ws,
            memory_available_bytes=max(0, self.node_memory_bytes - node_ws),
            memory_rss_bytes=node_ws // 2,
            fs_capacity_bytes=self.node_fs_bytes,
            fs_available_bytes=self.node_fs_bytes - fs_used,
            fs_used_bytes=fs_used,
            pods=pods,
        )
